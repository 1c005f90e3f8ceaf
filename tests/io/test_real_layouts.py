"""Real layouts the readers once got wrong, each built as the instruments' software writes it."""

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from hexpress import _keys as K
from hexpress.errors import ConfigError, FormatError, InputFileError
from hexpress.io import read_h5ad, read_visium, read_visium_hd, read_xenium, write_h5ad, write_tiff
from hexpress.io import xenium as xen
from hexpress.io.tenx_h5 import write_10x_h5


# -- Visium --------------------------------------------------------------------------------------
def test_fullres_tiff_metadata_wins_over_the_pitch_and_warns(visium_v2, tmp_path, caplog):
    path = write_tiff(tmp_path / "full.tif", np.full((3000, 4000, 3), 200, np.uint8), mpp=0.45)
    with caplog.at_level(logging.WARNING):
        s = read_visium(visium_v2.root, image=path)
    assert s.image.mpp == 0.45 and s.meta["mpp_source"] == "metadata of full.tif"
    assert any("0.45" in r.message and "0.5" in r.message for r in caplog.records)


def test_sample_prefixed_download_names(visium_v2):
    outs = visium_v2.root
    (outs / "filtered_feature_bc_matrix.h5").rename(outs / "V1_Brain_filtered_feature_bc_matrix.h5")
    sp_dir = outs / "spatial"
    (sp_dir / "tissue_positions.csv").rename(sp_dir / "V1_Brain_tissue_positions.csv")
    (sp_dir / "scalefactors_json.json").rename(outs / "V1_Brain_scalefactors_json.json")
    s = read_visium(outs)
    assert list(s.adata.obs_names) == visium_v2.barcodes
    assert s.meta["matrix_file"].endswith("V1_Brain_filtered_feature_bc_matrix.h5")
    (outs / "V2_filtered_feature_bc_matrix.h5").write_bytes(b"")
    with pytest.raises(InputFileError, match="several files match"):
        read_visium(outs)


def test_hd_sample_prefixed_matrix(visium_hd):
    sq = visium_hd.extra["square"]
    (sq / "filtered_feature_bc_matrix.h5").rename(sq / "Brain_filtered_feature_bc_matrix.h5")
    assert read_visium_hd(visium_hd.root).n_units == len(visium_hd.barcodes)


# -- h5ad from scanpy ----------------------------------------------------------------------------
def _two_libraries(builders, tmp_path):
    """What ``sc.concat([a, b], label="library_id", uns_merge="unique")`` of two
    ``sc.read_visium`` results holds: one obs table, ``obs["library_id"]``, two uns libraries."""
    parts = []
    for name, seed in (("libA", 0), ("libB", 1)):
        t = builders["visium"](tmp_path / name, seed=seed)
        a = ad.read_h5ad(write_h5ad(read_visium(t.root), tmp_path / f"{name}.h5ad"))
        del a.uns["hexpress"], a.obs["size_um"], a.obs["geometry"]
        a.obs_names = [f"{b}_{name}" for b in a.obs_names]
        parts.append((name, a))
    both = ad.concat([a for _, a in parts], label="library_id", keys=[n for n, _ in parts])
    both.uns["spatial"] = {n: next(iter(a.uns["spatial"].values())) for n, a in parts}
    path = tmp_path / "two.h5ad"
    both.write_h5ad(path)
    return path, {n: a.n_obs for n, a in parts}


def test_several_libraries_one_sample_each(builders, tmp_path):
    path, sizes = _two_libraries(builders, tmp_path)
    with pytest.raises(ConfigError, match=r"2 libraries .*libA \(12 spots\), libB \(12 spots\)"):
        read_h5ad(path)
    b = read_h5ad(path, library_id="libB")
    assert b.n_units == sizes["libB"] and all(n.endswith("_libB") for n in b.adata.obs_names)
    with pytest.raises(ConfigError, match="libraries present: libA, libB"):
        read_h5ad(path, library_id="libC")
    from hexpress.io.h5ad import read_h5ad_libraries

    assert [s.sample_id for s in read_h5ad_libraries(path)] == ["libA", "libB"]


def test_log_normalised_x_is_refused_and_a_counts_layer_used(visium_v2, tmp_path):
    a = ad.read_h5ad(write_h5ad(read_visium(visium_v2.root), tmp_path / "s.h5ad"))
    counts = a.X.copy()
    X = a.X.toarray()
    a.X = sp.csr_matrix(np.log1p(X / X.sum(1, keepdims=True) * 1e4))  # normalize_total + log1p
    a.write_h5ad(tmp_path / "log.h5ad")
    with pytest.raises(FormatError, match=r"X holds .* log-transformed.*layer=\.\.\."):
        read_h5ad(tmp_path / "log.h5ad")
    a.layers["raw_counts"] = counts
    a.write_h5ad(tmp_path / "log.h5ad")
    s = read_h5ad(tmp_path / "log.h5ad", layer="raw_counts")
    np.testing.assert_array_equal(s.adata.X.toarray(), visium_v2.counts)


def test_hest_style_obs_positions_sidecar_json_and_sibling_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 5
    obs = pd.DataFrame(  # SpaGCN / DeepSpot names: x_pixel is the row, y_pixel the column
        {"x_pixel": rng.uniform(5, 35, n), "y_pixel": rng.uniform(5, 75, n)},
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(X=sp.csr_matrix(rng.poisson(2, (n, 3)).astype(float)), obs=obs)
    a.write_h5ad(tmp_path / "S.h5ad")
    (tmp_path / "S.json").write_text(json.dumps({"cell_diameter": 20}))
    Image.new("RGB", (80, 40), (200, 100, 150)).save(tmp_path / "S.jpg")  # 80 wide, 40 high
    s = read_h5ad(tmp_path / "S.h5ad", mpp=2.125)
    np.testing.assert_allclose(s.adata.obsm["spatial"], obs[["y_pixel", "x_pixel"]].to_numpy())
    assert (s.adata.obs["size_um"] == 20).all() and s.image.width == 80


# -- planar RGB TIFF -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["SYX", "CYX"])
def test_planar_rgb_tiff(tmp_path, layout):
    import tifffile

    from hexpress.io import open_image

    rgb = np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    if layout == "SYX":  # PlanarConfiguration=2
        tifffile.imwrite(tmp_path / "p.tif", rgb, photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(
            tmp_path / "p.tif", rgb, photometric="minisblack", metadata={"axes": "CYX"}
        )
    im = open_image(tmp_path / "p.tif", mpp=0.5)
    np.testing.assert_array_equal(im.read_region(0, 0, 50, 40), rgb.transpose(1, 2, 0))


# -- Space Ranger 4 segmented outputs --------------------------------------------------------------
def _make_segmented(root, mpp=0.25, scalef=0.5):
    from PIL import Image

    seg = root / "outs" / "segmented_outputs"
    (seg / "spatial").mkdir(parents=True)
    (root / "outs" / "spatial").mkdir(parents=True)
    feats, polys = [], []
    for i, (cx, cy, r) in enumerate([(100, 120, 20), (300, 200, 30), (500, 400, 10)], start=1):
        t = np.linspace(0, 2 * np.pi, 13)[:-1]
        ring = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        polys.append(ring)
        closed = np.vstack([ring, ring[:1]]).tolist()
        feats.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [closed]},
             "properties": {"cell_id": i}}
        )  # fmt: skip
    (seg / "cell_segmentations.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": feats})
    )
    barcodes = [f"cellid_{i:09d}-1" for i in (1, 2, 3)]
    counts = np.array([[1, 0, 2], [0, 5, 1], [3, 3, 0]])
    write_10x_h5(seg / "filtered_feature_cell_matrix.h5", sp.csr_matrix(counts), barcodes,
                 ["A", "B", "C"])  # fmt: skip
    sf = {"microns_per_pixel": mpp, "tissue_hires_scalef": scalef, "spot_diameter_fullres": 8}
    (seg / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    Image.new("RGB", (400, 300), (200, 120, 160)).save(
        root / "outs" / "spatial" / "tissue_hires_image.png"
    )
    return barcodes, counts, polys


def test_sr4_segmented_cells_are_polygon_units_the_model_accepts(tmp_path):
    from hexpress.models.aggregate import Footprints

    barcodes, counts, polys = _make_segmented(tmp_path / "run")
    s = read_visium_hd(tmp_path / "run" / "outs", pool="cells")
    a = s.adata
    assert list(a.obs_names) == barcodes and (a.obs["geometry"] == "polygon").all()
    np.testing.assert_array_equal(a.X.toarray(), counts)
    np.testing.assert_allclose(a.obsm["spatial"], [[50, 60], [150, 100], [250, 200]], atol=1e-6)
    np.testing.assert_allclose(a.uns["hexpress"]["polygons"][1], polys[1] * 0.5)
    # area-equivalent diameter in µm of a 12-gon of radius 30 px at 0.25 µm/px
    area = 0.5 * 12 * 30**2 * np.sin(2 * np.pi / 12)
    assert a.obs["size_um"].iloc[1] == pytest.approx(2 * np.sqrt(area / np.pi) * 0.25)
    assert s.image.mpp == pytest.approx(0.5)  # hires: 0.25 / 0.5
    fp = Footprints.from_adata(a, model_mpp=1.0)  # what predict / evaluate aggregate over
    assert fp.kind == "polygon" and len(fp.polygons) == 3
    # and through an h5ad file, polygons included
    back = read_h5ad(write_h5ad(s, tmp_path / "cells.h5ad"))
    np.testing.assert_allclose(back.adata.uns["hexpress"]["polygons"][2], polys[2] * 0.5)
    assert read_visium_hd(tmp_path / "run" / "outs" / "segmented_outputs").n_units == 3


def test_sr4_cells_go_through_train_predict_and_evaluate(tmp_path):
    from hexpress.eval.matching import match_by_position
    from hexpress.infer.units import read_cells
    from hexpress.train.data import _unit_set

    barcodes, _, polys = _make_segmented(tmp_path / "run")
    s = read_visium_hd(tmp_path / "run" / "outs", pool="cells")
    units = _unit_set(s, ["A", "B"], 1e4, "cells", 1.0)  # what training builds per slide
    assert units.kind == "polygon"
    np.testing.assert_allclose(units.polygons_um[1], polys[1] * 0.25)  # full-res px x 0.25 µm
    # predict --cells reads the same GeoJSON on the full-resolution slide (its own ids) ...
    cells = read_cells(tmp_path / "run/outs/segmented_outputs/cell_segmentations.geojson", mpp=0.25)
    pred = ad.AnnData(X=np.zeros((3, 3), np.float32))
    pred.obs_names = [str(i) for i in cells.get_ids()]
    pred.obsm["spatial"] = cells.centers_level0_px
    pred.uns["hexpress"] = {"mpp": 0.25}
    # ... and evaluate pairs them with the measured cells by position (truth on the hires PNG)
    assert list(match_by_position(s.adata, pred).obs_names) == barcodes


def test_sr4_cells_without_polygons_are_named(tmp_path):
    _make_segmented(tmp_path / "run")
    seg = tmp_path / "run" / "outs" / "segmented_outputs"
    (seg / "cell_segmentations.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": []})
    )
    with pytest.raises(FormatError, match="3 of 3 cells .* have no polygon"):
        read_visium_hd(seg)


# -- Xenium ---------------------------------------------------------------------------------------
def test_xenium_explorer_keypoints_csv(xenium, tmp_path):
    M, pixel = xenium.extra["M"], xenium.extra["pixel"]
    he = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 160.0], [150.0, 120.0]])
    xen_px = he @ M[:2, :2].T + M[:2, 2]
    pd.DataFrame(
        {"fixedX": xen_px[:, 0] * pixel, "fixedY": xen_px[:, 1] * pixel,
         "alignmentX": he[:, 0], "alignmentY": he[:, 1]}
    ).to_csv(tmp_path / "keypoints.csv", index=False)  # fmt: skip
    np.testing.assert_allclose(xen.read_alignment(tmp_path / "keypoints.csv", pixel), M, atol=1e-9)
    s = read_xenium(xenium.root, image=xenium.root / "he.png", alignment=tmp_path / "keypoints.csv")
    ref = read_xenium(
        xenium.root, image=xenium.root / "he.png", alignment=xenium.root / "alignment.csv"
    )
    np.testing.assert_allclose(s.adata.obsm["spatial"], ref.adata.obsm["spatial"])
    pd.DataFrame({"fixedX": [1, 2], "fixedY": [1, 2], "alignmentX": [1, 2],
                  "alignmentY": [1, 2]}).to_csv(tmp_path / "few.csv", index=False)  # fmt: skip
    with pytest.raises(FormatError, match="at least 3"):
        xen.read_alignment(tmp_path / "few.csv")


def test_transcripts_read_in_batches_with_only_the_needed_columns(xenium, monkeypatch):
    import pyarrow.parquet as pq

    tx = xenium.extra["tx"].copy()
    tx["z_location"] = 1.0
    tx["overlaps_nucleus"] = 0
    tx.to_parquet(xenium.root / "transcripts.parquet", index=False)
    asked = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **k):
        asked.append((k.get("batch_size"), tuple(k.get("columns"))))
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    whole, _ = xen.read_transcripts(xenium.root / "transcripts.parquet", min_qv=20)
    small, stats = xen.read_transcripts(
        xenium.root / "transcripts.parquet", min_qv=20, batch_rows=3
    )
    assert asked[-1] == (3, ("feature_name", "x_location", "y_location", "qv"))
    pd.testing.assert_frame_equal(whole, small)
    assert stats == {"n_read": 10, "n_control": 2, "n_low_qv": 1}


def test_is_gene_and_codeword_category_decide_what_counts(xenium):
    tx = xenium.extra["tx"].copy()
    # a gene-looking name that the panel marks as a control: only the columns can say so
    tx["codeword_category"] = np.where(
        tx["feature_name"].str.startswith(("NegControl", "BLANK")), "negative_control_probe",
        "predesigned_gene",
    )  # fmt: skip
    tx.loc[0, "codeword_category"] = "genomic_control"
    tx.to_parquet(xenium.root / "transcripts.parquet", index=False)
    cat, _ = xen.read_transcripts(xenium.root / "transcripts.parquet", min_qv=20)
    tx["is_gene"] = tx["codeword_category"].isin(["predesigned_gene", "custom_gene"])
    tx.loc[1, "is_gene"] = False  # is_gene wins where both are there
    tx.to_parquet(xenium.root / "transcripts.parquet", index=False)
    gene, _ = xen.read_transcripts(xenium.root / "transcripts.parquet", min_qv=20)
    assert len(cat) == 6 and len(gene) == 5  # 10 - 2 controls - 1 low qv - 1 (- 1)


def test_bundle_he_and_alignment_found_without_naming_them(xenium):
    from PIL import Image

    he = np.asarray(Image.open(xenium.root / "he.png").convert("RGB"))
    write_tiff(xenium.root / "Xenium_V1_he_image.ome.tif", he, mpp=0.5)
    (xenium.root / "alignment.csv").rename(xenium.root / "Xenium_V1_he_imagealignment.csv")
    s = read_xenium(xenium.root)
    ref = read_xenium(
        xenium.root, image=xenium.root / "he.png", mpp=0.5,
        alignment=xenium.root / "Xenium_V1_he_imagealignment.csv",
    )  # fmt: skip
    np.testing.assert_allclose(s.adata.obsm["spatial"], ref.adata.obsm["spatial"])
    assert s.meta["alignment_file"].endswith("Xenium_V1_he_imagealignment.csv")


def test_xenium_without_any_he_says_how_to_give_it(xenium):
    with pytest.raises(InputFileError, match=r"he_image\.ome\.tif"):
        read_xenium(xenium.root)


def test_units_record_their_geometry_keys(visium_v2):
    a = read_visium(visium_v2.root).adata
    assert {K.GEOMETRY, K.SIZE_UM} <= set(a.obs.columns)


def test_xenium_cells_as_polygons_on_the_he(xenium):
    from hexpress.models.aggregate import Footprints

    t = np.linspace(0, 2 * np.pi, 9)[:-1]
    rows = []
    for cid, (x, y) in zip(xenium.barcodes, xenium.xy_fullres, strict=True):
        for a in np.append(t, t[0]):  # Xenium repeats the first vertex last
            rows.append(
                {"cell_id": cid, "vertex_x": x + 4 * np.cos(a), "vertex_y": y + 4 * np.sin(a)}
            )
    pd.DataFrame(rows).to_parquet(xenium.root / "cell_boundaries.parquet", index=False)
    s = read_xenium(
        xenium.root, image=xenium.root / "he.png", alignment=xenium.root / "alignment.csv",
        cell_shape="polygon",
    )  # fmt: skip
    a = s.adata
    assert (a.obs["geometry"] == "polygon").all()
    poly = a.uns["hexpress"]["polygons"][0]
    M, pixel = xenium.extra["M"], xenium.extra["pixel"]
    first_um = np.array([xenium.xy_fullres[0, 0] + 4, xenium.xy_fullres[0, 1]])
    inv = np.linalg.inv(M)
    expect = first_um / pixel @ inv[:2, :2].T + inv[:2, 2]
    assert poly.shape == (8, 2)
    np.testing.assert_allclose(poly[0], expect)
    assert Footprints.from_adata(a, model_mpp=1.0).kind == "polygon"


def test_predict_cells_from_a_xenium_bundle_land_on_its_he(xenium, tmp_path):
    """`predict --cells <bundle>/cell_boundaries.parquet` on the bundle's aligned H&E: µm vertices
    go through the alignment (given, or found beside the cells for that very slide)."""
    from hexpress.infer.pipeline import PredictOptions, _cells_alignment
    from hexpress.infer.units import read_cells
    from hexpress.io.image import open_image

    t = np.linspace(0, 2 * np.pi, 9)[:-1]
    rows = [
        {"cell_id": cid, "vertex_x": x + 4 * np.cos(a), "vertex_y": y + 4 * np.sin(a)}
        for cid, (x, y) in zip(xenium.barcodes, xenium.xy_fullres, strict=True)
        for a in t
    ]
    cells = xenium.root / "cell_boundaries.parquet"
    pd.DataFrame(rows).to_parquet(cells, index=False)
    expect = read_xenium(
        xenium.root, image=xenium.root / "he.png", alignment=xenium.root / "alignment.csv",
        cell_shape="polygon",
    ).adata.uns["hexpress"]["polygons"]  # fmt: skip
    u = read_cells(cells, mpp=xenium.mpp_fullres, alignment=xenium.root / "alignment.csv")
    for got, want in zip(u.polygons, expect, strict=True):
        np.testing.assert_allclose(got, want)
    # Without the alignment the same vertices are read in the Xenium frame: elsewhere.
    plain = read_cells(cells, mpp=xenium.mpp_fullres)
    assert np.abs(plain.polygons[0] - expect[0]).max() > 1.0
    # The bundle's own H&E and alignment are found for that slide, and only for that slide.
    he = xenium.root / "sample_he_image.ome.tif"
    he.write_bytes((xenium.root / "he.png").read_bytes())
    (xenium.root / "sample_he_imagealignment.csv").write_bytes(
        (xenium.root / "alignment.csv").read_bytes()
    )
    opts = PredictOptions(cells=str(cells))
    slide = open_image(xenium.root / "he.png", mpp=xenium.mpp_fullres)
    assert _cells_alignment(slide, opts) is None  # another image: its own frame
    slide.path = he
    assert _cells_alignment(slide, opts).name == "sample_he_imagealignment.csv"
    given = PredictOptions(cells=str(cells), cells_alignment="mine.csv")
    assert _cells_alignment(slide, given) == "mine.csv"
