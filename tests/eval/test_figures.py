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


def test_disc_map_draws_true_size_over_the_cropped_image():
    counts, image = make_section(0)
    norm = normalize(counts)
    ax = plot_gene_map(norm, "G1", image=image, max_side=200, ax=_ax())
    coll = [c for c in ax.collections if isinstance(c, EllipseCollection)][0]
    # 55 µm discs on a 2 µm/px slide: 27.5 level-0 px across (panels are in level-0 px)
    np.testing.assert_allclose(coll._widths * 2, 55.0 / 2.0, rtol=1e-6)
    np.testing.assert_allclose(coll.get_array(), norm[:, "G1"].X.ravel(), rtol=1e-6)
    assert len(ax.images) == 1
    # cropped to the spots (plus one spot of margin), not the whole slide
    xy = norm.obsm["spatial"]
    assert ax.get_xlim() == pytest.approx((xy[:, 0].min() - 27.5, xy[:, 0].max() + 27.5))
    # a colour bar labelled with the normalisation and a scale bar in µm
    (cbar_ax,) = [a for a in ax.figure.axes if a is not ax]
    assert cbar_ax.get_ylabel() == "log1p(counts / total × 10000)"
    assert any(t.get_text().endswith("µm") for t in ax.texts)


def test_square_bins_are_an_image_on_their_grid_and_cells_points():
    counts, _ = make_section(0, n_side=6, size_um=8.0, geometry="square")
    xy = np.asarray(counts.obsm["spatial"])
    # a regular grid of 8 µm bins (4 px at 2 µm/px), one bin left out
    gx, gy = np.meshgrid(np.arange(6), np.arange(6))
    counts.obsm["spatial"] = np.stack([(gx.ravel() + 0.5) * 4 + 40, (gy.ravel() + 0.5) * 4], 1)
    norm = normalize(counts[1:].copy())
    ax = plot_gene_map(norm, "G2", ax=_ax(), vmin=0, vmax=1)
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no patches
    (im,) = ax.images
    assert im.norm.vmin == 0 and im.norm.vmax == 1
    arr = np.ma.filled(im.get_array().astype(float), np.nan)
    assert arr.shape == (6, 6) and np.isnan(arr[0, 0])  # the left-out bin stays empty
    assert arr[0, 1] == pytest.approx(norm[:, "G2"].X[0, 0], rel=1e-5)
    assert im.get_extent() == pytest.approx([40.0, 64.0, 24.0, 0.0])
    assert len(xy) == 36
    cells, _ = make_section(0, size_um=None, geometry="polygon")
    ax = plot_gene_map(normalize(cells), "G2", ax=_ax())
    assert len(ax.collections[0].get_offsets()) == cells.n_obs
    with pytest.raises(ConfigError, match="not in the data"):
        plot_gene_map(cells, "NOPE", ax=_ax())


def test_truth_vs_prediction_shared_and_own_scale_and_scatter():
    counts, image = make_section(0)
    norm = normalize(counts)
    # a prediction with a much narrower range than the truth (regression to the mean)
    pred = noisy_prediction(norm, 0.0)
    pred.X = (0.2 * pred.X + 0.8 * pred.X.mean(0)).astype(np.float32)
    fig = plot_truth_vs_prediction(norm, pred, ["G0", "G3"], image=image, method="m",
                                   fig=Figure())  # fmt: skip
    maps = [a for a in fig.axes if a.get_title().startswith(("G0", "G3"))]
    assert [a.get_title().split("\n")[0] for a in maps[:3]] == ["G0: measured", "G0: m", "G0: m"]
    truth_ax, shared_ax, own_ax = maps[:3]
    lim = [(a.collections[0].norm.vmin, a.collections[0].norm.vmax) for a in maps[:3]]
    assert lim[0] == lim[1]  # the same scale as the measured panel
    assert lim[2][1] - lim[2][0] < 0.5 * (lim[0][1] - lim[0][0])  # its own, narrower scale
    scatters = [a for a in fig.axes if a.get_title().startswith("PCC")]
    assert len(scatters) == 2 and scatters[0].get_title().startswith("PCC = 1.00")
    assert "log1p" in scatters[0].get_xlabel()
    fig.canvas.draw()  # it renders
    with pytest.raises(ConfigError, match="share no unit"):
        other = pred.copy()
        other.obs_names = [f"x{i}" for i in range(other.n_obs)]
        plot_truth_vs_prediction(norm, other, ["G0"], fig=Figure())


def test_dense_map_heat_map_cropped_to_the_tissue(tmp_path):
    from eval_helpers import write_field_map

    from hexpress.infer.dense_map import open_dense_map
    from hexpress.pl.maps import plot_dense_map

    counts, image = make_section(0)
    norm = normalize(counts)
    dm = open_dense_map(write_field_map(tmp_path / "map.zarr", norm, image))
    fig = plot_dense_map(dm, ["G0", "G1"], image=image, title="pixnet", fig=Figure())
    maps = [a for a in fig.axes if a.get_title().startswith("pixnet")]
    assert [a.get_title() for a in maps] == ["pixnet: G0", "pixnet: G1"]
    ax = maps[0]
    assert len(ax.images) == 2  # the H&E and the heat map over it
    # the left quarter was never predicted: the view starts near it (tissue + 50 µm margin)
    assert ax.get_xlim()[0] == pytest.approx(image.width // 5 // 4 * 5 - 25.0, abs=6)
    assert any(t.get_text().endswith("µm") for t in ax.texts)
    cbars = [a for a in fig.axes if a.get_ylabel().startswith("predicted log1p")]
    assert len(cbars) == 2
    fig.canvas.draw()
    with pytest.raises(ConfigError, match="at least one gene"):
        plot_dense_map(dm, [], fig=Figure())


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


def test_map_titles_do_not_overlap():
    counts, image = make_section(0)
    norm = normalize(counts)
    long = "EfficientNet-Lite0 patch (run effnet_patch_synthetic)"
    fig = plot_truth_vs_prediction(norm, noisy_prediction(norm, 0.3), ["G0", "G1"],
                                   image=image, method=long, fig=Figure())  # fmt: skip
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [a.title.get_window_extent(renderer) for a in fig.axes if a.get_title()]
    assert len(boxes) == 8
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
