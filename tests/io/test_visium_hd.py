import json

import numpy as np
import pytest

from hexpress.errors import ConfigError, InputFileError
from hexpress.io import read_visium_hd


def test_binned_outputs_roundtrip(visium_hd):
    s = read_visium_hd(visium_hd.root, bin_um=8)
    a = s.adata
    assert list(a.obs_names) == visium_hd.barcodes  # the off-tissue bin is left out
    np.testing.assert_array_equal(a.X.toarray(), visium_hd.counts)
    scalef = visium_hd.extra["hires_scalef"]
    np.testing.assert_allclose(a.obsm["spatial"], visium_hd.xy_fullres * scalef)
    assert (a.obs["geometry"] == "square").all() and (a.obs["size_um"] == 8).all()
    assert s.image.mpp == pytest.approx(0.25 / scalef)  # microns_per_pixel / scalef
    assert s.technology == "visium-hd" and s.sample_id == "hd"
    # neighbouring bins are one bin side apart on the image
    d = np.diff(a.obsm["spatial"][:2, 0])[0] * s.image.mpp
    assert d == pytest.approx(8.0)


def test_square_folder_directly(visium_hd):
    s = read_visium_hd(visium_hd.extra["square"])
    assert s.meta["bin_um"] == 8 and s.n_units == len(visium_hd.barcodes)
    with pytest.raises(ConfigError, match="holds 8 µm bins but bin_um=16"):
        read_visium_hd(visium_hd.extra["square"], bin_um=16)


def test_missing_bin_size_lists_present_ones(visium_hd):
    with pytest.raises(InputFileError, match=r"No square_016um .*present: square_008um"):
        read_visium_hd(visium_hd.root, bin_um=16)


def test_mpp_from_bin_size_without_microns_per_pixel(visium_hd):
    sf = visium_hd.extra["square"] / "spatial" / "scalefactors_json.json"
    d = json.loads(sf.read_text())
    del d["microns_per_pixel"]
    sf.write_text(json.dumps(d))
    s = read_visium_hd(visium_hd.root)
    assert s.meta["mpp_fullres"] == pytest.approx(0.25)  # the 8 µm bin pitch over 32 px
    assert "8 µm bin pitch" in s.meta["mpp_source"]


def test_missing_positions(visium_hd):
    (visium_hd.extra["square"] / "spatial" / "tissue_positions.parquet").unlink()
    with pytest.raises(InputFileError, match="tissue_positions.parquet"):
        read_visium_hd(visium_hd.root)
