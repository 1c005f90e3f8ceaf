"""The speed benchmark script runs end to end on a small region and times what it says it does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_infer_speed.py"


def test_full_run_measures_every_bin_and_every_crop():
    cmd = [sys.executable, str(SCRIPT), "--region-um", "200", "--full", "--patch-all",
           "--skip", "aggregation", "--threads", "1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    dense, patch = out["dense"], out["patch"]
    # the whole region is predicted and its bins aggregated: nothing extrapolated
    assert dense["map_extrapolated"] is False
    assert dense["tiles_timed"] == dense["tiles_in_region"]
    assert (dense["bins_8um"], dense["bins_2um"]) == (25 * 25, 100 * 100)
    for um in (8, 2):
        # bin time = the whole map plus that bin size's aggregation (rounded to 0.1 s)
        assert dense[f"seconds_aggregate_{um}um"] >= 0
        assert dense[f"seconds_{um}um_bins"] >= dense["seconds_map_region"] > 0
    # one crop per 8 µm bin, timed; only the 2 µm case is extrapolated, and says so
    assert patch["crops_timed"] == patch["bins_8um"] == 625
    assert patch["extrapolated_8um"] is False and patch["extrapolated_2um"] is True
    assert out["patch_over_dense_8um"] > 0
    # each part is reported as soon as it is done
    assert '{"dense":' in r.stderr and '{"patch":' in r.stderr
