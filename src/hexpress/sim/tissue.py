"""Tissue layout: domains (tumour nests, stroma, immune aggregates, fat, vessels) on a coarse grid.

Domains come from smooth random fields thresholded at quantiles, so their areas follow
:attr:`SimConfig.domain_fractions`; vessels are ellipses with a wall and a lumen drawn on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hexpress.sim._fields import smooth_field
from hexpress.sim.config import DOMAINS, SimConfig

__all__ = ["Tissue", "make_tissue", "GRID_UM"]

GRID_UM = 2.0
"""Spacing in µm of the layout grid (fine enough for vessel walls, cheap for a 1 cm slide)."""

D = {name: i for i, name in enumerate(DOMAINS)}


@dataclass
class Tissue:
    """The layout of one slide on a grid of ``step_um`` µm (cell ``(i, j)`` covers
    ``x in [j, j+1) * step_um``, ``y in [i, i+1) * step_um``).

    Attributes:
        step_um: grid spacing in µm.
        domain: ``(h, w)`` uint8 index into :data:`DOMAINS`.
        lumen: ``(h, w)`` bool, inside a vessel lumen (no cells; blood).
        vessel_id: ``(h, w)`` int32, index of the vessel a grid cell belongs to, -1 elsewhere.
        vessels: ``(n, 6)`` float: centre x, centre y, semi-axes a, b (outer, µm), angle (rad),
            wall thickness (µm).
        dist_vessel_um: ``(h, w)`` float32 distance to the nearest vessel in µm.
        fibre_angle: ``(h, w)`` float32 local collagen fibre direction (rad).
        hidden: ``(h, w)`` float32 smooth unit-variance field that no morphology shows.
    """

    step_um: float
    domain: np.ndarray
    lumen: np.ndarray
    vessel_id: np.ndarray
    vessels: np.ndarray
    dist_vessel_um: np.ndarray
    fibre_angle: np.ndarray
    hidden: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.domain.shape

    def index(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid ``(row, col)`` of points in µm (clipped to the grid)."""
        h, w = self.domain.shape
        i = np.clip((np.asarray(y_um) / self.step_um).astype(np.int64), 0, h - 1)
        j = np.clip((np.asarray(x_um) / self.step_um).astype(np.int64), 0, w - 1)
        return i, j

    def sample(self, grid: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Nearest-cell values of a layout grid at points given in µm."""
        i, j = self.index(x_um, y_um)
        return grid[i, j]

    def area_mm2(self, domain: str) -> float:
        return float((self.domain == D[domain]).sum()) * (self.step_um / 1000.0) ** 2


def _quantile_mask(score: np.ndarray, pool: np.ndarray, fraction: float) -> np.ndarray:
    """The top ``fraction`` of ``pool`` cells by ``score``."""
    n = int(round(fraction * pool.sum()))
    out = np.zeros_like(pool)
    if n <= 0:
        return out
    vals = score[pool]
    thr = np.partition(vals, len(vals) - n)[len(vals) - n]
    out[pool] = vals >= thr
    return out


def make_tissue(config: SimConfig, rng: np.random.Generator) -> Tissue:
    """Draw the domain layout of a slide.

    Args:
        config: simulation parameters (size, domain fractions and scales).
        rng: the slide's random generator (consumed in a fixed order).
    """
    step = GRID_UM
    w_um, h_um = config.size_um
    shape = (max(2, math.ceil(h_um / step)), max(2, math.ceil(w_um / step)))
    scale = config.domain_scale_um
    small = min(w_um, h_um)

    # tissue outline: a large blob, fading out towards the slide edges, with a ragged border
    yy = (np.arange(shape[0]) + 0.5)[:, None] * step
    xx = (np.arange(shape[1]) + 0.5)[None, :] * step
    edge = np.minimum(np.minimum(xx, w_um - xx), np.minimum(yy, h_um - yy))
    envelope = np.clip(edge / (0.12 * small), 0, 1).astype(np.float32)
    outline = smooth_field(rng, shape, step, max(small / 2.5, scale)) * 0.5
    outline += smooth_field(rng, shape, step, 40.0) * 0.12
    tissue_score = outline + 3.0 * envelope
    everywhere = np.ones(shape, bool)
    tissue = _quantile_mask(tissue_score, everywhere, config.tissue_fraction)
    tissue &= envelope > 0.02

    fr = config.domain_fractions
    f_fat = smooth_field(rng, shape, step, scale * 1.3)
    f_tum = smooth_field(rng, shape, step, scale) + 0.35 * smooth_field(rng, shape, step, scale / 3)
    f_imm = smooth_field(rng, shape, step, scale / 2.5)
    domain = np.zeros(shape, np.uint8)
    domain[tissue] = D["stroma"]
    left = tissue.copy()
    spent = 0.0
    for name, score in (("fat", f_fat), ("tumour", f_tum)):
        share = fr[name] / max(1e-9, 1.0 - spent)
        m = _quantile_mask(score, left, min(1.0, share))
        domain[m] = D[name]
        left &= ~m
        spent += fr[name]
    # immune aggregates sit in stroma, mostly next to tumour nests
    near_tumour = ndimage.gaussian_filter((domain == D["tumour"]).astype(np.float32), 25 / step)
    m = _quantile_mask(f_imm + 2.0 * near_tumour, left, min(1.0, fr["immune"] / (1 - spent)))
    domain[m] = D["immune"]

    # vessels: ellipses with a wall, mostly in stroma, a few in fat and tumour
    tissue_area = float(tissue.sum()) * step * step
    radii_mean_sq = 30.0**2
    n_vessels = int(round(fr["vessel"] * tissue_area / (math.pi * radii_mean_sq * 0.75)))
    host = np.flatnonzero(
        np.isin(domain.ravel(), [D["stroma"], D["fat"], D["immune"], D["tumour"]])
    )
    weights = np.where(domain.ravel()[host] == D["tumour"], 0.15, 1.0)
    weights /= weights.sum()
    vessels = np.zeros((0, 6))
    lumen = np.zeros(shape, bool)
    vessel_id = np.full(shape, -1, np.int32)
    if n_vessels and host.size:
        picks = rng.choice(host, size=n_vessels, p=weights)
        cy = (picks // shape[1] + rng.random(n_vessels)) * step
        cx = (picks % shape[1] + rng.random(n_vessels)) * step
        a = rng.uniform(12.0, 48.0, n_vessels)
        b = a * rng.uniform(0.45, 1.0, n_vessels)
        ang = rng.uniform(0, math.pi, n_vessels)
        wall = np.clip(rng.uniform(0.12, 0.3, n_vessels) * b, 3.0, 9.0)
        vessels = np.stack([cx, cy, a, b, ang, wall], axis=1)
        for k, (x0, y0, va, vb, th, wt) in enumerate(vessels):
            r = va + step
            i0, i1 = max(0, int((y0 - r) / step)), min(shape[0], int((y0 + r) / step) + 1)
            j0, j1 = max(0, int((x0 - r) / step)), min(shape[1], int((x0 + r) / step) + 1)
            if i1 <= i0 or j1 <= j0:
                continue
            dy = (np.arange(i0, i1) + 0.5)[:, None] * step - y0
            dx = (np.arange(j0, j1) + 0.5)[None, :] * step - x0
            u = dx * math.cos(th) + dy * math.sin(th)
            v = -dx * math.sin(th) + dy * math.cos(th)
            d_out = (u / va) ** 2 + (v / vb) ** 2
            d_in = (u / max(va - wt, 1.0)) ** 2 + (v / max(vb - wt, 1.0)) ** 2
            inside = (d_out <= 1) & tissue[i0:i1, j0:j1]
            domain[i0:i1, j0:j1][inside] = D["vessel"]
            vessel_id[i0:i1, j0:j1][inside] = k
            lumen[i0:i1, j0:j1] |= inside & (d_in <= 1)
    vmask = domain == D["vessel"]
    if vmask.any():
        dist = ndimage.distance_transform_edt(~vmask).astype(np.float32) * step
    else:
        dist = np.full(shape, 10.0 * config.vessel_decay_um, np.float32)
    fibre = (smooth_field(rng, shape, step, 160.0) * 1.2).astype(np.float32)
    hidden = smooth_field(rng, shape, step, config.hidden_field_scale_um)
    return Tissue(step, domain, lumen, vessel_id, vessels, dist, fibre, hidden)
