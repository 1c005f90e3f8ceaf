"""Aggregation of every Visium HD bin of a region from an on-disk dense map, without the net.

The map is synthetic: a ``--cells`` x ``--cells`` float16 zarr map with ``--channels`` channels
of random values (density mode: the last channel is the total), chunked ``--chunk`` cells square
as the engine chunks a map (one chunk per tile core; 368 cells for the default 2,496 px tiles
with exact PixNet-Lite0 margins), written in ``seconds_write_map`` (not part of the timings).
The default, 3,250 cells of 2 µm with 251 channels, is the map of PixNet-Lite0 (250 genes and
the total, stride 4 at 0.5 µm/px) over a 6.5 mm x 6.5 mm Visium HD capture area.

Then every ``--bins`` bin of the region is aggregated into AnnData with all the map's genes,
the way ``hexpress predict --bins 2,8,16`` does it (:func:`hexpress.infer.aggregate_geometries`:
one pass over the map for every bin size whose bins fit in memory together), or with
``--separate`` one :func:`hexpress.infer.aggregate_units` call per bin size (the map read once
per size). Bin sizes with more than ``--block-bins`` bins go in blocks of that many bins, one
AnnData per block, so memory stays bounded (10.6 M bins of 2 µm x 250 genes are 10.6 GB as one
float32 matrix).

Prints one JSON object: bins, seconds and bins per second per bin size (in one pass the seconds
of the pass are shared out to its sizes by bins), the total, and peak RSS (``VmHWM``).

Usage: ``python benchmarks/bench_aggregate.py [--cells 3250] [--channels 251] [--bins 16,8,2]
[--separate] [--map PATH]``. ``--cells 400`` runs in seconds. ``--map`` keeps the map at PATH
and reuses it on the next run with the same options.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hexpress.infer import create_dense_map, grid_bins, open_dense_map
from hexpress.infer.aggregate_disk import aggregate_units

STRIDE = 4
MODEL_MPP = 0.5


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``VmHWM``), MB."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return round(kb / 1024, 1)


def write_random_map(path: Path, cells: int, channels: int, chunk: int, seed: int = 0):
    """A complete density-mode map of ``cells`` x ``cells`` x ``channels`` random float16."""
    side_px = cells * STRIDE
    dm = create_dense_map(
        path, map_shape=(cells, cells), n_channels=channels, chunk_cells=chunk, n_tiles=1,
        tissue_mask=np.ones((8, 8), bool),
        attrs={
            "map_mpp": MODEL_MPP * STRIDE, "origin_px": [0, 0], "stride": STRIDE,
            "model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(channels - 1)],
            "mode": "density", "normalization": {"method": "log1p_total", "scale": 1e4},
            "slide": {"path": None, "width": side_px, "height": side_px, "mpp": MODEL_MPP},
            "tissue_scale": 8 / side_px,
            "bench": {"cells": cells, "channels": channels, "chunk": chunk, "seed": seed},
        },
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    for y in range(0, cells, chunk):
        h = min(chunk, cells - y)
        for x in range(0, cells, chunk):
            w = min(chunk, cells - x)
            vals = rng.random((h, w, channels), dtype=np.float32)
            vals[..., -1] += 1.0  # the total, never 0
            dm.write(y, x, vals)
    dm.mark_done([0])
    dm.finalize()
    return open_dense_map(path)


def _open_or_write(path: Path, cells: int, channels: int, chunk: int):
    want = {"cells": cells, "channels": channels, "chunk": chunk, "seed": 0}
    if path.exists():
        try:
            dm = open_dense_map(path)
            if dm.attrs.get("bench") == want:
                return dm, 0.0
        except Exception:  # not a map of this script: write it again
            pass
    t0 = time.perf_counter()
    dm = write_random_map(path, cells, channels, chunk)
    return dm, time.perf_counter() - t0


def _blocks(units, block_bins: int):
    n = len(units)
    if n <= block_bins:
        return [units]
    return [units.subset(np.arange(a, min(n, a + block_bins))) for a in range(0, n, block_bins)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=3250, help="map side in cells (2 µm each)")
    p.add_argument("--channels", type=int, default=251, help="genes + the total channel")
    p.add_argument("--chunk", type=int, default=368, help="chunk side in cells (a tile core)")
    p.add_argument("--bins", default="16,8,2", help="bin sides in µm, comma separated")
    p.add_argument("--block-bins", type=int, default=1_000_000, help="bins per AnnData block")
    p.add_argument("--memory-mb", type=float, default=512.0, help="memory bound of one block")
    p.add_argument("--separate", action="store_true", help="one aggregate_units per bin size")
    p.add_argument("--map", default=None, help="keep the map here (and reuse it)")
    p.add_argument("--workdir", default=None, help="where a temporary map goes")
    args = p.parse_args()
    sizes = [float(b) for b in args.bins.split(",") if b.strip()]
    work = None
    if args.map is None:
        work = Path(tempfile.mkdtemp(prefix="hexpress_agg_", dir=args.workdir))
        map_path = work / "map.zarr"
    else:
        map_path = Path(args.map)
    out: dict = {
        "benchmark": "aggregate_bins",
        "map_cells": [args.cells, args.cells],
        "channels": args.channels,
        "chunk_cells": args.chunk,
        "one_pass": not args.separate,
        "block_bins": args.block_bins,
        "memory_mb": args.memory_mb,
    }
    try:
        dm, t_write = _open_or_write(map_path, args.cells, args.channels, args.chunk)
        out["seconds_write_map"] = round(t_write, 1)
        out["peak_rss_mb_after_map"] = peak_rss_mb()
        side = args.cells * STRIDE
        units = {um: grid_bins(side, side, MODEL_MPP, um) for um in sizes}
        # bin sizes that fit in one block go in one pass; the others block by block
        whole = [um for um in sizes if len(units[um]) <= args.block_bins]
        seconds = dict.fromkeys(sizes, 0.0)
        blocks = dict.fromkeys(sizes, 0)
        t_all = time.perf_counter()
        if whole and not args.separate:
            # imported here so that --separate also times a version without it
            from hexpress.infer.aggregate_disk import aggregate_geometries

            t0 = time.perf_counter()
            n_whole = sum(len(units[um]) for um in whole)
            # the pass runs when the first AnnData is asked for: time until the last one
            res = aggregate_geometries(
                dm, [units[um] for um in whole], memory_mb=args.memory_mb, progress=False
            )
            for um, a in zip(whole, res, strict=True):
                assert a.n_obs == len(units[um]) and a.n_vars == args.channels - 1
                blocks[um] = 1
                del a
            dt = time.perf_counter() - t0
            for um in whole:
                seconds[um] = dt * len(units[um]) / n_whole
        for um in sizes:
            if um in whole and not args.separate:
                continue
            t0 = time.perf_counter()
            for sub in _blocks(units[um], args.block_bins):
                a = aggregate_units(dm, sub, memory_mb=args.memory_mb, progress=False)
                assert a.n_obs == len(sub) and a.n_vars == args.channels - 1
                blocks[um] += 1
                del a
            seconds[um] = time.perf_counter() - t0
        t_all = time.perf_counter() - t_all
        for um in sizes:
            tag = f"{um:g}um"
            out[f"bins_{tag}"] = len(units[um])
            out[f"blocks_{tag}"] = blocks[um]
            out[f"seconds_{tag}"] = round(seconds[um], 2)
            out[f"bins_per_s_{tag}"] = round(len(units[um]) / max(seconds[um], 1e-9))
        out["seconds_total"] = round(t_all, 2)
        out["peak_rss_mb"] = peak_rss_mb()
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
