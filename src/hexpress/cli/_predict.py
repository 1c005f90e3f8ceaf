"""``hexpress predict``: dense maps and per-unit predictions for new slides."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from hexpress.errors import ConfigError, InputFileError

__all__ = ["register", "predict"]


def _floats(text: str | None, option: str) -> list[float]:
    if not text:
        return []
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as e:
        raise ConfigError(
            f"{option} takes comma-separated numbers of µm, e.g. {option} 2,8,16; got {text!r}."
        ) from e
    if any(v <= 0 for v in values):
        raise ConfigError(f"{option}: sizes must be positive µm, got {text!r}.")
    return values


def _names(text: str | None) -> list[str]:
    if not text:
        return []
    path = Path(text)
    if path.is_file():  # a gene list file: one name per line
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return [g for g in text.replace(" ", "").split(",") if g]


def predict(
    slides: list[Path] = typer.Argument(..., help="Slide image files (TIFF/SVS/JPEG/...)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A hexpress checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one subfolder per slide)."),
    mpp: float | None = typer.Option(
        None, "--mpp", help="µm per pixel of the slides' full resolution, where files lack it."
    ),
    spots: Path | None = typer.Option(
        None, "--spots", help="Spots (CSV/parquet: x, y level-0 px, diameter_um; or h5ad)."
    ),
    spot_diameter_um: float | None = typer.Option(
        None, "--spot-diameter-um", help="Spot diameter for spot files without one."
    ),
    bins: str | None = typer.Option(
        None, "--bins", help="Square bin sides in µm over the tissue, e.g. 2,8,16 (Visium HD)."
    ),
    discs_um: str | None = typer.Option(
        None, "--discs-um", help="Disc diameters in µm on a grid, e.g. 55,100 (Visium, ST)."
    ),
    disc_pitch_um: float | None = typer.Option(
        None, "--disc-pitch-um", help="Disc grid pitch (default 100 for 55, 200 for 100 µm)."
    ),
    cells: Path | None = typer.Option(
        None, "--cells", help="Cell polygons: GeoJSON (level-0 px) or vertex parquet."
    ),
    cells_alignment: Path | None = typer.Option(
        None,
        "--cells-alignment",
        help="Xenium Explorer alignment of the slide (matrix or keypoints CSV) for µm cell "
        "vertices; default: the bundle's own when the slide is its post-Xenium H&E.",
    ),
    genes: str | None = typer.Option(
        None, "--genes", help="Genes to keep in outputs: comma-separated, or a file."
    ),
    preview: str | None = typer.Option(
        None, "--preview", help="Genes to draw over the H&E thumbnail (comma-separated)."
    ),
    tile_px: int | None = typer.Option(
        None,
        "--tile-px",
        help="Tile side in px at model_mpp, margins included (default: at most 3072; 2048 "
        "with --runtime onnx or openvino).",
    ),
    margin: str = typer.Option(
        "exact",
        "--margin",
        help="Tile margin: exact (tiled = untiled), effective (measured sensitivity, faster), "
        "or px.",
    ),
    batch_size: int = typer.Option(2, "--batch-size", help="Tiles (or crops) per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps..."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto, fp32, bf16 or fp16 (half precisions on GPUs only)."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average over the 8 flips/rotations."),
    runtime: str = typer.Option(
        "torch",
        "--runtime",
        help="What runs a dense model: torch; onnx (ONNX Runtime on the CPU, the model "
        "exported once per slide; needs the onnx extra of hexpress); openvino (that graph in "
        "OpenVINO on the CPU; the openvino extra).",
    ),
    staged: bool = typer.Option(
        False,
        "--staged",
        help="Run PixNet in three stages, each tiled with its own margin: the same map with "
        "less work in margins (EfficientNet-Lite encoders, --runtime torch, no --tta).",
    ),
    no_tissue: bool = typer.Option(
        False, "--no-tissue-detection", help="Predict the whole slide, glass included."
    ),
    workers: int = typer.Option(1, "--workers", help="Processes over slides (CPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results."),
) -> None:
    """Predict dense gene expression maps and per-unit AnnData files for slides."""
    from hexpress.cli._checks import check_checkpoint_path, check_names
    from hexpress.infer.engine import runtime_device
    from hexpress.infer.pipeline import PredictOptions, load_model_info, predict_slides

    bins_um, discs = _floats(bins, "--bins"), _floats(discs_um, "--discs-um")
    for s in slides:
        if not s.exists():
            raise InputFileError(f"slide {s} not found; give an image file (TIFF/SVS/JPEG/...).")
    check_checkpoint_path(checkpoint)
    keep, drawn = _names(genes), _names(preview)
    # everything the run needs from the checkpoint is checked before any slide is read
    info = load_model_info(checkpoint)
    check_names(keep, info.genes, option="--genes")
    check_names(drawn, info.genes, option="--preview")
    if drawn and info.kind != "dense":
        raise ConfigError(
            f"--preview draws the dense map, and {checkpoint} is a {info.kind} model without "
            "one; drop --preview, or predict units (--spots, --bins) and plot those."
        )
    if runtime != "torch" and info.kind != "dense":
        raise ConfigError(
            f"--runtime {runtime} runs dense models, and {checkpoint} is a {info.kind} model; "
            "drop --runtime."
        )
    runtime_device(runtime, device)  # an unknown runtime, or onnx off the CPU, fails here
    if staged:
        from hexpress.infer.staged import check_staged

        check_staged(info.model, runtime=runtime, tta=tta)
    opts = PredictOptions(
        mpp=mpp,
        bins_um=bins_um,
        discs_um=discs,
        disc_pitch_um=disc_pitch_um,
        spots=str(spots) if spots else None,
        spot_diameter_um=spot_diameter_um,
        cells=str(cells) if cells else None,
        cells_alignment=str(cells_alignment) if cells_alignment else None,
        genes=keep or None,
        preview=drawn,
        tile_px=tile_px,
        margin=margin,
        batch_size=batch_size,
        device=device,
        precision=precision,
        runtime=runtime,
        staged=staged,
        tta=tta,
        detect_tissue=not no_tissue,
        overwrite=overwrite,
    )
    t0 = time.perf_counter()
    # one process reuses the model loaded above; worker processes load their own
    model = info if workers <= 1 else checkpoint
    summaries = predict_slides(slides, model, out, opts, workers=workers)
    for s in summaries:
        name = Path(s["slide"]).name if s["slide"] else "slide"
        units = ", ".join(f"{k}: {v}" for k, v in s["units"].items()) or "no units asked for"
        typer.echo(f"{name}: {len(s['files'])} file(s) in {out} ({units}); {s['seconds_total']} s")
    typer.echo(f"{len(summaries)} slide(s) predicted in {time.perf_counter() - t0:.1f} s")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
