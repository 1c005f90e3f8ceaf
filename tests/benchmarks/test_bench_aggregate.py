"""The aggregation benchmark runs on a tiny synthetic map and accounts for every bin it times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_aggregate.py"


def _run(tmp_path, *extra):
    cmd = [sys.executable, str(SCRIPT), "--cells", "64", "--channels", "5", "--chunk", "16",
           "--block-bins", "1000", "--map", str(tmp_path / "m.zarr"), *extra]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow
def test_tiny_map_every_bin_timed_one_pass_then_separate(tmp_path):
    # the first run writes the map, the second reuses it
    for separate in (False, True):
        out = _run(tmp_path, *(["--separate"] if separate else []))
        assert out["map_reused"] is separate and (out["seconds_write_map"] > 0) is not separate
        _check(out, separate)


def _check(out, separate):
    # 64 cells of 2 µm: 128 µm a side
    assert (out["bins_16um"], out["bins_8um"], out["bins_2um"]) == (8 * 8, 16 * 16, 64 * 64)
    assert out["one_pass"] is not separate and out["map_cells"] == [64, 64]
    sizes = [p["sizes_um"] for p in out["passes"]]
    # the 2 µm bins (4,096 > --block-bins) go in blocks of 1,000: 5 AnnData, a pass of their own
    assert sizes == ([[16.0], [8.0], [2.0]] if separate else [[16.0, 8.0], [2.0]])
    assert [p["anndata"] for p in out["passes"]] == ([1, 1, 5] if separate else [2, 5])
    assert sum(p["bins"] for p in out["passes"]) == 64 + 256 + 4096
    for p in out["passes"]:
        # bins per second from the unrounded seconds (printed to the ms)
        assert p["seconds"] > 0
        assert p["bins"] / (p["seconds"] + 6e-4) - 1 <= p["bins_per_s"]
        assert p["bins_per_s"] <= p["bins"] / max(p["seconds"] - 6e-4, 1e-9) + 1
    assert out["seconds_total"] >= sum(p["seconds"] for p in out["passes"]) - 0.05
    assert out["peak_rss_mb"] >= out["peak_rss_mb_after_map"] > 0


@pytest.mark.slow
def test_tiny_map_into_files_streamed_and_in_memory(tmp_path):
    """Both ways of writing the files give the same files; the streamed one in groups."""
    sizes = {}
    for how in ("--files", "--files-in-memory"):
        out = _run(tmp_path, how, "--units-mb", "0.05")
        assert out["written"] == ("streamed" if how == "--files" else "in_memory")
        assert "passes" not in out and out["seconds_total"] > 0
        assert out["bins_per_s"] <= (64 + 256 + 4096) / max(out["seconds_total"] - 6e-4, 1e-9) + 1
        sizes[how] = out["file_mb"]
    assert sizes["--files"] == sizes["--files-in-memory"]
    assert set(sizes["--files"]) == {"bins_016um.h5ad", "bins_008um.h5ad", "bins_002um.h5ad"}
