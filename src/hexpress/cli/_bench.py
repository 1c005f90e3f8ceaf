"""``hexpress bench``: several methods over the same folds, genes and seed, one report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer


def print_result(result, t0: float) -> None:
    """The closing summary of a benchmark (also used by ``hexpress demo``)."""
    from hexpress.eval.report import markdown_table

    cols = [
        c
        for c in ("fold", "method", "MSE", "PCC@M", "PCC@S", "n_genes_PCC>=0.30", "train_time_s")
        if c in result.table.columns
    ]
    typer.echo(markdown_table(result.table[cols]).rstrip())
    if result.cross_scale is not None:
        typer.echo("")
        cs = [c for c in ("method", "scale", "n_units", "PCC@M", "PCC@S", "MSE")
              if c in result.cross_scale.columns]  # fmt: skip
        typer.echo(markdown_table(result.cross_scale[cs]).rstrip())
    typer.echo(f"\nDone in {(time.perf_counter() - t0) / 60:.1f} min.")
    typer.echo(f"Tables: {result.out_dir / 'results.md'}")
    typer.echo(f"Report: {result.files['report.html'].resolve()}")


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        config: Path = typer.Argument(..., help="Benchmark YAML (e.g. configs/bench_her2st.yaml)."),
        overrides: list[str] = typer.Argument(
            None,
            help="Overrides as key.sub=value, e.g. out_dir=runs/b2 predict.tta=true.",
            show_default=False,
        ),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (out_dir)."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Delete the output folder first and redo everything."
        ),
        redo: list[str] = typer.Option(
            None,
            "--redo",
            help="Train and predict this method again on every fold, reusing the others, and "
            "rewrite the tables (repeat for several; e.g. after changing its recipe).",
            show_default=False,
        ),
    ) -> None:
        """Train, predict and evaluate every method on every fold, and write the report.

        Rerunning after an interruption reuses finished training runs and predictions and
        resumes a killed training run; --redo NAME retrains one method and keeps the rest.
        """
        from hexpress.eval.bench import load_bench_config, run_bench

        extra = list(overrides or [])
        if out is not None:
            extra.append(f"out_dir={out}")
        cfg = load_bench_config(config, extra)
        t0 = time.perf_counter()

        def step(msg: str) -> None:
            typer.echo(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", err=True)
            sys.stderr.flush()

        result = run_bench(cfg, overwrite=overwrite, redo=redo or (), on_step=step)
        print_result(result, t0)
