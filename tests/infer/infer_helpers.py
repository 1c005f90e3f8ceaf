"""A tiny stand-in dense model, an H&E-like image and a prediction's inputs for the inference
tests (and the command-line tests of ``hexpress predict``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn


class TinyDense(nn.Module):
    """Two 3x3 convolutions, an average pool by ``stride`` and a 1x1 head.

    A map cell depends on its own ``stride`` x ``stride`` pixels plus 2 px on each side.
    """

    kind = "dense"

    def __init__(self, n_genes: int = 3, stride: int = 4, mode: str = "field", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_genes, self.stride, self.mode = n_genes, stride, mode
        self.receptive_field_px = stride + 4
        out = n_genes + (1 if mode == "density" else 0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, out, 1)

    def forward(self, x):
        x = torch.relu(self.c1(x * 2 - 1))
        x = torch.relu(self.c2(x))
        x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        y = self.head(x)
        return F.softplus(y) if self.mode == "density" else y


def tiny_meta(model: TinyDense, model_mpp: float = 1.0) -> dict:
    return {
        "model_name": "tiny_dense",
        "model_kwargs": {"n_genes": model.n_genes, "stride": model.stride, "mode": model.mode},
        "kind": "dense",
        "stride": model.stride,
        "model_mpp": model_mpp,
        "genes": [f"G{i}" for i in range(model.n_genes)],
        "normalization": {"method": "log1p_total", "scale": 100.0},
    }


def he_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A cheap H&E-like image: pink blob of tissue with purple dots on white glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 245, dtype=np.float32)
    blob = ((yy - h * 0.5) / (h * 0.35)) ** 2 + ((xx - w * 0.5) / (w * 0.35)) ** 2 < 1
    img[blob] = (230, 150, 190)
    nuclei = blob & (rng.random((h, w)) < 0.02)
    img[nuclei] = (110, 60, 150)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def pixel_mask(kind, center, size_px, polygon, shape_px, origin_px=(0, 0)):
    """Bool mask of the input pixels (centres at p + 0.5) a footprint holds; brute force."""
    h, w = shape_px
    ys, xs = np.mgrid[0:h, 0:w]
    px = xs + origin_px[0] + 0.5
    py = ys + origin_px[1] + 0.5
    cx, cy = center
    if kind == "square":
        a = size_px / 2
        return (px >= cx - a) & (px < cx + a) & (py >= cy - a) & (py < cy + a)
    if kind == "disc":
        return (px - cx) ** 2 + (py - cy) ** 2 <= (size_px / 2) ** 2
    from matplotlib.path import Path as MplPath

    inside = MplPath(polygon).contains_points(np.stack([px.ravel(), py.ravel()], 1))
    return inside.reshape(h, w)


def brute_weights(centers, kind, sizes, polygons, map_shape, stride, origin_px=(0, 0)):
    """``(n, h*w)`` pixel counts per map cell, by building each footprint's full pixel mask."""
    import scipy.sparse as sp

    h, w = map_shape
    rows = []
    for i, c in enumerate(np.asarray(centers, dtype=float)):
        poly = None if polygons is None else polygons[i]
        size = None if sizes is None else float(sizes[i])
        m = pixel_mask(kind, c, size, poly, (h * stride, w * stride), origin_px)
        rows.append(m.reshape(h, stride, w, stride).sum((1, 3)).ravel())
    return sp.csr_matrix(np.array(rows, dtype=np.float64))


def write_map(
    path,
    values,
    *,
    stride=4,
    model_mpp=0.5,
    slide_mpp=0.25,
    mode="field",
    genes=None,
    covered=None,
    chunk=16,
    tissue_mask=None,
):
    """A complete on-disk map holding ``values`` ``(H, W, C)`` (NaN / ``covered`` False = none)."""
    from hexpress.infer import create_dense_map

    H, W, C = values.shape
    n_genes = C - (1 if mode == "density" else 0)
    genes = genes or [f"G{i}" for i in range(n_genes)]
    f = slide_mpp / model_mpp
    dm = create_dense_map(
        path, map_shape=(H, W), n_channels=C, chunk_cells=chunk, n_tiles=1,
        tissue_mask=np.ones((8, 8), bool) if tissue_mask is None else tissue_mask,
        attrs={
            "map_mpp": model_mpp * stride, "origin_px": [0, 0], "stride": stride,
            "model_mpp": model_mpp, "genes": genes, "mode": mode,
            "normalization": {"method": "log1p_total", "scale": 10.0},
            "slide": {"path": None, "width": int(W * stride / f), "height": int(H * stride / f),
                      "mpp": slide_mpp},
            "tissue_scale": 8 / max(H * stride / f, W * stride / f),
        },
    )  # fmt: skip
    dm.write(0, 0, values)
    if covered is not None:
        dm._group["coverage"][:] = covered
        v = values.copy()
        v[~covered] = np.nan
        dm._group["map"][:] = v.astype(np.float16)
    dm.mark_done([0])
    dm.finalize()
    from hexpress.infer import open_dense_map

    return open_dense_map(path)


class SymmetricDense(nn.Module):
    """A dense model equivariant under the 8 flips/rotations by construction.

    Pointwise convolutions around a depthwise 3x3 convolution whose kernel is symmetric under
    the dihedral group (centre, edge and corner weights), then an average pool by ``stride``
    aligned on the input grid. Its map still depends on where things are, so test-time
    augmentation leaves it unchanged only when every transform is undone correctly.
    """

    kind = "dense"

    def __init__(self, n_genes: int = 3, stride: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_genes, self.stride, self.mode = n_genes, stride, "field"
        self.receptive_field_px = stride + 1
        self.c1 = nn.Conv2d(3, 6, 1)
        self.centre = nn.Parameter(torch.randn(6))
        self.edge = nn.Parameter(torch.randn(6))
        self.corner = nn.Parameter(torch.randn(6))
        self.head = nn.Conv2d(6, n_genes, 1)

    def kernel(self) -> torch.Tensor:
        c, e, k = self.centre, self.edge, self.corner
        rows = [torch.stack([k, e, k], -1), torch.stack([e, c, e], -1), torch.stack([k, e, k], -1)]
        return torch.stack(rows, -2)[:, None]  # (6, 1, 3, 3)

    def forward(self, x):
        x = torch.tanh(self.c1(x * 2 - 1))
        x = torch.relu(F.conv2d(x, self.kernel(), padding=1, groups=6))
        return self.head(F.avg_pool2d(x, self.stride, ceil_mode=True))


def write_predict_inputs(d: Path) -> Path:
    """In ``d``: a slide (``slide.tif``, 400 x 300 px at mpp 0.5), a ``test_pixnet`` checkpoint at
    model_mpp 1.0 (``ckpt/model``, genes A, B, C), three spots (``spots.csv``, one off the slide)
    and two cells (``cells.geojson``, level-0 px)."""
    from hexpress.io import write_tiff
    from hexpress.models import create_model, save_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = create_model("test_pixnet", n_genes=3)
    save_checkpoint(
        d / "ckpt" / "model", model, model_name="test_pixnet", model_kwargs={"n_genes": 3},
        model_mpp=1.0, genes=["A", "B", "C"], normalization={"method": "log1p", "scale": 1e4},
    )  # fmt: skip
    write_tiff(d / "slide.tif", he_like(300, 400), mpp=0.5, tile=128, min_level_side=128)
    pd.DataFrame(
        {"x": [200.0, 100.0, 5000.0], "y": [150.0, 100.0, 20.0], "diameter_um": 55.0}
    ).to_csv(d / "spots.csv", index=False)
    cells = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": "cell1", "geometry": {"type": "Polygon", "coordinates": [
                [[190, 140], [215, 140], [215, 160], [190, 162], [190, 140]]]}},
            {"type": "Feature", "id": "cell2", "geometry": {"type": "Polygon", "coordinates": [
                [[100, 90], [110, 90], [105, 99]]]}},
        ],
    }  # fmt: skip
    (d / "cells.geojson").write_text(json.dumps(cells))
    return d


def tiny_pixnet(n_genes: int, seed: int = 0) -> nn.Module:
    """The registry's ``test_pixnet`` in eval mode with non-trivial batch-norm statistics (so
    that folding them into the convolutions changes the weights)."""
    from hexpress.models import create_model

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = create_model("test_pixnet", n_genes=n_genes).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return model
