"""The ONNX Runtime benchmark runs on a tiny PixNet and reports each path it times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'hexpress[onnx]'")
pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'hexpress[onnx]'")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_onnx.py"


@pytest.mark.slow
def test_tiny_tile_reports_torch_and_each_level():
    cmd = [sys.executable, str(SCRIPT), "--model", "test_pixnet", "--n-genes", "4",
           "--tile-px", "128", "--repeats", "1", "--threads", "1", "--levels", "extended,all",
           "--exporter", "torchscript"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["threads"] == 1 and out["matmul_gflop_per_s"] > 0
    (tile,) = out["tiles"]
    # test_pixnet's receptive field (160 px) does not fit: a quarter of the tile, aligned to 32
    assert (tile["tile_px"], tile["margin_px"], tile["core_px"]) == (128, 32, 64)
    assert tile["region_cells"] == [8, 8, 24, 24] and tile["output_shape"] == [1, 5, 16, 16]
    for key in ("torch", "ort_extended", "ort_all"):
        assert tile[key]["seconds_per_tile"] > 0 and tile[key]["over_matmul"] > 0, key
    padded = tile["torch_padded_same"]  # the earlier torch path, in the same process
    assert padded["seconds_per_tile"] > 0 and padded["max_abs_dev"] < 1e-4
    for key in ("ort_extended", "ort_all"):
        assert tile[key]["max_abs_dev_over_std"] < 1e-4, key
        assert tile[key]["speedup_over_torch"] > 0, key
