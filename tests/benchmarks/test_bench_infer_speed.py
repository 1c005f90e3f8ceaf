"""The speed benchmark runs end to end on a small region and its figures are consistent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_infer_speed.py"


@pytest.mark.slow
def test_small_region_end_to_end_figures_add_up(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--region-um", "200", "--model", "test_pixnet",
           "--patch-model", "test_patch", "--patch-crops", "8", "--margin", "32",
           "--tile-px", "160", "--deviation-tiles", "1", "--threads", "1",
           "--workdir", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    d, p = out["dense"], out["patch"]
    # the grid: 400 px at 0.5 µm/px, tiles of 160 px with 32 px margins (96 px cores)
    assert (d["input_px"], d["tile_px"], d["margin_px"], d["core_px"]) == (400, 160, 32, 96)
    assert d["tiles_in_region"] == math.ceil(400 / 96) ** 2 == d["tiles_run"] + d["tiles_empty"]
    assert d["tiles_empty"] == 0  # all tissue
    # every bin of the region, of each size
    assert (d["bins_16um"], d["bins_8um"], d["bins_2um"]) == (12 * 12, 25 * 25, 100 * 100)
    assert d["files_mb"] > 100 * 100 * 250 * 4 / 2**20  # the 2 µm file alone holds its X
    # kept / computed: the region's pixels over the tiles' pixels, a fraction in (0, 1]
    assert d["kept_px"] == 400 * 400 and d["computed_px"] == d["tiles_run"] * 160 * 160
    assert 0 < d["kept_over_computed_px"] <= 1
    assert abs(d["kept_over_computed_px"] - d["kept_px"] / d["computed_px"]) < 1e-4
    assert 0 < d["kept_over_computed_flop"] <= 1
    # the parts add up to their sum, and the total (its own clock) holds them all
    parts = ["setup", "map", "bins_to_files"]
    total_parts = sum(d[f"seconds_{k}"] for k in parts)
    assert abs(d["seconds_sum_of_parts"] - total_parts) <= 0.03
    assert d["seconds_sum_of_parts"] - 0.05 <= d["seconds_total"]
    assert d["seconds_total"] - d["seconds_sum_of_parts"] <= 0.1 * d["seconds_total"] + 0.5
    inside_map = d["seconds_map_wait_read"] + d["seconds_map_net"] + d["seconds_map_wait_write"]
    assert 0 < inside_map <= d["seconds_map"] + 0.05
    # rates: FLOPs counted per tile, over the seconds in the net; the ratio is their quotient
    assert d["net_gflop_per_s"] > 0 and d["matmul_gflop_per_s"] > 0
    ratio = d["net_gflop_per_s"] / d["matmul_gflop_per_s"]
    assert abs(d["net_over_matmul"] - ratio) <= 1e-3 + 1e-3 * ratio
    # a margin below the receptive field is compared with the exact map
    assert d["margin_px"] < d["receptive_field_px"]
    assert d["deviation"]["tiles_compared"] == 1 and d["deviation"]["largest_deviation"] >= 0
    # the patch baseline: the same 8 µm bins, extrapolated from the crops it timed, and says so
    assert p["bins_8um"] == d["bins_8um"] and p["crops_timed"] == 8 and p["extrapolated_8um"]
    assert (
        abs(p["seconds_8um_bins"] - p["seconds_per_crop"] * p["bins_8um"])
        <= 0.1 + 1e-3 * p["bins_8um"]
    )
    want = p["seconds_8um_bins"] / d["seconds_total"]
    assert abs(out["patch_8um_over_dense_all_bins"] - want) <= 0.01 + 0.01 * want
    assert out["peak_rss_mb"] >= d["peak_rss_mb_after_dense"] > 0
    # each part is reported as soon as it is done
    assert '{"dense":' in r.stderr and '{"patch":' in r.stderr


@pytest.mark.slow
def test_staged_region_reports_each_stage(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--region-um", "200", "--model", "pixnet_lite0",
           "--staged", "--skip", "patch", "--threads", "1", "--workdir", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)["dense"]
    assert d["staged"] and d["tiles_run"] == d["stage_tiles"]["c"] == 1
    assert d["stage_tiles"]["a"] >= 1 and d["stage_tiles"]["b"] >= 1
    # each stage's share of kept px, and the whole weighted by each stage's FLOPs
    kept = d["stage_kept_over_computed_px"]
    assert all(0 < kept[k] <= 1 for k in "abc")
    w = d["stage_flop"]
    weighted = sum(w[k] * kept[k] for k in "abc") / sum(w.values())
    assert abs(d["kept_over_computed_px"] - weighted) < 1e-3
    assert 0 < d["kept_over_computed_flop"] <= 1
    stages = sum(d[f"seconds_map_stage_{k}"] for k in "abc")
    assert abs(stages - d["seconds_map_net"]) <= 0.05
    # the rate is over the stages' FLOPs
    want = sum(w.values()) / d["seconds_map_net"] / 1e9
    assert abs(d["net_gflop_per_s"] - want) <= 0.05 + 0.02 * want
