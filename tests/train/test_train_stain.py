"""Stain normalisation as a data option: fitted in training, recorded in the checkpoint, applied
identically by predict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from hexpress.data.stain import StainNormalizedImage, StainNormalizer
from hexpress.errors import ConfigError, DataMismatchError
from hexpress.infer import units_from_anndata
from hexpress.infer.pipeline import PredictOptions, load_model_info, predict_one
from hexpress.io import ArrayImage
from hexpress.models import load_checkpoint
from hexpress.train import load_config, train
from hexpress.train.data import load_training_data

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "tiny_smoke.yaml"
H = np.array([0.5626, 0.7201, 0.4062])
E = np.array([0.2159, 0.8012, 0.5581])


def _he(img: np.ndarray, gain: tuple[float, float]) -> np.ndarray:
    """The synthetic colour field re-mixed from two stains, scaled per slide (a lab's dye)."""
    c = 0.3 + img[..., :2].astype(np.float64) / 255.0 * np.asarray(gain)
    od = c @ np.stack([H / np.linalg.norm(H), E / np.linalg.norm(E)])
    return np.clip(np.rint(240 * np.exp(-od) - 1), 0, 255).astype(np.uint8)


def _cfg(out, *extra):
    return load_config(SMOKE, [
        f"run.out_dir={out}", "data.train=[S1]", "data.val=[S2]", "data.genes.n=6",
        "run.progress=false", "run.tensorboard=false", "run.device=cpu", *extra,
    ])  # fmt: skip


@pytest.fixture
def he_samples(samples):
    """The training conftest's slides, their colour fields re-mixed from H&E stains."""
    gains = {"S1": (1.0, 1.0), "S2": (1.6, 0.6)}
    return {
        sid: replace(s, image=ArrayImage(_he(s.image.array, gains[sid]), s.image.mpp))
        for sid, s in samples.items()
    }


def _predict(info, image, sample, out):
    units = units_from_anndata(sample.adata, mpp=image.mpp, name="spots")
    opts = PredictOptions(progress=False, tile_px=512, detect_tissue=False, device="cpu")
    predict_one(image, info, out, opts, units=[units])
    return ad.read_h5ad(out / "spots.h5ad").X


def test_stain_normalisation_round_trips_through_the_checkpoint(tmp_path, he_samples):
    cfg = _cfg(tmp_path / "run", "optim.max_steps=2", "data.stain.method=macenko")
    res = train(cfg, samples=he_samples)
    ck = load_checkpoint(res.checkpoint)
    # the reference defaults to the first training sample; its fitted stains are recorded
    assert ck.stain["method"] == "macenko" and ck.stain["reference"] == "S1"
    fitted = StainNormalizer.from_image(he_samples["S1"].image, reference="S1")
    assert StainNormalizer.from_meta(ck.stain) == fitted

    # training read every slide through that normaliser
    data = load_training_data(cfg.data, samples=he_samples)
    s2_train = data.val[0].image
    assert isinstance(s2_train, StainNormalizedImage) and s2_train.normalizer == fitted

    # predict applies it from the checkpoint alone: the same as predicting a slide normalised by
    # hand with a model that records no stain, and not the same as the raw slide
    info = load_model_info(res.checkpoint)
    raw, s2 = he_samples["S2"].image, he_samples["S2"]
    with_stain = _predict(info, raw, s2, tmp_path / "p1")
    predict_stains = StainNormalizer.from_meta(info.stain).wrap(raw)
    np.testing.assert_array_equal(predict_stains.stains.vectors, s2_train.stains.vectors)
    info.stain = None
    by_hand = _predict(info, predict_stains, s2, tmp_path / "p2")
    np.testing.assert_array_equal(with_stain, by_hand)
    assert not np.allclose(with_stain, _predict(info, raw, s2, tmp_path / "p3"))


def test_stain_config_errors(tmp_path, he_samples):
    with pytest.raises(ConfigError, match=r"data.stain.method.*macenko"):
        _cfg(tmp_path / "a", "data.stain.method=reinhard")
    cfg = _cfg(tmp_path / "b", "data.stain.method=macenko", "data.stain.reference=S2")
    with pytest.raises(ConfigError, match="not a training sample"):
        load_training_data(cfg.data, samples=he_samples)
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.fromarray(np.full((80, 80, 3), 248, np.uint8)).save(blank)
    cfg = _cfg(tmp_path / "c", "data.stain.method=macenko", f"data.stain.reference={blank}")
    with pytest.raises(DataMismatchError, match="no tissue.*stain reference"):
        load_training_data(cfg.data, samples=he_samples)
