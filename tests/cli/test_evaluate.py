"""hexpress evaluate: tables, JSON, reports and its refusals."""

import json

import pytest
from cli_helpers import TESTS, helper_module
from typer.testing import CliRunner

from hexpress.cli import app
from hexpress.data.preprocess import normalize
from hexpress.errors import DataMismatchError, InputFileError

eval_helpers = helper_module("eval_helpers", "eval/eval_helpers.py")
make_section, noisy_prediction = eval_helpers.make_section, eval_helpers.noisy_prediction
DATA = TESTS / "eval" / "data"


@pytest.fixture
def files(tmp_path):
    counts, image = make_section(0)
    norm = normalize(counts, scale=1000.0)
    pred = noisy_prediction(norm, 0.3)
    pred.uns["hexpress"]["model"] = "tiny-dense"
    truth_path, pred_path = tmp_path / "truth.h5ad", tmp_path / "pred.h5ad"
    counts.write_h5ad(truth_path)  # raw counts: evaluate must normalise them (scale 1000)
    pred[10:].copy().write_h5ad(pred_path)  # 10 truth units not predicted
    return truth_path, pred_path, norm, pred


def test_evaluate_prints_table_and_normalises_raw_truth(files):
    truth, pred, _, _ = files
    res = CliRunner().invoke(app, ["evaluate", str(pred), "--truth", str(truth)])
    assert res.exit_code == 0, res.output
    assert "54 units matched (truth 64, prediction 54); 8 genes matched" in res.output
    assert "raw counts normalised as log1p(counts / total * 1000)" in res.output
    assert "| tiny-dense |" in res.output and "PCC@M" in res.output


def test_evaluate_json_matches_library(files):
    from hexpress.eval.matching import evaluate_anndata

    truth, pred, norm, p = files
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(pred),
            "--truth",
            str(truth),
            "--json",
            "--gene-sets",
            str(DATA / "example.gmt"),
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    ref = evaluate_anndata(norm, p[10:].copy(), strict=False).summary()
    assert doc["metrics"]["PCC@M"] == pytest.approx(ref["PCC@M"], abs=1e-6)
    assert doc["metrics"]["n_units"] == 54
    assert [r["gene_set"] for r in doc["gene_sets"]] == ["all", "IMMUNE_TINY", "STROMA_TINY"]


def test_evaluate_writes_report(files, tmp_path):
    truth, pred, _, _ = files
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["evaluate", str(pred), "--truth", str(truth), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("report.html", "results.csv", "per_gene.json", "figures/maps_sec0_tiny-dense.png"):
        assert (out / name).is_file(), name
    assert "raw counts normalised" in (out / "report.html").read_text()
    again = CliRunner().invoke(
        app, ["evaluate", str(pred), "--truth", str(truth), "--out", str(out)]
    )
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)


def test_evaluate_errors(files, tmp_path):
    truth, pred, _, _ = files
    res = CliRunner().invoke(app, ["evaluate", str(pred), "--truth", str(truth), "--strict"])
    assert isinstance(res.exception, DataMismatchError)
    assert "10 truth unit(s) were not predicted" in str(res.exception)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "none.h5ad"), "--truth", str(truth)])
    assert isinstance(res.exception, InputFileError)
    assert "none.h5ad" in str(res.exception)


def test_evaluate_ceiling_on_the_scored_units(files):
    from hexpress.eval.ceiling import ceiling_metrics

    truth, pred, norm, _ = files
    res = CliRunner().invoke(app, ["evaluate", str(pred), "--truth", str(truth), "--json",
                                   "--ceiling"])  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    # every truth unit is a neighbour; only the 54 predicted ones are scored
    ref, _ = ceiling_metrics(norm, units=list(norm.obs_names[10:]))
    assert doc["ceiling"]["n_units"] == 54
    assert doc["ceiling"]["PCC@M"] == pytest.approx(ref.summary()["PCC@M"], abs=1e-6)
    text = CliRunner().invoke(app, ["evaluate", str(pred), "--truth", str(truth), "--ceiling"])
    assert "| ceiling (neighbours) |" in text.output and "not a method" in text.output


def test_method_named_by_the_model_and_its_run(files, tmp_path):
    truth, _, _, pred = files
    p = pred.copy()
    p.uns["hexpress"]["model"] = {"name": "pixnet", "kwargs": {"mode": "density"}}
    p.uns["hexpress"]["checkpoint"] = {"path": "runs/her2st_a/model.json", "sha256": "x"}
    path = tmp_path / "named.h5ad"
    p.write_h5ad(path)
    res = CliRunner().invoke(app, ["evaluate", str(path), "--truth", str(truth)])
    assert res.exit_code == 0, res.output
    assert "| pixnet (run her2st_a) |" in res.output
    assert "kwargs" not in res.output and "{" not in res.output


def test_existing_out_refused_before_computing(files, tmp_path, monkeypatch):
    import hexpress.eval.metrics as metrics

    truth, pred, _, _ = files
    out = tmp_path / "taken"
    out.mkdir()
    (out / "old.txt").write_text("x")

    def never(*a, **k):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(metrics, "section_metrics", never)
    res = CliRunner().invoke(app, ["evaluate", str(pred), "--truth", str(truth), "--out", str(out)])
    assert res.exit_code != 0
    assert "--overwrite" in str(res.exception) and "PCC@M" not in res.output


def test_prediction_folder_map_is_drawn(files, tmp_path):
    from eval_helpers import write_field_map

    truth, _, norm, pred = files
    _, image = make_section(0)
    folder = tmp_path / "slide"
    folder.mkdir()
    pred.write_h5ad(folder / "spots.h5ad")
    write_field_map(folder / "map.zarr", norm, image)
    out = tmp_path / "rep"
    res = CliRunner().invoke(
        app, ["evaluate", str(folder / "spots.h5ad"), "--truth", str(truth), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert list((out / "figures").glob("dense_sec0_*.png"))


def test_evaluate_truth_format_reads_a_visium_folder(tmp_path, runner, io_builders):
    from hexpress.io import read_visium

    t = io_builders.make_visium(tmp_path / "run", n=30, off_tissue=0)
    s = read_visium(t.root)
    pred = normalize(s.adata, scale=1e4)  # a perfect prediction, under other unit ids
    pred.obs_names = [f"spot{i}" for i in range(pred.n_obs)]
    pred.write_h5ad(tmp_path / "pred.h5ad")
    r = runner.invoke(
        app,
        ["evaluate", str(tmp_path / "pred.h5ad"), "--truth", str(t.root), "--truth-format",
         "visium", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["metrics"]["n_units"] == 30 and doc["metrics"]["PCC@M"] == pytest.approx(1.0)
