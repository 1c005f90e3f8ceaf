"""Spot and bin grids of each technology, and the binning of transcripts into them.

Membership is decided by each transcript's position, so a unit's count of a gene is exactly
the number of that gene's transcripts inside its footprint:

* discs (legacy ST, Visium): inside when the distance to the centre is ``<= diameter / 2``;
* squares (Visium HD): bin ``floor(x_um / bin_um)``, computed from the 2 µm bin index so that
  8 and 16 µm bins are exact unions of 2 µm bins.

The lattices and both rules are :mod:`hexpress.data.lattice`'s, shared with the Xenium reader and
the prediction grids; this module only places them on a simulated slide and numbers the spots
as each technology does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hexpress.data.lattice import (
    LEGACY_DIAMETER_UM,
    LEGACY_PITCH_UM,
    VISIUM_DIAMETER_UM,
    VISIUM_PITCH_UM,
    DiscLattice,
    bin_index,
)

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

    @property
    def lattice(self) -> DiscLattice:
        """The lattice the spots sit on (offset columns; see :mod:`hexpress.data.lattice`)."""
        return DiscLattice(self.kind, self.pitch_um, self.origin_um)


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
    x, y = DiscLattice("square", p, (ox, oy)).centers_um(ii, jj)
    return SpotGrid(x, y, ii + 1, jj + 1, 2 * r, p, "square", (ox, oy))


def visium_grid(width_um: float, height_um: float) -> SpotGrid:
    """Visium: 55 µm discs, 100 µm centre to centre on a hexagonal lattice.

    As Space Ranger numbers them: ``array_row`` counts rows (``sqrt(3)/2 * 100`` µm apart),
    ``array_col`` steps by 2 along a row (50 µm per unit), and ``array_row + array_col`` is even.
    """
    p, r = VISIUM_PITCH_UM, VISIUM_DIAMETER_UM / 2
    lattice = DiscLattice("hex", p, (r + 5.0, r + 5.0))
    rr, c = lattice.sites_within(width_um, height_um, 2 * r)
    x, y = lattice.centers_um(rr, c)
    return SpotGrid(x, y, rr, lattice.doubled_col(rr, c), 2 * r, p, "hex", lattice.origin_um)


def assign_discs(grid: SpotGrid, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Index into ``grid`` of the disc each point lies in, or -1. ``(m,)`` int64.

    The pitch is more than the diameter in both technologies, so a point lies in at most one
    disc: the nearest lattice site decides.
    """
    lattice = grid.lattice
    row, col, inside = lattice.assign(x_um, y_um, grid.diameter_um)
    if grid.kind == "square":  # HER2ST numbers rows and columns from 1
        row_idx, col_idx = row + 1, col + 1
    else:  # Space Ranger's doubled columns
        row_idx, col_idx = row, lattice.doubled_col(row, col)
    n_rows = int(grid.row.max()) + 2 if len(grid) else 1
    n_cols = int(grid.col.max()) + 2 if len(grid) else 1
    table = np.full((n_rows, n_cols), -1, np.int64)
    table[grid.row, grid.col] = np.arange(len(grid))
    ok = inside & (row_idx >= 0) & (col_idx >= 0) & (row_idx < n_rows) & (col_idx < n_cols)
    out = np.full(np.shape(x_um), -1, np.int64)
    out[ok] = table[row_idx[ok], col_idx[ok]]
    return out


def hd_bin_index(x_um: np.ndarray, y_um: np.ndarray, bin_um: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row, col)`` of the ``bin_um`` square bin (grid origin at the image's top-left corner).

    Computed from the 2 µm index, so a coarser bin is exactly the union of its 2 µm bins.
    """
    return bin_index(x_um, y_um, bin_um, base_um=2.0)


def count_matrix(unit: np.ndarray, gene: np.ndarray, n_units: int, n_genes: int) -> sp.csr_matrix:
    """``(n_units, n_genes)`` int32 CSR counts of transcripts with ``unit >= 0``."""
    keep = unit >= 0
    m = sp.coo_matrix(
        (np.ones(int(keep.sum()), np.int32), (unit[keep], gene[keep])), shape=(n_units, n_genes)
    ).tocsr()
    m.sum_duplicates()
    return m
