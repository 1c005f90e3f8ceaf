"""How much a tile margin below the receptive field changes a trained model's map.

For a checkpoint and a slide, the script predicts the whole dense map (tissue only, as
``hexpress predict`` does) once with the exact margin (the receptive field: tiled equals
untiled) and once for each other margin asked for, at the same tile side, and compares the
stored float16 maps cell by cell over the cells both cover:

* ``largest_deviation``: the largest absolute difference of any stored value, and that over the
  exact map's standard deviation;
* ``values_changed``: the share of stored values that differ at all, and
  ``largest_change_in_float16_steps``: the largest difference counted in float16 steps at the
  exact value (1 = the storage rounding of the map itself);
* ``min_gene_pcc_vs_exact``: the lowest Pearson correlation, over genes, of the map with the
  exact map;
* ``kept_over_computed_px``: the tiles' cores over their computed pixels (the cost of the margin).

Usage: ``python benchmarks/bench_margin.py --checkpoint RUN/model.json --slide IMAGE
[--mpp UM] [--tile-px 3072] [--margins effective,256,192,128] [--threads 2]``. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hexpress.infer import make_tile_grid, predict_slide
from hexpress.infer.pipeline import load_model_info
from hexpress.infer.tissue import detect_tissue
from hexpress.io import open_image
from hexpress.models.loss import per_gene_pcc


def _map(info, slide, tissue, tile_px: int, margin, out: Path) -> tuple[np.ndarray, np.ndarray]:
    dm = predict_slide(
        slide, info, out, tile_px=tile_px, margin=margin, tissue=tissue, progress=False,
    )  # fmt: skip
    h, w, _ = dm.shape
    return dm.read(0, h, 0, w, dtype=np.float16)


def compare(exact: np.ndarray, other: np.ndarray, covered: np.ndarray) -> dict:
    """Deviation of ``other`` from ``exact`` (float16, ``(H, W, C)``) over ``covered`` cells."""
    a = exact[covered].astype(np.float32)  # (cells, C)
    b = other[covered].astype(np.float32)
    diff = np.abs(a - b)
    std = float(a.std())
    step = np.spacing(np.abs(exact[covered])).astype(np.float32)  # float16 step at each value
    pcc, valid = per_gene_pcc(torch.from_numpy(b), torch.from_numpy(a))
    pcc = pcc[valid].numpy() if bool(valid.any()) else np.ones(1, dtype=np.float32)
    worst = float(diff.max()) if diff.size else 0.0
    return {
        "cells_compared": int(a.shape[0]),
        "largest_deviation": round(worst, 5),
        "largest_deviation_over_map_std": round(worst / std, 6) if std > 0 else None,
        "values_changed": round(float((diff > 0).mean()), 5) if diff.size else 0.0,
        "largest_change_in_float16_steps": round(float((diff / step).max()), 1)
        if diff.size
        else 0.0,
        "min_gene_pcc_vs_exact": round(float(pcc.min()), 7),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--slide", required=True)
    p.add_argument("--mpp", type=float, default=None, help="µm per slide pixel (else metadata)")
    p.add_argument("--tile-px", type=int, default=3072)
    p.add_argument("--margins", default="effective,256,192,128")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hexpress_margin_"))
    info = load_model_info(args.checkpoint)
    slide = open_image(args.slide, mpp=args.mpp)
    tissue = detect_tissue(slide)
    t0 = time.perf_counter()
    exact, covered = _map(info, slide, tissue, args.tile_px, "exact", work / "exact.zarr")
    seconds = {"exact": round(time.perf_counter() - t0, 1)}
    covered = covered.astype(bool)
    shape = slide.shape_at(info.model_mpp)
    results = {}
    for margin in ["exact", *[m for m in args.margins.split(",") if m]]:
        px = info.margin_px(margin)
        grid = make_tile_grid(
            shape, stride=info.stride, receptive_field_px=px, tile_px=args.tile_px,
            align_px=info.align_px,
        )  # fmt: skip
        row = {
            "margin_px": grid.margin_px,
            "tile_px": grid.tile_px,
            "tiles": len(grid),
            "kept_over_computed_px": round((grid.core_cells * grid.stride / grid.tile_px) ** 2, 3),
        }
        if margin != "exact":
            t0 = time.perf_counter()
            other, cov = _map(info, slide, tissue, args.tile_px, margin, work / f"m_{margin}.zarr")
            seconds[margin] = round(time.perf_counter() - t0, 1)
            row.update(compare(exact, other, covered & cov.astype(bool)))
        results[margin] = row
    print(
        json.dumps(
            {
                "benchmark": "margin",
                "checkpoint": args.checkpoint,
                "slide": args.slide,
                "model_mpp": info.model_mpp,
                "receptive_field_px": info.receptive_field_px,
                "map_cells": list(exact.shape[:2]),
                "threads": args.threads,
                "margins": results,
                "seconds_map": seconds,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
