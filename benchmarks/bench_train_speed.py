"""Training speed: frozen-encoder steps against end-to-end steps, PixNet-Lite0 and the patch baseline.

On one simulated slide (``hexpress.sim``, Visium 55 µm spots), each case trains for ``--steps``
optimiser steps and reports the steady-state rate from the run's own log (``time_s`` of the last
step minus that of the first, over the steps between, so set-up and the feature-cache build do
not count):

* ``pixnet_lite0`` end to end (``optim.phases=[{finetune: N}]``),
* ``pixnet_lite0`` frozen, decoder on the cached encoder pyramid (``[{frozen: N}]``),
* ``lite0_patch`` end to end and frozen (the head alone learns, on cached pooled features).

The cache of a frozen case is built by a first run; the extra time of that run over a second
one on the finished cache is reported as ``cache_build_s``, with the cache's size on disk
(``cache_bytes``), so a reader can tell after how many steps the cache pays for itself.

Weights are untrained (speed does not depend on them). Usage::

    python benchmarks/bench_train_speed.py [--size-mm 1.0] [--steps 20] [--batch-size 8]
        [--crop-px 256] [--threads 2] [--tiny]

``--tiny`` swaps in the registered ``test_*`` models (a smoke run of the script itself).
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from hexpress.sim import SimConfig, simulate
from hexpress.sim.writers import write_all
from hexpress.train import config_from_dict, train
from hexpress.train.feature_cache import describe_cache


def _rate(run_dir: Path, batch_size: int) -> dict:
    """Steps and samples per second between a run's first and last logged training step."""
    rows = [r for r in csv.DictReader(open(run_dir / "log.csv")) if r["split"] == "train"]
    steps = len(rows) - 1
    dt = float(rows[-1]["time_s"]) - float(rows[0]["time_s"])
    per_s = round(steps / dt, 4) if dt > 0 else None
    return {"steps_timed": steps, "seconds": round(dt, 3), "steps_per_s": per_s,
            "samples_per_s": round(per_s * batch_size, 3) if per_s else None}  # fmt: skip


def _config(data: dict, model: str, kwargs: dict, phase: str, args, out: Path, cache: Path):
    return config_from_dict(
        {
            "data": data,
            "model": {"name": model, "kwargs": kwargs},
            "optim": {"batch_size": args.batch_size, "phases": [{phase: args.steps}]},
            "run": {
                "out_dir": str(out),
                "seed": 0,
                "log_every": 1,
                "ckpt_every": 0,
                "progress": False,
                "tensorboard": False,
                "device": "cpu",
                "feature_cache": str(cache),
                "threads": args.threads,
            },
        }  # fmt: skip
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mm", type=float, default=1.0)
    ap.add_argument("--mpp", type=float, default=0.5, help="µm/px of the simulated image")
    ap.add_argument("--model-mpp", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop-px", type=int, default=256)
    ap.add_argument("--genes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="test_* models, a smoke run")
    ap.add_argument("--work", type=Path, default=None, help="keep runs and cache here")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the rate is timed between the first and last)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="hexpress-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = simulate(SimConfig(size_mm=args.size_mm, mpp=args.mpp, seed=0,
                               n_genes=max(args.genes, 20)))  # fmt: skip
    write_all(slide, work / "sim", formats=("visium",), overwrite=True)
    vis = work / "sim" / "visium"
    data = {
        "samples": {"sim0": {"path": str(vis / "outs"), "format": "visium",
                             "image": str(vis / "image.tif")}},
        "train": ["sim0"],
        "genes": {"n": args.genes},
        "model_mpp": args.model_mpp,
        "crop_px": args.crop_px,
    }  # fmt: skip
    dense = ("test_pixnet", {"mode": "density"}) if args.tiny else ("pixnet_lite0", {})
    patch = ("test_patch", {"patch_um": 56, "input_px": 32}) if args.tiny else ("lite0_patch", {})
    if not args.tiny:
        dense[1]["pretrained"] = False
        patch[1]["pretrained"] = False
    cache = work / "feature_cache"
    result: dict = {
        "slide_px": [slide.width, slide.height],
        "mpp": args.mpp,
        "model_mpp": args.model_mpp,
        "batch_size": args.batch_size,
        "crop_px": args.crop_px,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "tiny": args.tiny,
    }
    for label, (name, kwargs) in (("pixnet", dense), ("patch", patch)):
        part = {"model": name}
        for phase in ("finetune", "frozen"):
            out = work / f"{label}_{phase}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            train(_config(data, name, kwargs, phase, args, out, cache))
            first = time.perf_counter() - t0
            if phase == "frozen":
                # the first frozen run built the cache: run again on it, and report both
                shutil.rmtree(out)
                t0 = time.perf_counter()
                train(_config(data, name, kwargs, phase, args, out, cache))
                part["cache_build_s"] = round(max(first - (time.perf_counter() - t0), 0.0), 2)
                kind = "pooled" if label == "patch" else "pyramid"
                part["cache_bytes"] = sum(
                    e["bytes"] for e in describe_cache(cache) if e["kind"] == kind
                )
            rate = _rate(out, args.batch_size)
            part["end_to_end" if phase == "finetune" else "frozen"] = rate
        e2e, frz = part["end_to_end"]["steps_per_s"], part["frozen"]["steps_per_s"]
        part["frozen_over_end_to_end"] = round(frz / e2e, 3) if e2e and frz else None
        result[label] = part
        print(json.dumps({label: part}), file=sys.stderr, flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
