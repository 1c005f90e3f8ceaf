"""Encoders: the packaged Lite0 weights are really loaded; local weight files are mapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hexpress.errors import ConfigError, FormatError, InputFileError
from hexpress.models.encoders import (
    create_encoder,
    encoder_weights_available,
    list_encoders,
    lite0_state_dict,
    load_lite0_classifier,
    load_packaged_classifier,
    packaged_state_dict,
)


class _Evil:
    pass


IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


PACKAGED = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


@pytest.mark.parametrize(
    "name, size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240),
                   ("tf_efficientnet_lite2", 260)],
)  # fmt: skip
def test_packaged_lite_classifies_chelsea_as_a_cat(name, size):
    skimage_data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(np.ascontiguousarray(skimage_data.chelsea())).permute(2, 0, 1)
    x = F.interpolate(img[None].float() / 255, size=(size, size), mode="bilinear", antialias=True)
    model = load_lite0_classifier() if name == PACKAGED[0] else load_packaged_classifier(name)
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        probs = model((x - mean) / std).softmax(-1)[0]
    top5 = set(probs.topk(5).indices.tolist())
    assert top5 & IMAGENET_CATS, f"top-5 {top5} holds no cat class"
    assert probs.argmax().item() in IMAGENET_CATS
    # An untrained network is not confident: the weights are what makes it right.
    assert probs[list(IMAGENET_CATS)].sum() > 0.5


def test_lite0_encoder_gets_the_packaged_weights():
    assert encoder_weights_available("tf_efficientnet_lite0")
    enc = create_encoder("tf_efficientnet_lite0", pretrained=True)
    sd = lite0_state_dict()
    body = enc.body.state_dict()
    torch.testing.assert_close(body["conv_stem.weight"], sd["conv_stem.weight"])
    torch.testing.assert_close(body["blocks.6.0.bn3.running_var"], sd["blocks.6.0.bn3.running_var"])
    assert enc.feature_info.reduction() == [2, 4, 8, 16, 32]
    # Normalisation lives inside the encoder (timm's cfg for tf_ Lite0: 0.5 / 0.5).
    torch.testing.assert_close(enc.mean.ravel(), torch.full((3,), 0.5))


@pytest.mark.parametrize("name", PACKAGED[1:])
def test_lite1_lite2_encoders_get_their_packaged_weights(name):
    enc = create_encoder(name, pretrained=True)
    sd = packaged_state_dict(name)
    body = enc.body.state_dict()
    torch.testing.assert_close(body["conv_stem.weight"], sd["conv_stem.weight"])
    torch.testing.assert_close(body["blocks.6.0.bn3.running_var"], sd["blocks.6.0.bn3.running_var"])
    assert enc.feature_info.reduction() == [2, 4, 8, 16, 32]
    # distinct weights per variant (not the Lite0 file under another name)
    assert not torch.equal(sd["conv_stem.weight"], lite0_state_dict()["conv_stem.weight"])


def test_only_packaged_lite_have_weights_here_and_others_fail_clearly():
    assert [n for n in list_encoders() if encoder_weights_available(n)] == PACKAGED
    with pytest.raises(ConfigError, match="no pretrained weights on this machine"):
        create_encoder("resnet18", pretrained=True)
    with pytest.raises(ConfigError, match="unknown encoder 'resnet19'.*resnet18"):
        create_encoder("resnet19")


def _histology_style_checkpoint(tmp_path, prefix="model.resnet.", shape_bug=False):
    """A Lightning-style checkpoint of a ResNet-18 with prefixed keys and a projection head."""
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    state = {prefix + k: v.clone() for k, v in net.state_dict().items()}
    state[prefix + "fc.1.weight"] = torch.zeros(128, 512)
    if shape_bug:
        state[prefix + "conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "tenpercent_resnet18.ckpt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    return path, net.state_dict()


def test_local_weights_file_with_prefixes(tmp_path, caplog):
    path, ref = _histology_style_checkpoint(tmp_path)
    enc = create_encoder("resnet18", weights=path)
    torch.testing.assert_close(
        enc.body.state_dict()["layer4.1.bn2.weight"], ref["layer4.1.bn2.weight"]
    )
    torch.testing.assert_close(enc.body.state_dict()["conv1.weight"], ref["conv1.weight"])
    # The same file for a pooled (patch) encoder; safetensors works too.
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in ref.items()}, str(st))
    enc2 = create_encoder("resnet18", weights=st, features_only=False)
    torch.testing.assert_close(enc2.body.state_dict()["conv1.weight"], ref["conv1.weight"])


def test_bad_weight_files(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        create_encoder("resnet18", weights=tmp_path / "nope.pth")
    path, _ = _histology_style_checkpoint(tmp_path, shape_bug=True)
    with pytest.raises(FormatError, match="shape mismatch"):
        create_encoder("resnet18", weights=path)
    with pytest.raises(FormatError, match="missing"):
        create_encoder("resnet50", weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="cannot read"):
        create_encoder("resnet18", weights=junk)

    evil = tmp_path / "evil.pth"  # an arbitrary pickled object is refused, never executed
    torch.save({"state_dict": _Evil()}, evil)
    with pytest.raises(FormatError, match="cannot read"):
        create_encoder("resnet18", weights=evil)
