import numpy as np
import pandas as pd

from hexpress.sim import CELL_TYPES, GENE_KINDS, SimConfig, simulate


def test_slide_shapes_and_tables(small_slide):
    s = small_slide
    assert s.image.shape == (1200, 1200, 3) and s.image.dtype == np.uint8
    assert s.mpp == 0.5
    n_cells, n_genes = len(s.cells), len(s.genes)
    assert 300 < n_cells < 5000
    assert s.cell_counts.shape == (n_cells, n_genes)
    assert set(s.gene_info["kind"]) == set(GENE_KINDS)
    assert set(s.cells["type"].astype(str)) <= set(CELL_TYPES)
    assert {"tumour", "fibroblast", "lymphocyte"} <= set(s.cells["type"].astype(str))
    assert np.allclose(s.cells["x_px"], s.cells["x_um"] / s.mpp)
    # a realistic library size
    assert 50 < s.cell_counts.sum() / n_cells < 200


def test_counts_equal_transcripts_per_cell_and_gene(small_slide):
    s = small_slide
    tx = s.transcripts
    assert len(tx) == s.cell_counts.sum()
    recount = pd.crosstab(tx["cell"], tx["gene"])
    dense = s.cell_counts.toarray()
    assert np.array_equal(dense[recount.index][:, recount.columns], recount.to_numpy())
    assert s.cells["n_transcripts"].sum() == len(tx)


def test_transcripts_lie_inside_their_cell_footprint(small_slide):
    s = small_slide
    tx, c = s.transcripts, s.cells
    i = tx["cell"].to_numpy()
    dx = tx["x_um"].to_numpy() - c["x_um"].to_numpy()[i]
    dy = tx["y_um"].to_numpy() - c["y_um"].to_numpy()[i]
    th = c["angle"].to_numpy()[i]
    u = dx * np.cos(th) + dy * np.sin(th)
    v = -dx * np.sin(th) + dy * np.cos(th)
    d = (u / c["cell_a_um"].to_numpy()[i]) ** 2 + (v / c["cell_b_um"].to_numpy()[i]) ** 2
    assert d.max() < 1.0
    assert (tx["x_px"] >= 0).all() and (tx["x_px"] < s.width).all()
    assert (tx["y_px"] >= 0).all() and (tx["y_px"] < s.height).all()


def test_same_seed_same_slide_other_seed_differs(small_slide):
    again = simulate(SimConfig(size_mm=0.6, seed=3))
    assert np.array_equal(again.image, small_slide.image)
    assert np.array_equal(again.cell_counts.toarray(), small_slide.cell_counts.toarray())
    pd.testing.assert_frame_equal(again.transcripts, small_slide.transcripts)
    pd.testing.assert_frame_equal(again.cells, small_slide.cells)
    other = simulate(SimConfig(size_mm=0.6, seed=4))
    assert not np.array_equal(other.image, small_slide.image)


def test_image_looks_like_he(small_slide):
    """Glass is near white; tissue is pink (R > G, B > G); nuclei are dark purple."""
    s = small_slide
    img = s.image.astype(float)
    glass = s.tissue.domain == 0
    assert glass.any() and (~glass).any()
    yy, xx = np.mgrid[0 : s.height, 0 : s.width]
    on_glass = s.tissue_mask_at(xx * s.mpp, yy * s.mpp) == 0
    assert img[on_glass].mean() > 225
    tissue_px = img[~on_glass]
    r, g, b = tissue_px.mean(0)
    assert r > g + 20 and b > g
    # darkest 2% of tissue pixels (nuclei) are purple-blue: blue above red
    grey = tissue_px.mean(1)
    dark = tissue_px[grey < np.percentile(grey, 2)]
    assert dark.mean() < 140 and dark[:, 2].mean() > dark[:, 0].mean()


def test_cell_types_follow_domains(small_slide):
    c = small_slide.cells
    in_tumour = c["domain"] == "tumour"
    assert (c.loc[in_tumour, "type"] == "tumour").mean() > 0.6
    assert (c.loc[~in_tumour, "type"] == "tumour").mean() == 0
    fat_cells = c["type"] == "adipocyte"
    if fat_cells.any():
        assert c.loc[fat_cells, "cell_a_um"].min() > 20


def test_slides_of_one_panel_measure_the_same_genes():
    """Two slides (different seeds) of one panel: the same genes with the same drivers and
    baseline shares, so a model trained on one applies to the other; another panel differs."""
    from hexpress.sim import SimConfig, simulate

    a = simulate(SimConfig(size_mm=0.3, n_genes=24, seed=0))
    b = simulate(SimConfig(size_mm=0.3, n_genes=24, seed=1))
    c = simulate(SimConfig(size_mm=0.3, n_genes=24, seed=0, panel_seed=5))
    pd.testing.assert_frame_equal(a.gene_info, b.gene_info)
    assert not np.allclose(a.gene_info["weight"], c.gene_info["weight"])
    assert len(a.cells) != len(b.cells) or not a.cells["x_um"].equals(b.cells["x_um"])
