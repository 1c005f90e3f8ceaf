"""Morphology-preserving augmentation: the 8 flips/rotations and stain (HED) / colour jitter.

Geometry and pixels move together: :func:`d4_image` transforms a crop and :func:`d4_points`
transforms unit centres (and polygon vertices) given in the crop's continuous pixel coordinates
(pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``), with the convention of
:mod:`hexpress.models.tta`: flip left-right first, then rotate counter-clockwise by ``k``
quarter turns. Discs and axis-aligned squares are symmetric under these maps, so only their
centres move.

Stain jitter follows Tellez et al. (2018): the image is unmixed into haematoxylin, eosin and DAB
optical densities with the Ruifrok-Johnston matrix, each channel is scaled by
``U(1 - sigma, 1 + sigma)`` and shifted by ``U(-bias, bias)``, and the result mixed back. Only
colours change; every structure stays where it is. Scaling and shifting keep each stain's hue;
``stain_rotation_deg`` also turns the haematoxylin and eosin colour vectors (each towards or away
from the third, DAB, vector by ``U(-deg, deg)``) before mixing back, so the model also sees the
dyes of other labs, which differ in hue as well as in strength.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hexpress.train.config import AugmentConfig

__all__ = ["AugmentParams", "sample_params", "d4_image", "d4_points", "colour_jitter", "augment"]

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_MIN_RGB = 1e-6
_OD_OF_UINT8 = -np.log(np.maximum(np.arange(256, dtype=np.float32) / 255.0, np.float32(_MIN_RGB)))
"""Optical density ``-log(v / 255)`` of each uint8 value (float32, as computed per pixel)."""


@dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters.

    Attributes:
        k: counter-clockwise quarter turns (0-3), applied after ``flip``.
        flip: flip left-right.
        hed_alpha, hed_beta: ``(3,)`` scale and shift of the H, E, D optical densities.
        brightness: intensity factor.
        saturation: factor on the distance from grey.
        stain_angles: rotations (radians) of the haematoxylin and eosin colour vectors.
    """

    k: int = 0
    flip: bool = False
    hed_alpha: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hed_beta: tuple[float, float, float] = (0.0, 0.0, 0.0)
    brightness: float = 1.0
    saturation: float = 1.0
    stain_angles: tuple[float, float] = (0.0, 0.0)

    @property
    def is_identity(self) -> bool:
        return self == AugmentParams()


def sample_params(config: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw parameters; the same number of draws always, so streams stay aligned."""
    u = rng.random(12)
    k = int(u[0] * 4) % 4 if config.rot90 else 0
    flip = bool(u[1] < 0.5) if config.flips else False
    s, b = config.hed_sigma, config.hed_bias
    alpha = tuple(float(1 - s + 2 * s * v) for v in u[2:5])
    beta = tuple(float(-b + 2 * b * v) for v in u[5:8])
    bright = float(1 - config.brightness + 2 * config.brightness * u[8])
    sat = float(1 - config.saturation + 2 * config.saturation * u[9])
    turn = np.deg2rad(config.stain_rotation_deg)
    angles = (float(turn * (2 * u[10] - 1)), float(turn * (2 * u[11] - 1)))
    return AugmentParams(k, flip, alpha, beta, bright, sat, angles)


def _turned_stains(angles: tuple[float, float]) -> np.ndarray:
    """The stain colour matrix with the H and E rows turned in their planes with the D row."""
    out = _RGB_FROM_HED.copy()
    d = _RGB_FROM_HED[2]
    for row, a in zip((0, 1), angles, strict=True):
        v = _RGB_FROM_HED[row]
        n = np.linalg.norm(v)
        u = v / n
        w = d - (d @ u) * u
        w /= np.linalg.norm(w)
        out[row] = n * (np.cos(a) * u + np.sin(a) * w)
    return out


def d4_image(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``(H, W, ...)`` array flipped left-right (if ``flip``), then rotated by ``k`` quarter turns."""
    if flip:
        image = image[:, ::-1]
    if k % 4:
        image = np.rot90(image, k % 4, axes=(0, 1))
    return np.ascontiguousarray(image)


def d4_points(xy: np.ndarray, width: float, height: float, k: int, flip: bool) -> np.ndarray:
    """Continuous ``(n, 2)`` x, y positions in an image of ``width x height`` px, moved as
    :func:`d4_image` moves the pixels."""
    p = np.array(xy, dtype=np.float64, copy=True).reshape(-1, 2)
    w, h = float(width), float(height)
    if flip:
        p[:, 0] = w - p[:, 0]
    for _ in range(k % 4):
        # np.rot90 counter-clockwise: new pixel (i, j) is old (j, w-1-i), so (x, y) -> (y, w - x)
        p = np.stack([p[:, 1], w - p[:, 0]], axis=1)
        w, h = h, w
    return p


def colour_jitter(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Stain (HED) and colour jitter of ``(H, W, 3)`` uint8 or float ``[0, 1]`` RGB.

    Returns:
        ``(H, W, 3)`` float32 in ``[0, 1]``.
    """
    turned = params.stain_angles != (0.0, 0.0)
    if params.hed_alpha != (1.0, 1.0, 1.0) or params.hed_beta != (0.0, 0.0, 0.0) or turned:
        if image.dtype == np.uint8:
            od = _OD_OF_UINT8[image]  # a 256-entry table instead of a log per pixel
        else:
            od = -np.log(np.maximum(image.astype(np.float32), np.float32(_MIN_RGB)))
        alpha = np.asarray(params.hed_alpha)
        beta = np.asarray(params.hed_beta)
        remix = _turned_stains(params.stain_angles) if turned else _RGB_FROM_HED
        # one 3x3 matrix and offset: od -> hed -> jitter -> od (float32: 7 digits are plenty
        # for colours that end as 8-bit-like values in [0, 1])
        mat = (_HED_FROM_RGB @ np.diag(alpha) @ remix).astype(np.float32)
        off = (beta @ remix).astype(np.float32)
        od = od.reshape(-1, 3) @ mat
        od += off
        np.negative(od, out=od)
        rgb = np.exp(od, out=od).reshape(image.shape)
    elif image.dtype == np.uint8:
        rgb = image.astype(np.float32) / np.float32(255.0)
    else:
        rgb = image.astype(np.float32)
    if params.brightness != 1.0:
        rgb = rgb * np.float32(params.brightness)
    if params.saturation != 1.0:
        grey = rgb.mean(axis=2, keepdims=True)
        rgb = grey + (rgb - grey) * np.float32(params.saturation)
    return np.clip(rgb, 0.0, 1.0, out=rgb)


def augment(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Geometric then colour augmentation of ``(H, W, 3)`` uint8 -> float32 ``[0, 1]``."""
    return colour_jitter(d4_image(image, params.k, params.flip), params)
