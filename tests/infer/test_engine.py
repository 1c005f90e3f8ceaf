import math

import numpy as np
import pytest
import torch
from infer_helpers import TinyDense, he_like, tiny_meta

from hexpress.errors import ConfigError, FormatError
from hexpress.infer import (
    ModelInfo,
    TissueMask,
    make_tile_grid,
    open_dense_map,
    predict_slide,
)
from hexpress.infer import engine as engine_mod
from hexpress.io import ArrayImage


def untiled(model, image: np.ndarray, margin: int) -> np.ndarray:
    """The whole image in one pass, padded with white (glass) like the slide reader does."""
    s = model.stride
    h, w = image.shape[:2]
    H, W = math.ceil(h / s) * s, math.ceil(w / s) * s
    padded = np.full((H + 2 * margin, W + 2 * margin, 3), 255, dtype=np.uint8)
    padded[margin : margin + h, margin : margin + w] = image
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        y = model(x)[0].permute(1, 2, 0).numpy()
    m = margin // s
    return y[m : m + math.ceil(h / s), m : m + math.ceil(w / s)]


@pytest.mark.parametrize("tile_px", [40, 100, 1000])
@pytest.mark.parametrize("mode", ["field", "density"])
def test_tiled_equals_untiled(tmp_path, tile_px, mode):
    torch.set_num_threads(1)
    model = TinyDense(mode=mode).eval()
    image = he_like(301, 398)  # neither side a multiple of the stride or the tile
    slide = ArrayImage(image, mpp=1.0)
    info = ModelInfo(model, tiny_meta(model))
    dm = predict_slide(
        slide,
        info,
        tmp_path / "map.zarr",
        tile_px=tile_px,
        batch_size=3,
        tissue=TissueMask.full(slide),
        progress=False,
    )
    grid = make_tile_grid((301, 398), stride=4, receptive_field_px=8, tile_px=tile_px)
    assert dm.shape[:2] == grid.map_shape == (76, 100)
    got, cov = dm.read(0, 76, 0, 100)
    assert cov.all() and dm.complete
    ref = untiled(model, image, grid.margin_px)
    np.testing.assert_allclose(got, ref.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
    # the margin matters: without it, tile borders would differ from the untiled map
    if tile_px == 40:
        assert len(grid) > 4


def test_tiles_without_tissue_are_skipped_and_nan(tmp_path, tiny_model):
    slide = ArrayImage(he_like(200, 200), mpp=1.0)
    mask = np.zeros((20, 20), dtype=bool)
    mask[:5, :5] = True  # tissue only in the top-left corner
    info = ModelInfo(tiny_model, tiny_meta(tiny_model))
    dm = predict_slide(
        slide,
        info,
        tmp_path / "m.zarr",
        tile_px=48,
        tissue=TissueMask(mask, 0.1),
        progress=False,
    )
    vals, cov = dm.read(0, 50, 0, 50)
    assert cov[0, 0] and not cov[-1, -1]
    assert np.isnan(vals[-1, -1]).all() and np.isfinite(vals[0, 0]).all()
    assert 0 < dm.attrs["n_tiles_run"] < dm.attrs["tile_grid"]["n_rows"] ** 2


def test_tile_too_small_for_margin():
    with pytest.raises(ConfigError, match="--tile-px"):
        make_tile_grid((100, 100), stride=4, receptive_field_px=30, tile_px=64)


def test_dense_tta_runs_and_keeps_shape(tmp_path, tiny_model, slide_img):
    info = ModelInfo(tiny_model, tiny_meta(tiny_model))
    dm = predict_slide(
        slide_img,
        info,
        tmp_path / "m.zarr",
        tile_px=64,
        tta=True,
        tissue=TissueMask.full(slide_img),
        progress=False,
    )
    vals, cov = dm.read(0, dm.shape[0], 0, dm.shape[1])
    assert cov.all() and np.isfinite(vals).all()


def test_killed_run_resumes_and_matches(tmp_path, tiny_model, slide_img, monkeypatch):
    info = ModelInfo(tiny_model, tiny_meta(tiny_model))
    kw = dict(tile_px=48, batch_size=2, tissue=TissueMask.full(slide_img), progress=False)
    ref = predict_slide(slide_img, info, tmp_path / "ref.zarr", **kw)
    ref_vals, _ = ref.read(0, ref.shape[0], 0, ref.shape[1])

    calls = {"n": 0}
    real = engine_mod.dense_forward

    def crashing(*a, **k):  # the CPU runs one tile per call: killed in the 4th batch of 2
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(engine_mod, "dense_forward", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        predict_slide(slide_img, info, tmp_path / "run.zarr", **kw)
    with pytest.raises(FormatError, match="incomplete.*6 of"):
        open_dense_map(tmp_path / "run.zarr")

    monkeypatch.setattr(engine_mod, "dense_forward", real)
    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(engine_mod, "dense_forward", counting)
    dm = predict_slide(slide_img, info, tmp_path / "run.zarr", **kw)
    n_tiles = len(dm.tiles_done())
    assert counted["n"] == n_tiles - 6  # only the tiles left
    vals, _ = dm.read(0, dm.shape[0], 0, dm.shape[1])
    np.testing.assert_array_equal(vals, ref_vals)


def test_resume_refuses_other_run_and_redoes(tmp_path, tiny_model, slide_img):
    info = ModelInfo(tiny_model, tiny_meta(tiny_model))
    kw = dict(tissue=TissueMask.full(slide_img), progress=False)
    predict_slide(slide_img, info, tmp_path / "m.zarr", tile_px=48, **kw)
    dm = predict_slide(slide_img, info, tmp_path / "m.zarr", tile_px=64, **kw)
    assert dm.attrs["tile_grid"]["tile_px"] == 64 and dm.complete


def test_map_is_lz4_and_an_older_zstd_map_resumes(tmp_path, tiny_model, slide_img, monkeypatch):
    """Maps are Blosc LZ4 (fast to decode); a killed run's map in zarr's default Zstandard, as
    hexpress wrote them before, resumes in its own codec and holds the same values."""
    from zarr.codecs import BloscCodec, ZstdCodec

    from hexpress.infer import dense_map

    info = ModelInfo(tiny_model, tiny_meta(tiny_model))
    kw = dict(tile_px=48, batch_size=2, tissue=TissueMask.full(slide_img), progress=False)
    new = predict_slide(slide_img, info, tmp_path / "new.zarr", **kw)
    (codec,) = new._group["map"].compressors
    assert isinstance(codec, BloscCodec) and codec.cname.value == "lz4"

    real, calls = engine_mod.dense_forward, {"n": 0}

    def crashing(*a, **k):  # killed after 4 tiles
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(dense_map, "_map_codec", lambda: ZstdCodec(level=0))
    monkeypatch.setattr(engine_mod, "dense_forward", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        predict_slide(slide_img, info, tmp_path / "old.zarr", **kw)
    monkeypatch.undo()
    old = predict_slide(slide_img, info, tmp_path / "old.zarr", **kw)  # resumed
    assert isinstance(old._group["map"].compressors[0], ZstdCodec)
    np.testing.assert_array_equal(
        old.read(0, old.shape[0], 0, old.shape[1])[0], new.read(0, new.shape[0], 0, new.shape[1])[0]
    )


def test_open_dense_map_rejects_foreign(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(FormatError, match="not a"):
        open_dense_map(tmp_path / "x.zarr")


def test_tiled_equals_untiled_with_pixnet(tmp_path):
    from hexpress.models import registry

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = registry.create_model("test_pixnet", n_genes=2).eval()
    meta = {"model_mpp": 1.0, "genes": ["A", "B"], "stride": model.stride}
    info = ModelInfo(model, meta)
    image = he_like(150, 230)
    slide = ArrayImage(image, mpp=1.0)
    grid = make_tile_grid(
        (150, 230), stride=model.stride, receptive_field_px=model.receptive_field_px,
        tile_px=2 * info.align_px + 2 * model.receptive_field_px, align_px=info.align_px,
    )  # fmt: skip
    assert len(grid) > 1  # several tiles, the last ones cut by the image border
    dm = predict_slide(
        slide, info, tmp_path / "m.zarr", tile_px=grid.tile_px, batch_size=4,
        tissue=TissueMask.full(slide), progress=False,
    )  # fmt: skip
    got, _ = dm.read(0, dm.shape[0], 0, dm.shape[1])
    ref = untiled(model, image, grid.margin_px)
    np.testing.assert_allclose(got, ref.astype(np.float16).astype(np.float32), rtol=3e-3, atol=3e-3)


def test_margin_settings(tmp_path):
    from hexpress.models import create_model

    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=2, mode="field").eval()
    info = ModelInfo(model, {"model_mpp": 1.0, "genes": ["a", "b"]})
    rf = info.receptive_field_px
    assert info.margin_px("exact") == rf
    assert info.margin_px("effective") == model.effective_margin_px() <= rf
    assert info.margin_px(40) == info.margin_px("40") == 40
    for bad in ("wide", -8):
        with pytest.raises(ConfigError, match="margin"):
            info.margin_px(bad)
    slide = ArrayImage(he_like(100, 90), mpp=1.0)
    dm = predict_slide(
        slide, info, tmp_path / "m.zarr", margin=32, tile_px=96, tissue=TissueMask.full(slide),
        progress=False,
    )  # fmt: skip
    assert dm.attrs["tile_grid"]["margin_px"] == 32 and dm.complete
    # a model without an effective margin falls back to the exact one
    tiny = TinyDense().eval()
    assert ModelInfo(tiny, tiny_meta(tiny)).margin_px("effective") == tiny.receptive_field_px


def test_pixnet_tiled_map_equals_untiled_pass(tmp_path):
    """PixNet computes its decoder on each tile's core only; the map is still the exact one."""
    from hexpress.models import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=2, mode="field").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    info = ModelInfo(model, {"model_mpp": 1.0, "genes": ["a", "b"]})
    image = he_like(150, 170)
    slide = ArrayImage(image, mpp=1.0)
    rf = info.receptive_field_px
    tile = 2 * rf + 64
    dm = predict_slide(
        slide, info, tmp_path / "p.zarr", tile_px=tile, batch_size=2,
        tissue=TissueMask.full(slide), progress=False,
    )  # fmt: skip
    grid = make_tile_grid(
        (150, 170), stride=4, receptive_field_px=rf, tile_px=tile, align_px=info.align_px
    )
    assert len(grid) > 4  # several tiles, so core borders are inside the image
    got, cov = dm.read(0, dm.shape[0], 0, dm.shape[1])
    ref = untiled(model, image, grid.margin_px)
    np.testing.assert_allclose(got, ref.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)


def test_default_tiles_share_the_image_out_evenly():
    from hexpress.infer.tiling import DEFAULT_TILE_PX, GRAPH_TILE_PX

    g = make_tile_grid((13000, 13000), stride=4, receptive_field_px=512, align_px=32)
    # 7 cores of 1888 px cover 13,000 px (7 of 2048 would reach 14,336)
    assert (g.tile_px, g.margin_px, g.core_cells * 4, g.n_rows) == (2912, 512, 1888, 7)
    assert g.tile_px <= DEFAULT_TILE_PX and g.n_rows * g.core_cells * 4 >= 13000
    # a smaller margin keeps more of each tile
    e = make_tile_grid((13000, 13000), stride=4, receptive_field_px=288, align_px=32)
    assert len(e) < len(g) and e.tile_px <= DEFAULT_TILE_PX
    # an image smaller than one core gets one tile just big enough
    s = make_tile_grid((300, 200), stride=4, receptive_field_px=8, align_px=4)
    assert len(s) == 1 and s.tile_px == 300 + 2 * 8
    # exported graphs get smaller default tiles: 13 cores of 1024 px (12 would need 1088)
    o = make_tile_grid((13000, 13000), stride=4, receptive_field_px=512, align_px=32,
                       max_tile_px=GRAPH_TILE_PX)  # fmt: skip
    assert (o.tile_px, o.core_cells * 4, o.n_rows) == (2048, 1024, 13)
