"""Whole-slide dense inference: tiles at ``model_mpp`` in, a chunked float16 map on disk out.

Memory is bounded by the tile batch, not the slide: tiles are read lazily from the slide, run in
batches under :func:`torch.inference_mode` and the central core of each output is written to the
zarr map (:mod:`hexpress.infer.dense_map`) before the next batch is read. Tiles whose core holds no
tissue are skipped (their cells keep the fill value NaN and ``coverage`` False).

A run records, after each batch, which tiles are on disk; a rerun of the same slide with the same
checkpoint and tile grid resumes from there, anything else starts the map again from scratch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hexpress._device import (
    autocast,
    autocast_dtype,
    pin,
    prepare_model,
    resolve_device,
    to_device,
)
from hexpress._files import sha256_file
from hexpress.errors import CheckpointError, ConfigError
from hexpress.infer.dense_map import DenseMap, create_dense_map, open_dense_map
from hexpress.infer.onnx_export import GRAPH_RUNTIMES
from hexpress.infer.tiling import (
    DEFAULT_TILE_PX,
    GRAPH_TILE_PX,
    Tile,
    TileGrid,
    make_tile_grid,
)
from hexpress.infer.tissue import TissueMask, detect_tissue
from hexpress.io.image import SlideImage
from hexpress.models.fuse import torch_inference_copy
from hexpress.models.tta import dense_tta

__all__ = [
    "ModelInfo",
    "model_info",
    "predict_slide",
    "predict_tiles",
    "resolve_device",
    "dense_forward",
    "tile_net",
    "runtime_device",
    "max_tile_px",
    "RUNTIMES",
]

log = logging.getLogger(__name__)

TOTAL_CHANNEL = "__total__"

RUNTIMES = ("torch", *GRAPH_RUNTIMES)
"""What runs the model on each tile: PyTorch, or an exported graph on the CPU: ONNX Runtime (the
``onnx`` extra) or OpenVINO (the ``openvino`` extra); see :data:`GRAPH_RUNTIMES`."""


def _get(meta: Any, key: str, default: Any = None) -> Any:
    if isinstance(meta, Mapping):
        return meta.get(key, default)
    return getattr(meta, key, default)


class ModelInfo:
    """What inference needs to know about a model, from its checkpoint metadata and itself.

    Attributes:
        model: the ``nn.Module`` (eval mode).
        kind: ``"dense"`` or ``"patch"``.
        genes: gene names of the outputs.
        mode: ``"field"`` or ``"density"`` (dense models).
        stride: input px per map cell (dense models).
        model_mpp: µm per input pixel.
        receptive_field_px: input px a map cell depends on (dense models).
        align_px: tile corners fall on multiples of this (the network's total downsampling).
        normalization: ``{"method": ..., "scale": ...}`` of the outputs.
        patch_um: crop side of a patch model in µm.
        input_px: input side of a patch model in px (crops are resized to it), or ``None``.
        identity: ``{"path", "sha256", "model_name", "model_kwargs"}`` recorded in every output.
    """

    def __init__(self, model: torch.nn.Module, meta: Any = None, *, checkpoint_path=None):
        self.model = model
        meta = {} if meta is None else meta
        self.genes = [str(g) for g in (_get(meta, "genes") or [])]
        self.kind = str(_get(meta, "kind") or getattr(model, "kind", "dense"))
        self.mode = str(getattr(model, "mode", None) or _get(meta, "mode") or "field")
        stride = _get(meta, "stride") or getattr(model, "stride", None) or 1
        self.stride = int(stride)
        mpp = _get(meta, "model_mpp") or getattr(model, "model_mpp", None)
        if mpp is None or not float(mpp) > 0:
            raise CheckpointError(f"checkpoint metadata has no valid model_mpp (got {mpp!r}).")
        self.model_mpp = float(mpp)
        self.receptive_field_px = int(getattr(model, "receptive_field_px", 0) or 0)
        self.align_px = int(
            getattr(model, "reduction", None)
            or getattr(model, "input_multiple", None)
            or _get(meta, "input_multiple")
            or self.stride
        )
        norm = _get(meta, "normalization") or {}
        self.normalization = dict(norm) if isinstance(norm, Mapping) else dict(vars(norm))
        self.patch_um = _get(meta, "patch_um")
        self.stain = _get(meta, "stain")  # applied to the slide by hexpress.infer.pipeline
        self.input_px = _get(meta, "input_px") or getattr(model, "input_px", None)
        n_out = getattr(model, "n_genes", None)
        if not self.genes and n_out is not None:
            self.genes = [f"gene_{i}" for i in range(int(n_out))]
        self.identity = {
            "path": str(checkpoint_path) if checkpoint_path is not None else None,
            "sha256": _get(meta, "tensors_sha256")
            or (
                sha256_file(checkpoint_path)
                if checkpoint_path is not None and Path(checkpoint_path).is_file()
                else None
            ),
            "model_name": _get(meta, "model_name"),
            "model_kwargs": dict(_get(meta, "model_kwargs") or {}),
        }

    @property
    def channels(self) -> list[str]:
        """Names of the dense map's channels (genes, plus the total in density mode)."""
        return self.genes + ([TOTAL_CHANNEL] if self.mode == "density" else [])

    def margin_px(self, margin: str | int = "exact") -> int:
        """The tile margin in input px for a ``margin`` setting.

        ``"exact"``: the receptive field (tiled maps equal an untiled pass); ``"effective"``:
        the measured extent where the model's sensitivity to input falls below 1e-3 of its
        total (``effective_margin_px`` of the model; the exact margin for models without it);
        a number: that many px (rounded up to the tile alignment by the grid).
        """
        if isinstance(margin, str) and not margin.strip().lstrip("-").isdigit():
            key = margin.strip().lower()
            if key == "exact":
                return self.receptive_field_px
            if key == "effective":
                eff = getattr(self.model, "effective_margin_px", None)
                if eff is None:
                    log.info("this model has no effective margin; using the exact one")
                    return self.receptive_field_px
                return int(eff())
            raise ConfigError(
                f"margin must be 'exact', 'effective' or a number of px, got {margin!r}."
            )
        px = int(margin)
        if px < 0:
            raise ConfigError(f"margin must be >= 0 px, got {px}.")
        if px < self.receptive_field_px:
            log.info(
                "margin of %d px is below the receptive field (%d px): tile borders differ "
                "slightly from an untiled pass",
                px,
                self.receptive_field_px,
            )
        return px

    @property
    def scale(self) -> float:
        return float(self.normalization.get("scale", 1.0) or 1.0)


def model_info(checkpoint: Any, *, checkpoint_path: str | Path | None = None) -> ModelInfo:
    """:class:`ModelInfo` of a loaded ``Checkpoint`` (``.model`` and ``.meta``)."""
    return ModelInfo(checkpoint.model, checkpoint.meta, checkpoint_path=checkpoint_path)


def dense_forward(
    model: torch.nn.Module,
    batch: torch.Tensor,
    *,
    tta: bool = False,
    region: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Run a dense model on ``(B, 3, T, T)`` float input in [0, 1]; ``(B, C, T/s, T/s)`` float32.

    With ``tta`` the output is the mean over the 8 flips/rotations, each mapped back
    (:func:`hexpress.models.tta.dense_tta`). Tiles are square and their side a multiple of the
    stride, so every transform maps the cell grid onto itself. ``region`` (map cells, for models
    that accept it) computes only those cells.
    """
    return dense_tta(model, batch, n=8 if tta else 1, region=region)


def _read_tile(slide: SlideImage, info: ModelInfo, grid: TileGrid, tile: Tile) -> np.ndarray:
    return slide.read_region(
        tile.read_x, tile.read_y, grid.tile_px, grid.tile_px, mpp=info.model_mpp, units="target"
    )


def _tile_has_tissue(tile: Tile, grid: TileGrid, info: ModelInfo, slide, tissue) -> bool:
    f = info.model_mpp / slide.mpp  # level-0 px per input px
    s = grid.stride
    return tissue.any_in(
        tile.cell_x0 * s * f, tile.cell_y0 * s * f, tile.cell_x1 * s * f, tile.cell_y1 * s * f
    )


def core_region(model: torch.nn.Module, grid: TileGrid) -> tuple[int, int, int, int] | None:
    """The map cells of a tile's core, for models that compute only a region (else ``None``)."""
    if not getattr(model, "accepts_region", False):
        return None
    m, c = grid.margin_px // grid.stride, grid.core_cells
    return (m, m, m + c, m + c)


def max_tile_px(runtime: str) -> int:
    """The largest default tile side for ``runtime``.

    :data:`~hexpress.infer.tiling.DEFAULT_TILE_PX` for PyTorch,
    :data:`~hexpress.infer.tiling.GRAPH_TILE_PX` for an exported graph (it holds a whole tile's
    activations at once).
    """
    return DEFAULT_TILE_PX if runtime == "torch" else GRAPH_TILE_PX


def runtime_device(
    runtime: str, device: torch.device | str | None, *, exporter: str = "dynamo"
) -> torch.device:
    """The device of a run with ``runtime``, its packages checked before any work.

    ``"onnx"`` and ``"openvino"`` run on the CPU: ``"auto"`` (or ``None``) means the CPU there.

    Raises:
        ConfigError: an unknown runtime, ONNX Runtime or OpenVINO asked for on another device,
            or the packages of the runtime's extra missing.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}.")
    if runtime == "torch":
        return resolve_device(device)
    dev = torch.device("cpu") if device is None or str(device) == "auto" else resolve_device(device)
    if dev.type != "cpu":
        raise ConfigError(
            f"runtime {runtime!r} runs on the CPU only, not on {dev}: use --device cpu, or "
            "--runtime torch to run on this device."
        )
    from hexpress.infer.onnx_export import require_onnx

    require_onnx(exporter, runtime=runtime)
    return dev


def tile_net(
    info: ModelInfo,
    grid: TileGrid,
    *,
    runtime: str = "torch",
    device: torch.device | str | None = None,
    exporter: str = "dynamo",
) -> Callable[..., torch.Tensor]:
    """What :func:`predict_tiles` runs on each tile of ``grid``, called as the model is.

    ``"torch"``: a copy of the model with its batch norms folded and its stride-2 "same"
    convolutions unpadded (:func:`hexpress.models.fuse.torch_inference_copy`), on ``device``,
    channels-last (:func:`hexpress._device.prepare_model`). ``"onnx"``: the model with its
    batch norms folded (:func:`hexpress.models.fuse.fold_batchnorms`), exported once for the
    grid's tile side and core region (``exporter``, see
    :func:`hexpress.infer.onnx_export.export_onnx`) and run by ONNX Runtime on the CPU with
    torch's thread count (:class:`hexpress.infer.onnx_export.OnnxTileNet`); ``"openvino"``:
    the same graph compiled by OpenVINO for the CPU, in float32, with that thread count.
    """
    dev = runtime_device(runtime, device, exporter=exporter)
    if runtime == "torch":
        return prepare_model(torch_inference_copy(info.model), dev)
    from hexpress.infer.onnx_export import OnnxTileNet

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    net = OnnxTileNet(
        info.model, grid.tile_px, region=core_region(info.model, grid), threads=threads,
        exporter=exporter, runtime=runtime,
    )  # fmt: skip
    log.info(
        "model exported to ONNX (%s exporter) for tiles of %d px in %.1f s; %s runs it on %d "
        "CPU thread(s)",
        exporter,
        grid.tile_px,
        time.perf_counter() - t0,
        GRAPH_RUNTIMES[runtime][1],
        threads,
    )
    return net


def predict_tiles(
    slide: SlideImage,
    info: ModelInfo,
    grid: TileGrid,
    tiles: list[Tile],
    dense_map: DenseMap,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    precision: str = "auto",
    tta: bool = False,
    progress: bool = True,
    on_batch: Callable[[list[Tile]], None] | None = None,
    timings: dict[str, float] | None = None,
    runtime: str = "torch",
    exporter: str = "dynamo",
) -> int:
    """Predict ``tiles`` batch by batch and write their cores into ``dense_map``.

    Three stages overlap: a background thread reads (and decodes) the next batch of tiles into
    pinned memory while the model runs on this one, and another writes the previous batch's
    cores to the zarr map. The model runs as a copy with its batch norms folded into its
    convolutions (:func:`hexpress.models.fuse.torch_inference_copy`), in inference mode with
    channels-last tensors, under
    autocast on GPUs (``precision``, see :func:`hexpress._device.autocast_dtype`); models that
    accept a ``region`` (PixNet) compute their decoder on the core only. With
    ``runtime="onnx"`` (or ``"openvino"``) the model is exported once for the grid and ONNX
    Runtime (or OpenVINO) runs it on the CPU instead (:func:`tile_net`); tiles go through it the
    same way.

    ``timings``, when given, gets seconds added under ``"wait_read"`` (waiting for tiles),
    ``"net"`` (the model, outputs back on the host) and ``"wait_write"`` (waiting for the
    previous batch's write).

    Returns:
        the number of tiles run.
    """
    device = runtime_device(runtime, device, exporter=exporter)
    dtype = autocast_dtype(device, precision)
    net = tile_net(info, grid, runtime=runtime, device=device, exporter=exporter) if tiles else None
    m = grid.margin_px // grid.stride
    c = grid.core_cells
    region = core_region(info.model, grid)
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]

    def load(batch: list[Tile]) -> torch.Tensor:
        return pin(
            torch.from_numpy(np.stack([_read_tile(slide, info, grid, t) for t in batch])), device
        )

    def store(batch: list[Tile], core: list[np.ndarray]) -> None:
        for t, out in zip(batch, core, strict=True):
            h, w = t.cell_y1 - t.cell_y0, t.cell_x1 - t.cell_x0
            dense_map.write(t.cell_y0, t.cell_x0, out[:h, :w])
        dense_map.mark_done(t.index for t in batch)
        if on_batch is not None:
            on_batch(batch)

    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress, leave=False)
    with (
        ThreadPoolExecutor(max_workers=1) as reader,
        ThreadPoolExecutor(max_workers=1) as writer,
        torch.inference_mode(),
    ):
        pending = reader.submit(load, batches[0]) if batches else None
        written = None
        tm = {"wait_read": 0.0, "net": 0.0, "wait_write": 0.0}
        for bi, batch in enumerate(batches):
            t0 = time.perf_counter()
            pixels = pending.result()
            pending = reader.submit(load, batches[bi + 1]) if bi + 1 < len(batches) else None
            t1 = time.perf_counter()
            # NHWC uint8 -> NCHW float in [0, 1], channels-last strides (no copy of the layout)
            x = to_device(pixels, device).permute(0, 3, 1, 2).float().div_(255.0)
            core = []
            with autocast(device, dtype):
                # the CPU gains nothing from batching big tiles; one at a time bounds memory
                for p in x.split(1 if device.type == "cpu" else len(x)):
                    y = dense_forward(net, p, tta=tta, region=region)
                    if region is None:
                        y = y[:, :, m : m + c, m : m + c]
                    # float16 at once (the map's storage type): each part's float32 output is
                    # freed before the next part runs
                    core.extend(y.permute(0, 2, 3, 1).to(torch.float16).cpu().numpy())
                    del y
            del x
            t2 = time.perf_counter()
            if written is not None:
                written.result()  # at most one batch waits to be written
            written = writer.submit(store, batch, core)
            tm["wait_read"] += t1 - t0
            tm["net"] += t2 - t1
            tm["wait_write"] += time.perf_counter() - t2
            bar.update(len(batch))
        t0 = time.perf_counter()
        if written is not None:
            written.result()
        tm["wait_write"] += time.perf_counter() - t0
    bar.close()
    if timings is not None:
        for k, v in tm.items():
            timings[k] = timings.get(k, 0.0) + v
    return len(tiles)


def _map_attrs(slide: SlideImage, info: ModelInfo, grid: TileGrid, tissue: TissueMask) -> dict:
    return {
        "map_mpp": info.model_mpp * info.stride,
        "origin_px": [0.0, 0.0],
        "stride": info.stride,
        "model_mpp": info.model_mpp,
        "genes": info.genes,
        "channels": info.channels,
        "mode": info.mode,
        "normalization": info.normalization,
        "model": {
            "name": info.identity["model_name"],
            "kwargs": info.identity["model_kwargs"],
            "receptive_field_px": info.receptive_field_px,
        },
        "checkpoint": {"path": info.identity["path"], "sha256": info.identity["sha256"]},
        "slide": {
            "path": str(slide.path) if slide.path is not None else None,
            "width": int(slide.width),
            "height": int(slide.height),
            "mpp": float(slide.mpp),
        },
        "tile_grid": grid.to_dict(),
        "tissue_scale": float(tissue.scale),
        "tissue_fraction": tissue.fraction,
    }


_IDENTITY_KEYS = ("stride", "model_mpp", "channels", "mode", "checkpoint", "slide", "tile_grid")


def _same_run(old: dict, new: dict) -> bool:
    return all(old.get(k) == new.get(k) for k in _IDENTITY_KEYS)


def predict_slide(
    slide: SlideImage,
    info: ModelInfo,
    map_path: str | Path,
    *,
    tile_px: int | None = None,
    margin: str | int = "exact",
    batch_size: int = 2,
    device: str | torch.device | None = None,
    precision: str = "auto",
    tta: bool = False,
    tissue: TissueMask | None = None,
    detect: bool = True,
    progress: bool = True,
    resume: bool = True,
    timings: dict[str, float] | None = None,
    runtime: str = "torch",
    exporter: str = "dynamo",
    staged: bool = False,
) -> DenseMap:
    """Predict the dense map of a whole slide into ``map_path`` (a ``.zarr`` folder).

    Args:
        slide: the slide (any ``mpp``; tiles are read resampled to ``info.model_mpp``).
        info: the dense model and its metadata (:func:`model_info`).
        map_path: where the map goes.
        tile_px: tile side in input px, margins included (default: at most 3072 px, 2048 px
            for ``runtime="onnx"`` or ``"openvino"``; see
            :func:`~hexpress.infer.tiling.make_tile_grid`).
        margin: ``"exact"`` (the receptive field: tiled equals untiled), ``"effective"`` or
            px (see :meth:`ModelInfo.margin_px`).
        batch_size: tiles per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``...
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (half precisions on GPUs).
        tta: average over the 8 flips/rotations.
        tissue: a tissue mask; default detected on a thumbnail (``detect=True``) or the whole
            slide (``detect=False``).
        progress: show a progress bar over tiles.
        resume: continue an unfinished map of the same slide, checkpoint and tile grid.
        timings: gets the seconds of each stage (see :func:`predict_tiles`).
        runtime: ``"torch"``; ``"onnx"``: ONNX Runtime on the CPU (``device`` ``"auto"`` or
            ``"cpu"``), the model exported once for the run's tile grid (:func:`tile_net`;
            needs the ``onnx`` extra); ``"openvino"``: that graph run by OpenVINO on the CPU
            (the ``openvino`` extra).
        exporter: torch's ONNX exporter for ``runtime="onnx"`` or ``"openvino"``,
            ``"dynamo"`` or ``"torchscript"``.
        staged: run PixNet in three stages, each tiled with its own margin
            (:mod:`hexpress.infer.staged`): the same map with about half the FLOPs of tiles
            whose encoder covers the whole margin; ``runtime="torch"``, no ``tta``.

    Returns:
        the complete :class:`DenseMap`, opened read-only.
    """
    if info.kind != "dense":
        raise ConfigError(
            f"predict_slide needs a dense model; this checkpoint holds a {info.kind!r} model. "
            "Patch models predict unit by unit: see hexpress.infer.patch_engine."
        )
    map_path = Path(map_path)
    # a bad runtime, device or precision fails first
    autocast_dtype(runtime_device(runtime, device, exporter=exporter), precision)
    if staged:
        from hexpress.infer.staged import check_staged

        check_staged(info.model, runtime=runtime, tta=tta)
    if tissue is None:
        tissue = detect_tissue(slide) if detect else TissueMask.full(slide)
    image_shape = slide.shape_at(info.model_mpp)
    grid = make_tile_grid(
        image_shape,
        stride=info.stride,
        receptive_field_px=info.margin_px(margin),
        tile_px=tile_px,
        align_px=info.align_px,
        max_tile_px=max_tile_px(runtime),
    )
    attrs = _map_attrs(slide, info, grid, tissue)
    dm = None
    if resume and map_path.exists():
        try:
            old = open_dense_map(map_path, mode="r+", require_complete=False)
        except Exception as e:  # a foreign or broken folder: start again
            log.warning("%s cannot be resumed (%s); predicting it again", map_path, e)
        else:
            if _same_run(old.attrs, attrs):
                if old.complete:
                    log.info("%s is already complete; not predicting it again", map_path)
                    return open_dense_map(map_path)
                dm = old
                log.info(
                    "resuming %s: %d of %d tiles already done",
                    map_path,
                    int(old.tiles_done().sum()),
                    len(grid),
                )
            else:
                log.warning("%s was made by another run; predicting it again", map_path)
    if dm is None:
        dm = create_dense_map(
            map_path,
            map_shape=grid.map_shape,
            n_channels=len(info.channels),
            chunk_cells=grid.core_cells,
            n_tiles=len(grid),
            tissue_mask=tissue.mask,
            attrs=attrs,
        )
    t0 = time.perf_counter()
    done = dm.tiles_done()
    todo, empty = [], []
    for tile in grid:
        if done[tile.index]:
            continue
        (todo if _tile_has_tissue(tile, grid, info, slide, tissue) else empty).append(tile)
    if empty:
        dm.mark_done(t.index for t in empty)
    log.info(
        "%s: %d tiles of %d px at %g µm/px (%d to run, %d without tissue, %d done before)",
        slide,
        len(grid),
        grid.tile_px,
        info.model_mpp,
        len(todo),
        len(empty),
        int(done.sum()),
    )
    if staged:
        from hexpress.infer.staged import make_stage_plan, predict_tiles_staged

        predict_tiles_staged(
            slide, info, grid, todo, dm, plan=make_stage_plan(info.model, grid.margin_px),
            work_dir=map_path.with_name(map_path.name + ".stages"), progress=progress,
            timings=timings,
        )  # fmt: skip
    else:
        predict_tiles(
            slide, info, grid, todo, dm, batch_size=batch_size, device=device,
            precision=precision, tta=tta, progress=progress, timings=timings, runtime=runtime,
            exporter=exporter,
        )  # fmt: skip
    dm.finalize(
        n_tiles_run=len(todo),
        n_tiles_empty=len(empty) + int(dm.attrs.get("n_tiles_empty", 0) or 0),
        seconds=time.perf_counter() - t0,
    )
    return open_dense_map(map_path)
