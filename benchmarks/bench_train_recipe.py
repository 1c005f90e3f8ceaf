"""Training speed of a recipe on its own data, in channels-last layout (the trainer's) and in
PyTorch's default layout.

``bench_train_speed.py`` times fixed shapes on a simulated slide; this script times a real
recipe (its model, crops, batch, augmentation and data reading, e.g. the HER2ST ones on
``../shared/data/her2st``) for ``--steps`` optimiser steps per layout, with validation and
checkpoints off. The rate is taken from the run's own log between the first and the last step,
so reading the data and building the model do not count. The final training loss of each
layout is printed beside it: the layouts compute the same step up to float rounding.

Usage (from the repository root)::

    python benchmarks/bench_train_recipe.py configs/pixnet_her2st.yaml --steps 40
    python benchmarks/bench_train_recipe.py configs/effnet_patch_her2st.yaml --steps 20 \\
        --set optim.batch_size=32

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from bench_train_speed import _rate

import hexpress.train.trainer as trainer
from hexpress.train import load_config, train

LAYOUTS = ("channels_last", "default")


def _default_layout(model, device):
    return model.to(device)


def run_layout(recipe: Path, overrides: list[str], layout: str, steps: int, out: Path) -> dict:
    """Train ``steps`` steps of ``recipe`` in ``layout``; its rate and final loss."""
    cfg = load_config(recipe, [
        *overrides, f"optim.max_steps={steps}", "optim.phases=[]", f"run.out_dir={out}",
        "run.log_every=1", "run.val_every=0", "run.ckpt_every=0", "run.progress=false",
        "run.tensorboard=false", "run.device=cpu",
    ])  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    placed = trainer.place_model
    if layout == "default":
        trainer.place_model = _default_layout
    try:
        res = train(cfg)
    finally:
        trainer.place_model = placed
    rate = _rate(out, cfg.optim.batch_size)
    rate["final_loss"] = res.train_loss  # the last step's: the window is one step (log_every=1)
    # weights whose memory order is channels-last and not the default one: the layout trained
    cl = torch.channels_last
    rate["channels_last_weights"] = sum(
        p.ndim == 4 and p.is_contiguous(memory_format=cl) and not p.is_contiguous()
        for p in res.model.parameters()
    )
    return rate


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="a config override, section.key=value (repeatable)",
    )
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the rate is timed between the first and last)")
    layouts = [x for x in args.layouts.split(",") if x]
    if not layouts or any(x not in LAYOUTS for x in layouts):
        ap.error(f"--layouts takes a comma-separated subset of {', '.join(LAYOUTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="hexpress-bench-recipe-"))
    result: dict = {"recipe": str(args.recipe), "overrides": args.overrides, "steps": args.steps,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count()}  # fmt: skip
    for layout in layouts:
        result[layout] = run_layout(args.recipe, args.overrides, layout, args.steps,
                                    work / layout)  # fmt: skip
        print(json.dumps({layout: result[layout]}), file=sys.stderr, flush=True)
    if len(layouts) == 2:
        a, b = (result[x]["steps_per_s"] for x in LAYOUTS)
        result["channels_last_speedup"] = round(a / b, 3) if a and b else None
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
