"""Speed of dense inference against the single-patch baseline, and aggregation throughput.

1. PixNet (EfficientNet-Lite0 encoder, 250 genes, stride 4, untrained weights: speed does not
   depend on them) predicting every 8 µm and every 2 µm bin of a 4 mm x 4 mm region at
   ``model_mpp`` 0.5 µm/px (8000 x 8000 input px): the dense map is computed once, then each
   bin size is aggregated from it. By default the map time is **extrapolated** from a timed
   sample of tiles (``--dense-tiles``; time per tile x tiles of the region) and the bin time
   from the aggregation rate of part 3; ``--full`` runs the whole region and then aggregates
   every 8 µm and every 2 µm bin of it into an AnnData, all timed.
2. The single-patch baseline (``lite0_patch``: EfficientNet-Lite0, 112 µm crops resized to
   224 px) doing one crop per 8 µm bin (250 000 crops) and per 2 µm bin (4 000 000 crops).
   By default both are **extrapolated** from a timed sample of crops (``--patch-crops``);
   ``--patch-all`` runs every 8 µm bin of the region (about 50 min on 2 CPU cores) and
   extrapolates only the 2 µm case from it.
3. Aggregation throughput: every 2 µm bin of a 6.5 mm x 6.5 mm area (3250 x 3250 = 10.6 M bins)
   from an on-disk map whose cells are 2 µm, with ``--agg-genes`` genes (16 by default: the
   output matrix of 10.6 M x 250 genes would need 10.6 GB as float32), timed twice: the sums
   and predictions (``unit_sums`` + ``finish_units``) and the whole ``aggregate_units`` call
   (AnnData with 10.6 M string ids included).

Usage: ``python benchmarks/bench_infer_speed.py [--full] [--patch-all] [--threads 2]``.
Prints one JSON object on stdout; each part is also printed to stderr as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hexpress.infer import (
    ModelInfo,
    TissueMask,
    create_dense_map,
    finish_units,
    grid_bins,
    make_tile_grid,
    open_dense_map,
    unit_sums,
)
from hexpress.infer.aggregate_disk import aggregate_units
from hexpress.infer.engine import predict_tiles
from hexpress.infer.patch_engine import predict_patches
from hexpress.io import ArrayImage
from hexpress.models import create_model

MODEL_MPP = 0.5


def _he_like(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((n, n, 3), dtype=np.uint8)
    img[:] = (228, 160, 196)
    dots = rng.random((n, n)) < 0.01
    img[dots] = (120, 70, 160)
    return img


def bench_dense(args, work: Path) -> dict:
    torch.manual_seed(0)
    model = create_model("pixnet", n_genes=250, pretrained=False).eval()
    info = ModelInfo(model, {"model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(250)]})
    side = int(args.region_um / MODEL_MPP)
    t0 = time.perf_counter()
    rf = info.receptive_field_px
    t_rf = time.perf_counter() - t0
    grid = make_tile_grid(
        (side, side), stride=info.stride, receptive_field_px=rf, tile_px=args.tile_px,
        align_px=info.align_px,
    )  # fmt: skip
    n_run = len(grid) if args.full else min(len(grid), args.dense_tiles)
    # a sample of tiles needs only the pixels it reads: a small in-memory slide of the region
    img_side = side if args.full else grid.tile_px + grid.core_cells * info.stride * 2
    slide = ArrayImage(_he_like(img_side), mpp=MODEL_MPP)
    sub_grid = make_tile_grid(
        slide.shape_at(MODEL_MPP), stride=info.stride, receptive_field_px=rf,
        tile_px=args.tile_px, align_px=info.align_px,
    )  # fmt: skip
    dm = create_dense_map(
        work / "dense.zarr", map_shape=sub_grid.map_shape, n_channels=len(info.channels),
        chunk_cells=sub_grid.core_cells, n_tiles=len(sub_grid), tissue_mask=np.ones((4, 4), bool),
        attrs={"stride": info.stride, "model_mpp": MODEL_MPP, "genes": info.genes,
               "mode": info.mode, "map_mpp": MODEL_MPP * info.stride,
               "slide": {"width": img_side, "height": img_side, "mpp": MODEL_MPP},
               "normalization": {"scale": 1e4}, "tissue_scale": 4 / img_side},
    )  # fmt: skip
    tiles = list(sub_grid)[:n_run]
    predict_tiles(slide, info, sub_grid, tiles[:1], dm, batch_size=1, progress=False)  # warm-up
    t0 = time.perf_counter()
    predict_tiles(slide, info, sub_grid, tiles, dm, batch_size=args.batch_size, progress=False)
    t_tiles = time.perf_counter() - t0
    per_tile = t_tiles / len(tiles)
    map_s = per_tile * len(grid)
    bins: dict = {}
    if args.full:
        dm.finalize()
        dm = open_dense_map(work / "dense.zarr")
        for um in (8, 2):
            t0 = time.perf_counter()
            units = grid_bins(side, side, MODEL_MPP, float(um))
            a = aggregate_units(dm, units, memory_mb=args.memory_mb, progress=False)
            t_agg = time.perf_counter() - t0
            bins[f"bins_{um}um"] = int(a.n_obs)
            bins[f"seconds_aggregate_{um}um"] = round(t_agg, 1)
            bins[f"seconds_{um}um_bins"] = round(t_tiles + t_agg, 1)
            del a, units
    return {
        "model": "pixnet (tf_efficientnet_lite0, 250 genes, stride 4, width 128, hidden 512)",
        "region_um": args.region_um,
        "model_mpp": MODEL_MPP,
        "input_px": side,
        "receptive_field_px": rf,
        "seconds_receptive_field": round(t_rf, 2),
        "tile_px": grid.tile_px,
        "margin_px": grid.margin_px,
        "tiles_in_region": len(grid),
        "tiles_timed": len(tiles),
        "seconds_per_tile": round(per_tile, 3),
        "seconds_map_region": round(map_s, 1),
        "map_extrapolated": not args.full,
        **bins,
    }


def bench_patch(args, work: Path) -> dict:
    torch.manual_seed(0)
    model = create_model("lite0_patch", n_genes=250, pretrained=False).eval()
    meta = {
        "model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(250)], "kind": "patch",
        "patch_um": float(model.patch_um), "input_px": int(model.input_px),
    }  # fmt: skip
    info = ModelInfo(model, meta)
    if args.patch_all:
        side = int(args.region_um / MODEL_MPP)  # every 8 µm bin of the region
    else:
        side = int(round(model.patch_um / MODEL_MPP)) * 4
    slide = ArrayImage(_he_like(side), mpp=MODEL_MPP)
    bins = grid_bins(side, side, MODEL_MPP, 8.0)
    if not args.patch_all:
        bins = bins.subset(np.arange(min(args.patch_crops, len(bins))))
    predict_patches(slide, info, bins.subset(np.arange(2)), batch_size=2, progress=False)
    t0 = time.perf_counter()
    predict_patches(slide, info, bins, batch_size=args.batch_size * 4, progress=args.patch_all)
    t_crops = time.perf_counter() - t0
    per_crop = t_crops / len(bins)
    n8 = int(args.region_um / 8) ** 2
    n2 = int(args.region_um / 2) ** 2
    if args.patch_all:
        assert len(bins) == n8, (len(bins), n8)
    return {
        "model": f"lite0_patch ({model.patch_um:g} µm crops resized to {model.input_px} px)",
        "crops_timed": len(bins),
        "seconds_per_crop": round(per_crop, 4),
        "bins_8um": n8,
        "seconds_8um_bins": round(t_crops if args.patch_all else per_crop * n8, 1),
        "bins_2um": n2,
        "seconds_2um_bins": round(per_crop * n2, 1),
        "extrapolated_8um": not args.patch_all,
        "extrapolated_2um": True,
    }


def bench_aggregation(args, work: Path) -> dict:
    g = args.agg_genes
    n = int(6500 / 2)  # cells of 2 µm (model_mpp 0.5, stride 4)
    mpp = MODEL_MPP
    dm = create_dense_map(
        work / "agg.zarr", map_shape=(n, n), n_channels=g, chunk_cells=512, n_tiles=1,
        tissue_mask=np.ones((4, 4), bool),
        attrs={"stride": 4, "model_mpp": mpp, "genes": [f"g{i}" for i in range(g)],
               "mode": "field", "map_mpp": 2.0, "slide": {"width": n * 4, "height": n * 4,
               "mpp": mpp}, "normalization": {"scale": 1e4}, "tissue_scale": 4 / (n * 4)},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for y in range(0, n, 512):
        for x in range(0, n, 512):
            h, w = min(512, n - y), min(512, n - x)
            dm.write(y, x, rng.random((h, w, g), dtype=np.float32))
    dm.mark_done([0])
    dm.finalize()
    dm = open_dense_map(work / "agg.zarr")
    t0 = time.perf_counter()
    bins = grid_bins(n * 4, n * 4, mpp, 2.0, tissue=TissueMask(np.ones((4, 4), bool), 4 / (n * 4)))
    t_bins = time.perf_counter() - t0
    t0 = time.perf_counter()
    sums, _ = unit_sums(dm, bins, memory_mb=args.memory_mb, progress=False)
    X = finish_units(sums, "field", g)
    t_sums = time.perf_counter() - t0
    del sums, X
    t0 = time.perf_counter()
    a = aggregate_units(dm, bins, memory_mb=args.memory_mb, progress=False)
    t_all = time.perf_counter() - t0
    return {
        "area_mm": 6.5,
        "bins_2um": len(bins),
        "genes": g,
        "memory_mb": args.memory_mb,
        "seconds_make_bins": round(t_bins, 2),
        "seconds_sums_and_predictions": round(t_sums, 2),
        "bins_per_second": round(len(bins) / t_sums),
        "seconds_aggregate_units_with_anndata": round(t_all, 2),
        "n_obs": int(a.n_obs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--region-um", type=float, default=4000.0, help="side of the square region")
    p.add_argument(
        "--full", action="store_true", help="predict the whole region, then aggregate its bins"
    )
    p.add_argument("--dense-tiles", type=int, default=4)
    p.add_argument("--patch-crops", type=int, default=64)
    p.add_argument("--patch-all", action="store_true", help="one crop per 8 µm bin of the region")
    p.add_argument("--tile-px", type=int, default=None, help="default: 1024 px core + margins")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--agg-genes", type=int, default=16)
    p.add_argument("--memory-mb", type=float, default=512.0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--skip", default="", help="comma list of dense,patch,aggregation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    work = Path(tempfile.mkdtemp(prefix="hexpress_speed_"))
    out: dict = {"benchmark": "infer_speed", "threads": args.threads, "device": "cpu"}
    parts = {"aggregation": bench_aggregation, "dense": bench_dense, "patch": bench_patch}
    try:
        for name, run in parts.items():
            if name not in skip:
                out[name] = run(args, work)
                print(json.dumps({name: out[name]}), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "dense" in out and "aggregation" in out and not args.full:
        agg = out["aggregation"]
        rate = agg["bins_per_second"] * agg["genes"] / 250  # sums scale with channels
        d = out["dense"]
        for um in (8, 2):
            nb = int(args.region_um / um) ** 2
            d[f"seconds_{um}um_bins"] = round(d["seconds_map_region"] + nb / rate, 1)
        d["aggregation_note"] = (
            "bin time = map time + bins / (measured 2 µm bin rate scaled from "
            f"{agg['genes']} to 250 genes)"
        )
    if "dense" in out and "patch" in out:
        out["patch_over_dense_8um"] = round(
            out["patch"]["seconds_8um_bins"] / out["dense"]["seconds_8um_bins"], 1
        )
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
