"""Speed and memory of the simulator: one slide, every format written.

    .venv/bin/python benchmarks/bench_sim.py [--size-mm 4] [--mpp 0.5] [--seed 0] [--out DIR]

Prints one JSON object: wall time of ``simulate`` and ``write_all`` (and their parts), peak
resident memory of the process, and what was made. Target for the default 4 mm x 4 mm slide at
0.5 µm/px (8000 x 8000 px): under 60 s and 4 GB on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hexpress.sim import SimConfig, simulate
from hexpress.sim.writers import write_all


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mm", type=float, default=4.0)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the output here (default: temp)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="hexpress-bench-sim-"))
    t0 = time.perf_counter()
    slide = simulate(SimConfig(size_mm=args.size_mm, mpp=args.mpp, seed=args.seed))
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = write_all(slide, out, overwrite=args.out is not None)
    t_write = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "size_mm": args.size_mm,
        "mpp": args.mpp,
        "image_px": [slide.width, slide.height],
        "n_cells": int(len(slide.cells)),
        "n_genes": len(slide.genes),
        "n_transcripts": int(len(slide.transcripts)),
        "simulate_s": round(t_sim, 2),
        "simulate_parts_s": {k: round(v, 2) for k, v in slide.timings.items()},
        "write_s": round(t_write, 2),
        "write_parts_s": manifest["timings_s"],
        "total_s": round(t_sim + t_write, 2),
        "peak_rss_gb": round(peak_kb / 1024**2, 3),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
