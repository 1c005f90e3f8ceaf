"""Inference copies of models with batch norms folded into the convolutions before them.

In eval mode a batch norm is a per-channel affine map, so ``bn(conv(x))`` is one convolution
with rescaled weights and a bias. Folding removes a full pass over every activation (about a
sixth of PixNet-Lite0's CPU time) and leaves the numbers equal up to float rounding. timm's
``BatchNormAct2d`` (norm, then its dropout and activation) keeps its activation.

:func:`torch_inference_copy` also replaces timm's TF-"same" stride-2 convolutions
(``Conv2dSame``: the EfficientNet-Lite encoders), which pad their whole input before every
call, by :class:`SameStride2`, which pads nothing of the size of its input.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorms", "torch_inference_copy", "SameStride2"]


class _AfterNorm(nn.Module):
    """What a ``BatchNormAct2d`` does after its norm: dropout (identity in eval), activation."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _fold_children(module: nn.Module) -> int:
    n = 0
    last: tuple[str, nn.Conv2d] | None = None
    for name, child in list(module.named_children()):
        if type(child) is nn.Identity:
            continue  # timm's unused attention / anti-aliasing slots between conv and norm
        if isinstance(child, nn.Conv2d) and not isinstance(child, nn.ConvTranspose2d):
            last = (name, child)
            continue
        is_bn = isinstance(child, nn.BatchNorm2d) and child.track_running_stats
        if is_bn and last is not None and last[1].out_channels == child.num_features:
            setattr(module, last[0], fuse_conv_bn_eval(last[1], child))
            drop, act = getattr(child, "drop", None), getattr(child, "act", None)
            if act is None:
                setattr(module, name, nn.Identity())
            else:
                setattr(module, name, _AfterNorm(drop or nn.Identity(), act))
            n += 1
        else:
            n += _fold_children(child)
        last = None
    return n


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each batch norm that directly follows a convolution
    (as registered, with only identities between) folded into it; ``model`` is unchanged."""
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        fused.n_folded_batchnorms = _fold_children(fused)
    return fused


class SameStride2(Conv2dSame):
    """A TF-"same" convolution of stride 2 (odd square kernel ``k``, no dilation) that never
    pads its whole input.

    On an even side ``2n`` "same" pads ``p = (k - 2) // 2`` before and ``p + 1`` after, so
    output ``i`` reads input ``2i - p .. 2i - p + k - 1``. A convolution with the symmetric
    padding ``p`` reads the same windows for every output but the last row and column:
    those come from the input's last ``p + 2`` rows (columns), padded, and the three parts
    are written into the output. Odd sides, which do not occur in aligned tiles, take
    timm's path (pad, then convolve). The same numbers as ``Conv2dSame``, up to float
    rounding: a full pad of the input (a zero fill and a copy) becomes a copy of the output,
    a quarter of its size. A ``Conv2dSame`` to the strip planner of the encoder.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> SameStride2:
        m = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=2,
            groups=conv.groups, bias=conv.bias is not None,
        )  # fmt: skip
        m.weight, m.bias = conv.weight, conv.bias
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        p = (k - 2) // 2
        H, W = x.shape[-2:]
        if x.ndim != 4 or H % 2 or W % 2 or H < k or W < k:
            return super().forward(x)
        h, w = H // 2, W // 2

        def conv(t: torch.Tensor, pad: int = 0) -> torch.Tensor:
            return F.conv2d(t, self.weight, self.bias, 2, pad, 1, self.groups)

        main = conv(x, p)[..., : h - 1, : w - 1]
        last = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        out = torch.empty(
            (x.shape[0], main.shape[1], h, w), dtype=main.dtype, device=main.device,
            memory_format=last,
        )  # fmt: skip
        out[..., : h - 1, : w - 1] = main
        del main
        # the last row (all columns): rows H-2-p.. padded below, columns as "same" pads
        out[..., h - 1 :, :] = conv(F.pad(x[..., H - 2 - p :, :], (p, p + 1, 0, p + 1)))
        # the last column (all rows but the last): columns W-2-p.. padded right, rows above
        right = conv(F.pad(x[..., W - 2 - p :], (0, p + 1, p, 0)))
        out[..., : h - 1, w - 1 :] = right[..., : h - 1, :]
        return out


def _is_same_stride2(conv: nn.Module) -> bool:
    k = getattr(conv, "kernel_size", (0, 0))
    return (
        type(conv) is Conv2dSame  # timm's own (not one already replaced)
        and tuple(conv.stride) == (2, 2)
        and tuple(conv.dilation) == (1, 1)
        and k[0] == k[1]
        and k[0] % 2 == 1
        and k[0] >= 3
        and tuple(conv.padding) == (0, 0)
    )


def _replace_same_stride2(module: nn.Module) -> int:
    n = 0
    for name, child in list(module.named_children()):
        if _is_same_stride2(child):
            setattr(module, name, SameStride2.from_conv(child))
            n += 1
        else:
            n += _replace_same_stride2(child)
    return n


def torch_inference_copy(model: nn.Module) -> nn.Module:
    """What PyTorch runs in inference: :func:`fold_batchnorms`, with timm's stride-2 "same"
    convolutions as :class:`SameStride2` (not for export: the graph runtimes pad on their own).
    ``model`` is unchanged."""
    fused = fold_batchnorms(model)
    fused.n_same_stride2 = _replace_same_stride2(fused)
    return fused
