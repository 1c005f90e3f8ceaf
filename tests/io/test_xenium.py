import numpy as np
import pytest

from hexpress.errors import ConfigError, DataMismatchError, FormatError, InputFileError, UnitsError
from hexpress.io import read_alignment, read_xenium
from hexpress.io.xenium import xenium_to_image_px


def _he_px(truth, xy_um):
    # H&E pixel = (µm - H&E origin in µm) / H&E mpp; origin = offset (Xenium px) * pixel size
    origin_um = truth.extra["M"][:2, 2] * truth.extra["pixel"]
    return (np.asarray(xy_um, float) - origin_um) / truth.mpp_fullres


def test_alignment_maps_he_pixels_to_xenium_pixels(xenium):
    M = read_alignment(xenium.root / "alignment.csv")
    np.testing.assert_allclose(M, xenium.extra["M"])
    xy = np.array([[20.0, 30.0], [70.0, 60.0]])
    px = xenium_to_image_px(xy, M, 0.2125, 0.5)
    np.testing.assert_allclose(px, _he_px(xenium, xy))
    # and back: M @ (he_px, 1) = Xenium px
    back = (M @ np.c_[px, np.ones(2)].T).T[:, :2] * 0.2125
    np.testing.assert_allclose(back, xy)


def test_cells(xenium):
    s = read_xenium(
        xenium.root, image=xenium.root / "he.png", alignment=xenium.root / "alignment.csv"
    )
    a = s.adata
    assert list(a.obs_names) == xenium.barcodes
    assert list(a.var_names) == xenium.genes  # control features dropped
    np.testing.assert_array_equal(a.X.toarray(), xenium.counts)
    np.testing.assert_allclose(a.obsm["spatial"], _he_px(xenium, xenium.xy_fullres))
    np.testing.assert_allclose(a.obs["size_um"], [10.0, 8.0, 12.0])  # area-equivalent diameters
    assert (a.obs["geometry"] == "disc").all()
    assert s.image.mpp == pytest.approx(0.5)  # from the alignment's scale x pixel size
    assert s.meta["mpp_source"].startswith("the alignment")


def test_squares_filter_controls_and_low_quality(xenium):
    s = read_xenium(
        xenium.root,
        image=xenium.root / "he.png",
        alignment=xenium.root / "alignment.csv",
        pool="square",
        size_um=10,
    )
    a = s.adata
    got = {
        u: dict(zip(a.var_names, row, strict=True))
        for u, row in zip(a.obs_names, a.X.toarray(), strict=True)
    }
    # bin (col 2, row 3) holds cell aaa's 3 good transcripts (the NegControl one is dropped)
    assert got["sq_3_2"] == {"EPCAM": 2, "CD3E": 0, "KRT8": 1}
    # cell bbb's CD3E at qv 30 fall in rows 2 and 3 of column 4; the qv 10 one is dropped
    assert got["sq_2_4"]["CD3E"] == 1 and got["sq_3_4"]["CD3E"] == 1
    assert got["sq_6_7"] == {"EPCAM": 1, "CD3E": 0, "KRT8": 1}  # BLANK dropped
    assert a.X.sum() == 7
    np.testing.assert_allclose(
        a.obsm["spatial"][list(a.obs_names).index("sq_3_2")], _he_px(xenium, [[25, 35]])[0]
    )
    assert (a.obs["geometry"] == "square").all() and (a.obs["size_um"] == 10).all()


def test_discs_count_only_transcripts_inside(xenium):
    size, pitch = 8.0, 10.0
    s = read_xenium(
        xenium.root,
        image=xenium.root / "he.png",
        alignment=xenium.root / "alignment.csv",
        pool="disc",
        size_um=size,
        pitch_um=pitch,
    )
    a = s.adata
    assert (a.obs["size_um"] == size).all() and (a.obs["geometry"] == "disc").all()
    # brute force: a hexagonal grid of pitch 10 µm, rows 10 * sqrt(3) / 2 apart
    dy = pitch * np.sqrt(3) / 2
    rr, cc = np.meshgrid(np.arange(-2, 20), np.arange(-2, 20), indexing="ij")
    centres = np.c_[(cc * pitch + (rr % 2) * pitch / 2).ravel(), (rr * dy).ravel()]
    tx = xenium.extra["tx"]
    good = tx[(tx.qv >= 20) & ~tx.feature_name.str.startswith(("NegControl", "BLANK"))]
    xy = good[["x_location", "y_location"]].to_numpy()
    d = np.hypot(xy[:, None, 0] - centres[:, 0], xy[:, None, 1] - centres[:, 1])
    inside = d.min(1) <= size / 2
    assert inside.sum() > 0 and a.X.sum() == inside.sum()
    # unit centres are grid points, in µm and on the image
    got = a.obs[["x_um", "y_um"]].to_numpy()
    assert np.abs(got[:, None] - centres[None]).sum(2).min(1).max() < 1e-9
    np.testing.assert_allclose(a.obsm["spatial"], _he_px(xenium, got))


def test_no_alignment_means_image_in_the_xenium_frame(xenium):
    s = read_xenium(xenium.root, image=xenium.root / "he.png", mpp=0.5)
    np.testing.assert_allclose(s.adata.obsm["spatial"], xenium.xy_fullres / 0.5)


def test_errors(xenium, tmp_path):
    he = xenium.root / "he.png"
    with pytest.raises(InputFileError, match="needs the H&E image"):
        read_xenium(xenium.root)
    with pytest.raises(UnitsError, match="no pixel size and no alignment"):
        read_xenium(xenium.root, image=he)
    with pytest.raises(UnitsError, match="needs size_um"):
        read_xenium(xenium.root, image=he, mpp=0.5, pool="square")
    with pytest.raises(ConfigError, match="pool must be one of"):
        read_xenium(xenium.root, image=he, mpp=0.5, pool="hex")
    with pytest.raises(ConfigError, match="overlap"):
        read_xenium(xenium.root, image=he, mpp=0.5, pool="disc", size_um=10, pitch_um=5)
    (tmp_path / "m.csv").write_text("1,0\n0,1\n")
    with pytest.raises(FormatError, match="3 x 3 affine"):
        read_alignment(tmp_path / "m.csv")
    with pytest.raises(InputFileError, match="Alignment file not found"):
        read_alignment(tmp_path / "none.csv")


def test_cells_missing_from_cell_table(xenium):
    import pandas as pd

    cells = pd.read_parquet(xenium.root / "cells.parquet").iloc[:2]
    cells.to_parquet(xenium.root / "cells.parquet", index=False)
    with pytest.raises(DataMismatchError, match="1 of 3 cells"):
        read_xenium(xenium.root, image=xenium.root / "he.png", mpp=0.5)
