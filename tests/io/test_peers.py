"""Peer agreement: scanpy and spatialdata-io read the same real folders as hexpress.

Exact agreement on barcodes and counts, within 0.5 px on positions (full-resolution px).
The peers come with the ``dev`` extra; where one does not install, its tests skip saying so.
"""

import warnings

import numpy as np
import pytest

from hexpress.io import read_visium

pytestmark = pytest.mark.realdata

VISIUM = [
    ("real_fixtures", "visium_mouse_brain_mini"),
    ("visium_fixtures", "spaceranger_1.0_human_heart"),
]


def _folder(real_fixtures_dir, where, name):
    path = real_fixtures_dir.parent / where / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path}")
    return path


def _ours_fullres(path):
    s = read_visium(path)
    return s, s.adata.obsm["spatial"] / s.meta["image_scale_from_fullres"]


@pytest.mark.parametrize(("where", "name"), VISIUM)
def test_scanpy_read_visium_agrees(real_fixtures_dir, where, name):
    sc = pytest.importorskip("scanpy", reason="scanpy (dev extra) is not installed")
    path = _folder(real_fixtures_dir, where, name)
    s, xy = _ours_fullres(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read_visium is deprecated in favour of spatialdata-io
        peer = sc.read_visium(path)
    peer = peer[peer.obs["in_tissue"] == 1]
    assert list(peer.obs_names) == list(s.adata.obs_names)
    np.testing.assert_array_equal(peer.X.toarray(), s.adata.X.toarray())
    np.testing.assert_allclose(np.asarray(peer.obsm["spatial"], float), xy, atol=0.5)
    lib = next(iter(peer.uns["spatial"].values()))
    assert lib["scalefactors"]["tissue_lowres_scalef"] == s.meta["image_scale_from_fullres"]


@pytest.mark.parametrize(("where", "name"), VISIUM)
def test_spatialdata_io_visium_agrees(real_fixtures_dir, where, name):
    sdio = pytest.importorskip(
        "spatialdata_io", reason="spatialdata-io (dev extra) is not installed here"
    )
    path = _folder(real_fixtures_dir, where, name)
    s, xy = _ours_fullres(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sdio.visium(path, dataset_id="peer")
    t = sdata.tables["table"]
    t = t[t.obs["in_tissue"] == 1]
    assert list(t.obs_names) == list(s.adata.obs_names)
    np.testing.assert_array_equal(t.X.toarray(), s.adata.X.toarray())
    np.testing.assert_allclose(np.asarray(t.obsm["spatial"], float), xy, atol=0.5)
    circles = sdata.shapes["peer"]
    # spatialdata-io draws spot_diameter_fullres (the 65 µm spot) as the circle's diameter
    assert float(circles["radius"].iloc[0]) * 2 * s.meta["mpp_fullres"] == pytest.approx(
        65, rel=0.01
    )


def test_spatialdata_io_visium_hd_needs_what_the_fixture_lacks(real_fixtures_dir):
    sdio = pytest.importorskip(
        "spatialdata_io", reason="spatialdata-io (dev extra) is not installed here"
    )
    path = _folder(real_fixtures_dir, "real_fixtures", "visium_hd_mouse_brain_mini")
    from hexpress.io import read_visium_hd

    ours = read_visium_hd(path / "binned_outputs", bin_um=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = sdio.visium_hd(
                path, dataset_id="peer", bin_size=2, load_segmentations_only=False
            )
    except (RuntimeError, FileNotFoundError, KeyError) as e:
        pytest.skip(f"spatialdata-io visium_hd cannot read this cut-down fixture: {e}")
    t = next(iter(sdata.tables.values()))
    assert sorted(t.obs_names) == sorted(ours.adata.obs_names)
