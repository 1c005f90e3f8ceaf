"""``hexpress predict`` as a function: slides in, one folder of results per slide out.

Per slide, ``OUT/<slide name>/`` holds ``map.zarr`` (dense models), one ``<geometry>.h5ad`` per
geometry asked for (``bins_008um.h5ad``, ``discs_055um.h5ad``, ``spots.h5ad``, ``cells.h5ad``),
``preview_<gene>.png`` and ``summary.json``. ``summary.json`` is written last: a folder with it
holds results and is refused unless ``overwrite``; a folder without it is a run that stopped and
is resumed (the map's finished tiles are kept; every ``.h5ad`` is rewritten atomically).

Slides run one after another, in ``workers`` processes, or split across ranks under
``torchrun`` (rank ``r`` of ``W`` takes slides ``r, r + W, ...`` on GPU ``LOCAL_RANK``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hexpress import _keys as K
from hexpress._files import write_json
from hexpress.data.stain import stain_normalized
from hexpress.errors import DataMismatchError, OutputExistsError
from hexpress.infer.aggregate_disk import gene_columns, write_geometries, write_h5ad_atomic
from hexpress.infer.engine import ModelInfo, model_info, predict_slide
from hexpress.infer.patch_engine import predict_patches
from hexpress.infer.preview import write_previews
from hexpress.infer.tissue import detect_tissue
from hexpress.infer.units import Units, grid_bins, grid_discs, keep_inside, read_cells, read_spots
from hexpress.io.h5ad import HIRES_MAX_SIDE, LOWRES_MAX_SIDE, spatial_uns
from hexpress.io.image import SlideImage, open_image

__all__ = ["PredictOptions", "predict_one", "predict_slides", "load_model_info", "slide_out_dir"]

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """What to predict and how (the ``hexpress predict`` options).

    Attributes:
        mpp: µm per level-0 px for slides whose files do not say.
        bins_um: square bin sides in µm (Visium HD: 2, 8, 16).
        discs_um: disc diameters in µm on a regular grid (55: Visium, 100: legacy ST).
        disc_pitch_um: centre distance of the disc grid (default per diameter).
        spots: a spots file (positions in level-0 px of every slide).
        spot_diameter_um: spot diameter for spot files that do not carry one.
        cells: a cells file (polygons).
        cells_alignment: Xenium Explorer alignment of the slide for µm cell vertices (default:
            the one beside the cells file when the slide is that folder's post-Xenium H&E).
        genes: keep only these genes in the outputs (default all).
        preview: genes to draw preview PNGs of.
        tile_px, batch_size, device, tta: inference settings.
        margin: tile margin, ``"exact"`` (default), ``"effective"`` or px
            (:meth:`~hexpress.infer.ModelInfo.margin_px`).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (half precisions on GPUs).
        runtime: ``"torch"``, ``"onnx"`` (ONNX Runtime on the CPU, dense models) or
            ``"openvino"`` (OpenVINO on the CPU); see :func:`~hexpress.infer.predict_slide`.
        staged: PixNet in three stages, each tiled with its own margin (the same map;
            :mod:`hexpress.infer.staged`).
        detect_tissue: skip tiles without tissue (else predict the whole slide).
        overwrite: replace folders that hold results.
        memory_mb: bound on one aggregation block.
        progress: show progress bars.
    """

    mpp: float | None = None
    bins_um: Sequence[float] = ()
    discs_um: Sequence[float] = ()
    disc_pitch_um: float | None = None
    spots: str | None = None
    spot_diameter_um: float | None = None
    cells: str | None = None
    cells_alignment: str | None = None
    genes: Sequence[str] | None = None
    preview: Sequence[str] = ()
    tile_px: int | None = None
    margin: str | int = "exact"
    precision: str = "auto"
    runtime: str = "torch"
    staged: bool = False
    batch_size: int = 2
    device: str | None = "auto"
    tta: bool = False
    detect_tissue: bool = True
    overwrite: bool = False
    memory_mb: float = 512.0
    progress: bool = True
    extra: dict = field(default_factory=dict)


def load_model_info(checkpoint: str | Path) -> ModelInfo:
    """Load a checkpoint (:func:`hexpress.models.checkpoint.load_checkpoint`) for inference."""
    from hexpress.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return model_info(ckpt, checkpoint_path=checkpoint)


def slide_out_dir(out: str | Path, slide_path: str | Path) -> Path:
    """``OUT/<slide file name without its image suffixes>``."""
    name = Path(slide_path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return Path(out) / name[: -len(suffix)]
    return Path(out) / Path(name).stem


def _cells_alignment(slide: SlideImage, opts: PredictOptions) -> str | Path | None:
    """The alignment for µm cell vertices: the one given, else the one Xenium's bundle holds
    for this very slide (cells from ``<bundle>/cell_boundaries.parquet`` predicted on
    ``<bundle>/*he_image.ome.tif``), else none (the slide is in the cells' frame)."""
    if opts.cells_alignment:
        return opts.cells_alignment
    if slide.path is None:
        return None
    from hexpress.io.xenium import find_he_image

    he, alignment = find_he_image(Path(opts.cells).parent)
    if he is not None and alignment is not None and he.resolve() == slide.path.resolve():
        log.info("cells: µm vertices mapped onto %s through %s", he.name, alignment.name)
        return alignment
    return None


def _geometries(slide: SlideImage, opts: PredictOptions, tissue) -> list[tuple[Units, bool]]:
    """Unit sets to predict, each with whether units nothing was predicted under are dropped."""
    sets: list[tuple[Units, bool]] = []
    for b in opts.bins_um:
        sets.append((grid_bins(slide.width, slide.height, slide.mpp, b, tissue=tissue), True))
    for d in opts.discs_um:
        u = grid_discs(
            slide.width, slide.height, slide.mpp, d, pitch_um=opts.disc_pitch_um, tissue=tissue
        )
        sets.append((u, True))
    if opts.spots:
        u = read_spots(opts.spots, mpp=slide.mpp, diameter_um=opts.spot_diameter_um)
        sets.append((keep_inside(u, slide.width, slide.height, source=str(opts.spots)), False))
    if opts.cells:
        u = read_cells(opts.cells, mpp=slide.mpp, alignment=_cells_alignment(slide, opts))
        sets.append((keep_inside(u, slide.width, slide.height, source=str(opts.cells)), False))
    return sets


def _select_genes(adata, genes: Sequence[str] | None, source: str):
    if not genes:
        return adata
    return adata[
        :, [adata.var_names[i] for i in gene_columns(genes, adata.var_names, source)]
    ].copy()


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    summary = out_dir / "summary.json"
    if summary.exists():
        if not overwrite:
            raise OutputExistsError(
                f"{out_dir} already holds results ({summary.name}); pass --overwrite to "
                "replace them or choose another --out."
            )
        for p in out_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def predict_one(
    slide_path: str | Path | SlideImage,
    info: ModelInfo,
    out_dir: str | Path,
    opts: PredictOptions,
    units: Sequence[Units] = (),
) -> dict:
    """Predict one slide into ``out_dir``; returns its summary (also in ``summary.json``).

    ``units`` are unit sets given in memory (e.g. :func:`~hexpress.infer.units_from_anndata` of
    measured spots), predicted besides the geometries ``opts`` asks for; each is written as
    ``<units.name>.h5ad``.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    _prepare_dir(out_dir, opts.overwrite)
    slide = (
        slide_path if isinstance(slide_path, SlideImage) else open_image(slide_path, mpp=opts.mpp)
    )
    slide = stain_normalized(slide, info.stain)  # the checkpoint's stain normalisation, if any
    tissue = detect_tissue(slide) if opts.detect_tissue else None
    gene_columns(opts.genes, info.genes, "this checkpoint")  # before the map is predicted
    geometries = _geometries(slide, opts, tissue)
    for u in units:
        geometries.append((keep_inside(u, slide.width, slide.height, source=u.name), False))
    files: list[str] = []
    units: dict[str, int] = {}
    dm = None
    if info.kind == "dense":
        dm = predict_slide(
            slide, info, out_dir / "map.zarr", tile_px=opts.tile_px, margin=opts.margin,
            batch_size=opts.batch_size, device=opts.device, precision=opts.precision,
            tta=opts.tta, tissue=tissue, detect=opts.detect_tissue, progress=opts.progress,
            runtime=opts.runtime, staged=opts.staged,
        )  # fmt: skip
        files.append("map.zarr")
    t_map = time.perf_counter() - t0
    library = Path(slide.path).stem if slide.path is not None else "slide"
    thumbs = []

    def add_spatial(a) -> None:  # every file gets scanpy's uns["spatial"]
        if not thumbs:  # once per slide
            thumbs.extend((slide.thumbnail(HIRES_MAX_SIDE), slide.thumbnail(LOWRES_MAX_SIDE)))
        sizes = a.obs[K.SIZE_UM].to_numpy(float) if K.SIZE_UM in a.obs else []
        a.uns[K.SPATIAL] = spatial_uns(slide, sizes, library, thumbnails=tuple(thumbs))

    names = [f"{u.name}.h5ad" for u, _ in geometries]
    if dm is not None:
        # every geometry from one pass over the map (each chunk read once) while they fit in
        # memory, in groups of units otherwise; predictions go straight into the files
        n_obs = write_geometries(
            dm, [u for u, _ in geometries], [out_dir / n for n in names], genes=opts.genes,
            memory_mb=opts.memory_mb, drop_uncovered=[drop for _, drop in geometries],
            decorate=add_spatial, progress=opts.progress,
        )  # fmt: skip
    else:
        n_obs = []
        for u, _drop in geometries:
            a = predict_patches(
                slide, info, u, batch_size=opts.batch_size, device=opts.device,
                precision=opts.precision, tta=opts.tta, progress=opts.progress,
            )  # fmt: skip
            a = _select_genes(a, opts.genes, "this checkpoint")
            add_spatial(a)
            write_h5ad_atomic(a, out_dir / f"{u.name}.h5ad")
            n_obs.append(int(a.n_obs))
    for (u, _drop), name, n in zip(geometries, names, n_obs, strict=True):
        files.append(name)
        units[u.name] = int(n)
        log.info("%s: %d %s written to %s", slide, n, u.name, out_dir / name)
    if opts.preview and dm is not None:
        for p in write_previews(dm, slide, list(opts.preview), out_dir):
            files.append(p.name)
    summary = {
        "slide": str(slide.path) if slide.path is not None else None,
        "slide_size_px": [int(slide.width), int(slide.height)],
        "mpp": float(slide.mpp),
        "model_mpp": info.model_mpp,
        "kind": info.kind,
        "mode": info.mode if info.kind == "dense" else "patch",
        "checkpoint": info.identity,
        "tissue_fraction": None if tissue is None else tissue.fraction,
        "files": files,
        "units": units,
        "seconds_map": round(t_map, 3),
        "seconds_total": round(time.perf_counter() - t0, 3),
        "options": {k: v for k, v in asdict(opts).items() if k not in ("progress", "extra")},
    }
    write_json(out_dir / "summary.json", summary, default=_jsonable)
    return summary


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _worker(args) -> dict:
    slide, checkpoint, out, opts, threads, device = args
    import torch

    torch.set_num_threads(max(1, threads))
    if device is not None:
        opts.device = device
    info = load_model_info(checkpoint)
    return predict_one(slide, info, slide_out_dir(out, slide), opts)


def _dist_rank() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def predict_slides(
    slides: Sequence[str | Path],
    checkpoint: str | Path | ModelInfo,
    out: str | Path,
    opts: PredictOptions | None = None,
    *,
    workers: int = 1,
) -> list[dict]:
    """Predict many slides; returns one summary per slide handled by this process.

    Args:
        slides: slide files.
        checkpoint: a checkpoint file, or a loaded :class:`ModelInfo` (one process only).
        out: output folder; each slide gets ``out/<slide name>/``.
        opts: what to predict (:class:`PredictOptions`).
        workers: processes over slides (CPU; each gets ``cpus // workers`` threads). Under
            ``torchrun`` (``WORLD_SIZE > 1``) each rank takes every ``WORLD_SIZE``-th slide on
            its own GPU instead.

    Raises:
        OutputExistsError: a slide folder holds results and ``overwrite`` is off (checked for
            every slide before anything runs).
    """
    opts = opts or PredictOptions()
    slides = [Path(s) for s in slides]
    names = [slide_out_dir(out, s) for s in slides]
    if len(set(names)) != len(names):
        raise DataMismatchError(
            "two slides have the same file name, so their output folders would collide: "
            f"{[str(s) for s in slides]}; rename one or predict them into different --out."
        )
    if not opts.overwrite:
        for d in names:
            _prepare_dir(d, overwrite=False) if (d / "summary.json").exists() else None
    rank, world, local = _dist_rank()
    device = None
    if world > 1:
        slides = slides[rank::world]
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{local}"
        log.info("rank %d of %d: %d slide(s)", rank, world, len(slides))
    if isinstance(checkpoint, ModelInfo) or (workers <= 1 and world <= 1):
        info = checkpoint if isinstance(checkpoint, ModelInfo) else load_model_info(checkpoint)
        if device is not None:
            opts.device = device
        return [predict_one(s, info, slide_out_dir(out, s), opts) for s in slides]
    if world > 1:
        return [_worker((s, checkpoint, out, opts, os.cpu_count() or 1, device)) for s in slides]
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    opts.progress = False  # several bars in parallel would garble the terminal
    jobs = [(s, checkpoint, out, opts, threads, None) for s in slides]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_worker, jobs))
