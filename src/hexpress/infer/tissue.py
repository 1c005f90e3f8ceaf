"""Tissue detection on a slide thumbnail.

Stained tissue is coloured, glass is white or grey: Otsu's threshold on the saturation of a
thumbnail (and on optical density, which also catches pale, little-saturated tissue) separates
the two. Small specks are removed and holes closed with ``scipy.ndimage`` morphology.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from hexpress.io.image import SlideImage

__all__ = ["TissueMask", "detect_tissue", "otsu_threshold"]

log = logging.getLogger(__name__)


@dataclass
class TissueMask:
    """A boolean tissue mask at thumbnail resolution.

    Attributes:
        mask: ``(h, w)`` bool, True on tissue.
        scale: mask pixels per level-0 pixel of the slide.
    """

    mask: np.ndarray
    scale: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide area covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether any tissue lies in the level-0 rectangle ``[x0, x1) x [y0, y1)``."""
        h, w = self.mask.shape
        c0 = max(0, int(np.floor(x0 * self.scale)))
        r0 = max(0, int(np.floor(y0 * self.scale)))
        c1 = min(w, int(np.ceil(x1 * self.scale)))
        r1 = min(h, int(np.ceil(y1 * self.scale)))
        if c1 <= c0 or r1 <= r0:
            return False
        return bool(self.mask[r0:r1, c0:c1].any())

    def contains(self, xy_px: np.ndarray) -> np.ndarray:
        """Whether each level-0 point ``(n, 2)`` (x, y) lies on tissue; ``(n,)`` bool."""
        xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
        h, w = self.mask.shape
        c = np.floor(xy[:, 0] * self.scale).astype(np.int64)
        r = np.floor(xy[:, 1] * self.scale).astype(np.int64)
        inside = (c >= 0) & (c < w) & (r >= 0) & (r < h)
        out = np.zeros(len(xy), dtype=bool)
        out[inside] = self.mask[r[inside], c[inside]]
        return out

    @classmethod
    def full(cls, slide: SlideImage, max_side: int = 256) -> TissueMask:
        """A mask that marks the whole slide as tissue (no detection)."""
        scale = min(1.0, max_side / max(slide.width, slide.height))
        shape = (max(1, round(slide.height * scale)), max(1, round(slide.width * scale)))
        return cls(np.ones(shape, dtype=bool), shape[1] / slide.width)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the cut that maximises between-class variance."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() == v.max():
        return float(v.min()) if v.size else 0.0
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def detect_tissue(
    slide: SlideImage,
    *,
    max_side: int = 1024,
    min_saturation: float = 0.05,
    min_area_um2: float = 20_000.0,
    dilate_um: float = 50.0,
) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide``.

    Args:
        slide: the slide image.
        max_side: longer side of the thumbnail in pixels.
        min_saturation: pixels below this saturation (0..1) are never tissue, whatever Otsu says
            (a blank slide has no tissue rather than half of its noise).
        min_area_um2: connected regions smaller than this area in µm² are dropped as specks.
        dilate_um: the mask grows by this margin so that tissue borders are kept.

    Returns:
        The mask and its scale (mask pixels per level-0 pixel). An empty mask is returned, with
        a warning, when nothing looks like tissue.
    """
    thumb, scale = slide.thumbnail(max_side)
    rgb = thumb.astype(np.float32) / 255.0
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    od = -np.log(np.clip(rgb, 1 / 255, 1)).mean(axis=2)  # optical density: dark = tissue
    sat_cut = max(otsu_threshold(saturation), min_saturation)
    od_cut = max(otsu_threshold(od), 0.15)
    mask = (saturation > sat_cut) | (od > od_cut)
    um_per_px = slide.mpp / scale
    mask = ndi.binary_opening(mask, iterations=1)
    mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n:
        areas = ndi.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1)) * um_per_px**2
        keep = np.concatenate([[False], areas >= min_area_um2])
        mask = keep[labels]
    grow = int(np.ceil(dilate_um / um_per_px))
    if grow > 0 and mask.any():
        mask = ndi.binary_dilation(mask, iterations=grow)
    if not mask.any():
        log.warning("no tissue detected on %r; every tile will be skipped", slide)
    return TissueMask(mask.astype(bool), float(scale))
