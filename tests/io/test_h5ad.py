import anndata as ad
import numpy as np
import pytest

from hexpress._files import TEMP_GLOB
from hexpress.errors import ConfigError, UnitsError
from hexpress.io import read_h5ad, read_visium, write_h5ad


def test_write_read_roundtrip_keeps_scanpy_layout(visium_v2, tmp_path):
    s = read_visium(visium_v2.root, sample_id="S1", patient_id="P1")
    path = write_h5ad(s, tmp_path / "s.h5ad")
    assert not list(tmp_path.glob(TEMP_GLOB))
    raw = ad.read_h5ad(path)
    lib = raw.uns["spatial"]["S1"]
    # what sc.pl.spatial / sq.pl.spatial_scatter read
    assert set(lib["images"]) == {"hires", "lowres"}
    hires = lib["images"]["hires"]
    assert hires.dtype == np.uint8 and hires.shape[2] == 3 and max(hires.shape[:2]) <= 2000
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(hires.shape[1] / s.image.width)
    # Space Ranger's meaning: the pixels spanning a theoretical 65 µm spot (55 µm capture spots)
    assert sf["spot_diameter_fullres"] == pytest.approx(65 / s.image.mpp)
    np.testing.assert_allclose(raw.obsm["spatial"], s.adata.obsm["spatial"])
    assert raw.uns["hexpress"]["mpp_fullres"] == pytest.approx(s.image.mpp)

    back = read_h5ad(path)
    assert (back.sample_id, back.patient_id, back.technology) == ("S1", "P1", "visium")
    np.testing.assert_array_equal(back.adata.X.toarray(), s.adata.X.toarray())
    assert (back.adata.obs["size_um"] == 55).all()
    # positions land on the stored hires image, at its pixel size
    np.testing.assert_allclose(
        back.adata.obsm["spatial"], s.adata.obsm["spatial"] * sf["tissue_hires_scalef"]
    )
    assert back.image.mpp == pytest.approx(s.image.mpp / sf["tissue_hires_scalef"])
    assert "S1" in back.adata.uns["spatial"]
    # and the file it read writes again
    write_h5ad(back, tmp_path / "again.h5ad")


def _scanpy_style(s, tmp_path, *, keep_array=True):
    """What ``sc.read_visium`` leaves: no hexpress keys; array_row / array_col in obs."""
    path = write_h5ad(s, tmp_path / "s.h5ad")
    a = ad.read_h5ad(path)
    del a.uns["hexpress"]
    del a.obs["size_um"], a.obs["geometry"]
    if not keep_array:
        del a.obs["array_row"], a.obs["array_col"]
    a.write_h5ad(tmp_path / "plain.h5ad")
    return tmp_path / "plain.h5ad"


def test_scanpy_style_file_has_55_um_spots_and_the_pitch_mpp(visium_v2, tmp_path):
    s = read_visium(visium_v2.root, image="lowres")
    b = read_h5ad(_scanpy_style(s, tmp_path))
    # spot_diameter_fullres spans 65 µm: the spots are 55 µm, not diameter x mpp = 65 µm
    assert (b.adata.obs["size_um"] == 55.0).all()
    assert b.technology == "visium"
    assert b.meta["mpp_fullres"] == pytest.approx(s.image.mpp, rel=1e-3)


def test_scanpy_style_file_without_lattice_needs_mpp_with_the_65_um_hint(visium_v2, tmp_path):
    s = read_visium(visium_v2.root)
    path = _scanpy_style(s, tmp_path, keep_array=False)
    with pytest.raises(UnitsError, match=r"Pass mpp=.*65 / .*\(not 55 /"):
        read_h5ad(path)
    b = read_h5ad(path, mpp=s.image.mpp)
    assert b.image.mpp == pytest.approx(s.image.mpp / b.meta["image_scale_from_fullres"])


def test_several_libraries_need_a_choice(visium_v2, tmp_path):
    s = read_visium(visium_v2.root)
    path = write_h5ad(s, tmp_path / "s.h5ad")
    a = ad.read_h5ad(path)
    a.uns["spatial"]["other"] = a.uns["spatial"]["run1"]
    a.write_h5ad(tmp_path / "two.h5ad")
    with pytest.raises(ConfigError, match="holds 2 libraries .*other, run1"):
        read_h5ad(tmp_path / "two.h5ad")
    assert read_h5ad(tmp_path / "two.h5ad", library_id="other").n_units == s.n_units


def test_scanpy_reads_and_plots_what_we_write(visium_v2, tmp_path):
    sc = pytest.importorskip("scanpy", reason="scanpy is in the dev extra")
    import matplotlib

    matplotlib.use("Agg", force=True)
    s = read_visium(visium_v2.root, sample_id="S1", patient_id="P1")
    path = write_h5ad(s, tmp_path / "s.h5ad")
    a = sc.read_h5ad(path)
    gene = str(a.var_names[0])
    ax = sc.pl.spatial(a, color=gene, library_id="S1", show=False)[0]
    # the spots are drawn over the hires image, at its scale
    assert ax.images and ax.collections
