"""``hexpress cache info|clear``: the frozen-encoder feature cache (``run.feature_cache``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

_DEFAULT = Path("runs/feature_cache")
_FOLDER_HELP = "The cache folder (run.feature_cache of the recipes)."


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def register(app: typer.Typer) -> None:
    cache = typer.Typer(
        help="Look at or delete the frozen-encoder feature cache.", no_args_is_help=True
    )
    app.add_typer(cache, name="cache")

    @cache.command("info")
    def info(
        folder: Path = typer.Argument(_DEFAULT, help=_FOLDER_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List the cached slides (encoder, model_mpp, transforms complete) and their size."""
        from hexpress.train.feature_cache import describe_cache

        rows = describe_cache(folder)
        total = sum(r["bytes"] for r in rows)
        if as_json:
            typer.echo(json.dumps({"folder": str(folder), "bytes": total, "entries": rows}))
            return
        if not rows:
            typer.echo(f"no feature cache under {folder}")
            return
        for r in rows:
            typer.echo(
                f"{r['slide']:<16} {r['kind']:<8} {r['encoder']:<24} {r['model_mpp']:g} µm/px  transforms "
                f"{len(r['transforms_done'])}/8  {_mb(r['bytes'])}  {r['folder']}"
            )
        typer.echo(f"total: {_mb(total)} in {len(rows)} cache(s) under {folder}")

    @cache.command("clear")
    def clear(folder: Path = typer.Argument(_DEFAULT, help=_FOLDER_HELP)) -> None:
        """Delete every feature cache under the folder (other files are left alone)."""
        from hexpress.train.feature_cache import clear_cache

        freed = clear_cache(folder)
        typer.echo(f"removed {_mb(freed)} of feature cache under {folder}")
