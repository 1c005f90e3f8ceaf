"""``hexpress study``: an ablation grid scored on validation blocks of the training sections."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("study")
    def study_cmd(
        config: Path = typer.Argument(
            ..., help="Study config (e.g. configs/study_prestige_her2st.yaml)."
        ),
        dry_run: bool = typer.Option(
            False,
            "--dry-run",
            help="List the runs (and the skipped ones, with why); train nothing.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON."),
    ) -> None:
        """Train every setting of a study on every fold and tabulate validation PCC; the best
        setting per family is chosen on validation only."""
        from hexpress.train.study import run_study

        result = run_study(config, dry_run=dry_run)
        if as_json:
            typer.echo(json.dumps(result))
            return
        runs = result["runs"]
        n_skip = sum(1 for r in runs if r["skipped"])
        n_done = sum(1 for r in runs if r["finished"] and not r["skipped"])
        for r in runs:
            state = f"skipped: {r['skipped']}" if r["skipped"] else r["out_dir"]
            typer.echo(f"{r['family']:<16} {r['fold']:<8} {r['setting']:<56} {state}")
        typer.echo(
            f"{len(runs)} run(s): {len(runs) - n_skip - n_done} to train, {n_done} finished "
            f"before (reused), {n_skip} skipped"
        )
        for fam, best in result.get("chosen", {}).items():
            typer.echo(
                f"chosen for {fam}: {best['setting']} (mean val PCC {best['val_pcc_mean']:.4f})"
            )
