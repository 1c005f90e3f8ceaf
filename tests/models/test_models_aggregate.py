"""Aggregation weights equal the brute-force full-resolution computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from matplotlib.path import Path as MplPath

from hexpress.errors import ConfigError, GeometryError, UnitsError
from hexpress.models.aggregate import (
    Footprints,
    aggregate,
    aggregate_batch,
    footprint_area_px,
    footprint_weights,
    predict_units,
)


def _pixel_grid(h, w, stride, origin):
    ys, xs = np.mgrid[0 : h * stride, 0 : w * stride]
    return xs + origin[0], ys + origin[1]


def _brute_masks(fp, h, w, stride, origin=(0, 0)):
    """(n, H, W) bool masks of pixel centres inside each footprint, at full resolution."""
    xx, yy = _pixel_grid(h, w, stride, origin)
    masks = []
    for u in range(len(fp)):
        cx, cy = fp.centers_model_px[u]
        half = fp.size_px[u] / 2
        if fp.kind == "disc":
            m = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= half * half
        elif fp.kind == "square":
            m = (
                (xx + 0.5 >= cx - half)
                & (xx + 0.5 < cx + half)
                & (yy + 0.5 >= cy - half)
                & (yy + 0.5 < cy + half)
            )
        else:
            pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
            m = MplPath(fp.polygons[u]).contains_points(pts).reshape(xx.shape)
        masks.append(m)
    return np.array(masks)


def _brute_aggregate(map_, masks, stride, mean=False):
    """Upsample (C, h, w) by nearest neighbour to full resolution and sum/average in masks."""
    up = map_.repeat_interleave(stride, -1).repeat_interleave(stride, -2).double()
    m = torch.from_numpy(masks).double()
    sums = torch.einsum("chw,nhw->nc", up, m)
    if mean:
        sums = sums / m.sum((1, 2)).clamp_min(1)[:, None]
    return sums


def _random_footprints(rng, kind, n, extent, sizes):
    centers = rng.uniform(-8, extent + 8, (n, 2))
    centers[:4] = np.round(centers[:4])  # pixel corners
    centers[4:8] = np.round(centers[4:8]) + 0.5  # pixel centres
    size = rng.choice(sizes, n) + rng.uniform(0, 1, n) * (rng.uniform(size=n) < 0.5)
    return Footprints(centers, kind, size)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["disc", "square"])
@pytest.mark.parametrize("origin", [(0, 0), (13, -6)])
def test_weights_equal_brute_force(rng, stride, kind, origin):
    h, w = 72 // stride + 1, 88 // stride + 2
    fp = _random_footprints(rng, kind, 30, 80, sizes=[1, 2, 3, 5, 8, 16, 27, 40])
    weights = footprint_weights(fp, (h, w), stride, origin_px=origin)
    assert isinstance(weights, sp.csr_matrix) and weights.shape == (30, h * w)
    masks = _brute_masks(fp, h, w, stride, origin)
    map_ = torch.randn(5, h, w, dtype=torch.float64)
    want = _brute_aggregate(map_, masks, stride)
    got = aggregate(map_, weights)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)
    # The weights themselves are the pixel counts per cell.
    counts = masks.reshape(30, h, stride, w, stride).sum((2, 4)).reshape(30, -1)
    np.testing.assert_array_equal(weights.toarray(), counts)
    # Mean form.
    got_mean = aggregate(
        map_, footprint_weights(fp, (h, w), stride, origin_px=origin, normalize=True)
    )
    np.testing.assert_allclose(
        got_mean.numpy(), _brute_aggregate(map_, masks, stride, mean=True).numpy(), atol=1e-5
    )


@pytest.mark.parametrize("stride", [1, 4])
def test_polygon_weights_equal_brute_force(rng, stride):
    h, w = 48 // stride, 64 // stride
    star = np.array(
        [
            [0, -14],
            [4, -4],
            [15, -3],
            [6, 4],
            [9, 15],
            [0, 8],
            [-9, 15],
            [-6, 4],
            [-15, -3],
            [-4, -4],
        ],
        float,
    )
    polys = [star + [20.3, 22.7], star * 0.6 + [50.5, 10.0], star * 1.5 + [60.0, 40.0]]
    fp = Footprints([p.mean(0) for p in polys], "polygon", polygons=polys)
    weights, coverage = footprint_weights(fp, (h, w), stride, return_coverage=True)
    masks = _brute_masks(fp, h, w, stride)
    map_ = torch.randn(3, h, w, dtype=torch.float64)
    np.testing.assert_allclose(
        aggregate(map_, weights).numpy(), _brute_aggregate(map_, masks, stride).numpy(), atol=1e-5
    )
    assert coverage[0] == 1.0 and 0 < coverage[2] < 1  # the third star sticks out of the map


def test_big_disc_area_approaches_pi_r2():
    r = 300.0
    fp = Footprints([[400.3, 399.8]], "disc", 2 * r)
    weights = footprint_weights(fp, (200, 200), 4)
    area = weights.sum()
    assert abs(area - np.pi * r * r) / (np.pi * r * r) < 2e-3
    assert footprint_area_px(fp)[0] == area


def test_square_bins_tile_without_overlap():
    # 4 px bins on a 4 px grid: every pixel belongs to exactly one bin, so each 2x2-px cell
    # hands out exactly its 4 pixels.
    ys, xs = np.mgrid[0:10, 0:12]
    fp = Footprints(np.stack([xs.ravel() * 4 + 2, ys.ravel() * 4 + 2], 1), "square", 4.0)
    weights = footprint_weights(fp, (20, 24), 2)
    np.testing.assert_array_equal(weights.sum(axis=0).A.ravel(), np.full(480, 4.0))
    np.testing.assert_array_equal(weights.sum(axis=1).A.ravel(), np.full(120, 16.0))


def test_partly_outside_units_get_inside_part_and_coverage():
    fp = Footprints([[0.0, 20.0], [20.0, 20.0], [-100.0, -100.0]], "square", 10.0)
    weights, coverage = footprint_weights(fp, (10, 10), 4, return_coverage=True)
    np.testing.assert_allclose(coverage, [0.5, 1.0, 0.0])
    assert weights[2].nnz == 0
    # Empty rows predict 0 rather than NaN.
    out = predict_units(torch.ones(2, 10, 10), weights, "field")
    assert torch.isfinite(out).all() and out[2].abs().sum() == 0


def test_chunk_origin_matches_full_map(rng):
    """Weights of a map chunk (origin_px) equal the matching columns of the full weights."""
    fp = _random_footprints(rng, "disc", 20, 120, sizes=[10, 30])
    full = footprint_weights(fp, (32, 32), 4).toarray().reshape(20, 32, 32)
    chunk = footprint_weights(fp, (10, 12), 4, origin_px=(5 * 4, 8 * 4)).toarray()
    np.testing.assert_array_equal(chunk, full[:, 8:18, 5:17].reshape(20, -1))


def test_gradients_flow_to_map():
    fp = Footprints([[10.0, 10.0], [20.0, 12.0]], "disc", 9.0)
    weights = footprint_weights(fp, (8, 8), 4)
    map_ = torch.randn(3, 8, 8, requires_grad=True)
    aggregate(map_, weights).sum().backward()
    grad = map_.grad[0].numpy()  # d(sum)/d(cell) = total weight of the cell, per channel
    np.testing.assert_allclose(grad.ravel(), weights.sum(axis=0).A.ravel(), rtol=1e-6)
    assert grad.sum() > 0 and (grad == 0).any()


def test_aggregate_batch_and_predict_units_modes(rng):
    maps = torch.rand(2, 4, 8, 8) + 0.1
    fps = [Footprints(rng.uniform(4, 28, (5, 2)), "disc", 8.0) for _ in range(2)]
    ws = [footprint_weights(fp, (8, 8), 4) for fp in fps]
    batch = aggregate_batch(maps, ws)
    single = torch.cat([aggregate(maps[i], ws[i]) for i in range(2)])
    torch.testing.assert_close(batch, single)
    # Field: mean of the map over the footprint.
    field = predict_units(maps, ws, "field")
    rows = torch.tensor(np.concatenate([w.sum(axis=1).A.ravel() for w in ws]), dtype=torch.float32)
    torch.testing.assert_close(field, single / rows[:, None])
    # Density: log1p(scale * gene sum / total sum), last channel is the total.
    dens = predict_units(maps, ws, "density", scale=100.0)
    assert dens.shape == (10, 3)
    torch.testing.assert_close(dens, torch.log1p(100.0 * single[:, :3] / single[:, 3:]))
    # The density prediction does not depend on whether the weights are normalised.
    wn = [footprint_weights(fp, (8, 8), 4, normalize=True) for fp in fps]
    torch.testing.assert_close(predict_units(maps, wn, "density", scale=100.0), dens)
    with pytest.raises(ConfigError, match="scale"):
        predict_units(maps, ws, "density")
    with pytest.raises(ConfigError, match="mode must be one of"):
        predict_units(maps, ws, "sum")


def test_density_units_match_count_space_normalisation():
    """Summing densities then normalising equals normalising the summed counts (targets)."""
    counts = torch.rand(3, 16, 16)  # 2 genes + total per input pixel (stride 1)
    counts[2] += counts[:2].sum(0)
    fp = Footprints([[8.0, 8.0]], "disc", 10.0)
    w = footprint_weights(fp, (16, 16), 1)
    mask = torch.from_numpy(w.toarray().reshape(16, 16)).float()
    c = (counts * mask).sum((1, 2))
    want = torch.log1p(c[:2] / c[2] * 1e4)
    torch.testing.assert_close(predict_units(counts, w, "density", 1e4)[0], want)


def test_footprints_validation_and_from_adata():
    import anndata as ad
    import pandas as pd

    with pytest.raises(UnitsError, match="positive"):
        Footprints([[0, 0]], "disc", -1.0)
    with pytest.raises(GeometryError, match="kind"):
        Footprints([[0, 0]], "hexagon", 1.0)
    with pytest.raises(GeometryError, match="polygons"):
        Footprints([[0, 0]], "polygon")
    obs = pd.DataFrame({"geometry": ["disc", "disc"], "size_um": [55.0, 55.0]}, index=["a", "b"])
    a = ad.AnnData(np.zeros((2, 1), np.float32), obs=obs)
    a.obsm["spatial"] = np.array([[100.0, 200.0], [300.0, 50.0]])
    a.uns["hexpress"] = {"mpp": 0.25}
    fp = Footprints.from_adata(a, model_mpp=1.0, origin_px=(10, 5))
    np.testing.assert_allclose(fp.centers_model_px, [[15.0, 45.0], [65.0, 7.5]])
    np.testing.assert_allclose(fp.size_px, [55.0, 55.0])
    assert len(fp.subset([1])) == 1
    np.testing.assert_allclose(fp.translate(-15, -45).centers_model_px[0], [0, 0])
    del a.uns["hexpress"]
    with pytest.raises(UnitsError, match="image_mpp"):
        Footprints.from_adata(a, model_mpp=1.0)
