"""Inference in strips of rows (encoder's early stages, decoder head) equals one pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hexpress._device import prepare_model
from hexpress.models import create_model
from hexpress.models.encoders import _plan_strips, create_encoder
from hexpress.models.fuse import torch_inference_copy
from hexpress.models.pixnet import DFFN

H, W = 288, 320  # not a multiple of the strips below: the last strip is shorter


@pytest.fixture(scope="module")
def lite0():
    """PixNet-Lite0 (random weights, 7 genes) prepared as the inference engine runs it."""
    torch.manual_seed(0)
    model = create_model("pixnet_lite0", n_genes=7, pretrained=False).eval()
    return prepare_model(torch_inference_copy(model), torch.device("cpu"))


def _input(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, H, W, generator=gen).contiguous(memory_format=torch.channels_last)


def _stem_heights(model, monkeypatch) -> list[int]:
    """Records the input height of every call of the encoder's stem."""
    heights: list[int] = []
    stem = model.encoder.body.conv_stem
    orig = stem.forward
    monkeypatch.setattr(stem, "forward", lambda t: heights.append(t.shape[-2]) or orig(t))
    return heights


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * float(w.abs().max()))


def test_lite0_strip_plan_covers_the_early_stages(lite0):
    enc = lite0.encoder
    plan = _plan_strips(enc.body, enc.strip_stride)
    # stem (stride 2) and blocks 0-2 (strides 2, 4, 8). Below a stride-8 output row's first px
    # it reads 2 + 2 + 4 + 4 + 12 + 16 = 40 px (3x3 convs at jumps 1, 2, 2, 4; TF "same" at
    # stride 2 pads none above; 5x5s at 4 (one above) and 8), i.e. 33 beyond its own 8;
    # above it 2 + 4 + 4 + 16 = 26. Rounded up to the stride: 40.
    assert (plan.n_blocks, plan.stride, plan.halo_px) == (3, 8, 40)
    assert plan.level_strides == {1: 2, 2: 4, 3: 8}
    assert plan.bytes_per_row_px == 4 * 96 // 4  # the 96-channel expansion at stride 2


@pytest.mark.parametrize("rows", [8, 64, 200])
def test_encoder_strips_equal_one_pass(rows, lite0, monkeypatch):
    model = lite0
    enc, x = model.encoder, _input()
    plan = _plan_strips(enc.body, enc.strip_stride)
    with torch.inference_mode():
        monkeypatch.setattr(enc, "strip_bytes", 1 << 40)  # one pass
        one = model.encode(x)
        monkeypatch.setattr(enc, "strip_bytes", rows * plan.bytes_per_row_px * W)
        heights = _stem_heights(model, monkeypatch)
        strips = model.encode(x)
    n = -(-H // rows)
    assert len(heights) == n and max(heights) <= rows + 2 * plan.halo_px  # really in strips
    _assert_same(strips, one)
    # every level of the pyramid, in the encoder's own order, as without strips
    with torch.inference_mode():
        monkeypatch.setattr(enc, "strip_bytes", 1 << 40)
        every = enc(x)
        monkeypatch.setattr(enc, "strip_bytes", rows * plan.bytes_per_row_px * W)
        _assert_same(enc(x), every)


def test_a_halo_too_small_changes_the_features(lite0, monkeypatch):
    """The comparison above can fail: one stride less of halo breaks the stride-8 level."""
    enc, x = lite0.encoder, _input()
    with torch.inference_mode():
        monkeypatch.setattr(enc, "strip_bytes", 1 << 40)
        one = lite0.encode(x)
        monkeypatch.setattr(enc, "strip_bytes", 64 * 96 * W)
        plan = _plan_strips(enc.body, enc.strip_stride)
        monkeypatch.setattr(enc, "_plan", dataclasses.replace(plan, halo_px=plan.halo_px - 8))
        broken = lite0.encode(x)
    torch.testing.assert_close(broken[0], one[0], rtol=1e-5, atol=1e-5)  # stride 4: enough
    assert not torch.allclose(broken[1], one[1], rtol=1e-3, atol=1e-3)


def test_whole_model_in_strips_equals_one_pass_with_autograd(lite0, monkeypatch):
    """Encoder, DFFNs and head in strips (inference) against one pass of each (autograd on)."""
    model = lite0
    x = _input(2)
    region = (5, 3, 66, 71)  # a tile's core: the decoder on part of the map
    with torch.enable_grad():
        heights = _stem_heights(model, monkeypatch)
        want = model(x, region=region)
    assert heights == [H]  # autograd: the encoder in one pass
    monkeypatch.setattr(model.encoder, "strip_bytes", 1)  # strips of 8 rows
    monkeypatch.setattr(DFFN, "strip_bytes", 1)  # DFFN and head: strips of 4 rows
    heads: list[int] = []
    orig = type(model)._head
    monkeypatch.setattr(
        type(model), "_head", lambda self, d: heads.append(d.shape[-2]) or orig(self, d)
    )
    with torch.inference_mode():
        heights.clear()
        got = model(x, region=region)
    assert len(heights) == H // 8 and max(heads) == 4 and len(heads) == -(-61 // 4)
    assert got.shape == want.shape == (1, 8, 61, 68)
    torch.testing.assert_close(
        got, want.detach(), rtol=1e-5, atol=1e-5 * float(want.detach().abs().max())
    )


def test_training_runs_one_pass_and_gets_gradients(monkeypatch):
    torch.manual_seed(0)
    model = create_model("pixnet_lite0", n_genes=3, pretrained=False).train()
    monkeypatch.setattr(model.encoder, "strip_bytes", 1)
    heights = _stem_heights(model, monkeypatch)
    model(torch.rand(1, 3, 96, 64)).sum().backward()
    assert heights == [96]
    assert model.encoder.body.conv_stem.weight.grad.abs().sum() > 0
    with torch.no_grad():  # train mode (batch statistics): one pass even without autograd
        heights.clear()
        model(torch.rand(1, 3, 96, 64))
    assert heights == [96]


def test_other_encoders_strip_only_where_local(monkeypatch):
    # squeeze-excitation (a mean over the whole image) from the first block: no strips
    assert _plan_strips(create_encoder("efficientnet_b0", pretrained=False).body, 8) is None
    # not an EfficientNet body: no strips
    assert _plan_strips(create_encoder("test_resnet", pretrained=False).body, 8) is None
    # timm's test EfficientNet (edge residuals, symmetric padding, SE from stride 16 on)
    torch.manual_seed(0)
    enc = create_encoder("test_efficientnet", pretrained=False).eval()
    plan = _plan_strips(enc.body, enc.strip_stride)
    assert plan is not None and plan.stride == 8 and plan.n_blocks == 3
    x = torch.rand(1, 3, 96, 64)
    with torch.inference_mode():
        one = enc(x)
        monkeypatch.setattr(enc, "strip_bytes", 1)
        _assert_same(enc(x), one)
