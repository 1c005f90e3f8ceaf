import json

import numpy as np
import pandas as pd
import pytest
import torch
from infer_helpers import he_like, write_map
from torch import nn

from hexpress.errors import FormatError, GeometryError, UnitsError
from hexpress.infer import (
    ModelInfo,
    TissueMask,
    aggregate_units,
    detect_tissue,
    grid_bins,
    grid_discs,
    keep_inside,
    read_cells,
    read_spots,
)
from hexpress.infer.patch_engine import predict_patches
from hexpress.infer.preview import map_thumbnail, write_previews
from hexpress.io import ArrayImage


def test_tissue_mask_finds_the_blob():
    img = he_like(300, 400)
    slide = ArrayImage(img, mpp=1.0)
    t = detect_tissue(slide, max_side=200, min_area_um2=500, dilate_um=0)
    yy, xx = np.mgrid[0:300, 0:400]
    blob = ((yy - 150) / 105) ** 2 + ((xx - 200) / 140) ** 2 < 1
    assert abs(t.fraction - blob.mean()) < 0.05
    assert t.contains(np.array([[200, 150], [5, 5]])).tolist() == [True, False]
    blank = detect_tissue(ArrayImage(np.full((100, 100, 3), 240, np.uint8), mpp=1.0))
    assert blank.fraction == 0


def test_disc_grids_visium_and_legacy_st():
    vis = grid_discs(4000, 4000, 0.5, 55)  # 2 x 2 mm
    c = vis.centers_level0_px[vis.obs["array_row"] == 0]
    np.testing.assert_allclose(np.diff(c[:, 0]) * 0.5, 100.0)  # 100 µm pitch
    r1 = vis.centers_level0_px[vis.obs["array_row"] == 1]
    assert abs((r1[0, 0] - c[0, 0]) * 0.5 - 50) < 1e-9  # hexagonal: odd rows shifted
    assert abs((r1[0, 1] - c[0, 1]) * 0.5 - 100 * np.sqrt(3) / 2) < 1e-9
    st = grid_discs(4000, 4000, 0.5, 100)
    assert len(st) == 10 * 10 and set(st.size_um) == {100.0}
    with pytest.raises(UnitsError, match="positive"):
        grid_discs(100, 100, 0.5, -3)


def test_bins_keep_tissue_only():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    b = grid_bins(100, 100, 1.0, 10, tissue=TissueMask(mask, 0.1))
    assert len(b) == 50 and b.get_ids()[0] == "s_010um_00000_00000"


def test_read_spots_and_cells(tmp_path):
    pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0], "barcode": ["a", "b"]}).to_parquet(
        tmp_path / "s.parquet"
    )
    with pytest.raises(UnitsError, match="diameter"):
        read_spots(tmp_path / "s.parquet", mpp=0.5)
    s = read_spots(tmp_path / "s.parquet", mpp=0.5, diameter_um=55)
    assert s.get_ids() == ["a", "b"] and s.kind == "disc"
    # Xenium-like vertices in µm -> level-0 px
    verts = pd.DataFrame(
        {"cell_id": ["c1"] * 4 + ["c2"] * 3, "vertex_x": [0, 10, 10, 0, 20, 30, 25],
         "vertex_y": [0, 0, 10, 10, 0, 0, 8]}
    )  # fmt: skip
    verts.to_parquet(tmp_path / "cells.parquet")
    cells = read_cells(tmp_path / "cells.parquet", mpp=0.5)
    assert cells.get_ids() == ["c1", "c2"]
    np.testing.assert_allclose(cells.centers_level0_px[0], [10, 10])
    (tmp_path / "bad.geojson").write_text("{")
    with pytest.raises(FormatError, match="GeoJSON"):
        read_cells(tmp_path / "bad.geojson", mpp=0.5)
    (tmp_path / "c.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(GeometryError, match="no polygons"):
        read_cells(tmp_path / "c.geojson", mpp=0.5)
    with pytest.raises(GeometryError, match="outside"):
        keep_inside(s, 1, 1)


class MeanColour(nn.Module):
    """A stand-in patch model: the crop's mean of each colour channel."""

    kind = "patch"
    n_genes = 3

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_patch_engine_on_the_same_units(tmp_path, rng):
    img = he_like(200, 240)
    slide = ArrayImage(img, mpp=0.5)
    meta = {"model_mpp": 1.0, "genes": ["R", "G", "B"], "kind": "patch", "patch_um": 20.0}
    info = ModelInfo(MeanColour(), meta)
    bins = grid_bins(240, 200, 0.5, 20.0)  # 20 µm bins = 40 level-0 px = 20 input px
    a = predict_patches(slide, info, bins, batch_size=7, progress=False)
    assert a.n_obs == len(bins) == 6 * 5 and list(a.obs_names) == bins.get_ids()
    # bin (row 1, col 2) covers level-0 px [80, 120) x [40, 80); the crop is the same area
    ref = np.asarray(
        slide.read_region(40, 20, 20, 20, mpp=1.0, units="target"), dtype=np.float32
    ).mean((0, 1)) / 255  # fmt: skip
    np.testing.assert_allclose(a.X[1 * 6 + 2], ref, rtol=1e-5)
    assert a.uns["hexpress"]["patch_um"] == 20.0


def test_preview_png(tmp_path, rng):
    values = rng.uniform(0, 1, (30, 40, 2)).astype(np.float32)
    covered = np.ones((30, 40), bool)
    covered[:10] = False
    dm = write_map(tmp_path / "m.zarr", values, covered=covered)
    thumb, k = map_thumbnail(dm, ["G1"], max_side=20)
    assert k == 2 and thumb.shape == (15, 20, 1)
    np.testing.assert_allclose(thumb[10, 3, 0], values[20:22, 6:8, 1].mean(), rtol=1e-2)
    assert np.isnan(thumb[0, 0, 0])
    # glass inside a predicted tile is hidden: the mask's left half has no tissue
    mask = np.ones((8, 8), bool)
    mask[:, :4] = False
    dm = write_map(tmp_path / "m2.zarr", values, tissue_mask=mask)
    shown, _ = map_thumbnail(dm, ["G1"], max_side=20)
    assert np.isnan(shown[:, :10]).all() and np.isfinite(shown[10:, 10:]).all()
    every, _ = map_thumbnail(dm, ["G1"], max_side=20, tissue_only=False)
    assert np.isfinite(every[10:, :10]).all()
    slide = ArrayImage(he_like(240, 320), mpp=0.25)
    [png] = write_previews(dm, slide, ["G1"], tmp_path / "p", max_side=100)
    assert png.name == "preview_G1.png" and png.stat().st_size > 1000
    # a gene the map does not hold: refused, naming it and some the map has
    from hexpress.errors import DataMismatchError

    with pytest.raises(DataMismatchError, match=r"\['NOPE'\] are not predicted.*'G0'"):
        write_previews(dm, slide, ["G1", "NOPE"], tmp_path / "q", max_side=100)
    assert not (tmp_path / "q").exists() or not list((tmp_path / "q").iterdir())


def test_dense_and_patch_geometries_agree_on_ids(tmp_path, rng):
    values = rng.uniform(0, 1, (25, 30, 3)).astype(np.float32)
    dm = write_map(tmp_path / "m.zarr", values)  # slide 240 x 200 level-0 px at 0.25
    bins = grid_bins(240, 200, 0.25, 8.0)
    dense = aggregate_units(dm, bins, progress=False)
    info = ModelInfo(
        MeanColour(), {"model_mpp": 0.5, "genes": dm.genes, "kind": "patch", "patch_um": 8.0}
    )
    patch = predict_patches(ArrayImage(he_like(200, 240), 0.25), info, bins, progress=False)
    assert list(dense.obs_names) == list(patch.obs_names)
    np.testing.assert_array_equal(dense.obsm["spatial"], patch.obsm["spatial"])
    torch.testing.assert_close(torch.tensor(dense.n_vars), torch.tensor(patch.n_vars))
