import numpy as np
import pandas as pd
import pytest

from hexpress.errors import ConfigError, DataMismatchError, GeometryError, InputFileError
from hexpress.io import PillowImage, list_sections, read_legacy_st

HER2ST_SPOTS = {"A1": 346, "C2": 187, "C3": 180, "C4": 184, "C5": 181, "C6": 178}


def test_synthetic_section_joins_counts_and_selection(legacy):
    s = read_legacy_st(legacy.root, "S1")
    a = s.adata
    # selected spots with counts only: 4x2 has no counts, 5x3 is not selected
    assert list(a.obs_names) == legacy.barcodes
    np.testing.assert_array_equal(a.X.toarray(), legacy.counts)
    np.testing.assert_allclose(a.obsm["spatial"], legacy.xy_fullres)  # pixel * coord_scale
    assert s.image.mpp == 2.0 and (a.obs["size_um"] == 100).all()
    assert (s.patient_id, s.technology) == ("P", "legacy-st")
    assert s.meta["spots_selected_without_counts"] == 1
    assert list(a.obs["array_x"]) == [1, 2, 3]


def test_unknown_section_lists_valid_ones(legacy):
    with pytest.raises(ConfigError, match="valid sections: S1"):
        read_legacy_st(legacy.root, "Z9")


def test_missing_files(tmp_path, legacy):
    with pytest.raises(InputFileError, match="does not exist"):
        read_legacy_st(tmp_path / "none", "S1")
    (legacy.root / "ST-cnts" / "S1.tsv.gz").unlink()
    with pytest.raises(InputFileError, match=r"Counts file .*ST-cnts/S1\.tsv\.gz"):
        read_legacy_st(legacy.root, "S1")


def test_missing_sections_table(legacy):
    (legacy.root / "sections.tsv").unlink()
    with pytest.raises(InputFileError, match="sections.tsv"):
        list_sections(legacy.root)


def test_missing_image(legacy):
    (legacy.root / "ST-imgs" / "s1.png").unlink()
    with pytest.raises(InputFileError, match="s1.png"):
        read_legacy_st(legacy.root, "S1")


def test_wrong_coord_scale_puts_spots_outside(tmp_path, builders):
    t = builders["legacy"](tmp_path / "l", coord_scale=2.0)
    with pytest.raises(GeometryError, match=r"outside the 600 x 400 px image.*coord_scale"):
        read_legacy_st(t.root, "S1")


def test_no_selected_spot_with_counts(legacy):
    p = legacy.root / "ST-cnts" / "S1.tsv.gz"
    c = pd.read_csv(p, sep="\t", index_col=0)
    c.index = ["9x9", "8x8", "7x7", "6x6"]
    c.to_csv(p, sep="\t", compression="gzip")
    with pytest.raises(DataMismatchError, match="none of the 4 selected spots"):
        read_legacy_st(legacy.root, "S1")


@pytest.mark.realdata
def test_her2st_all_sections(her2st_dir):
    assert list_sections(her2st_dir) == list(HER2ST_SPOTS)
    for section, n in HER2ST_SPOTS.items():
        s = read_legacy_st(her2st_dir, section)
        assert s.n_units == n, section
        assert isinstance(s.image, PillowImage) and s.image._array is None  # not decoded
        assert s.mpp == (3.19 if section == "A1" else 0.688)
        assert (s.adata.obs["size_um"] == 100.0).all()
        xy = s.adata.obsm["spatial"]
        assert (xy > 0).all() and (xy[:, 0] < s.image.width).all()
        assert (xy[:, 1] < s.image.height).all()
        assert s.patient_id == section[0]


@pytest.mark.realdata
@pytest.mark.slow  # decodes the 9274 x 9911 px JPEG
def test_her2st_c2_spots_are_on_tissue(her2st_dir):
    s = read_legacy_st(her2st_dir, "C2")
    img, scale = s.image.thumbnail(800)
    xy = s.adata.obsm["spatial"] * scale
    sat = img.max(2).astype(float) - img.min(2)  # stained tissue is coloured, glass is grey
    at = sat[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    assert np.median(at) > 3 * np.median(sat)
    assert (at > np.median(sat)).mean() > 0.95
