"""Export to SpatialData zarr, read back by spatialdata itself."""

import warnings

import numpy as np
import pytest

from hexpress.io import read_visium, read_visium_hd
from hexpress.io.spatialdata import write_spatialdata


def _read(path):
    sd = pytest.importorskip("spatialdata", reason="spatialdata (the spatialdata extra) is absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.read_zarr(path)


def test_visium_spots_round_trip(visium_v2, tmp_path):
    pytest.importorskip("spatialdata", reason="spatialdata (the spatialdata extra) is absent")
    s = read_visium(visium_v2.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_spatialdata(s, tmp_path / "s.zarr")
    back = _read(tmp_path / "s.zarr")
    t = back.tables["table"]
    np.testing.assert_array_equal(t.X.toarray(), visium_v2.counts)
    circles = back.shapes["units"]
    np.testing.assert_allclose(
        np.stack([circles.geometry.x, circles.geometry.y], 1), s.adata.obsm["spatial"]
    )
    np.testing.assert_allclose(circles["radius"] * 2 * s.image.mpp, 55.0)
    assert t.uns["hexpress"]["mpp"] == pytest.approx(s.image.mpp)


def test_hd_bins_are_squares(visium_hd, tmp_path):
    pytest.importorskip("spatialdata", reason="spatialdata (the spatialdata extra) is absent")
    s = read_visium_hd(visium_hd.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_spatialdata(s, tmp_path / "hd.zarr")
    sq = _read(tmp_path / "hd.zarr").shapes["units"]
    side_px = 8 / s.image.mpp
    np.testing.assert_allclose(sq.geometry.area, side_px**2)
    np.testing.assert_allclose(np.stack([sq.centroid.x, sq.centroid.y], 1), s.adata.obsm["spatial"])
