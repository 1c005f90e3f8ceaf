"""The report's maps: the dense map over the H&E, bins as an image, two colour scales, the
scatter, the folded configuration and the "how to read this" paragraph; computing is separate
from rendering."""

import base64
import re

import numpy as np
import pandas as pd
import pytest
from eval_helpers import MPP, make_section, noisy_prediction, synthetic_results, write_field_map

from hexpress import _keys as K
from hexpress.data.preprocess import normalize
from hexpress.eval.matching import evaluate_anndata
from hexpress.eval.report import MethodResult, compute_report, render_report, write_report


@pytest.fixture(autouse=True)
def _agg():
    import matplotlib

    matplotlib.use("Agg", force=True)


def _bins(seed: int, side_um: float = 16.0):
    """Square bins of ``side_um`` on a grid over a small image: counts, normalised, predicted."""
    from hexpress.data.sample import make_units
    from hexpress.io.image import ArrayImage

    rng = np.random.default_rng(seed)
    side_px = side_um / MPP
    xs, ys = np.meshgrid(np.arange(12), np.arange(10))
    xy = np.stack([(xs.ravel() + 0.5) * side_px, (ys.ravel() + 0.5) * side_px], axis=1)
    counts = rng.poisson(5 + 20 * (xy[:, :1] / xy[:, 0].max()), size=(len(xy), 8)).astype("f4")
    image = ArrayImage(np.full((int(10 * side_px), int(12 * side_px), 3), 230, np.uint8), MPP)
    adata = make_units(counts, genes=[f"G{g}" for g in range(8)],
                       unit_ids=[f"b{i}" for i in range(len(xy))], centers_px=xy,
                       geometry=K.SQUARE, size_um=side_um, source="test", image=image)  # fmt: skip
    adata.uns[K.UNS] = {"mpp": MPP}
    keep = rng.permutation(len(xy))[:60]  # a subsample was predicted
    pred = noisy_prediction(normalize(adata)[keep], 0.2, seed=seed)
    return adata, pred, image


@pytest.fixture(scope="module")
def dense_report(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg", force=True)
    tmp = tmp_path_factory.mktemp("dense")
    counts, image = make_section(0, prefix="sec0_")
    truth = normalize(counts)
    pred = noisy_prediction(truth, 0.3)
    bins_truth, bins_pred, _ = _bins(3)
    m = MethodResult(
        "pixnet (run demo)", [evaluate_anndata(truth, pred, section="sec0")],
        predictions={"sec0": pred}, maps={"sec0": write_field_map(tmp / "map.zarr", truth, image)},
        scale_predictions={"bin_16um": bins_pred}, config={"optim": {"lr": 1e-3}},
    )  # fmt: skip
    ceiling = MethodResult(
        "ceiling (neighbours)", [evaluate_anndata(truth, noisy_prediction(truth, 0.1, seed=5),
                                                  section="sec0")],
    )  # fmt: skip
    data = compute_report(
        [m, ceiling], title="maps", truths={"sec0": truth}, images={"sec0": image},
        scale_truths={"bin_16um": bins_truth}, config={"seed": 0},
    )  # fmt: skip
    out = tmp / "report"
    written = render_report(data, out)
    return data, out, written


def test_compute_writes_nothing_and_holds_the_panels(dense_report, tmp_path):
    data, _, _ = dense_report
    assert [(p.section, p.method) for p in data.panels] == [("sec0", "pixnet (run demo)")]
    (panel,) = data.panels
    assert panel.dense_map is not None and panel.dense_map.name == "map.zarr"
    assert [name for name, _, _ in panel.scales] == ["bin_16um"]
    assert list(data.table["method"]) == ["pixnet (run demo)", "ceiling (neighbours)"]
    assert data.ceiling_rows == ["ceiling (neighbours)"]
    results, truths, images = synthetic_results(n_sections=1)
    compute_report(results, truths=truths, images=images)
    assert not list(tmp_path.iterdir())  # computing wrote no file


def test_every_figure_is_written_and_embedded(dense_report):
    _, out, written = dense_report
    names = sorted(n for n in written if n.startswith("figures/"))
    stem = "sec0_pixnet__run_demo_"
    for name in (f"dense_{stem}.png", f"maps_{stem}.png", f"bins_bin_16um_{stem}.png"):
        assert f"figures/{name}" in names, names
    html = (out / "report.html").read_text()
    imgs = re.findall(r"<img src='data:image/png;base64,([^']+)'", html)
    assert len(imgs) == len(names)
    for data in imgs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_folds_the_config_and_explains_how_to_read(dense_report):
    _, out, _ = dense_report
    html = (out / "report.html").read_text()
    assert "<details><summary>" in html and "pixnet (run demo).optim.lr" in html
    assert html.index("<details>") < html.index("pixnet (run demo).optim.lr")
    assert "How to read this" in html and "log1p(counts / total × 10000)" in html
    assert "MSE and MAE are errors in that log space" in html
    assert "random subsample" in html
    assert "“ceiling (neighbours)” is not a method but a reference" in html
    assert "Section sec0: pixnet (run demo)" in html


def test_no_ceiling_no_ceiling_sentence(tmp_path):
    results, truths, images = synthetic_results(n_sections=1)
    write_report(tmp_path, results[:1], truths=truths, images=images)
    html = (tmp_path / "report.html").read_text()
    assert "How to read this" in html and "not a method but a reference" not in html


def test_report_refuses_before_computing(tmp_path, monkeypatch):
    import hexpress.eval.report as report

    (tmp_path / "report.html").write_text("old")
    results, _, _ = synthetic_results(n_sections=1)

    def boom(*a, **k):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(report, "compute_report", boom)
    with pytest.raises(report.OutputExistsError, match="overwrite"):
        report.write_report(tmp_path, results)


def test_missing_dense_map_is_skipped_with_a_warning(tmp_path, caplog):
    counts, image = make_section(0, prefix="sec0_")
    truth = normalize(counts)
    pred = noisy_prediction(truth, 0.3)
    (tmp_path / "bad.zarr").mkdir()  # exists, but is no map
    m = MethodResult("m", [evaluate_anndata(truth, pred, section="sec0")],
                     predictions={"sec0": pred}, maps={"sec0": tmp_path / "bad.zarr"})  # fmt: skip
    written = write_report(tmp_path / "r", [m], truths={"sec0": truth}, images={"sec0": image})
    assert not [n for n in written if n.startswith("figures/dense_")]
    assert "figures/maps_sec0_m.png" in written
    assert "not drawn" in caplog.text


def test_sections_table_unchanged_by_the_split(dense_report):
    data, out, _ = dense_report
    table = pd.read_csv(out / "sections.csv")
    assert list(table["method"]) == ["pixnet (run demo)", "ceiling (neighbours)"]
    assert table.loc[0, "PCC@M"] == pytest.approx(data.results[0].sections[0].summary()["PCC@M"])


def test_bin_maps_show_a_window_where_single_bins_are_visible():
    from hexpress.eval.report import _BIN_WINDOW, _bin_window

    truth, pred, _ = _bins(4, side_um=8.0)
    # spread the same bins over a 10x wider area: a window of 40 bins keeps the central ones
    for a in (truth, pred):
        a.obsm[K.SPATIAL] = np.asarray(a.obsm[K.SPATIAL]) * 10
    wt, wp, side = _bin_window(normalize(truth), pred)
    assert side == 8.0 and 2 <= wp.n_obs < pred.n_obs
    half_px = _BIN_WINDOW * 8.0 / MPP / 2
    centre = np.median(np.asarray(pred.obsm[K.SPATIAL]), axis=0)
    for a in (wt, wp):
        assert (np.abs(np.asarray(a.obsm[K.SPATIAL]) - centre) <= half_px).all()
    assert set(wp.obs_names) <= set(wt.obs_names)
