"""Spot and bin grids of each technology, and the binning of transcripts into them.

Membership is decided by each transcript's position, so a unit's count of a gene is exactly
the number of that gene's transcripts inside its footprint:

* discs (legacy ST, Visium): inside when the distance to the centre is ``< diameter / 2``;
* squares (Visium HD): bin ``floor(x_um / bin_um)``, computed from the 2 µm bin index so that
  8 and 16 µm bins are exact unions of 2 µm bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = [
    "SpotGrid",
    "legacy_st_grid",
    "visium_grid",
    "assign_discs",
    "hd_bin_index",
    "count_matrix",
    "LEGACY_DIAMETER_UM",
    "LEGACY_PITCH_UM",
    "VISIUM_DIAMETER_UM",
    "VISIUM_PITCH_UM",
    "HD_BIN_UM",
]

LEGACY_DIAMETER_UM, LEGACY_PITCH_UM = 100.0, 200.0
VISIUM_DIAMETER_UM, VISIUM_PITCH_UM = 55.0, 100.0
HD_BIN_UM = (2, 8, 16)


@dataclass
class SpotGrid:
    """Disc spots on a lattice.

    Attributes:
        x_um, y_um: ``(n,)`` centres in µm.
        row, col: ``(n,)`` integer array indices (legacy ST: ``y``, ``x``; Visium: ``array_row``,
            ``array_col``).
        diameter_um: spot diameter.
        pitch_um: centre-to-centre distance.
        kind: ``"square"`` (legacy ST lattice) or ``"hex"`` (Visium lattice).
        origin_um: ``(x, y)`` of index ``(0, 0)``.
    """

    x_um: np.ndarray
    y_um: np.ndarray
    row: np.ndarray
    col: np.ndarray
    diameter_um: float
    pitch_um: float
    kind: str
    origin_um: tuple[float, float]

    def __len__(self) -> int:
        return len(self.x_um)


def legacy_st_grid(width_um: float, height_um: float) -> SpotGrid:
    """Legacy ST: 100 µm discs at 200 µm pitch on a square lattice centred on the slide.

    Array indices start at 1 (``x`` = column, ``y`` = row), as in the HER2ST spot files.
    """
    p, r = LEGACY_PITCH_UM, LEGACY_DIAMETER_UM / 2
    nx = max(1, int(math.floor((width_um - 2 * r) / p)) + 1)
    ny = max(1, int(math.floor((height_um - 2 * r) / p)) + 1)
    ox = (width_um - (nx - 1) * p) / 2
    oy = (height_um - (ny - 1) * p) / 2
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    jj, ii = jj.ravel(), ii.ravel()
    return SpotGrid(ox + jj * p, oy + ii * p, ii + 1, jj + 1, 2 * r, p, "square", (ox, oy))


def visium_grid(width_um: float, height_um: float) -> SpotGrid:
    """Visium: 55 µm discs, 100 µm centre to centre on a hexagonal lattice.

    As Space Ranger numbers them: ``array_row`` counts rows (``sqrt(3)/2 * 100`` µm apart),
    ``array_col`` steps by 2 along a row (50 µm per unit), and ``array_row + array_col`` is even.
    """
    p, r = VISIUM_PITCH_UM, VISIUM_DIAMETER_UM / 2
    dy = p * math.sqrt(3) / 2
    ox, oy = r + 5.0, r + 5.0
    rows = int(math.floor((height_um - r - oy) / dy)) + 1
    cols = int(math.floor((width_um - r - ox) / (p / 2))) + 1
    rr, cc = np.meshgrid(np.arange(max(rows, 0)), np.arange(max(cols, 0)), indexing="ij")
    keep = (rr + cc) % 2 == 0
    rr, cc = rr[keep], cc[keep]
    return SpotGrid(ox + cc * p / 2, oy + rr * dy, rr, cc, 2 * r, p, "hex", (ox, oy))


def assign_discs(grid: SpotGrid, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Index into ``grid`` of the disc each point lies in, or -1. ``(m,)`` int64.

    The pitch is more than the diameter in both technologies, so a point lies in at most one
    disc: the nearest lattice site decides.
    """
    x_um, y_um = np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)
    r2 = (grid.diameter_um / 2) ** 2
    if grid.kind == "square":
        p = grid.pitch_um
        ox, oy = grid.origin_um
        c = np.rint((x_um - ox) / p).astype(np.int64)
        r = np.rint((y_um - oy) / p).astype(np.int64)
        cx, cy = ox + c * p, oy + r * p
        row_idx, col_idx = r + 1, c + 1
    else:
        p = grid.pitch_um
        dy = p * math.sqrt(3) / 2
        ox, oy = grid.origin_um
        best_d = np.full(x_um.shape, np.inf)
        row_idx = np.zeros(x_um.shape, np.int64)
        col_idx = np.zeros(x_um.shape, np.int64)
        r0 = np.floor((y_um - oy) / dy).astype(np.int64)
        for r in (r0, r0 + 1):
            par = np.mod(r, 2)
            c = 2 * np.rint(((x_um - ox) / (p / 2) - par) / 2).astype(np.int64) + par
            d = (x_um - (ox + c * p / 2)) ** 2 + (y_um - (oy + r * dy)) ** 2
            better = d < best_d
            best_d = np.where(better, d, best_d)
            row_idx = np.where(better, r, row_idx)
            col_idx = np.where(better, c, col_idx)
        cx, cy = ox + col_idx * p / 2, oy + row_idx * dy
    d2 = (x_um - cx) ** 2 + (y_um - cy) ** 2
    n_rows = int(grid.row.max()) + 2 if len(grid) else 1
    n_cols = int(grid.col.max()) + 2 if len(grid) else 1
    table = np.full((n_rows, n_cols), -1, np.int64)
    table[grid.row, grid.col] = np.arange(len(grid))
    ok = (d2 < r2) & (row_idx >= 0) & (col_idx >= 0) & (row_idx < n_rows) & (col_idx < n_cols)
    out = np.full(x_um.shape, -1, np.int64)
    out[ok] = table[row_idx[ok], col_idx[ok]]
    return out


def hd_bin_index(x_um: np.ndarray, y_um: np.ndarray, bin_um: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row, col)`` of the ``bin_um`` square bin (grid origin at the image's top-left corner).

    Computed from the 2 µm index, so a coarser bin is exactly the union of its 2 µm bins.
    """
    if bin_um % 2:
        raise ValueError(f"Visium HD bins are multiples of 2 µm, got {bin_um}")
    f = bin_um // 2
    r2 = np.floor(np.asarray(y_um) / 2.0).astype(np.int64)
    c2 = np.floor(np.asarray(x_um) / 2.0).astype(np.int64)
    return r2 // f, c2 // f


def count_matrix(unit: np.ndarray, gene: np.ndarray, n_units: int, n_genes: int) -> sp.csr_matrix:
    """``(n_units, n_genes)`` int32 CSR counts of transcripts with ``unit >= 0``."""
    keep = unit >= 0
    m = sp.coo_matrix(
        (np.ones(int(keep.sum()), np.int32), (unit[keep], gene[keep])), shape=(n_units, n_genes)
    ).tocsr()
    m.sum_duplicates()
    return m
