"""The frozen-encoder feature cache and training in phases (frozen, then end to end)."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import hexpress.train.feature_cache as fc
from hexpress.errors import FormatError
from hexpress.models import create_model
from hexpress.models.pixnet import PixNet
from hexpress.train import load_config, load_training_state, train
from hexpress.train.augment import AugmentParams, d4_image, sample_params
from hexpress.train.data import DenseCropDataset, load_training_data

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "tiny_smoke.yaml"
QUIET = ["run.progress=false", "run.tensorboard=false", "run.device=cpu"]


def _cfg(out, cache, *extra):
    return load_config(
        SMOKE,
        [
            f"run.out_dir={out}",
            f"run.feature_cache={cache}",
            "data.train=[S1]",
            "data.val=[]",
            "data.genes.n=6",
            *QUIET,
            *extra,
        ],
    )


@pytest.fixture
def slides_and_model(samples):
    cfg = _cfg("unused", "unused")
    data = load_training_data(cfg.data, samples=samples)
    for s in data.train:
        s.preload(1.0, 64)
    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=6, mode="field")
    return data.train, model


def _build(model, slides, root, **kw):
    args = dict(root=root, model_mpp=1.0, crop_px=64, transforms=range(8), progress=False)
    return fc.build_feature_cache(model, slides, **{**args, **kw})


@pytest.fixture
def count_tiles(monkeypatch):
    """Counts the tiles the encoder runs on (0: everything came from the cache)."""
    calls = []
    original = fc._encode_tile

    def counted(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(fc, "_encode_tile", counted)
    return calls


@pytest.mark.parametrize("t", range(8))
def test_d4_rect_follows_d4_image(t):
    canvas = np.arange(6 * 10).reshape(6, 10)
    x0, y0, w, h = 2, 1, 5, 3
    got = d4_image(canvas, t % 4, t >= 4)
    ux, uy, uw, uh = fc.d4_rect(x0, y0, w, h, 10, 6, t % 4, t >= 4)
    expect = d4_image(canvas[y0 : y0 + h, x0 : x0 + w], t % 4, t >= 4)
    np.testing.assert_array_equal(got[uy : uy + uh, ux : ux + uw], expect)


def test_cached_crops_are_the_encoder_on_the_crop_and_its_context(slides_and_model, tmp_path):
    slides, model = slides_and_model
    cache = _build(model, slides, tmp_path / "c")
    r = model.reduction
    ds = DenseCropDataset(slides, crop_px=64, model_mpp=1.0, stride=4, batch_size=2, seed=0,
                          augment=load_config(SMOKE).augment, align_px=r,
                          colour=False)  # fmt: skip
    cached = ds.replace(features=cache)
    live = ds.replace(context_px=model.receptive_field_px)
    model.eval()
    seen = set()
    for step in range(6):
        a, b = cached[step], live[step]
        with torch.no_grad():
            full = model.encode(b.images)
        c = b.context_px
        for fa, fb, s in zip(a.features, full, model.level_strides, strict=True):
            fb = fb[..., c // s : (c + 64) // s, c // s : (c + 64) // s].half().float()
            torch.testing.assert_close(fa, fb, atol=2e-3, rtol=2e-3)
        # the context matters: the crop alone (zero padding at its border) differs
        with torch.no_grad():
            alone = model.encode(b.images[..., c : c + 64, c : c + 64])
        assert not torch.allclose(alone[-1], a.features[-1], atol=1e-2)
        rng = np.random.default_rng([0, step, 0])  # the draws of the batch: place, augment
        for _ in range(2):
            rng.random(2)
            seen.add(fc.transform_index(sample_params(ds.augment, rng)))
    assert len(seen) >= 3  # several transforms were compared
    assert cache.size_bytes() > 0


def test_crops_read_from_memory_equal_crops_read_from_disk(slides_and_model, tmp_path):
    slides, model = slides_and_model
    cache = _build(model, slides, tmp_path / "c")
    on_disk = fc.FeatureCache(cache.folders, cache.keys, cache.transforms, memory_bytes=0)
    r = model.reduction
    for si in range(len(slides)):
        for t in cache.transforms:
            params = AugmentParams(k=t % 4, flip=t >= 4)
            a = cache.read(si, r, 2 * r, 64, params)
            b = on_disk.read(si, r, 2 * r, 64, params)
            for fa, fb in zip(a, b, strict=True):
                np.testing.assert_array_equal(fa, fb)
    assert all(isinstance(x, np.ndarray) for x in cache._levels(0, cache.transforms[0]))
    assert not any(isinstance(x, np.ndarray) for x in on_disk._levels(0, cache.transforms[0]))


def test_cached_training_equals_on_the_fly_frozen_training(samples, tmp_path):
    extra = ["optim.phases=[{frozen: 4}]", "optim.batch_size=2"]
    a = train(_cfg(tmp_path / "a", tmp_path / "cache", *extra), samples=samples)
    b = train(_cfg(tmp_path / "b", "null", *extra), samples=samples)
    assert (tmp_path / "cache" / "S1").is_dir() and a.steps == b.steps == 4

    def losses(run):
        rows = (run / "log.csv").read_text().splitlines()[1:]
        return [float(r.split(",")[2]) for r in rows]

    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(la) == 4
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)
    # the encoder stayed as initialised while the decoder learned
    torch.manual_seed(0)
    init = create_model("test_pixnet", n_genes=6, mode="field").state_dict()
    for k in sa:
        if k.startswith("encoder."):
            torch.testing.assert_close(sa[k], init[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(sa["proj.0.weight"], init["proj.0.weight"])


def test_key_changes_force_a_rebuild_and_say_why(slides_and_model, tmp_path, caplog,
                                                 count_tiles):  # fmt: skip
    slides, model = slides_and_model
    root = tmp_path / "c"
    caplog.set_level(logging.INFO, logger="hexpress.train.feature_cache")
    _build(model, slides, root, transforms=[0, 5])
    built = len(count_tiles)
    assert built == 2  # one tile per transform on this small slide
    _build(model, slides, root, transforms=[0, 5])
    assert len(count_tiles) == built  # reused
    # other weights
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.01)
    caplog.clear()
    _build(model, slides, root, transforms=[0, 5])
    assert len(count_tiles) == 2 * built
    assert "weights_sha256" in caplog.text and "rebuilding" in caplog.text
    # another model_mpp: its own cache, built and said so
    caplog.clear()
    for s in slides:
        s.preload(2.0, 64)
    _build(model, slides, root, transforms=[0, 5], model_mpp=2.0)
    assert len(count_tiles) == 3 * built
    assert "no feature cache for S1" in caplog.text and "_2umpx" in caplog.text
    # the slide changed (its pixels here; a file's SHA-256 on disk)
    for s in slides:
        s.preload(1.0, 64)
    view = slides[0]._view
    view._array = view.array.copy()
    view._array[5, 5] = 0
    caplog.clear()
    _build(model, slides, root, transforms=[0, 5])
    assert len(count_tiles) == 4 * built
    assert "slide_sha256" in caplog.text
    # the slide read through a stain normalisation (data.stain): other pixels, its own cache
    slides[0].stain = {"method": "macenko", "reference": "S1"}
    caplog.clear()
    _build(model, slides, root, transforms=[0, 5])
    assert len(count_tiles) == 5 * built
    assert "no feature cache for S1" in caplog.text and "_stain-" in caplog.text
    # ... which leaves the unnormalised one in place: both are reused from now on
    slides[0].stain = None
    _build(model, slides, root, transforms=[0, 5])
    slides[0].stain = {"method": "macenko", "reference": "S1"}
    _build(model, slides, root, transforms=[0, 5])
    assert len(count_tiles) == 5 * built


def test_a_cache_of_another_slide_or_encoder_is_rebuilt_and_a_foreign_folder_refused(
    samples, slides_and_model, tmp_path, caplog
):
    slides, model = slides_and_model
    root = tmp_path / "c"
    other = load_training_data(_cfg("u", "u", "data.train=[S2]").data, samples=samples).train
    other[0].preload(1.0, 64)
    _build(model, other, root, transforms=[0])
    # S2's cache put where S1's belongs
    target = root / "S1" / "test_resnet_1umpx"
    target.parent.mkdir(parents=True)
    shutil.copytree(root / "S2" / "test_resnet_1umpx", target)
    caplog.set_level(logging.INFO, logger="hexpress.train.feature_cache")
    cache = _build(model, slides, root, transforms=[0])
    assert "slide 'S2' -> 'S1'" in caplog.text and "rebuilding" in caplog.text
    assert cache.keys[0]["slide"] == "S1"
    # another encoder's cache in that place
    effnet = PixNet(6, encoder="test_efficientnet", pretrained=False, width=16, hidden=32)
    shutil.rmtree(target)
    shutil.copytree(root / "S2" / "test_resnet_1umpx", target)
    caplog.clear()
    fc._open_group(target, fc.cache_key(effnet, slides[0], model_mpp=1.0, pad_px=96,
                                        context_px=160))  # fmt: skip
    assert "encoder 'test_resnet' -> 'test_efficientnet'" in caplog.text
    # a folder that is not a cache is never deleted
    foreign = root / "S1" / "test_resnet_1umpx"
    shutil.rmtree(foreign)
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="not a hexpress feature cache"):
        _build(model, slides, root)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_killed_build_leaves_no_complete_looking_half_and_resumes(
    slides_and_model, tmp_path, monkeypatch
):
    slides, model = slides_and_model
    root = tmp_path / "c"
    original = fc._encode_tile
    calls = []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("No space left on device")
        return original(*a, **k)

    monkeypatch.setattr(fc, "_encode_tile", dies)
    with pytest.raises(OSError, match="No space"):
        _build(model, slides, root)
    (entry,) = fc.describe_cache(root)
    assert entry["transforms_done"] == [0, 1, 2]  # transform 3 has no completion marker
    with pytest.raises(KeyError):
        fc.FeatureCache([Path(entry["folder"])], [{}], [0, 1, 2]).read(
            0, 0, 0, 64, AugmentParams(k=3)
        )
    calls.clear()
    monkeypatch.setattr(fc, "_encode_tile", lambda *a, **k: (calls.append(1), original(*a, **k)))
    cache = _build(model, slides, root)
    assert len(calls) == 5  # only transforms 3..7
    assert fc.describe_cache(root)[0]["transforms_done"] == list(range(8))
    assert cache.size_bytes() == fc.cache_size_bytes(root)


def test_frozen_then_finetune_runs_and_resumes_across_phases(samples, tmp_path, monkeypatch):
    extra = ["optim.phases=[{frozen: 2}, {finetune: 2}]", "optim.batch_size=2",
             "run.ckpt_every=1", "optim.schedule=cosine"]  # fmt: skip
    cache = tmp_path / "cache"
    full = train(_cfg(tmp_path / "full", cache, *extra), samples=samples)
    assert full.steps == 4
    original = DenseCropDataset.__getitem__

    def killed(self, step):
        if step == 1:  # in the frozen phase; the state of step 1 is on disk
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(DenseCropDataset, "__getitem__", killed)
    cfg = _cfg(tmp_path / "half", cache, *extra)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, samples=samples)
    monkeypatch.setattr(DenseCropDataset, "__getitem__", original)
    meta, state = load_training_state(tmp_path / "half")
    assert meta["step"] == 1
    resumed = train(cfg, resume=True, samples=samples)
    assert resumed.start_step == 1 and resumed.steps == 4
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # the finetune phase moved the encoder
    k = "encoder.body.conv1.0.weight"
    assert not torch.equal(state[f"model.{k}"], b[k])


def test_cache_cli_reports_and_clears(slides_and_model, tmp_path):
    from typer.testing import CliRunner

    from hexpress.cli import app

    slides, model = slides_and_model
    root = tmp_path / "c"
    _build(model, slides, root, transforms=[0, 4])
    (root / "keep.txt").write_text("not a cache")
    runner = CliRunner()
    out = runner.invoke(app, ["cache", "info", str(root)])
    assert out.exit_code == 0 and "S1" in out.output and "transforms 2/8" in out.output
    out = runner.invoke(app, ["cache", "clear", str(root)])
    assert out.exit_code == 0 and "removed" in out.output
    assert fc.describe_cache(root) == [] and (root / "keep.txt").is_file()
    assert not (root / "S1").exists()


def test_ridge_fits_from_the_cache_as_from_the_encoder(samples, tmp_path):
    extra = ["model.name=test_ridge", "model.kwargs={patch_um: 24, input_px: 32}",
             "data.train=[S1, S2]"]  # fmt: skip
    a = train(_cfg(tmp_path / "a", tmp_path / "cache", *extra), samples=samples)
    b = train(_cfg(tmp_path / "b", "null", *extra), samples=samples)
    (entry, *_) = fc.describe_cache(tmp_path / "cache")
    assert entry["transforms_done"] == [0] and "patch24um_32px" in entry["folder"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert bool(sa["fitted"]) and not torch.equal(sa["coef"], torch.zeros_like(sa["coef"]))
    for k in ("pca_mean", "pca_components", "coef", "intercept"):
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_patch_model_frozen_phase_from_the_cache_equals_on_the_fly(samples, tmp_path):
    extra = ["model.name=test_patch", "model.kwargs={patch_um: 24, input_px: 32}",
             "optim.phases=[{frozen: 3}]", "optim.batch_size=4"]  # fmt: skip
    a = train(_cfg(tmp_path / "a", tmp_path / "cache", *extra), samples=samples)
    b = train(_cfg(tmp_path / "b", "null", *extra), samples=samples)
    assert sorted(fc.describe_cache(tmp_path / "cache")[0]["transforms_done"]) == list(range(8))

    def losses(run):
        return [float(r.split(",")[2]) for r in (run / "log.csv").read_text().splitlines()[1:]]

    np.testing.assert_allclose(losses(tmp_path / "a"), losses(tmp_path / "b"), rtol=1e-5)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6, msg=k)
    torch.manual_seed(0)
    init = create_model("test_patch", n_genes=6, patch_um=24, input_px=32).state_dict()
    assert all(torch.equal(sa[k], init[k]) for k in sa if k.startswith("encoder."))
    assert not torch.equal(sa["head.weight"], init["head.weight"])


def test_loader_workers_read_the_cache_as_the_main_process(samples, tmp_path):
    extra = ["optim.phases=[{frozen: 2}]", "optim.batch_size=2"]
    a = train(_cfg(tmp_path / "a", tmp_path / "cache", *extra), samples=samples)
    b = train(_cfg(tmp_path / "b", tmp_path / "cache", *extra, "run.num_workers=1"),
              samples=samples)  # fmt: skip
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=0, msg=k)
