"""The margin benchmark compares maps at smaller margins with the exact one, value by value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_margin.py"


def _script():
    """The script as a module, imported as the benchmark scripts import each other."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    import bench_margin

    return bench_margin


def test_compare_counts_float16_steps_and_changed_values():
    exact = np.zeros((2, 2, 2), dtype=np.float16)
    exact[..., 0] = [[1.0, 2.0], [3.0, 4.0]]
    exact[..., 1] = [[4.0, 3.0], [2.0, 1.0]]
    other = exact.copy()
    other[0, 0, 0] = np.float16(1.0) + 2 * np.spacing(np.float16(1.0))  # two steps above 1
    covered = np.ones((2, 2), dtype=bool)
    out = _script().compare(exact, other, covered)
    assert out["cells_compared"] == 4
    assert out["values_changed"] == 0.125  # one of 8 values
    assert out["largest_change_in_float16_steps"] == 2.0
    assert out["largest_deviation"] == round(2 * float(np.spacing(np.float16(1.0))), 5)
    assert out["min_gene_pcc_vs_exact"] < 1.0
    # uncovered cells are left out
    covered[0, 0] = False
    out = _script().compare(exact, other, covered)
    assert out["cells_compared"] == 3 and out["values_changed"] == 0.0


@pytest.mark.slow
def test_margin_at_the_receptive_field_is_exact_and_a_smaller_one_is_not(tmp_path):
    from hexpress.io import write_tiff
    from hexpress.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("test_pixnet", n_genes=3)
    save_checkpoint(
        tmp_path / "ckpt" / "model", model, model_name="test_pixnet", model_kwargs={"n_genes": 3},
        model_mpp=1.0, genes=["A", "B", "C"], normalization={"method": "log1p", "scale": 1e4},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, size=(1024, 1024, 3), dtype=np.uint8)  # all tissue-coloured
    write_tiff(tmp_path / "slide.tif", img, mpp=1.0, tile=256, min_level_side=256)
    cmd = [sys.executable, str(SCRIPT), "--checkpoint", str(tmp_path / "ckpt" / "model.json"),
           "--slide", str(tmp_path / "slide.tif"), "--tile-px", "512", "--margins", "160,32",
           "--threads", "1", "--workdir", str(tmp_path / "w")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["receptive_field_px"] == 160
    rows = out["margins"]
    assert rows["exact"]["margin_px"] == 160 and "largest_deviation" not in rows["exact"]
    same, small = rows["160"], rows["32"]
    assert same["largest_deviation"] == 0 and same["values_changed"] == 0
    assert same["min_gene_pcc_vs_exact"] == 1.0
    assert small["margin_px"] == 32 and small["tiles"] < same["tiles"]
    assert small["largest_deviation"] > 0 and 0 < small["values_changed"] <= 1
    assert small["largest_change_in_float16_steps"] >= 1
    assert small["kept_over_computed_px"] > same["kept_over_computed_px"]
    assert same["cells_compared"] == small["cells_compared"] > 0
