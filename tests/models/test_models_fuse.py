"""Batch norms folded into convolutions: same outputs, no norm left, the model unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hexpress.models import create_model
from hexpress.models.fuse import fold_batchnorms, torch_inference_copy


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


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("shape", [(16, 20), (15, 18), (6, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_stride2_equals_timm_conv2d_same(k, depthwise, shape, channels_last):
    """The stride-2 "same" convolution without a full pad gives timm's numbers, odd sides too."""
    from timm.layers import Conv2dSame

    from hexpress.models.fuse import SameStride2

    torch.manual_seed(0)
    c = 6
    conv = Conv2dSame(c, c if depthwise else 4, k, stride=2, groups=c if depthwise else 1)
    fast = SameStride2.from_conv(conv)
    x = torch.randn(2, c, *shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = conv(x), fast(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert isinstance(fast, Conv2dSame)  # the encoder's strip planner reads it as one


def test_torch_inference_copy_of_lite0_gives_the_same_map():
    from hexpress.models.fuse import SameStride2

    torch.manual_seed(0)
    model = create_model("pixnet_lite0", n_genes=3, pretrained=False).eval()
    fast = torch_inference_copy(model)
    assert fast.n_same_stride2 == 5 and fast.n_folded_batchnorms > 0
    assert not any(isinstance(m, SameStride2) for m in model.modules())  # model unchanged
    assert sum(isinstance(m, SameStride2) for m in fast.modules()) == 5
    x = torch.rand(1, 3, 160, 192)
    with torch.inference_mode():
        want, got = model(x), fast(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
