"""``hexpress convert``: any supported input to one scanpy-style ``.h5ad``."""

from __future__ import annotations

from pathlib import Path

import typer

from hexpress.cli._info import (
    ALIGNMENT_OPT,
    BIN_OPT,
    CELL_SHAPE_OPT,
    FORMAT_OPT,
    IMAGE_OPT,
    LAYER_OPT,
    MPP_OPT,
    PATH_ARG,
    POOL_OPT,
    SECTION_OPT,
    SIZE_OPT,
    read_input,
)

__all__ = ["register", "convert"]


def convert(
    path: Path = PATH_ARG,
    format: str = FORMAT_OPT,
    out: Path = typer.Option(..., "--out", "-o", help="The .h5ad file to write."),
    section: str | None = SECTION_OPT,
    mpp: float | None = MPP_OPT,
    image: str | None = IMAGE_OPT,
    bin_um: int | None = BIN_OPT,
    alignment: Path | None = ALIGNMENT_OPT,
    pool: str | None = POOL_OPT,
    size_um: float | None = SIZE_OPT,
    layer: str | None = LAYER_OPT,
    cell_shape: str | None = CELL_SHAPE_OPT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Read PATH in --format and write it as an .h5ad scanpy and squidpy open as they are:
    raw counts in X, centres in obsm['spatial'] (full-resolution px of the image), hires and
    lowres images with their scale factors in uns['spatial'], the unit geometry and size in µm
    in obs, the pixel size and its source in uns['hexpress']."""
    from hexpress.errors import ConfigError, OutputExistsError
    from hexpress.io.h5ad import write_h5ad

    if out.suffix != ".h5ad":
        raise ConfigError(f"--out must name an .h5ad file, got {out}.")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it.")
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
    hx = sample.adata.uns.setdefault("hexpress", {})
    for key in ("mpp_source", "image_kind", "image_scale_from_fullres"):
        if sample.meta.get(key) is not None:
            hx[key] = sample.meta[key]
    hx["source"] = str(path)
    hx["source_format"] = format
    written = write_h5ad(sample, out, overwrite=overwrite)
    typer.echo(
        f"{written}: {sample.n_units} {sample.adata.obs['geometry'].iloc[0]} units x "
        f"{sample.adata.n_vars} genes, {sample.image.mpp:.5g} µm/px"
    )


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
