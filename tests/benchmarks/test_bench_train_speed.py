"""The training-speed benchmark script runs end to end, tiny, and reports what it timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_speed.py"


@pytest.mark.slow
def test_tiny_run_reports_frozen_and_end_to_end_rates(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--size-mm", "0.3", "--steps", "3",
           "--batch-size", "2", "--crop-px", "64", "--genes", "8", "--threads", "1",
           "--work", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["tiny"] is True and out["steps"] == 3
    for part in ("pixnet", "patch"):
        for mode in ("end_to_end", "frozen"):
            rate = out[part][mode]
            assert rate["steps_timed"] == 2 and rate["seconds"] > 0
            assert rate["samples_per_s"] == pytest.approx(rate["steps_per_s"] * 2, rel=1e-3)
        assert out[part]["frozen_over_end_to_end"] > 0
    # the frozen rates came from feature caches that were built and are on disk
    assert out["pixnet"]["cache_bytes"] > 0 and out["patch"]["cache_bytes"] > 0
    assert out["pixnet"]["cache_bytes"] != out["patch"]["cache_bytes"]
    assert any((tmp_path / "feature_cache").rglob("done/t0.json"))
