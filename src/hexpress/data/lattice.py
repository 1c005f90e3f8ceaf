"""Spot and bin lattices: where the units of each technology sit, and which unit a point is in.

Everything here is in **µm** of one frame (a slide's, or a technology's own), x then y.

Disc lattices (:class:`DiscLattice`): site ``(row, col)`` of a

* ``"square"`` lattice sits at ``origin + (col * pitch, row * pitch)`` (legacy ST: 100 µm discs
  at 200 µm pitch);
* ``"hex"`` lattice sits at ``origin + (col * pitch + (row % 2) * pitch / 2, row * pitch *
  sqrt(3) / 2)``: rows ``pitch * sqrt(3) / 2`` apart, odd rows shifted right by half a pitch
  ("offset" columns; Visium: 55 µm discs at 100 µm pitch). Space Ranger numbers the same sites
  with "doubled" columns, ``array_col = 2 * col + row % 2`` (:meth:`DiscLattice.doubled_col`).

A point belongs to the disc of its nearest site when its distance to that site is at most the
radius: discs are **closed** (``<=``). This is the rule hexpress uses everywhere a disc meets a
point: the pixel footprints predictions are summed over (:mod:`hexpress.models.aggregate`) count
a pixel whose centre lies exactly on the circle, so a transcript there is counted too, and a
unit's observed counts and its predicted footprint follow one rule. The pitch is larger than the
diameter in every technology, so closed discs never share a point.

Square bins (:func:`bin_index`, :func:`bin_centers_um`) tile the plane from the origin and are
**half-open**, ``[col, col + 1) * bin_um`` by ``[row, row + 1) * bin_um``, so a point on an edge
belongs to exactly one bin (closed squares would count it twice), as in
:mod:`hexpress.models.aggregate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hexpress.errors import UnitsError

__all__ = [
    "LAYOUTS",
    "LEGACY_DIAMETER_UM",
    "LEGACY_PITCH_UM",
    "VISIUM_DIAMETER_UM",
    "VISIUM_PITCH_UM",
    "DiscLattice",
    "bin_centers_um",
    "bin_index",
]

LAYOUTS = ("square", "hex")
#: Legacy ST (Stahl et al. 2016): 100 µm discs, 200 µm apart on a square lattice.
LEGACY_DIAMETER_UM, LEGACY_PITCH_UM = 100.0, 200.0
#: 10x Visium: 55 µm discs, 100 µm centre to centre on a hexagonal lattice.
VISIUM_DIAMETER_UM, VISIUM_PITCH_UM = 55.0, 100.0


@dataclass(frozen=True)
class DiscLattice:
    """A square or hexagonal lattice of disc sites (see the module docstring).

    Attributes:
        layout: ``"square"`` or ``"hex"``.
        pitch_um: centre-to-centre distance along a row.
        origin_um: ``(x, y)`` of site ``(0, 0)``.
    """

    layout: str
    pitch_um: float
    origin_um: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UnitsError(f"disc layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if not (math.isfinite(self.pitch_um) and self.pitch_um > 0):
            raise UnitsError(f"disc pitch must be a positive number of µm, got {self.pitch_um}.")

    @property
    def row_step_um(self) -> float:
        """Distance between rows: the pitch (square) or ``pitch * sqrt(3) / 2`` (hex)."""
        return self.pitch_um * math.sqrt(3) / 2 if self.layout == "hex" else self.pitch_um

    def _shift(self, row) -> np.ndarray:
        if self.layout == "square":
            return np.zeros(np.shape(row))
        return np.mod(row, 2) * (self.pitch_um / 2)

    def centers_um(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` in µm of sites ``(row, col)`` (offset columns)."""
        row, col = np.asarray(row), np.asarray(col)
        x = self.origin_um[0] + col * self.pitch_um + self._shift(row)
        y = self.origin_um[1] + row * self.row_step_um
        return x.astype(np.float64), y.astype(np.float64)

    @staticmethod
    def doubled_col(row, col) -> np.ndarray:
        """Space Ranger's ``array_col`` of hex sites ``(row, col)``: ``2 * col + row % 2``."""
        row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
        return 2 * col + np.mod(row, 2)

    def nearest(self, x_um, y_um) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nearest site of each point: ``(row, col, squared distance in µm²)``.

        Rows and columns may be negative or beyond any finite grid; callers keep the ones they
        have.
        """
        x = np.asarray(x_um, np.float64) - self.origin_um[0]
        y = np.asarray(y_um, np.float64) - self.origin_um[1]
        p, dy = self.pitch_um, self.row_step_um
        if self.layout == "square":
            col = np.rint(x / p).astype(np.int64)
            row = np.rint(y / dy).astype(np.int64)
            return row, col, (x - col * p) ** 2 + (y - row * dy) ** 2
        # The nearest hex site lies in one of the two rows around the point (a hexagonal
        # Voronoi cell reaches p / sqrt(3) < dy from its site vertically).
        best = np.full(x.shape, np.inf)
        best_r = np.zeros(x.shape, np.int64)
        best_c = np.zeros(x.shape, np.int64)
        r0 = np.floor(y / dy).astype(np.int64)
        for r in (r0, r0 + 1):
            shift = self._shift(r)
            c = np.rint((x - shift) / p).astype(np.int64)
            d2 = (x - (c * p + shift)) ** 2 + (y - r * dy) ** 2
            better = d2 < best
            best = np.where(better, d2, best)
            best_r = np.where(better, r, best_r)
            best_c = np.where(better, c, best_c)
        return best_r, best_c, best

    def assign(self, x_um, y_um, diameter_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, col, inside)`` of each point: its nearest site and whether it lies in that
        site's closed disc of ``diameter_um``."""
        row, col, d2 = self.nearest(x_um, y_um)
        return row, col, d2 <= (diameter_um / 2) ** 2

    def sites_within(
        self, width_um: float, height_um: float, diameter_um: float, *, tol_um: float = 1e-9
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sites with ``row, col >= 0`` whose whole disc lies in ``[0, width] x [0, height]`` µm.

        Returns ``(row, col)`` int64, row by row, columns increasing; ``tol_um`` absorbs
        rounding at the edges.
        """
        r = diameter_um / 2
        ox, oy = self.origin_um
        dy, p = self.row_step_um, self.pitch_um
        n_rows = max(0, math.floor((height_um - r - oy + tol_um) / dy) + 1) if dy > 0 else 0
        rows, cols = [], []
        for row in range(n_rows):
            y = oy + row * dy
            if y - r < -tol_um:
                continue
            x0 = ox + float(self._shift(row))
            c_lo = max(0, math.ceil((r - x0 - tol_um) / p))
            c_hi = math.floor((width_um - r - x0 + tol_um) / p)
            if c_hi < c_lo:
                continue
            c = np.arange(c_lo, c_hi + 1, dtype=np.int64)
            rows.append(np.full(len(c), row, np.int64))
            cols.append(c)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows), np.concatenate(cols)


def bin_index(x_um, y_um, bin_um: float, *, base_um: float | None = None):
    """``(row, col)`` int64 of the half-open square bin of side ``bin_um`` each point is in.

    With ``base_um``, the index is computed from the ``base_um`` bin index (``bin_um`` must be a
    whole multiple of it), so every coarse bin is exactly the union of its base bins even where
    floating point would put a point on an edge on the other side (Visium HD: 8 and 16 µm bins
    from the 2 µm grid).
    """
    x, y = np.asarray(x_um, np.float64), np.asarray(y_um, np.float64)
    if base_um is None:
        return np.floor(y / bin_um).astype(np.int64), np.floor(x / bin_um).astype(np.int64)
    f = bin_um / base_um
    if f < 1 or abs(f - round(f)) > 1e-9:
        raise UnitsError(
            f"bins of {bin_um:g} µm are not a whole multiple of the {base_um:g} µm base bins."
        )
    f = int(round(f))
    r = np.floor(y / base_um).astype(np.int64)
    c = np.floor(x / base_um).astype(np.int64)
    return r // f, c // f


def bin_centers_um(row, col, bin_um: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` in µm of the centres of square bins ``(row, col)``."""
    row, col = np.asarray(row), np.asarray(col)
    return (col + 0.5) * float(bin_um), (row + 0.5) * float(bin_um)
