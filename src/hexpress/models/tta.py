"""Test-time augmentation over the 8 flips / 90-degree rotations (the dihedral group D4).

H&E has no preferred orientation, so every model can average its predictions over the 8
symmetries of the square. Patch models average their outputs (:func:`tta_predict`); dense
models map each output back to the original orientation before averaging (:func:`dense_tta`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hexpress.errors import ConfigError

__all__ = ["TRANSFORMS", "apply_transform", "invert_transform", "tta_predict", "dense_tta"]

TRANSFORMS: tuple[tuple[int, bool], ...] = tuple(
    (k, flip) for flip in (False, True) for k in range(4)
)
"""The 8 transforms as ``(quarter_turns, flip)``: flip left-right first, then rotate."""


def apply_transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Flip (left-right) then rotate by ``k`` quarter turns, on the last two axes."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def invert_transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo :func:`apply_transform` on the last two axes."""
    if k % 4:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def _check_n(n: int) -> int:
    if int(n) not in (1, 2, 4, 8):
        raise ConfigError(f"TTA uses 1, 2, 4 or 8 transforms, got {n}.")
    return int(n)


def _subset(n: int) -> tuple[tuple[int, bool], ...]:
    # 2: identity + flip; 4: the rotations; 8: all.
    return {1: TRANSFORMS[:1], 2: (TRANSFORMS[0], TRANSFORMS[4]), 4: TRANSFORMS[:4]}.get(
        n, TRANSFORMS
    )


@torch.no_grad()
def tta_predict(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, n: int = 8
) -> torch.Tensor:
    """Average ``fn`` over ``n`` transforms of ``images`` (patch models: outputs are invariant).

    Outputs are returned as float32 (summed in float32 under autocast too).

    Args:
        fn: e.g. a patch model, ``(B, 3, H, W) -> (B, G)``.
        images: ``(B, 3, H, W)``.
        n: 1, 2, 4 or 8 transforms.
    """
    ts = _subset(_check_n(n))
    if len(ts) == 1:
        return fn(images).float()
    out = None
    for k, flip in ts:
        y = fn(apply_transform(images, k, flip)).float()  # float32 sums, also under autocast
        out = y if out is None else out + y
    return out / len(ts)


@torch.no_grad()
def dense_tta(
    model: Callable[..., torch.Tensor],
    images: torch.Tensor,
    n: int = 8,
    *,
    region: tuple[int, int, int, int] | None = None,
):
    """Average a dense model's maps over ``n`` transforms, each mapped back first.

    The input is padded (white, bottom/right) to a multiple of the model's ``stride`` so that the
    map's cells cover the same pixels in every orientation, and the map is cropped back to
    ``ceil(H / stride) x ceil(W / stride)``.

    Args:
        model: dense model with a ``stride`` attribute, ``(B, 3, H, W) -> (B, C, h, w)``.
        images: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.
        n: 1, 2, 4 or 8 transforms.
        region: ``(y0, x0, y1, x1)`` map cells to compute, passed on as ``model(x, region=...)``
            (e.g. :class:`~hexpress.models.PixNet`); with transforms it must be centred in a
            square map, so that every transform maps it onto itself.

    Returns:
        float32 ``(B, C, h, w)`` (or the region's cells).
    """
    ts = _subset(_check_n(n))
    kw = {} if region is None else {"region": tuple(int(v) for v in region)}
    if len(ts) == 1:
        return model(images, **kw).float()
    stride = int(getattr(model, "stride", 1))
    h, w = images.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if region is not None:
        y0, x0, y1, x1 = kw["region"]
        m = math.ceil(h / stride)
        if not (h == w and ph == 0 and y0 == x0 and y1 == x1 and y0 + y1 == m):
            raise ConfigError(
                f"test-time augmentation of a region needs a square input whose side is a "
                f"multiple of the stride and a centred square region; got input {h} x {w} and "
                f"region {region}."
            )
    x = F.pad(images, (0, pw, 0, ph), value=1.0) if (ph or pw) else images
    out = None
    for k, flip in ts:
        y = invert_transform(model(apply_transform(x, k, flip), **kw).float(), k, flip)
        out = y if out is None else out + y
    out = out / len(ts)
    return out if region is not None else out[..., : math.ceil(h / stride), : math.ceil(w / stride)]
