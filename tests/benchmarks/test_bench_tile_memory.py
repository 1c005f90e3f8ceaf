"""The tile memory benchmark runs a tiny model per tile side and reports consistent figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tile_memory.py"


@pytest.mark.slow
def test_one_process_per_tile_side_reports_memory_and_kept_share():
    cmd = [sys.executable, str(SCRIPT), "--model", "test_pixnet", "--genes", "4", "--sizes",
           "384,448", "--margin", "64", "--tiles", "2", "--threads", "1", "--trace"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["margin_px"] == 64 and out["receptive_field_px"] == 160
    assert set(out["results"]) == {"384", "448"}
    for side, res in out["results"].items():
        t, m = int(side), res["margin_px"]
        assert (res["tile_px"], m, res["core_px"]) == (t, 64, t - 2 * m)
        assert res["tiles_run"] == 2
        assert res["kept_over_computed_px"] == round((t - 2 * m) ** 2 / t**2, 4)
        assert res["peak_rss_mb"] >= res["peak_rss_mb_before_tiles"] >= res["rss_mb_before_tiles"]
        assert res["rss_mb_before_tiles"] > 0 and res["seconds_map_under_load"] > 0
        # the modules holding the most memory, by name, from the model that ran
        top = res["rss_mb_after_module_top"]
        assert top and all(n.startswith(("encoder.", "proj.", "up.", "dffn.", "head")) for n in top)
        assert max(top.values()) <= res["peak_rss_mb"] + 1
