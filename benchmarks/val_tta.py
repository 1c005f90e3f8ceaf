"""Validation scores of trained runs with and without test-time augmentation (8 flips/rotations).

For each run folder the script rebuilds the run's own validation units (blocks of its training
sections, from the run's ``config.yaml``: same data, genes, split and seed), loads the weights
the run kept (``model.json``) and scores them twice: one forward pass, and the mean over the 8
dihedral transforms (``dense_tta`` for dense models, each map mapped back; ``tta_predict`` for
patch models). No test section is read, so the choice it informs (``predict: {tta: ...}``) is
made without the test sections.

Usage: ``python benchmarks/val_tta.py RUN [RUN ...] [--threads 2]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from hexpress.models import describe_model
from hexpress.models.checkpoint import load_checkpoint
from hexpress.models.tta import dense_tta, tta_predict
from hexpress.train.config import load_config
from hexpress.train.data import load_training_data
from hexpress.train.tasks import make_task
from hexpress.train.trainer import _validate


class _Averaged(nn.Module):
    """``model`` averaged over the 8 dihedral transforms of its input."""

    def __init__(self, model: nn.Module, dense: bool) -> None:
        super().__init__()
        self.model, self.dense = model, dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return dense_tta(self.model, x, n=8)
        return tta_predict(self.model, x, n=8)


def score_run(run: Path) -> dict:
    cfg = load_config(run / "config.yaml")
    kind = describe_model(cfg.model.name)["kind"]
    data = load_training_data(cfg.data, seed=cfg.run.seed)
    model = load_checkpoint(run / "model.json").model.eval()
    task = make_task(cfg, data, model, kind, device=torch.device("cpu"))
    out = {"model": cfg.model.name, "kind": kind}
    for name, m in (("plain", model), ("tta8", _Averaged(model, kind == "dense"))):
        task.model = m
        t0 = time.perf_counter()
        with torch.no_grad():
            val = _validate(task)
        out[name] = {
            geom: {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
            for geom, res in val.items()
        }
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"benchmark": "val_tta", "threads": args.threads, "runs": {}}
    for run in args.runs:
        result["runs"][str(run)] = score_run(run)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
