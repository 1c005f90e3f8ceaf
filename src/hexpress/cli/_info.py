"""``hexpress info``: read one sample and print its summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hexpress.io.formats import FORMATS, read_sample

__all__ = ["register", "info"]


def info(
    path: Path = typer.Argument(..., help="Data folder or file of the sample."),
    format: str = typer.Option(
        ..., "--format", "-f", help=f"Data format, one of: {', '.join(FORMATS)}."
    ),
    section: str | None = typer.Option(
        None, "--section", "-s", help="Section id (legacy ST), library id (h5ad) or sample id."
    ),
    mpp: float | None = typer.Option(
        None, "--mpp", help="µm per pixel of the full-resolution image, where the data lack it."
    ),
    image: str | None = typer.Option(
        None, "--image", help="Image file to use, or 'hires' / 'lowres' (Space Ranger PNGs)."
    ),
    bin_um: int | None = typer.Option(None, "--bin-um", help="Visium HD bin size: 2, 8 or 16."),
    alignment: Path | None = typer.Option(
        None, "--alignment", help="Xenium: Xenium Explorer alignment matrix CSV."
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="Xenium: pool into 'cells', 'square' or 'disc'."
    ),
    size_um: float | None = typer.Option(
        None, "--size-um", help="Xenium: square side / disc diameter in µm."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Print a sample's summary: technology, section, spots, genes, image size, mpp, spot size."""
    extra = {"bin_um": bin_um, "alignment": alignment, "pool": pool, "size_um": size_um}
    sample = read_sample(path, format, section=section, mpp=mpp, image=image, **extra)
    summary = sample.summary()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    width = max(map(len, summary))
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        typer.echo(f"{key:<{width}}  {value}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
