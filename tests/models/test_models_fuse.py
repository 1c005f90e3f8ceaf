"""Batch norms folded into convolutions: same outputs, no norm left, the model unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hexpress.models import create_model
from hexpress.models.fuse import fold_batchnorms


@pytest.mark.parametrize(
    "name,side", [("pixnet_lite0", 96), ("test_pixnet", 64), ("test_patch", 32)]
)
def test_folded_copy_gives_the_same_outputs(name, side):
    torch.manual_seed(0)
    model = create_model(name, n_genes=3, pretrained=False).eval()
    for m in model.modules():  # norms that are far from the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.3, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = fold_batchnorms(model)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert fused.n_folded_batchnorms > 0 and left == n_bn - fused.n_folded_batchnorms
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn  # a copy
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        want, got = model(x), fused(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
