"""The simulated genes span the range of spatial structure and predictability of real tissue."""

import numpy as np
import pytest

from hexpress.sim import binning as B
from hexpress.sim.diagnostics import (
    feature_predictability,
    log_normalize,
    morans_i,
    spot_features,
)


def test_morans_i_known_patterns(rng):
    xy = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    smooth = xy[:, 0] + 0.1 * rng.standard_normal(len(xy))
    noise = rng.standard_normal(len(xy))
    const = np.ones(len(xy))
    mi = morans_i(np.stack([smooth, noise, const], 1), xy)
    assert mi[0] > 0.8 and abs(mi[1]) < 0.15 and np.isnan(mi[2])


def _visium_spots(slide):
    grid = B.visium_grid(slide.width * slide.mpp, slide.height * slide.mpp)
    tx = slide.transcripts
    unit = B.assign_discs(grid, tx["x_um"].to_numpy(), tx["y_um"].to_numpy())
    counts = B.count_matrix(unit, tx["gene"].to_numpy(), len(grid), len(slide.genes))
    keep = np.asarray(counts.sum(1)).ravel() >= 200
    centres = np.stack([grid.x_um, grid.y_um], 1)[keep] / slide.mpp
    return counts[keep], centres, grid.diameter_um / slide.mpp


@pytest.mark.slow
def test_moran_spread_and_feature_model(medium_slide):
    counts, centres, diam = _visium_spots(medium_slide)
    assert len(centres) > 150
    Y = log_normalize(counts)
    kind = medium_slide.gene_info["kind"].to_numpy()
    expressed = np.asarray(counts.sum(0)).ravel() >= 0.2 * len(centres)
    mi = morans_i(Y, centres)
    ok = expressed & np.isfinite(mi)
    # from near zero (noise genes) to high (program / domain / hidden-field genes)
    assert np.nanmedian(mi[ok & (kind == "noise")]) < 0.1
    assert np.nanmax(mi[ok]) > 0.4
    assert np.nanmedian(mi[ok & (kind == "hidden_field")]) > 0.15
    # predictability from colour/texture alone, on genes with >= 3 counts per spot on average
    # (sparser genes pick up a library-size artefact of log-normalisation)
    X = spot_features(medium_slide.image, centres, diam)
    r = feature_predictability(X, Y, centres)
    well = ok & (np.asarray(counts.sum(0)).ravel() >= 3 * len(centres))
    prog = np.nanmedian(r[well & (kind == "program")])
    noise = np.nanmedian(r[well & (kind == "noise")])
    assert prog > 0.4
    assert prog > noise + 0.2
