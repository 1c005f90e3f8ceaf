"""What a new user meets first: names checked before any work, test models hidden, a demo that
reruns, a quiet log."""

import logging

import numpy as np
import pytest
import torch
from cli_helpers import run

from hexpress.cli import EXIT_ERROR


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A test_pixnet checkpoint predicting ERBB2, CD74, KRT19 and a slide."""
    from hexpress.io import write_tiff
    from hexpress.models import create_model, save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(
        d / "run" / "model", create_model("test_pixnet", n_genes=3), model_name="test_pixnet",
        model_kwargs={"n_genes": 3}, model_mpp=1.0, genes=["ERBB2", "CD74", "KRT19"],
        normalization={"method": "log1p_total", "scale": 1e4},
    )  # fmt: skip
    write_tiff(d / "slide.tif", np.full((64, 64, 3), 200, np.uint8), mpp=0.5, tile=64)
    return d


@pytest.mark.parametrize(
    "option,value,hint",
    [
        ("--genes", "ERBB", "'ERBB' (did you mean ERBB2?)"),
        ("--genes", "FOO", "'FOO'"),  # no units asked for: still refused
        ("--preview", "erbb2", "'erbb2' (did you mean ERBB2?)"),
        ("--preview", "CD47", "'CD47' (did you mean CD74?)"),
    ],
)
def test_gene_names_checked_before_any_inference(ckpt, option, value, hint, capsys, monkeypatch):
    import hexpress.infer.pipeline as pipeline

    def never(*a, **k):
        raise AssertionError("predicted before checking the gene names")

    monkeypatch.setattr(pipeline, "predict_slides", never)
    argv = ["predict", ckpt / "slide.tif", "-c", ckpt / "run" / "model", "-o", ckpt / "o",
            option, value]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == EXIT_ERROR, err
    assert f"{option}: unknown gene(s) {hint}" in err
    assert "ERBB2, CD74, KRT19" in err  # what is valid


def test_valid_genes_reach_the_prediction(ckpt, capsys, monkeypatch):
    import hexpress.infer.pipeline as pipeline

    seen = {}

    def fake(slides, model, out, opts, workers=1):
        seen.update(genes=opts.genes, preview=opts.preview, model=model)
        return []

    monkeypatch.setattr(pipeline, "predict_slides", fake)
    argv = ["predict", ckpt / "slide.tif", "-c", ckpt / "run" / "model", "-o", ckpt / "o",
            "--genes", "CD74,ERBB2", "--preview", "KRT19"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert seen["genes"] == ["CD74", "ERBB2"] and seen["preview"] == ["KRT19"]
    assert seen["model"].genes == ["ERBB2", "CD74", "KRT19"]  # loaded once, handed over


def test_models_hides_test_models_unless_all(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert "pixnet" in names and not [n for n in names if n.startswith("test_")]
    assert "--all lists them" in out
    code, out, _ = run(["models", "--all"], capsys)
    assert "test_pixnet" in out and "test_efficientnet" in out
    code, out, _ = run(["models", "--json"], capsys)
    assert '"test_pixnet"' not in out and '"pixnet"' in out


def test_demo_rerun_prints_the_report_and_exits_0(tmp_path, capsys, monkeypatch):
    import hexpress.eval.bench as bench

    calls = []
    real = bench.run_bench

    def fake(cfg, overwrite=False, on_step=None):
        calls.append(overwrite)
        out = tmp_path / "demo" / "report"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.csv").write_text("method\n")
        (out / "report.html").write_text("<html></html>")
        raise SystemExit(0)  # stands in for the finished benchmark

    monkeypatch.setattr(bench, "run_bench", fake)
    code, _, _ = run(["demo", "--out", tmp_path / "demo", "--steps", "1"], capsys)
    assert code == 0 and calls == [False]
    code, out, err = run(["demo", "--out", tmp_path / "demo", "--steps", "1"], capsys)
    assert code == 0, err
    assert calls == [False]  # the second run computed nothing
    report = (tmp_path / "demo" / "report" / "report.html").resolve()
    assert f"file://{report}" in out and "already done" in out
    assert real is not fake


def test_simulated_truth_stores_categoricals_without_anndata_notes(tmp_path, caplog):
    import anndata as ad

    from hexpress.sim import SimConfig, simulate
    from hexpress.sim.writers import write_all

    caplog.set_level(logging.INFO)
    slide = simulate(SimConfig(size_mm=0.25, n_genes=12, seed=0))
    write_all(slide, tmp_path / "sim", formats=("truth",))
    assert "storing" not in caplog.text
    cells = ad.read_h5ad(tmp_path / "sim" / "truth" / "cells.h5ad")
    assert str(cells.obs["type"].dtype) == "category"


def test_zero_total_warning_once_per_sample(caplog):
    from hexpress.data.preprocess import normalize
    from hexpress.data.sample import make_units

    counts = np.array([[0, 0], [3, 1], [2, 2]], dtype=np.float32)
    a = make_units(counts, genes=["A", "B"], unit_ids=["u0", "u1", "u2"],
                   centers_px=np.zeros((3, 2)), geometry="disc", size_um=55.0,
                   source="t")  # fmt: skip
    a.uns["hexpress"] = {"sample_id": "zero-total-check"}
    caplog.set_level(logging.DEBUG, logger="hexpress.data.preprocess")
    for _ in range(3):
        normalize(a)
    warned = [r for r in caplog.records if "total count 0" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
