"""The benchmark runner end to end on two tiny simulated slides, and its config errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hexpress.errors import ConfigError, InputFileError, OutputExistsError
from hexpress.eval.bench import load_bench_config, run_bench


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from hexpress.sim import SimConfig, simulate
    from hexpress.sim.writers import write_all

    root = tmp_path_factory.mktemp("bench_slides")
    for seed in (0, 1):
        slide = simulate(SimConfig(size_mm=0.6, n_genes=12, seed=seed))
        write_all(slide, root / f"sim{seed}", formats=("legacy_st", "visium", "visium_hd"))
    return root


def _config(root, out, **extra) -> dict:
    data = {
        "samples": {
            "sim0": {"path": f"{root}/sim0/visium/outs", "format": "visium",
                     "image": f"{root}/sim0/visium/image.tif"},
            "sim1": {"path": f"{root}/sim1/visium/outs", "format": "visium",
                     "image": f"{root}/sim1/visium/image.tif"},
        },
        "train": ["sim0"],
        "test": ["sim1"],
        "genes": {"n": 6, "method": "heg"},
        "model_mpp": 2.0,
        "crop_px": 64,
        "geometries": [{"name": "visium_55um"}],
    }  # fmt: skip
    run = {"device": "cpu", "tensorboard": False, "progress": False, "ckpt_every": 0}
    cfg = {
        "name": "tiny",
        "out_dir": str(out),
        "methods": [
            {"name": "PixNet tiny", "config": {
                "data": data, "model": {"name": "test_pixnet", "kwargs": {"mode": "field"}},
                "optim": {"batch_size": 2, "max_steps": 3}, "run": run}},
            {"name": "Training mean", "config": {
                "data": data, "model": {"name": "mean_baseline",
                                        "kwargs": {"patch_um": 32.0, "input_px": 16}},
                "run": run}},
        ],
        "predict": {"batch_size": 4},
        "report": {"n_heg": 3, "n_hvg": 3},
        "cross_scale": {"max_units": 150, "scales": [
            {"name": "spot_100um", "path": f"{root}/sim1/legacy_st", "format": "legacy-st",
             "section": "SIM1"},
            {"name": "spot_55um", "path": f"{root}/sim1/visium/outs", "format": "visium",
             "image": f"{root}/sim1/visium/image.tif"},
            {"name": "bin_16um", "path": f"{root}/sim1/visium_hd/binned_outputs",
             "format": "visium-hd", "image": f"{root}/sim1/visium_hd/image.tif",
             "options": {"bin_um": 16}},
        ]},
    }  # fmt: skip
    cfg.update(extra)
    return cfg


def test_bench_end_to_end_and_resume(slides, tmp_path):
    out = tmp_path / "bench"
    cfg = load_bench_config(_config(slides, out))
    result = run_bench(cfg)
    table = pd.read_csv(out / "results.csv")
    assert list(table["method"]) == ["PixNet tiny", "Training mean", "ceiling (neighbours)"]
    assert list(table["is_method"]) == [True, True, False]
    for col in ("MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", "n_genes_PCC>=0.30", "train_time_s",
                "predict_time_s"):  # fmt: skip
        assert col in table.columns
    assert table["MSE"].notna().all()
    # a constant prediction has no defined correlation: every gene is counted as undefined
    mean_row = table[table["method"] == "Training mean"].iloc[0]
    assert mean_row["n_undefined"] == 6 and pd.isna(mean_row["PCC@M"])
    assert (out / "report.html").is_file() and (out / "per_gene.json").is_file()
    assert "| PixNet tiny |" in (out / "results.md").read_text()

    cross = pd.read_csv(out / "cross_scale.csv")
    assert set(cross["scale"]) == {"spot_100um", "spot_55um", "bin_16um"}
    assert cross.groupby("method").size().to_dict() == {"PixNet tiny": 3, "Training mean": 3}
    # subsampled to max_units, the same units for both methods
    bins = cross[cross["scale"] == "bin_16um"]
    assert (bins["n_units"] == 150).all()
    assert sorted(cross["scale_um"].unique()) == [16.0, 55.0, 100.0]
    assert result.table.shape[0] == 3
    # the ceiling: the test section's units predicted from their measured neighbours, scored on
    # the same units and genes as the methods
    ceiling = table[table["method"] == "ceiling (neighbours)"].iloc[0]
    assert ceiling["n_units"] == table.iloc[0]["n_units"] and 0 < ceiling["PCC@M"] <= 1
    assert pd.isna(ceiling["train_time_s"])

    # finished: refused without --overwrite
    with pytest.raises(OutputExistsError, match="overwrite"):
        run_bench(cfg)
    # an interrupted benchmark (no results yet) reuses finished runs and predictions
    (out / "results.csv").unlink()
    before = json.loads((out / "runs" / "all" / "PixNet_tiny" / "summary.json").read_text())
    steps = []
    run_bench(cfg, on_step=steps.append)
    after = json.loads((out / "runs" / "all" / "PixNet_tiny" / "summary.json").read_text())
    assert before == after
    assert (out / "results.csv").is_file()
    # other inference settings make the earlier predictions stale: predicted again, with them
    preds = sorted((out / "predictions").rglob("summary.json"))
    assert preds and not any(json.loads(f.read_text())["options"]["tta"] for f in preds)
    (out / "results.csv").unlink()
    run_bench(load_bench_config(_config(slides, out, predict={"batch_size": 4, "tta": True})))
    assert all(json.loads(f.read_text())["options"]["tta"] for f in preds)
    assert before == json.loads((out / "runs" / "all" / "PixNet_tiny" / "summary.json").read_text())
    # a finished run trained with other settings is never reused: refused, saying what differs
    (out / "results.csv").unlink()
    changed = _config(slides, out)
    changed["methods"][0]["config"]["optim"]["max_steps"] = 5
    with pytest.raises(ConfigError, match=r"PixNet_tiny was trained with other settings: optim"):
        run_bench(load_bench_config(changed))
    with pytest.raises(ConfigError, match=r"--redo 'PixNet tiny'"):
        run_bench(load_bench_config(changed))
    # --redo trains that method again with its new settings and reuses the others
    mean_summary = out / "runs" / "all" / "Training_mean" / "summary.json"
    mean_before = json.loads(mean_summary.read_text())
    with pytest.raises(ConfigError, match=r"no method named 'PixNet'.*'PixNet tiny'"):
        run_bench(load_bench_config(changed), redo=["PixNet"])
    steps = []
    run_bench(load_bench_config(changed), redo=["pixnet  TINY"], on_step=steps.append)
    assert any("removing" in s and "PixNet_tiny" in s for s in steps)
    redone = json.loads((out / "runs" / "all" / "PixNet_tiny" / "summary.json").read_text())
    assert redone["steps"] == 5 and before["steps"] == 3
    assert json.loads(mean_summary.read_text()) == mean_before
    # also on a finished benchmark: the tables are rewritten, not refused
    assert (out / "results.csv").is_file()
    (out / "results.md").write_text("stale")
    steps = []
    run_bench(load_bench_config(changed), redo=["Training mean"], on_step=steps.append)
    assert "| PixNet tiny |" in (out / "results.md").read_text()
    assert any("removing" in s and "Training_mean" in s for s in steps)
    assert not any("removing" in s and "PixNet_tiny" in s for s in steps)


def test_bench_two_folds_writes_fold_reports(slides, tmp_path):
    out = tmp_path / "folds"
    cfg = _config(slides, out, cross_scale=None)
    cfg["methods"] = cfg["methods"][1:]
    cfg["folds"] = [
        {"name": "a", "overrides": []},
        {"name": "b", "overrides": ["data.train=[sim1]", "data.test=[sim0]"]},
    ]
    run_bench(load_bench_config(cfg))
    table = pd.read_csv(out / "results.csv")
    assert list(table["fold"]) == ["a", "a", "b", "b", "all folds", "all folds"]
    over = table[table["fold"] == "all folds"].set_index("method")
    assert not over.loc["ceiling (neighbours)", "is_method"]
    assert over.loc["ceiling (neighbours)", "n_sections"] == 2
    assert (out / "a" / "report.html").is_file() and (out / "b" / "report.html").is_file()
    page = (out / "report.html").read_text()
    assert 'href="a/report.html"' in page and "all folds" in page


def test_bench_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no methods"):
        load_bench_config({"name": "x"})
    with pytest.raises(ConfigError, match="unknown config key.*valid keys"):
        load_bench_config({"methods": [{"name": "a", "recipe": "r.yaml"}], "folds_": []})
    with pytest.raises(ConfigError, match="unique"):
        load_bench_config({"methods": [{"name": "a", "recipe": "r"}, {"name": "a", "recipe": "r"}]})
    with pytest.raises(ConfigError, match="recipe file or an inline config"):
        load_bench_config({"methods": [{"name": "a"}]})
    cfg = load_bench_config(
        {"methods": [{"name": "a", "recipe": "missing.yaml"}], "out_dir": str(tmp_path / "o")}
    )
    with pytest.raises(InputFileError, match="missing.yaml"):
        run_bench(cfg)


def test_demo_config_resolves(tmp_path):
    """The demo's benchmark: two slides, PixNet and the patch baseline, five scales."""
    from hexpress.eval.bench import method_train_config
    from hexpress.eval.demo import demo_config

    cfg = load_bench_config(demo_config(tmp_path / "demo", steps=7))
    assert [m.name for m in cfg.methods] == ["PixNet", "EfficientNet-Lite0 patch"]
    assert [s.name for s in cfg.cross_scale.scales] == [
        "spot_100um", "spot_55um", "bin_16um", "bin_8um", "bin_2um"
    ]  # fmt: skip
    assert {s.seed for s in cfg.simulate} == {0, 1}
    for m in cfg.methods:
        t = method_train_config(cfg, m, cfg.folds[0], tmp_path / "run")
        assert t.optim.max_steps == 7 and t.data.train == ["train"] and t.data.test == ["test"]
