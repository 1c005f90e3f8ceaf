"""The patch-forward benchmark script runs on a tiny model and reports every case it times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_patch_forward.py"


def test_tiny_run_reports_every_case():
    cmd = [sys.executable, str(SCRIPT), "--model", "test_patch", "--batch", "2", "--repeats", "1",
           "--threads", "1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["model"] == "test_patch" and out["batch"] == 2 and out["input_px"] == 32
    assert out["threads"] == 1 and out["matmul_gflops"] > 0
    cases = ("plain_ms", "folded_ms", "channels_last_ms", "folded_channels_last_ms", "engine_ms",
             "plain_beside_busy_thread_ms")  # fmt: skip
    for case in cases:
        assert out[case] > 0, case
