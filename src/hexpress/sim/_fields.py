"""Smooth random fields and cheap grid resampling used by the simulator."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["smooth_field", "upsample_rows", "tile_texture"]


def _cubic_matrix(pos: np.ndarray, n_in: int) -> np.ndarray:
    """Dense ``(len(pos), n_in)`` cubic-convolution (Keys, a = -0.5) interpolation weights."""
    i0 = np.floor(pos).astype(np.int64)
    t = pos - i0
    w = np.zeros((len(pos), n_in), np.float64)
    rows = np.arange(len(pos))
    a = -0.5
    for k in (-1, 0, 1, 2):
        d = np.abs(t - k)
        wk = np.where(
            d <= 1,
            (a + 2) * d**3 - (a + 3) * d**2 + 1,
            np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0),
        )
        np.add.at(w, (rows, np.clip(i0 + k, 0, n_in - 1)), wk)
    return w


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], step_um: float, scale_um: float
) -> np.ndarray:
    """A zero-mean, unit-variance random field with correlation length ``scale_um``.

    White noise on a grid of spacing ``scale_um / 3`` is smoothed there and interpolated (cubic,
    as two small matrix products) to the requested grid, so the cost does not grow with the
    correlation length.

    Args:
        shape: ``(h, w)`` of the output grid.
        step_um: spacing of the output grid in µm.
        scale_um: correlation length in µm.

    Returns:
        ``(h, w)`` float32.
    """
    h, w = shape
    cstep = max(scale_um / 3.0, step_um)
    pad = 3
    ch = int(math.ceil(h * step_um / cstep)) + 2 * pad
    cw = int(math.ceil(w * step_um / cstep)) + 2 * pad
    noise = ndimage.gaussian_filter(rng.standard_normal((ch, cw)), sigma=1.0, mode="wrap")
    wy = _cubic_matrix((np.arange(h) + 0.5) * step_um / cstep + pad, ch)
    wx = _cubic_matrix((np.arange(w) + 0.5) * step_um / cstep + pad, cw)
    out = (wy @ noise) @ wx.T
    out = (out - out.mean()) / (out.std() + 1e-12)
    return out.astype(np.float32)


def upsample_rows(
    grid: np.ndarray, step_um: float, mpp: float, y0: int, y1: int, width: int
) -> np.ndarray:
    """Bilinear samples of a coarse grid at image rows ``y0:y1`` (all ``width`` columns).

    Grid cell ``(i, j)`` covers ``[j, j+1) * step_um`` by ``[i, i+1) * step_um``; its value sits at
    the cell centre. Returns ``(y1 - y0, width)`` float32.
    """
    gh, gw = grid.shape
    f = mpp / step_um
    ys = np.clip((np.arange(y0, y1) + 0.5) * f - 0.5, 0, gh - 1)
    xs = np.clip((np.arange(width) + 0.5) * f - 0.5, 0, gw - 1)
    i0 = np.minimum(ys.astype(np.int64), gh - 2) if gh > 1 else np.zeros(len(ys), np.int64)
    j0 = np.minimum(xs.astype(np.int64), gw - 2) if gw > 1 else np.zeros(len(xs), np.int64)
    wy = (ys - i0).astype(np.float32)[:, None] if gh > 1 else np.zeros((len(ys), 1), np.float32)
    wx = (xs - j0).astype(np.float32)[None, :] if gw > 1 else np.zeros((1, len(xs)), np.float32)
    g = grid.astype(np.float32, copy=False)
    i1 = np.minimum(i0 + 1, gh - 1)
    j1 = np.minimum(j0 + 1, gw - 1)
    rows = g[i0] * (1 - wy) + g[i1] * wy
    return rows[:, j0] * (1 - wx) + rows[:, j1] * wx


def tile_texture(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """A periodic ``(size, size)`` noise texture in ``[0, 1]`` (wraps seamlessly when tiled)."""
    t = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=sigma_px, mode="wrap")
    t = (t - t.min()) / (t.max() - t.min() + 1e-12)
    return t.astype(np.float32)
