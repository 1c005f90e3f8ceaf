"""``hexpress export-onnx``: a dense checkpoint as an ONNX graph for one tile grid."""

from __future__ import annotations

from pathlib import Path

import typer

from hexpress.errors import ConfigError

__all__ = ["register", "export_onnx_command"]

# a slide this long gets the default tile side (the default grid shrinks tiles of small slides
# to share them out evenly; a side of at least max_core^2 / align px leaves them whole)
_LARGE_SLIDE_PX = 1 << 24


def _dims(value_info) -> list[int | str]:
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


def export_onnx_command(
    checkpoint: Path = typer.Argument(..., help="A hexpress checkpoint of a dense model."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    tile_px: int | None = typer.Option(
        None,
        "--tile-px",
        help="Tile side in px at model_mpp, margins included (default: that of `hexpress "
        "predict --runtime onnx` on a large slide, 2048).",
    ),
    margin: str = typer.Option(
        "exact", "--margin", help="Tile margin: exact, effective, or px (as for predict)."
    ),
    exporter: str = typer.Option(
        "dynamo", "--exporter", help="torch's ONNX exporter: dynamo or torchscript."
    ),
) -> None:
    """Write the ONNX graph `hexpress predict --runtime onnx` runs on each tile of a grid.

    The graph takes one tile, float32 RGB in [0, 1] as (1, 3, T, T), and gives the tile
    core's map cells (models that compute a region, such as PixNet) or the whole tile's map.
    The tile side and the core are fixed in the graph.
    """
    from hexpress.cli._checks import check_checkpoint_path
    from hexpress.infer.engine import core_region, max_tile_px
    from hexpress.infer.onnx_export import export_onnx, require_onnx
    from hexpress.infer.pipeline import load_model_info
    from hexpress.infer.tiling import make_tile_grid

    check_checkpoint_path(checkpoint)
    require_onnx(exporter, run=False)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the .onnx file to write.")
    info = load_model_info(checkpoint)
    if info.kind != "dense":
        raise ConfigError(
            f"{checkpoint} holds a {info.kind} model; export-onnx exports dense models (their "
            "tiled maps), a patch model predicts crop by crop."
        )
    grid = make_tile_grid(
        (_LARGE_SLIDE_PX, _LARGE_SLIDE_PX), stride=info.stride,
        receptive_field_px=info.margin_px(margin), tile_px=tile_px, align_px=info.align_px,
        max_tile_px=max_tile_px("onnx"),
    )  # fmt: skip
    region = core_region(info.model, grid)
    data = export_onnx(info.model, grid.tile_px, region=region, path=out, exporter=exporter)
    import onnx

    graph = onnx.load_model_from_string(data).graph
    (inp,), (outp,) = graph.input, graph.output
    cells = f"cells {list(region)} (y0, x0, y1, x1) of the tile's map" if region else "whole map"
    typer.echo(f"wrote {out} ({len(data) / 1e6:.1f} MB, {exporter} exporter)")
    typer.echo(
        f"tile: {grid.tile_px} px at {info.model_mpp:g} µm/px, margin {grid.margin_px} px, "
        f"core {grid.core_cells} x {grid.core_cells} cells of {info.stride} px (stride)"
    )
    typer.echo(f"input:  {inp.name} {_dims(inp)} float32 RGB in [0, 1], NCHW")
    typer.echo(f"output: {outp.name} {_dims(outp)} float32, {cells}")
    typer.echo(
        f"channels: {len(info.channels)} ({info.mode} mode; names in the checkpoint's .json)"
    )


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx_command)
