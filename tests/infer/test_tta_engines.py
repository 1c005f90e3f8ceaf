"""Test-time augmentation in the dense and patch engines: every transform undone, all 8 used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_helpers import SymmetricDense, he_like, tiny_meta
from torch import nn

from hexpress.infer import ModelInfo, TissueMask, grid_bins, predict_slide
from hexpress.infer.patch_engine import predict_patches
from hexpress.io import ArrayImage
from hexpress.models import tta as tta_mod


def _dense_maps(tmp_path, name, tta):
    torch.set_num_threads(1)
    model = SymmetricDense().eval()
    slide = ArrayImage(he_like(90, 110), mpp=1.0)
    info = ModelInfo(model, tiny_meta(model))
    dm = predict_slide(
        slide, info, tmp_path / f"{name}.zarr", tile_px=48, batch_size=2,
        tissue=TissueMask.full(slide), progress=False, tta=tta,
    )  # fmt: skip
    vals, cov = dm.read(0, dm.shape[0], 0, dm.shape[1])
    assert cov.all()
    return vals


def _wrong_inverse(x, k, flip):
    """Undoes the rotation the wrong way round for the quarter turns (k = 1, 3)."""
    if k % 4:
        x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def test_dense_engine_tta_of_an_equivariant_model_is_the_plain_map(tmp_path, monkeypatch):
    plain = _dense_maps(tmp_path, "plain", tta=False)
    assert plain.std(axis=(0, 1)).min() > 1e-3  # the map depends on position
    with_tta = _dense_maps(tmp_path, "tta", tta=True)
    np.testing.assert_allclose(with_tta, plain, atol=2e-3, rtol=2e-3)
    # one transform undone wrongly, and the same comparison fails
    monkeypatch.setattr(tta_mod, "invert_transform", _wrong_inverse)
    broken = _dense_maps(tmp_path, "broken", tta=True)
    assert np.abs(broken - plain).max() > 0.05


class _InvariantPatch(nn.Module):
    """Pointwise conv then a global mean: unchanged by any flip or rotation of the crop."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


class _CornerPatch(_InvariantPatch):
    """The mean of the top-left quadrant only: changes with the orientation of the crop."""

    def forward(self, x):
        h, w = x.shape[-2:]
        return torch.tanh(self.conv(x))[..., : h // 2, : w // 3].mean(dim=(2, 3))


def _dihedral_images(x):
    """The 8 orientations of ``x``, listed independently of hexpress.models.tta."""
    rots = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return rots + [r.transpose(2, 3) for r in rots]


def _patch_run(model, tta):
    torch.set_num_threads(1)
    slide = ArrayImage(he_like(120, 120), mpp=1.0)
    meta = {"model_mpp": 1.0, "genes": list("abcd"), "kind": "patch", "patch_um": 24.0}
    bins = grid_bins(120, 120, 1.0, 30.0)
    a = predict_patches(slide, ModelInfo(model, meta), bins, batch_size=5, tta=tta, progress=False)
    crops = [
        slide.read_region(int(x) - 12, int(y) - 12, 24, 24, mpp=1.0, units="target")
        for x, y in bins.centers_level0_px
    ]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    return np.asarray(a.X), x


def test_patch_engine_tta_averages_all_8_orientations(monkeypatch):
    inv = _InvariantPatch().eval()
    plain, _ = _patch_run(inv, tta=False)
    with_tta, _ = _patch_run(inv, tta=True)
    np.testing.assert_allclose(with_tta, plain, atol=1e-5)
    corner = _CornerPatch().eval()
    got, x = _patch_run(corner, tta=True)
    with torch.no_grad():
        want = torch.stack([corner(t) for t in _dihedral_images(x)]).mean(0).numpy()
        one_way = corner(x).numpy()
    assert np.abs(one_way - want).max() > 1e-3  # orientation matters for this model
    np.testing.assert_allclose(got, want, atol=1e-5)
    # one transform replaced by another (the set is no longer the 8 orientations): it fails
    bad = list(tta_mod.TRANSFORMS)
    bad[1] = bad[0]
    monkeypatch.setattr(tta_mod, "TRANSFORMS", tuple(bad))
    broken, _ = _patch_run(corner, tta=True)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(broken, want, atol=1e-5)
