"""Checkpoints: save -> load gives identical predictions; bad files fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from hexpress.errors import CheckpointError
from hexpress.models import create_model, load_checkpoint, save_checkpoint

GENES = [f"G{i}" for i in range(4)]
NORM = {"method": "log1p_total", "scale": 10000.0}


def _save(tmp_path, name="test_pixnet", **kwargs):
    torch.manual_seed(0)
    model = create_model(name, n_genes=4, **kwargs)
    with torch.no_grad():  # move weights away from their initial values
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(
        tmp_path / "run" / "model",
        model,
        model_name=name,
        model_kwargs={"n_genes": 4, **kwargs},
        model_mpp=1.0,
        genes=GENES,
        normalization=NORM,
        config={"train": {"lr": 5e-4}},
        extra={"step": 7},
        extra_tensors={"gene_mean": torch.arange(4.0)},
    )
    return model.eval(), tmp_path / "run" / "model"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("test_pixnet", {"mode": "density"}), ("test_patch", {"patch_um": 55.0}), ("test_ridge", {})],
)
def test_roundtrip_identical_predictions(tmp_path, name, kwargs):
    model, stem = _save(tmp_path, name, **kwargs)
    ck = load_checkpoint(stem.with_suffix(".json"))
    assert not ck.model.training
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), model(x), atol=0, rtol=0)
    assert ck.genes == GENES and ck.model_mpp == 1.0 and ck.normalization == NORM
    assert ck.config == {"train": {"lr": 5e-4}} and ck.meta["extra"] == {"step": 7}
    assert ck.meta["model_name"] == name and ck.kind == model.kind
    torch.testing.assert_close(ck.extra_tensors["gene_mean"], torch.arange(4.0))
    if name == "test_pixnet":
        assert ck.meta["stride"] == 4 and ck.meta["mode"] == "density"
    if name == "test_patch":
        assert ck.meta["patch_um"] == 55.0
    assert not list(stem.parent.glob("*.tmp"))  # no temporary files left behind


def test_missing_corrupt_and_foreign_files(tmp_path):
    _, stem = _save(tmp_path)
    tensors, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(tmp_path / "nothing_here")
    # Half-written / modified tensors: the hash does not match.
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="half written"):
        load_checkpoint(stem)
    # A JSON that is not ours.
    meta_path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a hexpress checkpoint"):
        load_checkpoint(stem)
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(stem)
    meta_path.unlink()  # tensors without their description
    with pytest.raises(CheckpointError, match=r"model\.json is missing"):
        load_checkpoint(tensors)


def test_shape_mismatch_and_unknown_model(tmp_path):
    _, stem = _save(tmp_path)
    meta_path = stem.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["model_kwargs"]["width"] = 24  # the file holds width-16 tensors
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(stem)
    meta["model_kwargs"].pop("width")
    meta["model_name"] = "no_such_model"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot rebuild.*unknown model"):
        load_checkpoint(stem)


def test_a_pickle_is_never_loaded(tmp_path):
    """A .pth renamed to .safetensors is rejected by hash/format, never unpickled."""
    _, stem = _save(tmp_path)
    torch.save({"x": torch.zeros(1)}, stem.with_suffix(".safetensors"))
    with pytest.raises(CheckpointError):
        load_checkpoint(stem)
