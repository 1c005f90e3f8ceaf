"""Staged inference (each part of PixNet tiled with its own margin) gives the tiled map."""

import dataclasses

import numpy as np
import pytest
import torch
from infer_helpers import he_like

from hexpress.errors import ConfigError
from hexpress.infer import ModelInfo, TissueMask, predict_slide
from hexpress.infer import staged as staged_mod
from hexpress.io import ArrayImage
from hexpress.models import PixNet, create_model

SHAPE = (300, 460)  # neither side a multiple of the stride or a tile
TILE_PX = 1024 + 128  # the receptive field is 512 px: map cores of 128 px, several of them


@pytest.fixture(scope="module")
def lite():
    """A small PixNet on an untrained Lite0 encoder (local layers: it splits into stages)."""
    torch.manual_seed(0)
    model = PixNet(3, encoder="tf_efficientnet_lite0", pretrained=False, width=16, hidden=32)
    model.eval()
    with torch.no_grad():  # the decoder away from its initialisation, so every path counts
        for part in (model.proj, model.up, model.dffn, model.head):
            for p in part.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return ModelInfo(model, {"model_mpp": 1.0, "genes": ["a", "b", "c"]})


@pytest.fixture(scope="module")
def slide():
    return ArrayImage(he_like(*SHAPE), mpp=1.0)


@pytest.fixture(scope="module")
def tiled(lite, slide, tmp_path_factory):
    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("tiled") / "map.zarr"
    dm = predict_slide(
        slide, lite, path, tile_px=TILE_PX, tissue=TissueMask.full(slide), progress=False
    )
    return dm.read(0, dm.shape[0], 0, dm.shape[1])[0]


def _small_stages(monkeypatch, **change):
    """Stage cores small enough that each stage runs several tiles on the test slide."""
    make = staged_mod.make_stage_plan

    def plan(model, margin_px):
        return dataclasses.replace(make(model, margin_px, core_a_px=128, core_b=16), **change)

    monkeypatch.setattr(staged_mod, "make_stage_plan", plan)


def _staged(lite, slide, path, **kw):
    dm = predict_slide(slide, lite, path, tile_px=TILE_PX, progress=False, staged=True, **kw)
    return dm, dm.read(0, dm.shape[0], 0, dm.shape[1])[0]


def test_staged_map_equals_tiled_map(lite, slide, tiled, tmp_path, monkeypatch):
    _small_stages(monkeypatch)
    plan = staged_mod.make_stage_plan(lite.model, lite.receptive_field_px)
    assert (plan.level_b, plan.stride_b, plan.halo_a_px, plan.halo_b) == (1, 8, 40, 64)
    dm, got = _staged(lite, slide, tmp_path / "s.zarr", tissue=TissueMask.full(slide))
    assert dm.complete and np.isfinite(got).all()
    assert dm.attrs["tile_grid"]["n_rows"] * dm.attrs["tile_grid"]["n_cols"] > 4
    np.testing.assert_allclose(got, tiled, rtol=2e-3, atol=2e-3)
    assert not (tmp_path / "s.zarr.stages").exists()  # the stores are gone


@pytest.mark.parametrize("change", [{"halo_a_px": 8}, {"halo_b": 8}, {"halo_c": 0}])
def test_each_stage_needs_its_margin(lite, slide, tiled, tmp_path, monkeypatch, change):
    _small_stages(monkeypatch, **change)
    _, got = _staged(lite, slide, tmp_path / "s.zarr", tissue=TissueMask.full(slide))
    assert np.abs(got - tiled).max() > 0.05


def test_staged_skips_tiles_without_tissue(lite, slide, tiled, tmp_path, monkeypatch):
    _small_stages(monkeypatch)
    mask = np.zeros((SHAPE[0] // 4, SHAPE[1] // 4), bool)
    mask[:30, :40] = True  # the top-left corner only
    tissue = TissueMask(mask, scale=0.25)
    dm, got = _staged(lite, slide, tmp_path / "t.zarr", tissue=tissue)
    cov = dm.read(0, dm.shape[0], 0, dm.shape[1])[1]
    assert cov.any() and not cov.all()
    assert np.isnan(got[~cov]).all()
    np.testing.assert_allclose(got[cov], tiled[cov], rtol=2e-3, atol=2e-3)


def test_stage_layout_covers_what_each_stage_reads(lite):
    from hexpress.infer import make_tile_grid

    grid = make_tile_grid(
        SHAPE, stride=4, receptive_field_px=512, tile_px=TILE_PX, align_px=32
    )  # fmt: skip
    plan = staged_mod.make_stage_plan(lite.model, 512, core_a_px=128, core_b=16)
    lay = staged_mod.stage_layout(plan, grid, list(grid))
    (cay, cax), (cby, cbx) = lay.core_a_px, lay.core_b
    assert cay % 32 == cax % 32 == 0 and cby % 4 == cbx % 4 == 0
    # every level-b cell of every B window lies in some A core (in input px)
    a_cov = np.zeros((4000, 4000), bool)
    o = 2000
    for y, x in lay.a_tiles:
        a_cov[o + y : o + y + cay, o + x : o + x + cax] = True
    hb = plan.halo_b
    for y, x in lay.b_tiles:
        y0, x0 = (y - hb) * 8, (x - hb) * 8
        assert a_cov[o + y0 : o + (y + cby + hb) * 8, o + x0 : o + (x + cbx + hb) * 8].all()
    # every level-b cell C reads is in some B core
    b_cov = np.zeros((600, 600), bool)
    for y, x in lay.b_tiles:
        b_cov[300 + y : 300 + y + cby, 300 + x : 300 + x + cbx] = True
    for y0, x0, y1, x1 in lay.c_boxes:
        assert b_cov[300 + y0 // 2 : 300 + -(-y1 // 2), 300 + x0 // 2 : 300 + -(-x1 // 2)].all()


def test_staged_refuses_what_it_cannot_run(lite, slide, tmp_path):
    resnet = create_model("test_pixnet", n_genes=2).eval()
    info = ModelInfo(resnet, {"model_mpp": 1.0, "genes": ["a", "b"]})
    with pytest.raises(ConfigError, match="cannot be split.*without --staged"):
        predict_slide(slide, info, tmp_path / "r.zarr", staged=True, progress=False)
    squeeze = PixNet(2, encoder="test_efficientnet", pretrained=False, width=16, hidden=32)
    with pytest.raises(ConfigError, match="global context"):
        staged_mod.check_staged(squeeze.eval())
    with pytest.raises(ConfigError, match="--tta"):
        predict_slide(slide, lite, tmp_path / "t.zarr", staged=True, tta=True, progress=False)
    with pytest.raises(ConfigError, match="runtime onnx"):
        staged_mod.check_staged(lite.model, runtime="onnx")
    assert not (tmp_path / "r.zarr").exists() and not (tmp_path / "t.zarr").exists()
