"""``hexpress convert``: every supported format to one scanpy-style .h5ad."""

import anndata as ad
import numpy as np
import pytest

from hexpress.cli import app
from hexpress.io import read_h5ad


def _convert(runner, src, fmt, out, *extra):
    r = runner.invoke(app, ["convert", str(src), "--format", fmt, "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return ad.read_h5ad(out)


def _check_scanpy_layout(a, counts, geometry, size_um, mpp_fullres):
    np.testing.assert_array_equal(a.X.toarray(), counts)  # raw counts in X
    lib = next(iter(a.uns["spatial"].values()))
    assert {"hires", "lowres"} <= set(lib["images"])
    assert {"tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres"} <= set(
        lib["scalefactors"]
    )
    assert (a.obs["geometry"] == geometry).all()
    np.testing.assert_allclose(a.obs["size_um"], size_um)
    hx = a.uns["hexpress"]
    assert hx["mpp_fullres"] == pytest.approx(mpp_fullres, rel=1e-3) and hx["mpp_source"]


def test_convert_visium_reads_back_the_same(runner, tmp_path, io_builders):
    t = io_builders.make_visium(tmp_path / "run")
    a = _convert(runner, t.root, "visium", tmp_path / "v.h5ad")
    # level 0 of the file is the hires PNG: 4 full-resolution px per px
    _check_scanpy_layout(a, t.counts, "disc", 55.0, 2.0)
    assert a.uns["hexpress"]["source_format"] == "visium"
    sf = next(iter(a.uns["spatial"].values()))["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(65 / 2.0, rel=1e-3)  # Space Ranger's 65 µm
    back = read_h5ad(tmp_path / "v.h5ad")
    np.testing.assert_array_equal(back.adata.X.toarray(), t.counts)
    assert (back.adata.obs["size_um"] == 55).all()


def test_convert_visium_hd_legacy_and_xenium(runner, tmp_path, io_builders):
    hd = io_builders.make_visium_hd(tmp_path / "hd")
    a = _convert(runner, hd.root, "visium-hd", tmp_path / "hd.h5ad", "--bin-um", "8")
    _check_scanpy_layout(a, hd.counts, "square", 8.0, 0.5)  # hires: 0.25 / 0.5
    lg = io_builders.make_legacy(tmp_path / "lg")
    a = _convert(runner, lg.root, "legacy-st", tmp_path / "lg.h5ad")
    _check_scanpy_layout(a, lg.counts, "disc", 100.0, 2.0)
    xe = io_builders.make_xenium(tmp_path / "xe")
    a = _convert(
        runner, xe.root, "xenium", tmp_path / "xe.h5ad", "--image", str(xe.root / "he.png"),
        "--alignment", str(xe.root / "alignment.csv"),
    )  # fmt: skip
    _check_scanpy_layout(a, xe.counts, "disc", [10.0, 8.0, 12.0], 0.5)


def test_convert_h5ad_library_and_refusals(runner, tmp_path, io_builders):
    t = io_builders.make_visium(tmp_path / "run")
    _convert(runner, t.root, "visium", tmp_path / "v.h5ad")
    a = _convert(runner, tmp_path / "v.h5ad", "h5ad", tmp_path / "again.h5ad", "--library", "run")
    np.testing.assert_array_equal(a.X.toarray(), t.counts)
    r = runner.invoke(
        app, ["convert", str(t.root), "--format", "visium", "--out", str(tmp_path / "v.h5ad")]
    )
    assert r.exit_code != 0 and "--overwrite" in str(r.exception)
    r = runner.invoke(
        app, ["convert", str(t.root), "--format", "visium", "--out", str(tmp_path / "v.txt")]
    )
    assert r.exit_code != 0 and ".h5ad" in str(r.exception)
