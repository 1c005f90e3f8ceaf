"""hexpress.data.lattice: the one home of spot and bin lattices and their membership rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hexpress.data.lattice import DiscLattice, bin_centers_um, bin_index
from hexpress.errors import UnitsError


def _brute_nearest(lat: DiscLattice, x, y, span=30):
    r, c = np.meshgrid(np.arange(-span, span), np.arange(-span, span), indexing="ij")
    sx, sy = lat.centers_um(r.ravel(), c.ravel())
    d2 = (x[:, None] - sx[None]) ** 2 + (y[:, None] - sy[None]) ** 2
    k = d2.argmin(1)
    return r.ravel()[k], c.ravel()[k], d2.min(1)


@pytest.mark.parametrize("layout", ["hex", "square"])
def test_nearest_site_matches_brute_force(layout, rng):
    lat = DiscLattice(layout, 100.0, (27.5, 32.5))
    x, y = rng.uniform(-200, 1500, 2000), rng.uniform(-200, 1500, 2000)
    row, col, d2 = lat.nearest(x, y)
    br, bc, bd2 = _brute_nearest(lat, x, y)
    np.testing.assert_allclose(d2, bd2, rtol=1e-9, atol=1e-9)
    # ties (a point equidistant from two sites) may pick either; no uniform point is one
    assert (row == br).all() and (col == bc).all()


def test_discs_are_closed_on_the_circle_and_open_beyond():
    lat = DiscLattice("hex", 100.0)
    # site (1, 2) is at (250, 86.60...); points exactly 27.5 µm to its right and below
    cx, cy = lat.centers_um(1, 2)
    x = np.array([cx + 27.5, cx + 27.5 + 1e-6, float(cx), float(cx)])
    y = np.array([cy, cy, cy + 27.5, cy - 27.500001])
    row, col, inside = lat.assign(x, y, 55.0)
    assert inside.tolist() == [True, False, True, False]
    assert (row == 1).all() and (col == 2).all()


def test_closed_disc_rule_is_the_footprint_rule():
    """A transcript on the circle counts for the disc, and so does a pixel whose centre is on it
    in the footprint predictions are summed over: one rule for observed and predicted."""
    from hexpress.models.aggregate import Footprints, footprint_weights

    fp = Footprints(np.array([[10.5, 10.5]]), "disc", size_px=np.array([10.0]))
    w = footprint_weights(fp, (21, 21), 1).toarray().reshape(21, 21)
    assert w[10, 15] > 0 and w[10, 16] == 0  # pixel centre (15.5, 10.5) is 5 px away
    lat = DiscLattice("square", 100.0, (10.5, 10.5))
    assert lat.assign([15.5, 16.5], [10.5, 10.5], 10.0)[2].tolist() == [True, False]


def test_square_bins_are_half_open_and_coarse_bins_are_unions_of_base_bins(rng):
    row, col = bin_index([0.0, 7.999, 8.0, 15.99, 16.0], [0.0] * 5, 8.0)
    assert col.tolist() == [0, 0, 1, 1, 2] and (row == 0).all()
    x, y = rng.uniform(0, 500, 5000), rng.uniform(0, 500, 5000)
    r2, c2 = bin_index(x, y, 2.0)
    r16, c16 = bin_index(x, y, 16.0, base_um=2.0)
    assert (r16 == r2 // 8).all() and (c16 == c2 // 8).all()
    cx, cy = bin_centers_um(r16, c16, 16.0)
    assert (np.abs(cx - x) <= 8).all() and (np.abs(cy - y) <= 8).all()
    with pytest.raises(UnitsError, match="whole multiple"):
        bin_index(x, y, 3.0, base_um=2.0)


@pytest.mark.parametrize("layout", ["hex", "square"])
def test_sites_within_keeps_exactly_the_discs_that_fit(layout):
    lat = DiscLattice(layout, 100.0, (27.5, 27.5))
    w, h = 1234.0, 987.0
    row, col = lat.sites_within(w, h, 55.0)
    x, y = lat.centers_um(row, col)
    assert (x - 27.5 >= -1e-9).all() and (x + 27.5 <= w + 1e-9).all()
    assert (y - 27.5 >= -1e-9).all() and (y + 27.5 <= h + 1e-9).all()
    r, c = np.meshgrid(np.arange(0, 40), np.arange(0, 40), indexing="ij")
    ax, ay = lat.centers_um(r.ravel(), c.ravel())
    fits = (ax - 27.5 >= 0) & (ax + 27.5 <= w) & (ay - 27.5 >= 0) & (ay + 27.5 <= h)
    assert len(row) == int(fits.sum())
    # row by row, columns increasing (the order ids and obs rows follow)
    order = np.lexsort((col, row))
    assert (order == np.arange(len(row))).all()


def test_doubled_columns_are_space_ranger_numbering():
    lat = DiscLattice("hex", 100.0)
    row, col = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 0])
    dc = lat.doubled_col(row, col)
    assert dc.tolist() == [0, 2, 1, 3, 0]
    assert ((row + dc) % 2 == 0).all()
    x, _ = lat.centers_um(row, col)
    np.testing.assert_allclose(x, dc * 50.0)  # array_col steps 50 µm along a row


def test_bad_lattice_is_refused():
    with pytest.raises(UnitsError, match="layout"):
        DiscLattice("triangle", 100.0)
    with pytest.raises(UnitsError, match="pitch"):
        DiscLattice("hex", -1.0)
    assert DiscLattice("hex", 100.0).row_step_um == pytest.approx(100 * math.sqrt(3) / 2)


def test_every_grid_uses_the_lattice():
    """The simulator's Visium grid, the prediction disc grid and the Xenium pooling put site
    ``(row, col)`` at the same place for the same lattice."""
    import pandas as pd

    from hexpress.infer.units import grid_discs
    from hexpress.io.xenium import _pool_transcripts
    from hexpress.sim import binning as B

    g = B.visium_grid(600.0, 500.0)
    lat = g.lattice
    assert ((g.row + g.col) % 2 == 0).all()
    np.testing.assert_allclose(g.x_um, lat.origin_um[0] + g.col * 50.0)
    idx = B.assign_discs(g, g.x_um + 27.5, g.y_um)  # on the circle: inside (closed)
    assert (idx == np.arange(len(g))).all()

    units = grid_discs(600, 500, 1.0, 55.0)
    r_um = 27.5
    x, y = DiscLattice("hex", 100.0, (r_um, r_um)).centers_um(
        units.obs["array_row"], units.obs["array_col"]
    )
    np.testing.assert_allclose(units.centers_level0_px, np.stack([x, y], 1))

    hx, hy = DiscLattice("hex", 100.0).centers_um([3, 4], [2, 2])
    tx = pd.DataFrame({"x_location": hx + 27.5, "y_location": hy, "feature_name": ["A", "A"]})
    counts, ids, centers, grid = _pool_transcripts(tx, "hex", 55.0, 100.0, ["A"])
    assert ids == ["disc_3_2", "disc_4_2"] and counts.sum() == 2
    np.testing.assert_allclose(centers, np.stack([hx, hy], 1))
