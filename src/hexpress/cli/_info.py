"""``hexpress info``: read one sample and print its summary.

The reader options here are shared with ``hexpress convert`` (one definition of each flag).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hexpress.io.formats import FORMATS, read_sample

__all__ = ["register", "info", "read_input"]

PATH_ARG = typer.Argument(..., help="Data folder or file of the sample.")
FORMAT_OPT = typer.Option(..., "--format", "-f", help=f"Data format, one of: {', '.join(FORMATS)}.")
SECTION_OPT = typer.Option(
    None,
    "--section",
    "--library",
    "-s",
    help="Section id (legacy ST), library id (h5ad with several slides) or sample id.",
)
MPP_OPT = typer.Option(
    None, "--mpp", help="µm per pixel of the full-resolution image, where the data lack it."
)
IMAGE_OPT = typer.Option(
    None, "--image", help="Image file to use, or 'hires' / 'lowres' (Space Ranger PNGs)."
)
BIN_OPT = typer.Option(None, "--bin-um", help="Visium HD bin size: 2, 8 or 16.")
ALIGNMENT_OPT = typer.Option(
    None, "--alignment", help="Xenium: Xenium Explorer alignment matrix or keypoints CSV."
)
POOL_OPT = typer.Option(
    None,
    "--pool",
    help="Xenium: 'cells', 'square' or 'disc'; Visium HD: 'bins' or 'cells' (segmented_outputs).",
)
SIZE_OPT = typer.Option(None, "--size-um", help="Xenium: square side / disc diameter in µm.")
LAYER_OPT = typer.Option(None, "--layer", help="h5ad: the layer holding raw counts.")
CELL_SHAPE_OPT = typer.Option(
    None, "--cell-shape", help="Xenium cells: 'disc' (area-equivalent) or 'polygon' (boundaries)."
)


def read_input(
    path, format, *, section, mpp, image, bin_um, alignment, pool, size_um, layer, cell_shape=None
):
    """The sample the shared reader options describe (see :func:`hexpress.io.read_sample`)."""
    extra = {
        "bin_um": bin_um,
        "alignment": alignment,
        "pool": pool,
        "size_um": size_um,
        "layer": layer,
        "cell_shape": cell_shape,
    }
    return read_sample(path, format, section=section, mpp=mpp, image=image, **extra)


def info(
    path: Path = PATH_ARG,
    format: str = FORMAT_OPT,
    section: str | None = SECTION_OPT,
    mpp: float | None = MPP_OPT,
    image: str | None = IMAGE_OPT,
    bin_um: int | None = BIN_OPT,
    alignment: Path | None = ALIGNMENT_OPT,
    pool: str | None = POOL_OPT,
    size_um: float | None = SIZE_OPT,
    layer: str | None = LAYER_OPT,
    cell_shape: str | None = CELL_SHAPE_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Print a sample's summary: technology, section, spots, genes, image size, mpp, spot size
    and where the pixel size comes from."""
    sample = read_input(
        path,
        format,
        section=section,
        mpp=mpp,
        image=image,
        bin_um=bin_um,
        alignment=alignment,
        pool=pool,
        size_um=size_um,
        layer=layer,
        cell_shape=cell_shape,
    )
    summary = sample.summary()
    for key in ("mpp_fullres", "mpp_source"):
        if sample.meta.get(key) is not None:
            summary[key] = sample.meta[key]
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
