"""benchmarks/device_check.sh on a machine without a GPU: the CPU parts run and it says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_check.sh"


@pytest.mark.slow
def test_cpu_path_runs_and_says_the_gpu_parts_were_skipped(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-only", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["gpu_parts"].startswith("SKIPPED") and "SKIPPED" in r.stderr
    t, p = out["train"], out["predict"]
    assert t["device"] == "cpu" and t["steps"] == 5
    assert abs(t["samples_per_second"] - t["steps_per_second"] * t["batch_size"]) < 0.02
    assert p["device"] == "cpu" and p["slide_px"] == 1000 and "agreement" not in p
    assert p["input_mpx_per_second"] > 0 and out["ok"] is True
