"""Peak memory of whole-slide dense inference: 10k x 10k vs 40k x 40k px synthetic slides.

Each slide is a pyramidal JPEG-tiled TIFF written tile by tile (never whole in memory) with a
cheap H&E-like texture: an elliptical tissue region (pink, with purple "nuclei" dots) on white
glass. Each prediction runs in a fresh subprocess that reports its peak resident memory
(``VmHWM``): tissue detection, tiled prediction of the dense map (tiles without tissue are
skipped), and the 16 µm bins aggregated from the on-disk map into their ``.h5ad``, as
``hexpress predict`` writes them (:func:`hexpress.infer.write_geometries`; ``--aggregate
memory``: the AnnData made in memory first, then written, the earlier way);
``peak_rss_mb_map`` is the peak before the aggregation, ``peak_rss_mb`` the peak of the whole
run.

The model is the untrained ``test_pixnet`` (stride 4) at ``model_mpp`` 2 µm/px, so the 40k run
(0.5 µm/px slide, 20 x 20 mm) finishes in minutes on 2 CPU cores; memory is bounded by tile and
batch, which do not depend on the model's weights. ``--model pixnet_lite0 --tile-px default``
measures the real model at the engine's default tile (at most 3072 px, 2048 px with
``--runtime onnx`` or ``openvino``; slower: about 170 GFLOP a 3072 px tile).

Usage: ``python benchmarks/bench_infer_memory.py [--sizes 10000,40000] [--workdir DIR]
[--model test_pixnet] [--tile-px 1024|default] [--batch-size 4] [--genes 16]
[--runtime torch|onnx|openvino] [--aggregate files|memory]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLIDE_MPP = 0.5
MODEL_MPP = 2.0
TILE = 512


def _texture(y0: int, x0: int, h: int, w: int, size: int, down: int) -> np.ndarray:
    """Tile ``[y0:y0+h, x0:x0+w]`` of level ``down`` (downsample factor) of the synthetic slide."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32) * down
    c = size / 2
    tissue = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.30 * size)) ** 2 < 1
    img = np.full((h, w, 3), 244, dtype=np.uint8)
    img[tissue] = (228, 160, 196)
    # nuclei: a jittered lattice of dark dots every 24 level-0 px
    gy, gx = (yy % 24) - 12, (xx % 24) - 12
    jitter = (np.sin(yy // 24 * 12.9898 + xx // 24 * 78.233) * 43758.5453) % 1
    nuc = tissue & (gy * gy + gx * gx < 16 + 20 * jitter) & (jitter > 0.35)
    img[nuc] = (120, 70, 160)
    return img


def write_slide(path: Path, size: int) -> Path:
    import tifffile

    levels = [1]
    while size // (levels[-1] * 2) >= 1024:
        levels.append(levels[-1] * 2)

    def tiles(down: int):
        n = size // down
        for ty in range(0, n, TILE):
            for tx in range(0, n, TILE):
                t = np.full((TILE, TILE, 3), 244, dtype=np.uint8)
                h, w = min(TILE, n - ty), min(TILE, n - tx)
                t[:h, :w] = _texture(ty, tx, h, w, size, down)
                yield t

    res = 1e4 / SLIDE_MPP
    kw = dict(
        dtype=np.uint8, photometric="rgb", tile=(TILE, TILE), compression="jpeg",
        resolutionunit="CENTIMETER",
    )  # fmt: skip
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles(1), shape=(size, size, 3), subifds=len(levels) - 1, resolution=(res, res),
            description=json.dumps({"mpp": SLIDE_MPP}), metadata=None, **kw,
        )  # fmt: skip
        for d in levels[1:]:
            n = size // d
            tw.write(tiles(d), shape=(n, n, 3), subfiletype=1, resolution=(res / d, res / d),
                     metadata=None, **kw)  # fmt: skip
    return path


def child(
    slide: str,
    out: str,
    model_name: str,
    tile: str,
    batch: str,
    genes: str,
    runtime: str,
    aggregate: str,
) -> None:
    """Predict one slide (in its own process) and print the JSON of its peak memory."""
    import torch

    from hexpress import infer
    from hexpress.io import open_image
    from hexpress.models import create_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    n_genes = int(genes)
    model = create_model(model_name, n_genes=n_genes).eval()
    info = infer.ModelInfo(
        model, {"model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(n_genes)]}
    )
    img = open_image(slide)
    tissue = infer.detect_tissue(img)
    dm = infer.predict_slide(
        img, info, Path(out) / "map.zarr", tile_px=None if tile == "default" else int(tile),
        batch_size=int(batch), tissue=tissue, runtime=runtime,
        progress=False,
    )  # fmt: skip
    t_map = time.perf_counter() - t0

    def hwm_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

    map_kb = hwm_kb()
    bins = infer.grid_bins(img.width, img.height, img.mpp, 16.0, tissue=tissue)
    path = Path(out) / "bins_016um.h5ad"
    if aggregate == "files":  # as hexpress predict writes them
        [n_bins] = infer.write_geometries(dm, [bins], [path], drop_uncovered=True, progress=False)
    else:  # the AnnData made in memory, then written
        a = infer.aggregate_units(dm, bins, progress=False, drop_uncovered=True)
        infer.write_h5ad_atomic(a, path)
        n_bins = a.n_obs
        del a
    print(
        json.dumps(
            {
                "slide_px": [img.width, img.height],
                "tile_px": dm.attrs["tile_grid"]["tile_px"],
                "tissue_fraction": round(tissue.fraction, 3),
                "map_cells": list(dm.shape[:2]),
                "tiles_run": dm.attrs["n_tiles_run"],
                "tiles_total": len(dm.tiles_done()),
                "bins_16um": int(n_bins),
                "aggregate": aggregate,
                "seconds_map": round(t_map, 1),
                "seconds_total": round(time.perf_counter() - t0, 1),
                "peak_rss_mb_map": round(map_kb / 1024, 1),
                "peak_rss_mb": round(hwm_kb() / 1024, 1),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,40000")
    p.add_argument("--workdir", default=None)
    p.add_argument("--model", default="test_pixnet")
    p.add_argument("--tile-px", default="1024", help="px, or 'default' (the engine's)")
    p.add_argument("--batch-size", default="4")
    p.add_argument("--genes", default="16", help="output genes of the model")
    p.add_argument("--runtime", default="torch", help="torch, onnx or openvino (their extras)")
    p.add_argument(
        "--aggregate", default="files", choices=("files", "memory"),
        help="16 µm bins into their .h5ad as predict writes them (files), or made in memory first",
    )  # fmt: skip
    p.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hexpress_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        slide = work / f"slide_{size}.tif"
        t0 = time.perf_counter()
        if not slide.exists():
            write_slide(slide, size)
        t_write = time.perf_counter() - t0
        out = work / f"out_{size}"
        cmd = [sys.executable, __file__, "--child", str(slide), str(out), args.model,
               args.tile_px, args.batch_size, args.genes, args.runtime, args.aggregate]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["seconds_write_slide"] = round(t_write, 1)
        res["slide_file_mb"] = round(slide.stat().st_size / 2**20, 1)
        results[str(size)] = res
    sizes = list(results)
    out = {
        "benchmark": "infer_memory",
        "model": f"{args.model} (untrained decoder, stride 4, {args.genes} genes)",
        "runtime": args.runtime,
        "aggregate": args.aggregate,
        "slide_mpp": SLIDE_MPP,
        "model_mpp": MODEL_MPP,
        "tile_px": args.tile_px,
        "batch_size": int(args.batch_size),
        "threads": int(os.environ.get("BENCH_THREADS", "2")),
        "results": results,
    }
    if len(sizes) >= 2:
        small, large = results[sizes[0]]["peak_rss_mb"], results[sizes[-1]]["peak_rss_mb"]
        out["large_over_small"] = round(large / small, 3)
        out["large_under_3gb"] = large < 3072
        out["within_20_percent"] = large <= 1.2 * small
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
