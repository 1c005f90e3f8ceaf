"""The same transcripts in every format, and every format read back by hexpress's readers.

Exactness: a unit's count of a gene is the number of that gene's transcripts inside its
footprint. A 100 µm disc is not a union of 2 µm squares, so the 2 µm bins cannot reproduce a
legacy spot's count exactly; what holds exactly, and is tested, is:

* each legacy ST / Visium spot count equals the transcripts (from ``xenium/transcripts.parquet``)
  inside its disc;
* it lies between the sum of the 2 µm bins entirely inside the disc and the sum of the 2 µm bins
  that touch it (both from the written Visium HD files);
* over any square region on the 16 µm grid, 2, 8 and 16 µm bins and the transcripts give the
  same count of every gene, and over the slide every format's totals agree with the truth.
"""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from hexpress._files import TEMP_GLOB
from hexpress.errors import ConfigError, OutputExistsError
from hexpress.io.tenx_h5 import read_10x_h5
from hexpress.sim.writers import write_all


def _transcripts(out):
    t = pd.read_parquet(out / "xenium" / "transcripts.parquet")
    t["feature_name"] = t["feature_name"].astype(str)
    return t


def _hd(out, b):
    folder = out / "visium_hd" / "binned_outputs" / f"square_{b:03d}um"
    pos = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet").set_index("barcode")
    m = read_10x_h5(folder / "filtered_feature_bc_matrix.h5")
    p = pos.loc[m.barcodes]
    return m, p


def _legacy(out):
    root = out / "legacy_st"
    cnt = pd.read_csv(root / "ST-cnts" / "SIM1.tsv.gz", sep="\t", index_col=0)
    sel = pd.read_csv(root / "ST-spotfiles" / "SIM1_selection.tsv", sep="\t")
    sel.index = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"], strict=True)]
    return cnt, sel.loc[cnt.index]


def test_manifest_and_layout(small_out):
    out, manifest = small_out
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["complete"] is True
    assert set(on_disk["formats"]) == {"legacy_st", "visium", "visium_hd", "xenium", "truth"}
    for rel in [
        "image.tif",
        "thumbnail.png",
        "legacy_st/sections.tsv",
        "visium/outs/spatial/tissue_positions.csv",
        "visium/outs/spatial/scalefactors_json.json",
        "visium/outs/spatial/tissue_hires_image.png",
        "visium/outs/filtered_feature_bc_matrix.h5",
        "visium_hd/binned_outputs/square_008um/spatial/scalefactors_json.json",
        "xenium/experiment.xenium",
        "xenium/cell_boundaries.parquet",
        "truth/cells.h5ad",
        "truth/gene_info.tsv",
    ]:
        assert (out / rel).is_file(), rel
    assert not list(out.rglob(TEMP_GLOB)) and not list(out.rglob("*.partial"))
    sections = pd.read_csv(out / "legacy_st" / "sections.tsv", sep="\t")
    assert list(sections.columns) == [
        "section", "patient", "image", "coord_scale", "um_per_px", "spot_diameter_um",
        "spot_pitch_um",
    ]  # fmt: skip
    pos = pd.read_csv(out / "visium" / "outs" / "spatial" / "tissue_positions.csv")
    assert list(pos.columns) == [
        "barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]  # fmt: skip
    assert ((pos["array_row"] + pos["array_col"]) % 2 == 0).all()
    sf = json.loads(
        (out / "visium_hd/binned_outputs/square_016um/spatial/scalefactors_json.json").read_text()
    )
    assert sf["bin_size_um"] == 16 and sf["microns_per_pixel"] == 0.5
    assert sf["spot_diameter_fullres"] == pytest.approx(32.0)
    hd_pos = pd.read_parquet(
        out / "visium_hd/binned_outputs/square_008um/spatial/tissue_positions.parquet"
    )
    assert hd_pos["barcode"].iloc[1] == "s_008um_00000_00001-1"
    with h5py.File(out / "visium" / "outs" / "filtered_feature_bc_matrix.h5") as f:
        assert f["matrix/shape"][0] == 300
    align = np.loadtxt(out / "xenium" / "synthetic_he_imagealignment.csv", delimiter=",")
    assert align.shape == (3, 3) and align[0, 0] == pytest.approx(0.5 / 0.2125)
    assert json.loads((out / "xenium" / "experiment.xenium").read_text())["pixel_size"] == 0.2125


def test_spot_counts_equal_transcripts_in_disc(small_out):
    out, _ = small_out
    t = _transcripts(out)
    cnt, sel = _legacy(out)
    assert len(cnt) >= 4
    mpp = 0.5
    for sid in cnt.index:
        cx, cy = sel.loc[sid, "pixel_x"] * mpp, sel.loc[sid, "pixel_y"] * mpp
        inside = (t["x_location"] - cx) ** 2 + (t["y_location"] - cy) ** 2 < 50.0**2
        expect = t.loc[inside, "feature_name"].value_counts().reindex(cnt.columns, fill_value=0)
        assert np.array_equal(cnt.loc[sid].to_numpy(), expect.to_numpy()), sid
    # Visium: the same, on the hexagonal lattice
    vis = read_10x_h5(out / "visium" / "outs" / "filtered_feature_bc_matrix.h5")
    pos = pd.read_csv(out / "visium/outs/spatial/tissue_positions.csv").set_index("barcode")
    genes = np.array(vis.genes)
    for i in range(0, len(vis.barcodes), 5):
        row = pos.loc[vis.barcodes[i]]
        cx, cy = row["pxl_col_in_fullres"] * mpp, row["pxl_row_in_fullres"] * mpp
        inside = (t["x_location"] - cx) ** 2 + (t["y_location"] - cy) ** 2 < 27.5**2
        expect = t.loc[inside, "feature_name"].value_counts().reindex(genes, fill_value=0)
        assert np.array_equal(vis.counts[i].toarray().ravel(), expect.to_numpy())


def test_legacy_spot_between_inner_and_outer_2um_bins(small_out):
    out, _ = small_out
    cnt, sel = _legacy(out)
    m2, p2 = _hd(out, 2)
    genes = np.array(m2.genes)
    X2 = m2.counts.tocsc()
    mpp = 0.5
    # bin squares [c*2, c*2+2) x [r*2, r*2+2) µm; nearest and farthest points to the centre
    x0, y0 = p2["array_col"].to_numpy() * 2.0, p2["array_row"].to_numpy() * 2.0
    top = cnt.sum(0).sort_values().index[-6:]  # the most expressed genes
    checked = 0
    for sid in cnt.index:
        cx, cy = sel.loc[sid, "pixel_x"] * mpp, sel.loc[sid, "pixel_y"] * mpp
        nx = np.clip(cx, x0, x0 + 2) - cx
        ny = np.clip(cy, y0, y0 + 2) - cy
        fx = np.maximum(np.abs(x0 - cx), np.abs(x0 + 2 - cx))
        fy = np.maximum(np.abs(y0 - cy), np.abs(y0 + 2 - cy))
        touching = nx**2 + ny**2 < 50.0**2
        within = fx**2 + fy**2 < 50.0**2
        for g in top:
            j = int(np.flatnonzero(genes == g)[0])
            col = X2[:, j].toarray().ravel()
            lo, hi = col[within].sum(), col[touching].sum()
            assert lo <= cnt.loc[sid, g] <= hi
            checked += cnt.loc[sid, g] > 0
    assert checked >= 10


def test_square_regions_agree_across_bin_sizes_and_transcripts(small_out):
    out, _ = small_out
    t = _transcripts(out)
    mats = {b: _hd(out, b) for b in (2, 8, 16)}
    genes = np.array(mats[2][0].genes)
    for r0, c0, size in [(5, 5, 6), (10, 20, 8), (0, 0, 37), (20, 3, 3)]:  # in 16 µm bins
        per_size = []
        for b, (m, p) in mats.items():
            f = 16 // b
            rr, cc = p["array_row"].to_numpy() // f, p["array_col"].to_numpy() // f
            keep = (rr >= r0) & (rr < r0 + size) & (cc >= c0) & (cc < c0 + size)
            per_size.append(np.asarray(m.counts[keep].sum(0)).ravel())
        x0, y0 = c0 * 16.0, r0 * 16.0
        inside = (
            (t["x_location"] >= x0) & (t["x_location"] < x0 + 16 * size)
            & (t["y_location"] >= y0) & (t["y_location"] < y0 + 16 * size)
        )  # fmt: skip
        expect = t.loc[inside, "feature_name"].value_counts().reindex(genes, fill_value=0)
        assert per_size[0].sum() > 0
        for got in per_size:
            assert np.array_equal(got, expect.to_numpy())


def test_totals_agree_with_truth(small_slide, small_out):
    out, _ = small_out
    truth = np.asarray(small_slide.cell_counts.sum(0)).ravel()
    xen = read_10x_h5(out / "xenium" / "cell_feature_matrix.h5")
    assert np.array_equal(np.asarray(xen.counts.sum(0)).ravel(), truth)
    for b in (2, 8, 16):
        m, _ = _hd(out, b)
        assert np.array_equal(np.asarray(m.counts.sum(0)).ravel(), truth)
    npz = np.load(out / "truth" / "cell_counts.npz")
    assert int(npz["data"].sum()) == int(truth.sum())


def test_readers_open_every_format(small_slide, small_out):
    import hexpress.io as io

    out, _ = small_out
    leg = io.read_legacy_st(out / "legacy_st", section="SIM1")
    cnt, _ = _legacy(out)
    assert leg.adata.n_obs == len(cnt) and leg.image.mpp == 0.5
    assert leg.adata.X.sum() == cnt.to_numpy().sum()
    vis = io.read_visium(out / "visium" / "outs", image=out / "visium" / "image.tif")
    assert vis.adata.n_obs > 10 and vis.image.width == small_slide.width
    for b in (2, 8, 16):
        hd = io.read_visium_hd(out / "visium_hd", bin_um=b, image=out / "visium_hd" / "image.tif")
        assert hd.adata.X.sum() == len(small_slide.transcripts)
    xen = io.read_xenium(
        out / "xenium",
        image=out / "xenium" / "synthetic_he_image.ome.tif",
        alignment=out / "xenium" / "synthetic_he_imagealignment.csv",
    )
    assert xen.adata.n_obs == len(small_slide.cells)
    # cell centres land where the truth says, in H&E pixels
    centres = xen.adata.obsm["spatial"]
    expect = small_slide.cells.set_index("cell_id").loc[xen.adata.obs_names, ["x_px", "y_px"]]
    assert np.allclose(centres, expect.to_numpy(), atol=1e-3)


def test_truth_h5ad(small_slide, small_out):
    import anndata as ad

    out, _ = small_out
    a = ad.read_h5ad(out / "truth" / "cells.h5ad")
    assert a.shape == small_slide.cell_counts.shape
    assert "type" in a.obs and "kind" in a.var
    assert a.uns["hexpress"]["mpp"] == 0.5
    assert np.allclose(a.obsm["spatial"], small_slide.cells[["x_px", "y_px"]].to_numpy())


def test_refuses_non_empty_folder_and_overwrites_on_request(small_slide, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        write_all(small_slide, out, formats=("truth",))
    m = write_all(small_slide, out, formats=("truth",), overwrite=True)
    assert set(m["formats"]) == {"truth"}
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "manifest.json").is_file()
    with pytest.raises(ConfigError, match="Unknown format"):
        write_all(small_slide, tmp_path / "p", formats=("visium_v9",))


def test_bins_cut_by_the_image_edge_stay_readable(tmp_path):
    """300 µm is not a whole number of 8 or 16 µm bins: the last, cut bins have their centre
    off the image and are left out of the filtered matrix, so every bin size reads back."""
    from hexpress.io import read_sample
    from hexpress.sim import SimConfig, simulate
    from hexpress.sim.writers import write_all

    slide = simulate(SimConfig(size_mm=0.3, n_genes=12, seed=3))
    write_all(slide, tmp_path / "s", formats=("visium_hd",))
    for b in (2, 8, 16):
        s = read_sample(
            str(tmp_path / "s" / "visium_hd" / "binned_outputs"), "visium-hd", bin_um=b,
            image=str(tmp_path / "s" / "visium_hd" / "image.tif"),
        )  # fmt: skip
        xy = s.adata.obsm["spatial"]
        assert (xy < [s.image.width, s.image.height]).all()
        assert 0 < s.adata.n_obs <= len(np.arange(b / 2, 300, b)) ** 2
