"""Staged whole-slide inference: each part of PixNet tiled with only its own margin.

Tiled inference (:mod:`hexpress.infer.engine`) gives every tile a margin of the whole network's
receptive field (512 px for PixNet-Lite0) and computes the encoder on all of it, so on 2,048 px
tiles three quarters of the encoder's work falls in margins that are thrown away. Here the
network runs in three stages over the slide, each tiled on its own with the margin that its
own layers need, and each writes its output for the next stage into a temporary store:

* **A**, the encoder's early stages (stride <= 8, about 10 % of PixNet-Lite0's FLOPs): input
  tiles with the early stages' halo (40 px for Lite0) -> the pyramid levels up to stride 8;
* **B**, the encoder's later stages and the decoder down to stride 8 (about a third): tiles of
  the stride-8 level with a margin of the receptive field -> the decoder's output at stride 8;
* **C**, the decoder's finest level and the head (about half): tiles of the map with a margin of
  a few cells -> the map.

Every cell of the map then sees the same numbers as in one untiled pass over the slide extended
with white by the receptive field on every side, which is what tiled inference computes too:
the map equals the tiled one up to float rounding (tested). Windows start on multiples of each
stage's stride, so strided and TF-"same" convolutions sample the same pixels, and every stage
reads a window at least as wide as the reach of its layers, so its kept core is exact.

The stores are uncompressed float32 zarr arrays in a folder beside the map
(``<map>.stages``), removed when the map is complete. For the 6.5 mm region at 0.5 µm/px they
hold about 3 GB on disk. A killed run resumes the map's finished tiles; the stages are computed
again for the tiles left.

Needs a PixNet whose encoder splits after its stride-8 stage into local layers (the
EfficientNet-Lite encoders); :func:`staged_support` says why another model cannot.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hexpress.errors import ConfigError
from hexpress.infer.dense_map import DenseMap
from hexpress.infer.tiling import Tile, TileGrid
from hexpress.io.image import SlideImage

__all__ = [
    "StagePlan",
    "StageA",
    "StageB",
    "StageC",
    "make_stage_plan",
    "stage_layout",
    "StageLayout",
    "staged_support",
    "check_staged",
    "predict_tiles_staged",
    "STAGE_A_CORE_PX",
    "STAGE_B_CORE_CELLS",
]

log = logging.getLogger(__name__)

STAGE_A_CORE_PX = 1024
"""Core side of a stage-A tile in input px (its halo is the early stages' reach)."""

STAGE_B_CORE_CELLS = 512
"""Core side of a stage-B tile in cells of the stride-8 level (4,096 input px for PixNet-Lite0);
its margin is the receptive field (64 cells): 64 % of the cells it computes are kept, and its
largest activation (the first stride-16 block's expansion) stays under 400 MB."""


def _late_local(encoder, n_blocks: int) -> bool:
    from hexpress.models.encoders import _local_types

    local = _local_types()
    return all(isinstance(m, local) for b in encoder.body.blocks[n_blocks:] for m in b.modules())


def staged_support(model: nn.Module) -> str | None:
    """``None`` if ``model`` can run staged, else why not (a sentence)."""
    from hexpress.models.pixnet import PixNet

    if not isinstance(model, PixNet):
        return f"staged inference runs PixNet models, not {type(model).__name__}"
    enc = model.encoder
    plan = enc.early_plan()
    if plan is None:
        return f"the encoder {enc.name!r} cannot be split after its early stages"
    order = sorted(enc.body._stage_out_idx)
    stages = [order[i] for i in model.levels]
    if plan.n_blocks not in stages:
        return f"the encoder {enc.name!r}'s early stages do not end on a level PixNet reads"
    if not _late_local(enc, plan.n_blocks):
        return (
            f"the encoder {enc.name!r} has global context (e.g. squeeze-excitation) in its later "
            "stages, so no tiling is exact"
        )
    return None


def check_staged(model: nn.Module, *, runtime: str = "torch", tta: bool = False) -> None:
    """Refuse a staged run that cannot be done, before any work.

    Raises:
        ConfigError: the model cannot run staged (:func:`staged_support`), another runtime
            than PyTorch, or test-time augmentation.
    """
    why = staged_support(model)
    if why is None and runtime != "torch":
        why = f"staged inference runs in PyTorch, not with --runtime {runtime}"
    if why is None and tta:
        why = "staged inference computes one map, not the 8 flips and rotations of --tta"
    if why:
        raise ConfigError(f"{why}; predict without --staged.")


@dataclass(frozen=True)
class StagePlan:
    """How a PixNet splits into the three stages, and their tiles.

    Attributes:
        level_b: PixNet level (0: finest) where stage B hands over to stage C; its stride
            is ``stride_b`` (the early stages' total stride).
        stride: the map's stride (input px per map cell, level 0).
        stride_b: input px per cell of ``level_b``.
        reduction: the network's total downsampling.
        early_stages: encoder stages of PixNet levels ``0 .. level_b``.
        late_stages: encoder stages of the levels above ``level_b``.
        margin_px: how far beyond the map the stages are computed (the receptive field).
        halo_a_px: stage A's halo in input px (the early stages' reach).
        halo_b: stage B's margin in ``level_b`` cells.
        halo_c: stage C's margin in map cells.
        core_a_px: stage-A core side in input px.
        core_b: stage-B core side in ``level_b`` cells.
        channels: channels of PixNet levels ``0 .. level_b``.
    """

    level_b: int
    stride: int
    stride_b: int
    reduction: int
    early_stages: tuple[int, ...]
    late_stages: tuple[int, ...]
    margin_px: int
    halo_a_px: int
    halo_b: int
    halo_c: int
    core_a_px: int
    core_b: int
    channels: tuple[int, ...] = field(default=())


def make_stage_plan(
    model: nn.Module,
    margin_px: int,
    *,
    core_a_px: int = STAGE_A_CORE_PX,
    core_b: int = STAGE_B_CORE_CELLS,
) -> StagePlan:
    """The :class:`StagePlan` of ``model`` for an exact margin of ``margin_px``.

    Raises:
        ConfigError: the model cannot run staged (:func:`staged_support`), or a core that is
            not a positive size.
    """
    check_staged(model)
    enc = model.encoder
    plan = enc.early_plan()
    order = sorted(enc.body._stage_out_idx)
    stages = [order[i] for i in model.levels]
    kb = stages.index(plan.n_blocks)
    r, a, s = int(model.reduction), int(plan.stride), int(model.stride)
    if a != s * 2**kb:
        raise ConfigError(f"the encoder's early stride {a} is not level {kb} of PixNet.")
    step = r // a  # stage-B windows start on multiples of this many cells
    halo_b = math.ceil(math.ceil(margin_px / a) / step) * step
    core_a_px = max(r, int(core_a_px) // r * r)
    core_b = max(step, int(core_b) // step * step)
    chans = list(enc.feature_info.channels())
    return StagePlan(
        level_b=kb,
        stride=s,
        stride_b=a,
        reduction=r,
        early_stages=tuple(stages[: kb + 1]),
        late_stages=tuple(stages[kb + 1 :]),
        margin_px=int(margin_px),
        halo_a_px=int(plan.halo_px),
        halo_b=halo_b,
        halo_c=2 ** (kb + 1),
        core_a_px=core_a_px,
        core_b=core_b,
        channels=tuple(int(chans[i]) for i in model.levels[: kb + 1]),
    )


class StageA(nn.Module):
    """Input ``(B, 3, H, W)`` in [0, 1] -> PixNet levels ``0 .. level_b`` (the early stages)."""

    def __init__(self, model: nn.Module, plan: StagePlan) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.stages = list(plan.early_stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder.forward_early(x, self.stages))


class StageB(nn.Module):
    """Level ``level_b`` of the pyramid -> the decoder's output at that level on ``region``."""

    def __init__(self, model: nn.Module, plan: StagePlan) -> None:
        super().__init__()
        self.model = model
        self.level = plan.level_b
        self.late = list(plan.late_stages)

    def forward(self, f: torch.Tensor, region: tuple[int, int, int, int]) -> torch.Tensor:
        feats = [None] * self.level + [f, *self.model.encoder.forward_late(f, self.late)]
        return self.model.decode_to(feats, region, self.level)


class StageC(nn.Module):
    """The decoder's output at ``level_b`` and the finer pyramid levels -> the map on ``region``."""

    def __init__(self, model: nn.Module, plan: StagePlan) -> None:
        super().__init__()
        self.model = model
        self.level = plan.level_b

    def forward(
        self, d: torch.Tensor, *fine: torch.Tensor, region: tuple[int, int, int, int]
    ) -> torch.Tensor:
        return self.model.decode_from(d, self.level, list(fine), region)


class _Store:
    """A level's features over a box of its cells, ``[y0, y1) x [x0, x1)``, as an uncompressed
    float32 zarr array ``(H, W, C)``; reads outside the box are zeros."""

    def __init__(self, path: Path, box: tuple[int, int, int, int], channels: int, chunk: int):
        import zarr

        self.box = box
        y0, x0, y1, x1 = box
        self.array = zarr.create_array(
            str(path), shape=(y1 - y0, x1 - x0, channels), chunks=(chunk, chunk, channels),
            dtype="float32", fill_value=0.0, compressors=None, zarr_format=3,
        )  # fmt: skip

    def write(self, y0: int, x0: int, values: np.ndarray) -> None:
        """``values`` ``(h, w, C)`` at cells ``(y0, x0)``, clipped to the box."""
        by0, bx0, by1, bx1 = self.box
        h, w = values.shape[:2]
        a, b = max(y0, by0), max(x0, bx0)
        c, d = min(y0 + h, by1), min(x0 + w, bx1)
        if a < c and b < d:
            self.array[a - by0 : c - by0, b - bx0 : d - bx0] = values[
                a - y0 : c - y0, b - x0 : d - x0
            ]

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Cells ``[y0, y1) x [x0, x1)`` as ``(h, w, C)`` float32, zeros outside the box."""
        by0, bx0, by1, bx1 = self.box
        out = np.zeros((y1 - y0, x1 - x0, self.array.shape[2]), np.float32)
        a, b = max(y0, by0), max(x0, bx0)
        c, d = min(y1, by1), min(x1, bx1)
        if a < c and b < d:
            out[a - y0 : c - y0, b - x0 : d - x0] = self.array[a - by0 : c - by0, b - bx0 : d - bx0]
        return out


def _nchw(a: np.ndarray) -> torch.Tensor:
    """``(h, w, C)`` -> ``(1, C, h, w)`` channels-last strides, no copy."""
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def _hwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t[0].permute(1, 2, 0).float().numpy())


def _overlaps(box, boxes) -> bool:
    y0, x0, y1, x1 = box
    return any(y0 < d and b < y1 and x0 < e and c < x1 for b, c, d, e in boxes)


def _even(lo: int, hi: int, max_core: int, step: int) -> tuple[list[int], int]:
    """As few cores of at most ``max_core`` (a multiple of ``step``) as cover ``[lo, hi)``,
    shared out evenly: their starts and their common side, a multiple of ``step``."""
    n = max(1, math.ceil((hi - lo) / max_core))
    core = math.ceil((hi - lo) / n / step) * step
    return [lo + i * core for i in range(n)], core


@dataclass(frozen=True)
class StageLayout:
    """The tiles of each stage for a set of map tiles (:func:`stage_layout`).

    Attributes:
        a_tiles: stage-A core corners ``(y, x)`` in input px.
        core_a_px: their ``(height, width)`` (at most the plan's core, the span shared out
            evenly).
        b_tiles: stage-B core corners in ``level_b`` cells.
        core_b: their ``(height, width)``.
        c_boxes: per map tile, the level-0 cells stage C reads (core + ``halo_c``).
        level_boxes: per level ``0 .. level_b``, the cells its store holds.
        d_box: the ``level_b`` cells of the decoder's store.
    """

    a_tiles: list[tuple[int, int]]
    core_a_px: tuple[int, int]
    b_tiles: list[tuple[int, int]]
    core_b: tuple[int, int]
    c_boxes: list[tuple[int, int, int, int]]
    level_boxes: list[tuple[int, int, int, int]]
    d_box: tuple[int, int, int, int]


def _span(boxes, scale: int = 1, floor_to: int = 1) -> tuple[int, int, int, int]:
    """The box around ``boxes`` in cells ``scale`` times larger, its corner floored to
    multiples of ``floor_to``."""
    y0 = min(b[0] for b in boxes) // scale // floor_to * floor_to
    x0 = min(b[1] for b in boxes) // scale // floor_to * floor_to
    return y0, x0, -(-max(b[2] for b in boxes) // scale), -(-max(b[3] for b in boxes) // scale)


def stage_layout(plan: StagePlan, grid: TileGrid, tiles: list[Tile]) -> StageLayout:
    """Which tiles each stage runs for the map ``tiles`` of ``grid``: C reads level 0 (and
    the finer levels) on each core grown by ``halo_c`` and level ``level_b`` under that, B
    covers those ``level_b`` cells, and A covers, in input px, every B window and C box."""
    f = plan.stride_b // plan.stride  # map cells per level_b cell
    cc, hc = grid.core_cells, plan.halo_c
    c_boxes = [
        (t.cell_y0 - hc, t.cell_x0 - hc, t.cell_y0 + cc + hc, t.cell_x0 + cc + hc) for t in tiles
    ]
    d_boxes = [_span([b], f) for b in c_boxes]
    hb, step = plan.halo_b, plan.reduction // plan.stride_b
    dy0, dx0, dy1, dx1 = _span(d_boxes, 1, step)
    ys, cby = _even(dy0, dy1, plan.core_b, step)
    xs, cbx = _even(dx0, dx1, plan.core_b, step)
    b_tiles = [(y, x) for y in ys for x in xs if _overlaps((y, x, y + cby, x + cbx), d_boxes)]
    b_windows = [(y - hb, x - hb, y + cby + hb, x + cbx + hb) for y, x in b_tiles]
    px_boxes = [tuple(v * plan.stride_b for v in w) for w in b_windows]
    px_boxes += [tuple(v * plan.stride for v in b) for b in c_boxes]
    ay0, ax0, ay1, ax1 = _span(px_boxes, 1, plan.reduction)
    ys, cay = _even(ay0, ay1, plan.core_a_px, plan.reduction)
    xs, cax = _even(ax0, ax1, plan.core_a_px, plan.reduction)
    a_tiles = [(y, x) for y in ys for x in xs if _overlaps((y, x, y + cay, x + cax), px_boxes)]
    kb = plan.level_b
    levels = [_span(c_boxes, 2**k) for k in range(kb)] + [_span(b_windows)]
    d_box = _span([(y, x, y + cby, x + cbx) for y, x in b_tiles])
    return StageLayout(a_tiles, (cay, cax), b_tiles, (cby, cbx), c_boxes, levels, d_box)


def predict_tiles_staged(
    slide: SlideImage,
    info,
    grid: TileGrid,
    tiles: list[Tile],
    dense_map: DenseMap,
    *,
    plan: StagePlan,
    work_dir: str | Path,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> int:
    """Predict the map's ``tiles`` (cores of ``grid``) in three stages (module docstring).

    ``work_dir`` holds the stages' stores while they are needed (it is emptied first and removed
    at the end). ``timings`` gets seconds added under ``"stage_a"``, ``"stage_b"``,
    ``"stage_c"`` (each stage's network, outputs included), ``"wait_read"`` and ``"net"`` (the
    three stages together).

    Returns:
        the number of map tiles run.
    """
    from hexpress.models.fuse import torch_inference_copy

    if not tiles:
        return 0
    model = torch_inference_copy(info.model).to(memory_format=torch.channels_last)
    stage_a, stage_b, stage_c = (S(model, plan) for S in (StageA, StageB, StageC))
    lay = stage_layout(plan, grid, tiles)
    a_tiles, b_tiles = lay.a_tiles, lay.b_tiles
    s, kb = plan.stride, plan.level_b
    f = plan.stride_b // s
    cc, hc = grid.core_cells, plan.halo_c
    (cby, cbx), hb = lay.core_b, plan.halo_b
    (cay, cax), ha = lay.core_a_px, plan.halo_a_px

    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tm = {"stage_a": 0.0, "stage_b": 0.0, "stage_c": 0.0, "wait_read": 0.0}
    try:
        # stores: levels 0 .. level_b over what B and C read, and the decoder at level_b
        stores = [
            _Store(work / f"level{k}.zarr", box, plan.channels[k], max(1, 256 >> k))
            for k, box in enumerate(lay.level_boxes)
        ]
        d_store = _Store(work / "decoder.zarr", lay.d_box, model.head.in_channels, 128)

        with torch.inference_mode():
            # -- A: the early stages on input tiles ------------------------------------------
            def load(t):
                y, x = t
                return slide.read_region(
                    x - ha, y - ha, cax + 2 * ha, cay + 2 * ha, mpp=info.model_mpp,
                    units="target",
                )  # fmt: skip

            bar = tqdm(total=len(a_tiles), desc="stage A", unit="tile", disable=not progress)
            with ThreadPoolExecutor(max_workers=1) as reader:
                pending = reader.submit(load, a_tiles[0])
                for i, (y, x) in enumerate(a_tiles):
                    t0 = time.perf_counter()
                    pixels = pending.result()
                    if i + 1 < len(a_tiles):
                        pending = reader.submit(load, a_tiles[i + 1])
                    t1 = time.perf_counter()
                    xin = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255.0)
                    for k, out in enumerate(stage_a(xin)):
                        sk = s << k
                        h = ha // sk
                        core = out[..., h : h + cay // sk, h : h + cax // sk]
                        stores[k].write(y // sk, x // sk, _hwc(core))
                    del out, xin
                    tm["wait_read"] += t1 - t0
                    tm["stage_a"] += time.perf_counter() - t1
                    bar.update()
            bar.close()

            # -- B: the later stages and the coarse decoder ----------------------------------
            region = (hb, hb, hb + cby, hb + cbx)
            for y, x in tqdm(b_tiles, desc="stage B", unit="tile", disable=not progress):
                t0 = time.perf_counter()
                fb = _nchw(stores[kb].read(y - hb, x - hb, y + cby + hb, x + cbx + hb))
                d_store.write(y, x, _hwc(stage_b(fb, region)))
                tm["stage_b"] += time.perf_counter() - t0

            # -- C: the finest decoder levels and the head, tile by tile into the map ---------
            region = (hc, hc, hc + cc, hc + cc)
            for t in tqdm(tiles, desc="stage C", unit="tile", disable=not progress):
                t0 = time.perf_counter()
                y0, x0 = t.cell_y0 - hc, t.cell_x0 - hc
                y1, x1 = y0 + cc + 2 * hc, x0 + cc + 2 * hc
                d = _nchw(d_store.read(y0 // f, x0 // f, -(-y1 // f), -(-x1 // f)))
                fine = [
                    _nchw(stores[k].read(y0 >> k, x0 >> k, -(-y1 >> k), -(-x1 >> k)))
                    for k in range(kb)
                ]
                out = stage_c(d, *fine, region=region)
                core = out[0].permute(1, 2, 0).to(torch.float16).numpy()
                h, w = t.cell_y1 - t.cell_y0, t.cell_x1 - t.cell_x0
                tm["stage_c"] += time.perf_counter() - t0
                dense_map.write(t.cell_y0, t.cell_x0, core[:h, :w])
                dense_map.mark_done([t.index])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tm["net"] = tm["stage_a"] + tm["stage_b"] + tm["stage_c"]
    if timings is not None:
        for k, v in tm.items():
            timings[k] = timings.get(k, 0.0) + v
    log.info(
        "staged: %d stage-A tiles of %d x %d px, %d stage-B tiles of %d x %d cells, %d map tiles",
        len(a_tiles), cay + 2 * ha, cax + 2 * ha, len(b_tiles), cby + 2 * hb, cbx + 2 * hb,
        len(tiles),
    )  # fmt: skip
    return len(tiles)
