"""The recipe training-speed script times both layouts of a real recipe, tiny, and the layouts
train the same steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_train_recipe.py"


@pytest.mark.slow
def test_both_layouts_are_timed_and_agree(small_out, tmp_path):
    out, _ = small_out
    cmd = [sys.executable, str(SCRIPT), str(REPO / "configs" / "tiny_smoke.yaml"), "--steps", "3",
           "--set", f"data.root={out / 'legacy_st'}", "--set", "data.train=[SIM1]",
           "--threads", "1", "--work", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    cl, plain = res["channels_last"], res["default"]
    for rate in (cl, plain):
        assert rate["steps_timed"] == 2 and rate["seconds"] > 0
        assert rate["samples_per_s"] == pytest.approx(rate["steps_per_s"] * 2, rel=1e-3)
    # each case really trained in its layout
    assert cl["channels_last_weights"] > 0 and plain["channels_last_weights"] == 0
    assert cl["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-4)
    assert res["channels_last_speedup"] == pytest.approx(
        cl["steps_per_s"] / plain["steps_per_s"], rel=1e-2
    )


def test_an_unknown_layout_is_refused():
    r = subprocess.run([sys.executable, str(SCRIPT), "x.yaml", "--layouts", "nhwc"],
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode == 2 and "--layouts" in r.stderr
