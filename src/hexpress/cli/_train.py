"""``hexpress train``: train a model from a YAML recipe with ``key.sub=value`` overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: Path = typer.Argument(..., help="YAML recipe (e.g. configs/pixnet_her2st.yaml)."),
        overrides: list[str] = typer.Argument(
            None,
            help="Overrides as section.key=value, e.g. optim.lr=1e-4 data.train=[C2,C3] "
            "(they take precedence over the recipe).",
            show_default=False,
        ),
        max_steps: int | None = typer.Option(
            None, "--max-steps", help="Optimiser steps (same as optim.max_steps=N)."
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run folder (same as run.out_dir=DIR)."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the run in the run folder from its last state."
        ),
        print_config: bool = typer.Option(
            False, "--print-config", help="Print the resolved config as YAML and exit."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON."),
    ) -> None:
        """Train a dense model or a baseline; defaults < recipe < overrides < options.

        Under `torchrun --nproc_per_node N -m hexpress.cli train ...` it trains data-parallel
        (gloo on CPU, nccl on GPUs); only the first process writes.
        """
        import yaml

        from hexpress.train import config_to_dict, load_config, train

        extra = list(overrides or [])
        if max_steps is not None:
            extra.append(f"optim.max_steps={max_steps}")
        if out is not None:
            extra.append(f"run.out_dir={out}")
        cfg = load_config(config, extra)
        if print_config:
            typer.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
            return
        main = int(os.environ.get("RANK", "0")) == 0
        if main:
            what = "resuming" if resume else "training"
            typer.echo(
                f"{what} {cfg.model.name} for {cfg.optim.max_steps} steps; run folder: "
                f"{cfg.run.out_dir}",
                err=True,
            )
        result = train(cfg, resume=resume)
        if not main:
            return
        if as_json:
            typer.echo(json.dumps(result.to_dict()))
            return
        typer.echo(f"Run folder: {result.out_dir}")
        typer.echo(f"  checkpoint: {result.checkpoint}")
        typer.echo(
            f"  steps: {result.steps} (started at {result.start_step}), "
            f"{len(result.genes)} genes at {result.model_mpp:g} µm/px, {result.wall_s:.1f} s"
        )
        if result.train_loss is not None:
            typer.echo(f"  last training loss: {result.train_loss:.4f}")
        for name, m in result.val.items():
            typer.echo(
                f"  validation [{name}]: MSE {m['mse']:.4f}, mean PCC {m['pcc']:.4f} "
                f"({m['n_units']} units, {m['n_genes']} genes with defined PCC)"
            )
        typer.echo(f"  log: {Path(result.out_dir) / 'log.csv'}")
