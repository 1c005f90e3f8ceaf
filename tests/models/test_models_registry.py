"""Every registered model builds, runs on a tiny input and gives finite outputs."""

from __future__ import annotations

import pytest
import torch

from hexpress.errors import ConfigError
from hexpress.models import create_model, describe_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_no_nan(name):
    torch.manual_seed(0)
    info = describe_model(name)
    model = create_model(name, n_genes=3, pretrained=False).eval()
    assert model.kind == info["kind"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    if info["kind"] == "dense":
        assert out.shape == (1, model.n_out, 64 // model.stride, 64 // model.stride)
    else:
        assert out.shape == (1, 3)
        assert model.patch_um > 0
    assert torch.isfinite(out).all()


def test_registry_lookup_and_errors():
    names = list_models()
    for required in (
        "test_pixnet",
        "test_patch",
        "pixnet",
        "effnet_b0_patch",
        "lite0_patch",
        "resnet18_patch",
        "resnet50_patch",
        "stnet",
        "vit_patch",
        "ridge_lite0",
        "mean_baseline",
    ):
        assert required in names
    assert list_models("test_*", kind="dense") == ["test_pixnet"]
    assert describe_model("stnet")["loss"] == "mse"
    assert describe_model("pixnet")["pretrained_available"] is True
    assert describe_model("resnet18_patch")["pretrained_available"] is False
    with pytest.raises(ConfigError, match="unknown model 'pixnot'.*test_pixnet"):
        create_model("pixnot")
    with pytest.raises(ConfigError, match="does not take"):
        create_model("mean_baseline", widht=3)
    # None means "not set": the factory's own default is kept.
    assert create_model("test_pixnet", n_genes=None, mode=None).n_genes == 8


def test_ridge_and_mean_baselines_fit_in_closed_form(rng):
    torch.manual_seed(0)
    x = torch.rand(40, 3, 32, 32)
    ridge = create_model("test_ridge", n_genes=3).eval()
    feats = ridge.features(x)
    w = torch.from_numpy(rng.normal(size=(feats.shape[1], 3))).float()
    y = feats @ w
    ridge.fit(feats, y)
    with torch.no_grad():
        pred = ridge(x)
    assert not any(p.requires_grad for p in ridge.parameters())
    corr = torch.corrcoef(torch.stack([pred[:, 0], y[:, 0]]))[0, 1]
    assert corr > 0.9
    mean = create_model("mean_baseline", n_genes=3).fit(y)
    torch.testing.assert_close(mean(x[:2]), y.mean(0).expand(2, -1))


def test_old_name_is_an_alias_not_a_second_model():
    assert "pixnet_lite0" not in list_models()
    assert describe_model("pixnet_lite0")["name"] == "pixnet"
    a = create_model("pixnet_lite0", n_genes=2, pretrained=False)
    b = create_model("pixnet", n_genes=2, pretrained=False)
    assert type(a) is type(b) and a.state_dict().keys() == b.state_dict().keys()
    from hexpress.models._registry import register_alias

    with pytest.raises(ConfigError, match="already registered"):
        register_alias("pixnet", "test_pixnet")
    with pytest.raises(ConfigError, match="unknown model"):
        register_alias("new_name", "no_such_model")
