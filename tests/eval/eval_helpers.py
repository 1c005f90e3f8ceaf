"""Helpers of the evaluation tests: tiny synthetic sections: a hex grid of 55 µm spots on a small image,
raw counts with spatial structure, and predictions that follow the truth to varying degrees."""

from __future__ import annotations

import numpy as np

from hexpress import _keys as K
from hexpress.data.sample import make_units
from hexpress.io.image import ArrayImage

MPP = 2.0  # µm per pixel of the tiny slide


def hex_grid(n_side: int, pitch_px: float) -> np.ndarray:
    """Centres of an ``n_side x n_side`` hexagonal lattice (x, y), first spot at one pitch."""
    rows = []
    for r in range(n_side):
        for c in range(n_side):
            rows.append(((c + 0.5 * (r % 2) + 1) * pitch_px, (r * np.sqrt(3) / 2 + 1) * pitch_px))
    return np.asarray(rows)


def make_section(
    seed: int = 0,
    n_side: int = 8,
    n_genes: int = 8,
    *,
    size_um: float = 55.0,
    geometry: str = K.DISC,
    prefix: str = "s",
):
    """``(truth_counts_adata, image)``: counts whose mean follows smooth gradients per gene."""
    rng = np.random.default_rng(seed)
    pitch_px = 100.0 / MPP
    xy = hex_grid(n_side, pitch_px)
    n = len(xy)
    x = (xy[:, 0] - xy[:, 0].mean()) / np.ptp(xy[:, 0])
    y = (xy[:, 1] - xy[:, 1].mean()) / np.ptp(xy[:, 1])
    # Gradients along +x, +y, -x, -y in turn, so the spot totals stay flat and normalisation
    # keeps each gene's spatial pattern.
    fields = (x, y, -x, -y)
    base = np.stack(
        [np.exp(3.0 + (g % 3) * 0.5 + 3.0 * fields[g % 4]) for g in range(n_genes)], axis=1
    )
    counts = rng.poisson(base).astype(np.float32)
    genes = [f"G{g}" for g in range(n_genes)]
    h = int(xy[:, 1].max() + pitch_px)
    w = int(xy[:, 0].max() + pitch_px)
    img = np.full((h, w, 3), 235, dtype=np.uint8)
    img[::7, :, 0] = 180  # some texture so the thumbnail is not blank
    image = ArrayImage(img, mpp=MPP)
    adata = make_units(
        counts,
        genes=genes,
        unit_ids=[f"{prefix}{i}" for i in range(n)],
        centers_px=xy,
        geometry=geometry,
        size_um=size_um,
        source="synthetic",
        image=image,
    )
    adata.uns[K.UNS] = {"sample_id": f"sec{seed}", "mpp": MPP}
    return adata, image


def noisy_prediction(truth_norm, noise: float, seed: int = 1):
    """A prediction AnnData: normalised truth plus Gaussian noise, with the normalisation record."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    X = np.asarray(truth_norm.X, dtype=np.float32)
    pred = ad.AnnData(
        X=X + rng.normal(scale=noise, size=X.shape).astype(np.float32),
        obs=truth_norm.obs[[K.GEOMETRY, K.SIZE_UM]].copy(),
        var=truth_norm.var[[]].copy(),
    )
    pred.obsm[K.SPATIAL] = np.asarray(truth_norm.obsm[K.SPATIAL])
    pred.uns[K.UNS] = {
        "normalization": dict(truth_norm.uns[K.UNS][K.NORMALIZATION]),
        "mpp": MPP,
    }
    return pred


def synthetic_results(n_sections: int = 2):
    """Two methods over ``n_sections`` sections: ``(results, truths, images)`` for reports."""
    import pandas as pd

    from hexpress.data.preprocess import normalize
    from hexpress.eval.matching import evaluate_anndata
    from hexpress.eval.report import MethodResult

    truths, images, preds = {}, {}, {"dense": {}, "patch": {}}
    for s in range(n_sections):
        counts, image = make_section(s, prefix=f"sec{s}_")
        norm = normalize(counts)
        truths[f"sec{s}"] = norm
        images[f"sec{s}"] = image
        preds["dense"][f"sec{s}"] = noisy_prediction(norm, 0.3, seed=10 + s)
        preds["patch"][f"sec{s}"] = noisy_prediction(norm, 1.0, seed=20 + s)
    results = []
    for name, (train_s, pred_s) in (("dense", (12.5, 1.5)), ("patch", (30.0, None))):
        sections = [evaluate_anndata(truths[k], p, section=k) for k, p in preds[name].items()]
        cross = pd.DataFrame(
            {
                "method": name,
                "scale": ["spot_100um", "spot_55um", "bin_8um", "bin_2um"],
                "scale_um": [100.0, 55.0, 8.0, 2.0],
                "geometry": ["disc", "disc", "square", "square"],
                "PCC@M": [0.6, 0.5, 0.3, 0.1] if name == "dense" else [0.5, 0.4, 0.2, 0.05],
            }
        )
        results.append(
            MethodResult(
                name,
                sections,
                train_time_s=train_s,
                predict_time_s=pred_s,
                predictions=preds[name],
                cross_scale=cross,
                config={"encoder": "tiny", "epochs": 2},
            )
        )
    return results, truths, images


def write_field_map(path, truth_norm, image, *, stride_px: int = 5):
    """A complete field-mode dense map whose cells hold each gene's nearest-spot value."""
    from hexpress.infer.dense_map import create_dense_map

    genes = list(map(str, truth_norm.var_names))
    cell_px = stride_px  # level-0 px per map cell (model_mpp = slide mpp)
    H, W = image.height // cell_px, image.width // cell_px
    xy = np.asarray(truth_norm.obsm[K.SPATIAL])
    yy, xx = np.mgrid[0:H, 0:W]
    centres = np.stack([(xx.ravel() + 0.5) * cell_px, (yy.ravel() + 0.5) * cell_px], axis=1)
    nearest = np.argmin(((centres[:, None, :] - xy[None]) ** 2).sum(-1), axis=1)
    vals = np.asarray(truth_norm.X)[nearest].reshape(H, W, len(genes))
    vals[:, : W // 4] = np.nan  # glass on the left: never predicted
    mask = np.ones((image.height // 10, image.width // 10), bool)
    mask[:, : mask.shape[1] // 4] = False
    dm = create_dense_map(
        path, map_shape=(H, W), n_channels=len(genes), chunk_cells=16, n_tiles=1,
        tissue_mask=mask,
        attrs={"genes": genes, "mode": "field", "stride": stride_px, "model_mpp": MPP,
               "map_mpp": MPP * stride_px, "tissue_scale": 0.1,
               "normalization": dict(truth_norm.uns[K.UNS][K.NORMALIZATION]),
               "slide": {"path": "", "width": image.width, "height": image.height, "mpp": MPP}},
    )  # fmt: skip
    dm.write(0, 0, vals.astype(np.float32))
    dm.mark_done([0])
    dm.finalize()
    return path
