"""``hexpress demo``: the whole system on a simulated slide, from nothing to an HTML report."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("hexpress-demo"), "--out", "-o", help="Output folder."),
        steps: int = typer.Option(200, "--steps", help="Training steps of each model."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Delete a previous demo's report first and redo it."
        ),
    ) -> None:
        """Simulate two slides, train PixNet and a patch baseline on one, predict the other at
        every scale (100/55 µm spots, 16/8/2 µm bins), evaluate and write the HTML report.

        Takes minutes on two CPU cores. Rerunning after an interruption continues where it
        stopped.
        """
        from hexpress.cli._bench import print_result
        from hexpress.eval.bench import load_bench_config, run_bench
        from hexpress.eval.demo import demo_config

        if steps < 1:
            raise typer.BadParameter("--steps must be at least 1.")
        cfg = load_bench_config(demo_config(out, steps=steps))
        report = Path(cfg.out_dir) / "report.html"
        if not overwrite and (Path(cfg.out_dir) / "results.csv").is_file() and report.is_file():
            # a finished demo: say where it is rather than refuse
            typer.echo(f"hexpress demo: already done in {out.resolve()} (--overwrite redoes it).")
            typer.echo(f"Tables: {Path(cfg.out_dir).resolve() / 'results.md'}")
            typer.echo(f"Open the report in a browser: file://{report.resolve()}")
            return
        t0 = time.perf_counter()

        def step(msg: str) -> None:
            typer.echo(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", err=True)

        typer.echo(f"hexpress demo: everything goes to {out.resolve()}", err=True)
        result = run_bench(cfg, overwrite=overwrite, on_step=step)  # slides are kept
        print_result(result, t0)
        typer.echo(f"Open the report in a browser: file://{result.files['report.html'].resolve()}")
