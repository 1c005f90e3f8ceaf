import json

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

from hexpress.errors import (
    DataMismatchError,
    FormatError,
    GeometryError,
    InputFileError,
    UnitsError,
)
from hexpress.io import TiffImage, read_visium, write_tiff
from hexpress.io.tenx_h5 import write_10x_h5


def _assert_matches(sample, truth, scale):
    a = sample.adata
    assert list(a.obs_names) == truth.barcodes
    assert list(a.var_names) == truth.genes
    np.testing.assert_array_equal(a.X.toarray(), truth.counts)
    np.testing.assert_allclose(a.obsm["spatial"], truth.xy_fullres * scale)
    assert (a.obs["size_um"] == 55.0).all() and (a.obs["geometry"] == "disc").all()


def test_v2_roundtrip_on_hires(visium_v2):
    s = read_visium(visium_v2.root, sample_id="S", patient_id="P")
    _assert_matches(s, visium_v2, 0.25)
    assert s.technology == "visium" and (s.sample_id, s.patient_id) == ("S", "P")
    # mpp measured from the 100 µm spot pitch (positions in whole px): 0.5 µm per full-res px,
    # / 0.25 for hires; never 55 / spot_diameter_fullres (that would be 0.423)
    assert s.meta["mpp_fullres"] == pytest.approx(0.5, rel=1e-3)
    assert s.meta["mpp_source"].startswith("the 100 µm Visium spot pitch")
    assert s.image.mpp == pytest.approx(2.0, rel=1e-3)
    assert s.meta["image_kind"] == "hires"
    assert list(s.adata.var["gene_ids"])[:2] == ["ENSG00000", "ENSG00001"]


def test_run_folder_and_outs_folder_read_the_same(visium_v2):
    a = read_visium(visium_v2.root)
    b = read_visium(visium_v2.root.parent)
    assert a.sample_id == b.sample_id == "run1"
    np.testing.assert_array_equal(a.adata.obsm["spatial"], b.adata.obsm["spatial"])


def test_v1_positions_and_matrix_market(tmp_path, builders):
    t = builders["visium"](tmp_path / "r", v1=True, mtx=True)
    s = read_visium(t.root, image="lowres")
    _assert_matches(s, t, 0.25 * 0.3)


def test_fullres_tiff_with_given_mpp_is_read_lazily(tmp_path, visium_v2, monkeypatch):
    img = np.full((3000, 4000, 3), 230, np.uint8)
    path = write_tiff(tmp_path / "full.tif", img, mpp=0.5, tile=256)
    del img

    def boom(*a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(TiffImage, "_read_level", boom)
    s = read_visium(visium_v2.root, image=path)
    assert isinstance(s.image, TiffImage)
    _assert_matches(s, visium_v2, 1.0)
    assert s.image.mpp == 0.5 and s.meta["mpp_source"] == "metadata of full.tif"
    assert s.summary()["image_width_px"] == 4000


def test_blank_hires_falls_back_to_lowres(visium_v2):
    p = visium_v2.root / "spatial" / "tissue_hires_image.png"
    w, h = Image.open(p).size
    Image.new("RGBA", (w, h)).save(p)
    s = read_visium(visium_v2.root)
    assert s.meta["image_kind"] == "lowres"


def test_missing_folder_and_files(tmp_path, visium_v2):
    with pytest.raises(InputFileError, match="does not exist"):
        read_visium(tmp_path / "nope")
    (visium_v2.root / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(InputFileError, match="scalefactors_json.json"):
        read_visium(visium_v2.root)


def test_missing_matrix_names_candidates(visium_v2):
    (visium_v2.root / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(InputFileError, match="filtered_feature_bc_matrix.h5"):
        read_visium(visium_v2.root)


def test_missing_image_file(visium_v2, tmp_path):
    with pytest.raises(InputFileError, match="Image file not found"):
        read_visium(visium_v2.root, image=tmp_path / "missing.tif")


def test_unreadable_image(visium_v2):
    (visium_v2.root / "spatial" / "tissue_hires_image.png").write_bytes(b"not a png")
    with pytest.raises(FormatError, match="tissue_hires_image.png"):
        read_visium(visium_v2.root, image="hires")


def test_no_spot_diameter_still_has_the_pitch(visium_v2):
    sf = visium_v2.root / "spatial" / "scalefactors_json.json"
    sf.write_text(json.dumps({"tissue_hires_scalef": 0.25}))
    s = read_visium(visium_v2.root)
    assert s.meta["mpp_fullres"] == pytest.approx(0.5, rel=1e-3)


def test_no_pitch_and_no_scale_factors_means_no_mpp(visium_v2):
    sf = visium_v2.root / "spatial" / "scalefactors_json.json"
    sf.write_text(json.dumps({"tissue_hires_scalef": 0.25}))
    pos = visium_v2.root / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(pos)
    df["array_row"] = 0  # all spots on one line: the lattice fit is undetermined
    df.to_csv(pos, index=False)
    with pytest.raises(UnitsError, match="mpp=... in Python or --mpp"):
        read_visium(visium_v2.root)
    s = read_visium(visium_v2.root, mpp=0.5)  # the user's value makes it readable
    assert s.image.mpp == pytest.approx(2.0)
    sf.write_text(json.dumps({"spot_diameter_fullres": 110.0}))
    with pytest.raises(UnitsError, match="no tissue_hires_scalef"):
        read_visium(visium_v2.root)


def test_wrong_scale_factor_puts_spots_outside(visium_v2):
    sf = visium_v2.root / "spatial" / "scalefactors_json.json"
    d = json.loads(sf.read_text())
    d["tissue_hires_scalef"] = 1.0  # positions would be full-res on a hires image
    sf.write_text(json.dumps(d))
    with pytest.raises(GeometryError, match=r"outside the .* image.*scale factor"):
        read_visium(visium_v2.root)


def _rewrite_matrix(truth, counts, barcodes=None):
    write_10x_h5(
        truth.root / "filtered_feature_bc_matrix.h5",
        sp.csr_matrix(counts),
        barcodes if barcodes is not None else truth.barcodes,
        truth.genes,
    )


def test_counts_without_positions_says_how_many(visium_v2):
    bcs = list(visium_v2.barcodes)
    bcs[:3] = ["XXX-1", "YYY-1", "ZZZ-1"]
    _rewrite_matrix(visium_v2, visium_v2.counts, bcs)
    with pytest.raises(DataMismatchError, match=r"3 of 12 barcodes .* have no position"):
        read_visium(visium_v2.root)


def test_duplicate_barcodes(visium_v2):
    bcs = list(visium_v2.barcodes)
    bcs[1] = bcs[0]
    _rewrite_matrix(visium_v2, visium_v2.counts, bcs)
    with pytest.raises(GeometryError, match="duplicate barcode"):
        read_visium(visium_v2.root)


def test_duplicate_positions(visium_v2):
    p = visium_v2.root / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(p)
    pd.concat([df, df.iloc[:1]]).to_csv(p, index=False)
    with pytest.raises(FormatError, match="listed twice"):
        read_visium(visium_v2.root)


@pytest.mark.parametrize(("value", "message"), [(-1.0, "negative counts"), (np.nan, "non-finite")])
def test_bad_count_values(visium_v2, value, message):
    path = visium_v2.root / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "r+") as f:  # the format stores int32; rewrite data as float
        data = f["matrix/data"][()].astype(float)
        data[0] = value
        del f["matrix/data"]
        f["matrix/data"] = data
    with pytest.raises(FormatError, match=message):
        read_visium(visium_v2.root)


@pytest.mark.realdata
def test_real_space_ranger_fixtures(visium_fixtures_dir):
    heart = read_visium(visium_fixtures_dir / "spaceranger_1.0_human_heart")
    assert heart.n_units == 100 and heart.adata.n_vars == 100
    assert heart.meta["image_kind"] == "lowres"  # its hires PNG is blank
    # the 100 µm pitch, and 65 µm over spot_diameter_fullres, both give 0.7268 µm/px
    assert heart.meta["mpp_fullres"] == pytest.approx(65 / 89.42751063343188, rel=0.01)
    assert heart.image.mpp == pytest.approx(16.15, rel=0.01)  # the lowres PNG
    brain = read_visium(visium_fixtures_dir / "spaceranger_mtx_mouse_brain")
    assert brain.n_units == 22 and brain.adata.n_vars == 50  # in-tissue of 50 raw barcodes
    assert brain.meta["mpp_fullres"] == pytest.approx(65 / 89.44476048022638, rel=0.01)
    assert brain.image.mpp == pytest.approx(14.24, rel=0.01)
    for s in (heart, brain):
        xy = s.adata.obsm["spatial"]
        assert (xy >= 0).all() and (xy[:, 0] < s.image.width).all()
        assert (xy[:, 1] < s.image.height).all()
        # spots sit on tissue: stained (coloured) pixels, unlike the grey glass around it
        img, scale = s.image.thumbnail(600)
        sat = img.max(2).astype(float) - img.min(2)
        at = sat[(xy[:, 1] * scale).astype(int), (xy[:, 0] * scale).astype(int)]
        assert np.median(at) > 3 * np.median(sat)
