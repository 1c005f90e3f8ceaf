"""val_tta.py rebuilds a run's own validation units: its plain score is the one the run logged."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "val_tta.py"


@pytest.mark.slow
def test_plain_score_matches_the_run_log_and_tta_scores_the_same_units(tmp_path):
    from hexpress.sim import SimConfig, simulate
    from hexpress.sim.writers import write_all
    from hexpress.train import train
    from hexpress.train.config import config_from_dict

    slide = simulate(SimConfig(size_mm=0.6, n_genes=12, seed=0))
    write_all(slide, tmp_path / "sim", formats=("visium",))
    run = tmp_path / "run"
    cfg = config_from_dict({
        "data": {
            "samples": {"sim": {"path": str(tmp_path / "sim/visium/outs"), "format": "visium",
                                "image": str(tmp_path / "sim/visium/image.tif")}},
            "train": ["sim"], "genes": {"n": 6, "method": "heg"}, "model_mpp": 2.0,
            "crop_px": 64, "val_fraction": 0.3, "val_block_um": 150,
            "geometries": [{"name": "visium_55um"}],
        },
        "model": {"name": "test_pixnet", "kwargs": {"mode": "field"}},
        "optim": {"batch_size": 2, "max_steps": 4},
        "run": {"out_dir": str(run), "device": "cpu", "tensorboard": False, "progress": False,
                "ckpt_every": 0, "val_every": 4, "seed": 0},
    })  # fmt: skip
    train(cfg)
    logged = [r for r in csv.DictReader(open(run / "log.csv")) if r["split"] == "val"][-1]
    cmd = [sys.executable, str(SCRIPT), str(run), "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    (res,) = json.loads(r.stdout)["runs"].values()
    assert res["kind"] == "dense"
    plain, tta = res["plain"]["visium_55um"], res["tta8"]["visium_55um"]
    assert plain["n_units"] == tta["n_units"] > 0
    assert plain["pcc"] == pytest.approx(float(logged["pcc"]), abs=1e-3)
    assert plain["mse"] == pytest.approx(float(logged["mse"]), abs=1e-3)
    assert tta["mse"] != plain["mse"]  # eight transforms of an untrained net: other numbers
