import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from eval_helpers import synthetic_results

from hexpress.errors import ConfigError, OutputExistsError
from hexpress.eval.genesets import load_gene_sets
from hexpress.eval.metrics import aggregate, count_column
from hexpress.eval.report import MethodResult, markdown_table, results_table, write_report

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg", force=True)
    out = tmp_path_factory.mktemp("report")
    results, truths, images = synthetic_results()
    written = write_report(
        out,
        results,
        title="synthetic check",
        config={"split": "leave-one-section-out", "seed": 0},
        truths=truths,
        images=images,
        gene_sets=load_gene_sets([DATA / "example.gmt"]),
        notes=["truth normalised from raw counts"],
    )
    return out, written, results


def test_results_table_columns_and_values(report):
    out, written, results = report
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns[:10]) == [
        "method", "MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", count_column(), "n_undefined",
        "train_time_s", "predict_time_s",
    ]  # fmt: skip
    assert list(table["method"]) == ["dense", "patch"]
    ref = aggregate(results[0].sections, "mean")
    assert table.loc[0, "PCC@M"] == pytest.approx(ref["PCC@M"])
    assert table.loc[0, "train_time_s"] == 12.5
    assert np.isnan(table.loc[1, "predict_time_s"])
    assert table.loc[0, "PCC@M"] > table.loc[1, "PCC@M"]  # less noise, better correlation
    md = (out / "results.md").read_text()
    assert "| method | MSE |" in md and "| patch |" in md and "–" in md


def test_all_files_written(report):
    out, written, _ = report
    for name in (
        "results.csv", "results.md", "sections.csv", "gene_sets.csv", "cross_scale.csv",
        "morans_i.csv", "predictability.csv", "per_gene.json", "report.html",
        "figures/pcc_distribution.png", "figures/pcc_vs_morans.png", "figures/cross_scale.png",
        "figures/maps_sec0_dense.png", "figures/maps_sec1_patch.png",
    ):  # fmt: skip
        assert (out / name).is_file(), name
        assert written[name] == out / name
    assert not list(out.glob(".*.tmp")) and not list(out.glob("figures/.*.tmp"))
    sets = pd.read_csv(out / "gene_sets.csv")
    assert set(sets["gene_set"]) == {"all", "IMMUNE_TINY", "STROMA_TINY"}


def test_per_gene_json_is_strict_and_complete(report):
    out, _, results = report
    doc = json.loads((out / "per_gene.json").read_text())
    dense = doc["methods"]["dense"]["sections"]["sec0"]
    assert dense["genes"] == results[0].genes
    np.testing.assert_allclose(dense["pcc"], results[0].sections[0].pcc)
    assert set(doc["morans_i"]) == {"sec0", "sec1"}


def test_html_is_self_contained(report):
    out, _, _ = report
    html = (out / "report.html").read_text()
    imgs = re.findall(r"<img src='data:image/png;base64,([^']+)'", html)
    assert len(imgs) == 7  # 3 summaries, then 2 methods x 2 sections of maps
    for data in imgs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("synthetic check", "leave-one-section-out", "dense.encoder", "Figure 7.",
                 "cpu_count", "Predictability", "Cross-scale", "truth normalised from raw"):  # fmt: skip
        assert text in html, text
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside


def test_overwrite_guard_and_inputs(report, tmp_path):
    out, _, results = report
    with pytest.raises(OutputExistsError, match="already holds a report"):
        write_report(out, results)
    write_report(out, results[:1], overwrite=True)  # no truths: no maps, no Moran's I
    assert "No expression maps" in (out / "report.html").read_text()
    with pytest.raises(ConfigError, match="unique"):
        write_report(tmp_path / "x", [results[0], results[0]])
    with pytest.raises(ConfigError, match="no section metrics"):
        MethodResult("empty", [])


def test_markdown_table_formatting():
    t = pd.DataFrame({"m": ["a|b"], "x": [0.123456], "n": [3.0], "z": [np.nan]})
    assert markdown_table(t).splitlines()[2] == "| a\\|b | 0.1235 | 3 | – |"


def test_results_table_pooled(report):
    _, _, results = report
    pooled = results_table(results, "pooled")
    assert pooled.loc[0, "PCC@M"] == pytest.approx(
        aggregate(results[0].sections, "pooled")["PCC@M"]
    )


def test_constant_method_is_left_out_of_the_morans_scatter_and_said_so(tmp_path):
    from eval_helpers import noisy_prediction

    from hexpress.eval.matching import evaluate_anndata

    results, truths, images = synthetic_results(n_sections=1)
    pred = noisy_prediction(truths["sec0"], 0.0)
    pred.X = np.broadcast_to(pred.X.mean(0), pred.X.shape).copy()  # like the training mean
    const = MethodResult("constant", [evaluate_anndata(truths["sec0"], pred, section="sec0")])
    assert not np.isfinite(const.gene_pcc().to_numpy()).any()
    write_report(tmp_path, [*results, const], truths=truths, images=images)
    html = (tmp_path / "report.html").read_text()
    assert "Not shown, every PCC undefined: constant." in html
    assert (tmp_path / "figures" / "pcc_vs_morans.png").is_file()
