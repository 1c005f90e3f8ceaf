import numpy as np
import pandas as pd
import pytest
from eval_helpers import make_section, noisy_prediction
from matplotlib.collections import EllipseCollection, PolyCollection
from matplotlib.figure import Figure

from hexpress.data.preprocess import normalize
from hexpress.errors import ConfigError
from hexpress.eval.figures import plot_cross_scale, plot_pcc_distribution, plot_pcc_vs_morans
from hexpress.pl.maps import plot_gene_map, plot_truth_vs_prediction


def _ax():
    return Figure().add_subplot()


def test_disc_map_draws_true_size_over_thumbnail():
    counts, image = make_section(0)
    norm = normalize(counts)
    ax = plot_gene_map(norm, "G1", image=image, max_side=200, ax=_ax())
    coll = [c for c in ax.collections if isinstance(c, EllipseCollection)][0]
    _, scale = image.thumbnail(200)
    # 55 µm discs on a 2 µm/px slide: 27.5 px, scaled to the thumbnail
    np.testing.assert_allclose(coll._widths * 2, 55.0 / 2.0 * scale, rtol=1e-6)
    np.testing.assert_allclose(coll.get_array(), norm[:, "G1"].X.ravel(), rtol=1e-6)
    assert len(ax.images) == 1


def test_square_bins_and_points_without_image():
    counts, _ = make_section(0, size_um=8.0, geometry="square")
    ax = plot_gene_map(normalize(counts), "G2", ax=_ax(), vmin=0, vmax=1)
    coll = [c for c in ax.collections if isinstance(c, PolyCollection)][0]
    assert coll.norm.vmin == 0 and coll.norm.vmax == 1
    verts = coll.get_paths()[0].vertices
    assert np.ptp(verts[:, 0]) == pytest.approx(4.0)  # 8 µm / 2 µm per px
    cells, _ = make_section(0, size_um=None, geometry="polygon")
    ax = plot_gene_map(normalize(cells), "G2", ax=_ax())
    assert len(ax.collections[0].get_offsets()) == cells.n_obs
    with pytest.raises(ConfigError, match="not in the data"):
        plot_gene_map(cells, "NOPE", ax=_ax())


def test_truth_vs_prediction_shares_one_scale_per_gene():
    counts, image = make_section(0)
    norm = normalize(counts)
    preds = {"a": noisy_prediction(norm, 0.2), "b": noisy_prediction(norm, 2.0, seed=3)}
    fig = plot_truth_vs_prediction(norm, preds, ["G0", "G3"], image=image, fig=Figure())
    axes = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in axes[:3]] == ["G0: truth", "G0: a", "G0: b"]
    for row in (axes[:3], axes[3:6]):
        limits = {(a.collections[0].norm.vmin, a.collections[0].norm.vmax) for a in row}
        assert len(limits) == 1
    assert len(fig.axes) == 6 + 2  # a colour bar per gene


def test_pcc_distribution_kinds_drop_nan():
    data = {"m1": np.array([0.1, 0.5, np.nan, 0.7]), "m2": np.array([0.2, 0.3, 0.4])}
    for kind in ("violin", "box", "hist"):
        ax = plot_pcc_distribution(data, kind=kind, ax=_ax())
        assert ax.get_title() == "Per-gene PCC"
    ax = plot_pcc_distribution(data, ax=_ax())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m1\n(n=3)", "m2\n(n=3)"]
    with pytest.raises(ConfigError, match="unknown kind"):
        plot_pcc_distribution(data, kind="pie")


def test_pcc_vs_morans_title_has_rho(rng):
    genes = [f"g{i}" for i in range(20)]
    moran = pd.Series(np.linspace(0, 1, 20), index=genes)
    pcc = pd.Series(np.linspace(0, 0.8, 20), index=genes)
    ax = plot_pcc_vs_morans(pcc, moran, ax=_ax(), label="dense")
    assert ax.get_title().splitlines()[0] == "dense"
    assert "Spearman rho = 1.00" in ax.get_title() and "n = 20" in ax.get_title()


def test_cross_scale_curves_one_line_per_method():
    table = pd.DataFrame(
        {
            "method": ["a", "a", "a", "b", "b", "b"],
            "scale_um": [100.0, 8.0, 2.0, 2.0, 8.0, 100.0],
            "PCC@M": [0.6, 0.3, 0.1, 0.05, 0.2, 0.5],
        }
    )
    ax = plot_cross_scale(table, ax=_ax())
    assert ax.get_xscale() == "log"
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[1].get_xdata(), [2, 8, 100])  # sorted by size
    with pytest.raises(ConfigError, match="no column 'PCC@S'"):
        plot_cross_scale(table, metric="PCC@S")


def test_cross_scale_legend_says_when_a_method_has_no_defined_value():
    table = pd.DataFrame(
        {
            "method": ["model", "model", "mean", "mean"],
            "scale_um": [100.0, 8.0, 100.0, 8.0],
            "PCC@M": [0.5, 0.2, np.nan, np.nan],
        }
    )
    ax = plot_cross_scale(table, ax=_ax())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["model", "mean (PCC@M undefined)"]
