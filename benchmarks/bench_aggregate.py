"""Aggregation of every Visium HD bin of a region from an on-disk dense map, without the net.

The map is synthetic: a ``--cells`` x ``--cells`` float16 zarr map with ``--channels`` channels
of random values (density mode: the last channel is the total), chunked ``--chunk`` cells square
as the engine chunks a map (one chunk per tile core; 368 cells for the default 2,496 px tiles
with exact PixNet-Lite0 margins), written in ``seconds_write_map`` (not part of the timings).
The default, 3,250 cells of 2 µm with 251 channels, is the map of PixNet-Lite0 (250 genes and
the total, stride 4 at 0.5 µm/px) over a 6.5 mm x 6.5 mm Visium HD capture area.

Then every ``--bins`` bin of the region is aggregated into AnnData with all the map's genes,
in memory, without writing files: the bin sizes whose bins fit in one block
together (at most ``--block-bins`` bins in all) in one pass over the map
(:func:`hexpress.infer.aggregate_geometries`: each chunk read once for all of them). A size with
more bins (10.6 M bins of 2 µm x 250 genes are 10.6 GB as one float32 matrix) gets a pass of its
own, in blocks of ``--block-bins`` bins, one AnnData per block, so memory stays bounded. With
``--separate`` every size gets a pass of its own (:func:`hexpress.infer.aggregate_units` per size
or block: the map read once per size), as before the one pass existed, so that the same command
times an older version.

``--files`` writes the bins as ``hexpress predict --bins`` does: every size into one ``.h5ad``
(:func:`hexpress.infer.write_geometries`: one pass while the sizes fit ``--units-mb`` of sums
and predictions, else groups of units written straight into the files); ``--files-in-memory``
the way predict did before that: every size's AnnData made in memory in one pass, then written
(:func:`hexpress.infer.aggregate_geometries`, :func:`hexpress.infer.write_h5ad_atomic`). Both
report seconds, peak RSS and the files' size.

Prints one JSON object: bins per size; per pass the sizes, bins, AnnData made, seconds and bins
per second; the total; peak RSS (``VmHWM``) after writing the map and at the end.

Usage: ``python benchmarks/bench_aggregate.py [--cells 3250] [--channels 251] [--bins 16,8,2]
[--separate | --files | --files-in-memory] [--map PATH]``. ``--cells 400`` runs in seconds. ``--map`` keeps the map at PATH
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
from hexpress.infer.aggregate_disk import UNITS_MB, aggregate_units

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
                return dm, 0.0  # reused: nothing written
        except Exception:  # not a map of this script: write it again
            pass
    t0 = time.perf_counter()
    dm = write_random_map(path, cells, channels, chunk)
    return dm, time.perf_counter() - t0


def _pass(dm, unit_sets, args, one_pass: bool) -> int:
    """Every unit of ``unit_sets`` into AnnData; the number of AnnData made."""
    n_vars = args.channels - 1
    if one_pass:  # every set fits in memory at once
        # imported here so that --separate also times a version without it
        from hexpress.infer.aggregate_disk import aggregate_geometries

        # the pass runs when the first AnnData is asked for
        res = aggregate_geometries(dm, unit_sets, memory_mb=args.memory_mb, progress=False)
        for units, a in zip(unit_sets, res, strict=True):
            assert a.n_obs == len(units) and a.n_vars == n_vars, (a.shape, len(units))
            del a
        return len(unit_sets)
    [units] = unit_sets
    made = 0
    for start in range(0, len(units), args.block_bins):
        stop = min(len(units), start + args.block_bins)
        sub = units if stop - start == len(units) else units.subset(np.arange(start, stop))
        a = aggregate_units(dm, sub, memory_mb=args.memory_mb, progress=False)
        assert a.n_obs == len(sub) and a.n_vars == n_vars, (a.shape, len(sub))
        made += 1
        del a
    return made


def _passes(dm, units: dict, sizes: list[float], args) -> dict:
    """The in-memory passes (one for the sizes that fit in a block together, or one each)."""
    # one pass for the bin sizes whose bins fit in one block together; the others (or every
    # size, with --separate) a pass each, in blocks of bins
    whole = [um for um in sizes if len(units[um]) <= args.block_bins]
    groups = [[um] for um in sizes] if args.separate else []
    if not args.separate:
        groups = ([whole] if whole else []) + [[um] for um in sizes if um not in whole]
    passes = []
    t_all = time.perf_counter()
    for group in groups:
        t0 = time.perf_counter()
        n = _pass(dm, [units[um] for um in group], args, one_pass=len(group) > 1)
        dt = time.perf_counter() - t0
        bins = sum(len(units[um]) for um in group)
        passes.append({
            "sizes_um": group, "bins": bins, "anndata": n, "seconds": round(dt, 3),
            "bins_per_s": round(bins / max(dt, 1e-9)),
        })  # fmt: skip
    return {"seconds_total": round(time.perf_counter() - t_all, 3), "passes": passes}


def _write_files(dm, unit_sets, folder: Path, args) -> dict:
    """Every set into one ``.h5ad`` each, streamed (``--files``) or in memory first."""
    from hexpress.infer import aggregate_geometries, write_geometries, write_h5ad_atomic

    folder = Path(tempfile.mkdtemp(prefix="hexpress_agg_files_", dir=folder))
    paths = [folder / f"{u.name}.h5ad" for u in unit_sets]
    try:
        t0 = time.perf_counter()
        if args.files:
            counts = write_geometries(
                dm, unit_sets, paths, memory_mb=args.memory_mb, units_mb=args.units_mb,
                progress=False,
            )  # fmt: skip
        else:
            counts = []
            res = aggregate_geometries(dm, unit_sets, memory_mb=args.memory_mb, progress=False)
            for a, path in zip(res, paths, strict=True):
                write_h5ad_atomic(a, path)
                counts.append(a.n_obs)
                del a
        dt = time.perf_counter() - t0
        assert counts == [len(u) for u in unit_sets], counts
        return {
            "written": "streamed" if args.files else "in_memory",
            "units_mb": args.units_mb if args.files else None,
            "seconds_total": round(dt, 3),
            "bins_per_s": round(sum(counts) / max(dt, 1e-9)),
            "file_mb": {p.name: round(p.stat().st_size / 2**20, 1) for p in paths},
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=3250, help="map side in cells (2 µm each)")
    p.add_argument("--channels", type=int, default=251, help="genes + the total channel")
    p.add_argument("--chunk", type=int, default=368, help="chunk side in cells (a tile core)")
    p.add_argument("--bins", default="16,8,2", help="bin sides in µm, comma separated")
    p.add_argument("--block-bins", type=int, default=1_000_000, help="bins per AnnData block")
    p.add_argument("--memory-mb", type=float, default=512.0, help="memory bound of one block")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--separate", action="store_true", help="one aggregate_units per bin size")
    how.add_argument("--files", action="store_true", help="into .h5ad files as predict does")
    how.add_argument(
        "--files-in-memory", action="store_true", help="into .h5ad files, each made in memory"
    )
    p.add_argument("--units-mb", type=float, default=UNITS_MB, help="--files: sums held at once")
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
        out["map_reused"] = t_write == 0.0
        out["seconds_write_map"] = round(t_write, 2)
        out["peak_rss_mb_after_map"] = peak_rss_mb()
        side = args.cells * STRIDE
        units = {um: grid_bins(side, side, MODEL_MPP, um) for um in sizes}
        for um in sizes:
            out[f"bins_{um:g}um"] = len(units[um])
        if args.files or args.files_in_memory:
            out.update(_write_files(dm, [units[um] for um in sizes], work or map_path.parent, args))
        else:
            out.update(_passes(dm, units, sizes, args))
        out["peak_rss_mb"] = peak_rss_mb()
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
