"""Cells: positions by domain density, a type from each domain's composition, and the shape of
nucleus and cell body by type.

A cell's footprint is an ellipse: centre ``(x_um, y_um)``, semi-axes ``cell_a_um`` >=
``cell_b_um``, rotated by ``angle`` (radians, counter-clockwise from +x in image axes, y down).
Its nucleus is an ellipse with semi-axes ``nucleus_a_um``/``nucleus_b_um`` and the same angle,
centred at ``(nucleus_x_um, nucleus_y_um)``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from hexpress.sim.config import CELL_TYPES, DOMAINS, SimConfig
from hexpress.sim.tissue import D, Tissue

__all__ = ["TYPE_PARAMS", "COMPOSITION", "make_cells"]

T = {name: i for i, name in enumerate(CELL_TYPES)}

# nucleus semi-major axis (mean, sd) µm, axis ratio b/a, cell semi-major µm, cell axis ratio,
# haematoxylin amount, chromatin texture amplitude, eosin amount of the cytoplasm, relative RNA
TYPE_PARAMS: dict[str, dict[str, float]] = {
    "tumour": dict(nuc=5.0, nuc_sd=0.9, ratio=0.78, cell=8.5, cell_ratio=0.85, h=1.15, tex=0.5,
                   cyto=0.32, rna=1.4),
    "fibroblast": dict(nuc=5.5, nuc_sd=0.8, ratio=0.30, cell=8.0, cell_ratio=0.35, h=1.3, tex=0.15,
                       cyto=0.12, rna=0.8),
    "lymphocyte": dict(nuc=3.0, nuc_sd=0.3, ratio=0.92, cell=3.8, cell_ratio=0.95, h=1.9, tex=0.15,
                       cyto=0.04, rna=0.45),
    "macrophage": dict(nuc=4.4, nuc_sd=0.6, ratio=0.65, cell=9.0, cell_ratio=0.8, h=0.95, tex=0.3,
                       cyto=0.38, rna=1.0),
    "plasma": dict(nuc=3.1, nuc_sd=0.3, ratio=0.88, cell=6.0, cell_ratio=0.72, h=1.6, tex=0.45,
                   cyto=0.28, rna=1.2),
    "endothelial": dict(nuc=4.8, nuc_sd=0.6, ratio=0.28, cell=6.5, cell_ratio=0.3, h=1.25, tex=0.1,
                        cyto=0.15, rna=0.7),
    "adipocyte": dict(nuc=3.4, nuc_sd=0.4, ratio=0.3, cell=30.0, cell_ratio=1.0, h=1.2, tex=0.1,
                      cyto=0.0, rna=0.6),
}  # fmt: skip

COMPOSITION: dict[str, dict[str, float]] = {
    "tumour": {"tumour": 0.82, "fibroblast": 0.05, "lymphocyte": 0.07, "macrophage": 0.06},
    "stroma": {"fibroblast": 0.62, "lymphocyte": 0.13, "macrophage": 0.08, "plasma": 0.09,
               "endothelial": 0.08},
    "immune": {"lymphocyte": 0.78, "plasma": 0.1, "macrophage": 0.08, "fibroblast": 0.04},
    "vessel": {"endothelial": 0.65, "fibroblast": 0.35},
}  # fmt: skip
"""Cell-type mix of each domain (fat holds adipocytes only)."""


def _pick_types(rng, domain_name: str, n: int) -> np.ndarray:
    comp = COMPOSITION[domain_name]
    names = list(comp)
    p = np.array([comp[k] for k in names])
    return np.array([T[k] for k in names])[rng.choice(len(names), size=n, p=p / p.sum())]


def _adipocytes(tissue: Tissue, config: SimConfig, rng) -> tuple[np.ndarray, np.ndarray]:
    """Fat cell centres on a jittered hexagonal lattice, and their radii (µm)."""
    w_um, h_um = config.size_um
    s = config.adipocyte_diameter_um
    dy = s * math.sqrt(3) / 2
    rows = np.arange(0, h_um / dy + 1)
    pts = []
    for r in rows:
        xs = np.arange(0, w_um / s + 1) * s + (s / 2 if int(r) % 2 else 0.0)
        pts.append(np.stack([xs, np.full_like(xs, r * dy)], 1))
    p = np.concatenate(pts)
    p = p + rng.uniform(-0.22, 0.22, p.shape) * s
    keep = tissue.sample(tissue.domain, p[:, 0], p[:, 1]) == D["fat"]
    p = p[keep]
    radius = 0.5 * s * rng.uniform(0.85, 1.1, len(p))
    return p, radius


def make_cells(tissue: Tissue, config: SimConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Place and describe every cell of the slide.

    Returns:
        One row per cell, see :func:`hexpress.sim.simulate` for the columns.
    """
    xs, ys, types = [], [], []
    flat = tissue.domain.ravel()
    lumen = tissue.lumen.ravel()
    h, w = tissue.shape
    for dname in ("tumour", "stroma", "immune", "vessel"):
        pool = np.flatnonzero((flat == D[dname]) & ~lumen)
        area_mm2 = pool.size * (tissue.step_um / 1000.0) ** 2
        n = int(rng.poisson(config.cell_density_per_mm2[dname] * area_mm2 * 1.12))
        if n == 0 or pool.size == 0:
            continue
        pick = pool[rng.integers(0, pool.size, n)]
        ys.append((pick // w + rng.random(n)) * tissue.step_um)
        xs.append((pick % w + rng.random(n)) * tissue.step_um)
        types.append(_pick_types(rng, dname, n))
    fat_xy, fat_r = _adipocytes(tissue, config, rng)
    x = np.concatenate([*xs, fat_xy[:, 0]]) if xs else fat_xy[:, 0]
    y = np.concatenate([*ys, fat_xy[:, 1]]) if ys else fat_xy[:, 1]
    t = np.concatenate([*types, np.full(len(fat_xy), T["adipocyte"])]).astype(np.int64)
    n = len(x)
    par = {k: np.array([TYPE_PARAMS[c][k] for c in CELL_TYPES]) for k in TYPE_PARAMS["tumour"]}
    nuc_a = np.maximum(
        par["nuc"][t] + par["nuc_sd"][t] * rng.standard_normal(n), 0.55 * par["nuc"][t]
    )
    ratio = np.clip(par["ratio"][t] * rng.uniform(0.85, 1.15, n), 0.15, 1.0)
    nuc_b = nuc_a * ratio
    cell_a = np.maximum(par["cell"][t] * rng.uniform(0.85, 1.15, n), nuc_a * 1.05)
    cell_b = np.maximum(
        cell_a * np.clip(par["cell_ratio"][t] * rng.uniform(0.9, 1.1, n), 0.2, 1), nuc_b * 1.05
    )
    is_fat = t == T["adipocyte"]
    n_fat = int(is_fat.sum())
    cell_a[is_fat] = fat_r
    cell_b[is_fat] = fat_r
    angle = rng.uniform(0, math.pi, n)

    # orientation: fibroblasts follow the collagen, vessel cells lie along the wall
    fib = t == T["fibroblast"]
    angle[fib] = tissue.sample(tissue.fibre_angle, x[fib], y[fib]) + rng.normal(0, 0.2, fib.sum())
    vid = tissue.sample(tissue.vessel_id, x, y)
    on_wall = vid >= 0
    if on_wall.any():
        v = tissue.vessels[vid[on_wall]]
        angle[on_wall] = np.arctan2(y[on_wall] - v[:, 1], x[on_wall] - v[:, 0]) + math.pi / 2

    # nucleus offset: eccentric in plasma cells, pushed to the rim in fat cells
    nx, ny = x.copy(), y.copy()
    pl = t == T["plasma"]
    off = 0.35 * (cell_a[pl] - nuc_a[pl])
    nx[pl] += off * np.cos(angle[pl])
    ny[pl] += off * np.sin(angle[pl])
    if n_fat:
        phi = rng.uniform(0, 2 * math.pi, n_fat)
        r = cell_a[is_fat] - nuc_b[is_fat] - 0.8
        nx[is_fat] += r * np.cos(phi)
        ny[is_fat] += r * np.sin(phi)
        angle[is_fat] = phi + math.pi / 2  # flattened along the membrane

    # keep footprints inside the slide, and nuclei from piling up on each other
    w_um, h_um = config.size_um
    inside = (x - cell_a > 0) & (y - cell_a > 0) & (x + cell_a < w_um) & (y + cell_a < h_um)
    keep = inside.copy()
    pts = np.stack([nx, ny], 1)
    tree = cKDTree(pts)
    pairs = tree.query_pairs(r=2 * float(nuc_a.max()), output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.hypot(*(pts[i] - pts[j]).T)
        bad = d < 0.8 * (np.sqrt(nuc_a[i] * nuc_b[i]) + np.sqrt(nuc_a[j] * nuc_b[j]))
        # adipocytes never give way (the fat lattice is already spaced); others drop the later one
        drop = np.where(is_fat[j[bad]] & ~is_fat[i[bad]], i[bad], j[bad])
        keep[drop] = False
    keep &= tissue.sample(tissue.domain, x, y) != D["glass"]
    sel = np.flatnonzero(keep)
    dom = tissue.sample(tissue.domain, x[sel], y[sel]).astype(np.int64)
    darkness = par["h"][t[sel]] * np.exp(rng.normal(0, 0.12, len(sel)))
    cells = pd.DataFrame(
        {
            "cell_id": [f"cell{i:07d}" for i in range(len(sel))],
            "x_um": x[sel],
            "y_um": y[sel],
            "type": pd.Categorical.from_codes(t[sel], categories=list(CELL_TYPES)),
            "type_id": t[sel],
            "domain": pd.Categorical.from_codes(dom, categories=list(DOMAINS)),
            "domain_id": dom,
            "nucleus_x_um": nx[sel],
            "nucleus_y_um": ny[sel],
            "nucleus_a_um": nuc_a[sel],
            "nucleus_b_um": nuc_b[sel],
            "cell_a_um": cell_a[sel],
            "cell_b_um": cell_b[sel],
            "angle": np.mod(angle[sel], 2 * math.pi),
            "darkness": darkness,
            "nucleus_area_um2": math.pi * nuc_a[sel] * nuc_b[sel],
            "cell_area_um2": math.pi * cell_a[sel] * cell_b[sel],
            "dist_vessel_um": tissue.sample(tissue.dist_vessel_um, x[sel], y[sel]),
            "hidden_field": tissue.sample(tissue.hidden, x[sel], y[sel]),
        }
    )
    return cells
