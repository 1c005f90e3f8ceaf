"""PixNet: shapes for any input size, both output modes, receptive field and tiling."""

from __future__ import annotations

import math

import pytest
import torch

from hexpress.errors import ConfigError
from hexpress.models import create_model, predict_units
from hexpress.models.aggregate import Footprints, footprint_weights


@pytest.mark.parametrize("size", [(64, 64), (50, 77), (33, 96)])
def test_map_shape_for_any_input_size(size):
    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=6).eval()
    # density maps (the default) carry the genes and one total channel
    assert model.kind == "dense" and model.stride == 4 and model.n_out == 7
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 7, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    assert (out >= 0).all()  # densities
    assert torch.isfinite(out).all()


def test_padding_does_not_shift_the_grid():
    """The map of a crop equals the matching cells of the map of a bigger image."""
    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    x[..., 50:, :] = 1.0  # white beyond row 50, as the padding
    x[..., :, 45:] = 1.0
    with torch.no_grad():
        big = model(x)
        small = model(x[..., :50, :45])
    torch.testing.assert_close(small, big[..., :13, :12], atol=1e-5, rtol=1e-5)


def test_density_mode_is_non_negative_with_total_channel():
    model = create_model("test_pixnet", n_genes=5, mode="density").eval()
    assert model.n_out == 6 and model.mode == "density"
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape[1] == 6 and (out >= 0).all()
    fp = Footprints([[30.0, 30.0], [10.0, 50.0]], "disc", 20.0)
    pred = predict_units(out[0], footprint_weights(fp, out.shape[-2:], 4), "density", 1e4)
    assert pred.shape == (2, 5) and torch.isfinite(pred).all()


def test_output_bias_starts_at_the_training_mean():
    mean = torch.linspace(0.5, 2.0, 4)
    for mode in ("field", "density"):
        model = create_model("test_pixnet", n_genes=4, mode=mode).eval()
        torch.nn.init.zeros_(model.head.weight)
        model.set_output_bias(mean, scale=1e4)
        with torch.no_grad():
            out = model(torch.rand(1, 3, 32, 32))
        w = footprint_weights(Footprints([[16.0, 16.0]], "disc", 12.0), out.shape[-2:], 4)
        pred = predict_units(out[0], w, mode, 1e4)[0]
        torch.testing.assert_close(pred, mean, atol=1e-4, rtol=1e-4)


def test_learnable_skip_scales_and_gradients():
    model = create_model("test_pixnet", n_genes=2, delta_init=0.1)
    assert len(model.delta) == len(model.levels) - 1
    assert all(float(d.detach()) == pytest.approx(0.1) for d in model.delta)
    model(torch.rand(2, 3, 64, 64)).square().mean().backward()
    assert all(d.grad is not None and torch.isfinite(d.grad).all() for d in model.delta)
    first = next(model.encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_tiled_equals_untiled_with_receptive_field_margin():
    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=3).eval()
    with torch.no_grad():  # wake zero-initialised residual branches: every path matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    rf, align, s = model.receptive_field_px, model.reduction, model.stride
    assert rf > 0 and rf % align == 0
    x = torch.rand(1, 3, 384, 384)
    with torch.no_grad():
        full = model(x)
        # A tile whose core starts at (y0, x0) = (160, 192), with margin rf on each side.
        y0, x0, core = 160, 192, 64
        tile = x[..., y0 - rf : y0 + core + rf, x0 - rf : x0 + core + rf]
        out = model(tile)
    c0 = rf // s
    got = out[..., c0 : c0 + core // s, c0 : c0 + core // s]
    want = full[..., y0 // s : (y0 + core) // s, x0 // s : (x0 + core) // s]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The estimate is not vacuous: a quarter of it is not enough.
    m = rf // 4 // align * align or align
    with torch.no_grad():
        out = model(x[..., y0 - m : y0 + core + m, x0 - m : x0 + core + m])
    short = out[..., m // s : m // s + core // s, m // s : m // s + core // s]
    assert not torch.allclose(short, want, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="mode must be one of"):
        create_model("test_pixnet", mode="sum")
    with pytest.raises(ConfigError, match="out_stride"):
        create_model("test_pixnet", out_stride=3)
    with pytest.raises(ConfigError, match="single-stride"):
        from hexpress.models.pixnet import PixNet

        PixNet(4, encoder="test_vit", pretrained=False)
    model = create_model("test_pixnet")
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 4, 32, 32))


def _awake_test_pixnet(**kwargs):
    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=3, **kwargs).eval()
    with torch.no_grad():  # wake zero-initialised residual branches: every path matters
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(
    "region", [(3, 5, 20, 30), (0, 0, 38, 33), (30, 1, 38, 33), (9, 9, 10, 11)]
)
def test_region_equals_the_crop_of_the_whole_map(region):
    model = _awake_test_pixnet()
    x = torch.rand(2, 3, 150, 131)
    with torch.no_grad():
        full = model(x)
        got = model(x, region=region)
    y0, x0, y1, x1 = region
    assert got.shape[-2:] == (y1 - y0, x1 - x0)
    torch.testing.assert_close(got, full[..., y0:y1, x0:x1], atol=1e-5, rtol=1e-5)
    # a region that is off by one cell is not the same map: the comparison can fail
    with torch.no_grad():
        shifted = model(x, region=(y0, x0 + 1, y1, min(x1 + 1, 33)))
    w = shifted.shape[-1]
    assert not torch.allclose(shifted[..., :w], full[..., y0:y1, x0 : x0 + w], atol=1e-4)
    with pytest.raises(ConfigError, match="region"):
        model(x, region=(0, 0, 39, 10))


def test_dffn_strips_equal_one_pass_and_gradients_use_one_pass(monkeypatch):
    from hexpress.models.pixnet import DFFN

    model = _awake_test_pixnet(fine_hidden=8)
    assert model.dffn[0].fc1.out_channels == 8 and model.dffn[1].fc1.out_channels == 32
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        one = model(x)
        monkeypatch.setattr(DFFN, "strip_bytes", 1)  # strips of 4 rows
        calls = []
        orig = DFFN._block
        monkeypatch.setattr(
            DFFN, "_block", lambda self, t: calls.append(t.shape[-2]) or orig(self, t)
        )
        strips = model(x)
    assert max(calls) <= 6 and len(calls) > 8  # really run in strips (4 rows + halo)
    torch.testing.assert_close(strips, one, atol=1e-6, rtol=1e-6)
    calls.clear()
    model(x).sum().backward()  # with autograd: one pass per block
    assert sorted(calls) == [128 // 16, 128 // 8, 128 // 4]  # each level's whole map


def test_effective_margin_is_measured_within_the_receptive_field():
    from hexpress.models.pixnet import estimate_effective_margin

    model = _awake_test_pixnet()
    rf, align = model.receptive_field_px, model.reduction
    loose = estimate_effective_margin(model, tol=0.2)
    tight = estimate_effective_margin(model, tol=1e-12)
    assert loose % align == 0 and tight % align == 0
    assert align <= loose < tight <= rf  # a looser tolerance keeps fewer px
    assert model.effective_margin_px(0.2) == loose  # cached per tolerance
