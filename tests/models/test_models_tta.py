"""Test-time augmentation over the 8 flips/rotations."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from hexpress.errors import ConfigError
from hexpress.models import create_model
from hexpress.models.tta import (
    TRANSFORMS,
    apply_transform,
    dense_tta,
    invert_transform,
    tta_predict,
)


def test_the_8_transforms_are_distinct_and_invertible():
    x = torch.rand(1, 3, 6, 6)
    outs = [apply_transform(x, k, f) for k, f in TRANSFORMS]
    assert len(TRANSFORMS) == 8
    for a, b in itertools.combinations(outs, 2):
        assert not torch.equal(a, b)
    for (k, f), y in zip(TRANSFORMS, outs, strict=True):
        assert torch.equal(invert_transform(y, k, f), x)


class _PoolModel(nn.Module):
    """Pointwise conv + aligned average pooling: equivariant under D4 by construction."""

    stride = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x):
        return self.pool(self.conv(x))


def test_equivariant_dense_model_is_unchanged():
    torch.manual_seed(0)
    model = _PoolModel()
    x = torch.rand(2, 3, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(dense_tta(model, x), model(x))
    # Sizes that are not multiples of the stride are padded and cropped back.
    x2 = torch.rand(1, 3, 30, 21)
    with torch.no_grad():
        want = model(torch.nn.functional.pad(x2, (0, 3, 0, 2), value=1.0))[..., :8, :6]
        torch.testing.assert_close(dense_tta(model, x2), want)


def test_invariant_patch_function_is_unchanged_and_others_are_averaged():
    x = torch.rand(3, 3, 16, 16)
    invariant = lambda t: t.mean(dim=(2, 3))  # noqa: E731
    torch.testing.assert_close(tta_predict(invariant, x), invariant(x))
    first_row = lambda t: t[..., 0, :].mean(-1)  # noqa: E731  (not invariant)
    want = torch.stack([first_row(apply_transform(x, k, f)) for k, f in TRANSFORMS]).mean(0)
    torch.testing.assert_close(tta_predict(first_row, x), want)
    with pytest.raises(ConfigError, match="1, 2, 4 or 8"):
        tta_predict(invariant, x, n=3)


def test_dense_tta_on_pixnet_keeps_shape():
    model = create_model("test_pixnet", n_genes=2, mode="field").eval()
    out = dense_tta(model, torch.rand(1, 3, 40, 36))
    assert out.shape == (1, 2, 10, 9) and torch.isfinite(out).all()
