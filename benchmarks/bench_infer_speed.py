"""Whole-region dense inference end to end, against the single-patch baseline on the same bins.

The target: a 6.5 mm x 6.5 mm region (a Visium HD capture area) at 0.5 µm/px, 13,000 x 13,000
px, all of it tissue. The script writes that region as a pyramidal JPEG-tiled TIFF (the
synthetic slide of ``bench_infer_memory.py``; not timed), then times, in one process:

1. ``setup``: opening the slide, building PixNet-Lite0 (250 genes, stride 4, untrained decoder:
   speed does not depend on the weights) and measuring its receptive field (and, with
   ``--margin effective``, its effective margin).
2. ``map``: the tiled dense map into an on-disk zarr store (:func:`hexpress.infer.predict_slide`),
   split into waiting for tiles (JPEG reading and decoding, in a background thread), the net,
   and waiting for the writes (also in a background thread). ``--runtime onnx`` runs the net
   in ONNX Runtime instead of PyTorch (the ``onnx`` extra), ``--runtime openvino`` in OpenVINO
   (the ``openvino`` extra); the model's one export for the tile grid is then part of ``map``
   (before the first tile, outside ``net``).
3. ``bins_to_files``: every 16, 8 and 2 µm bin of the region aggregated from the map and
   written with all 250 genes into one ``.h5ad`` per size, as ``hexpress predict --bins
   16,8,2`` does (:func:`hexpress.infer.write_geometries`: the 10.6 M bins of 2 µm, 10.6 GB
   as one float32 matrix, go into their file in groups of units, so memory stays bounded).
   ``files_mb`` is their size on disk; they are deleted afterwards.

``seconds_total`` is timed around all of it on its own clock; the parts are timed separately, so
their sum (``seconds_sum_of_parts``) falls short of the total only by the glue between them.

The machine's own rate comes first: a 2048 x 2048 float32 ``torch.matmul``, timed right before
the map in the same process; the net's rate is its FLOPs (counted by
``torch.utils.flop_counter`` on the meta device, nothing run) over the seconds spent in it.
``kept_over_computed_px`` is the share of the tiles' input pixels that end up in the map;
``kept_over_computed_flop`` the FLOPs of one untiled pass over the region over those spent.

The patch baseline (``lite0_patch``: 112 µm crops resized to 224 px) predicts the same 8 µm bins:
by default **extrapolated** from ``--patch-crops`` timed crops; ``--patch-all`` runs every bin.

With a margin other than ``exact``, ``deviation`` compares ``--deviation-tiles`` tiles of the
region at that margin with the same cores at the exact margin: the largest absolute difference
of any map value, and that over the exact map's standard deviation.

Usage: ``python benchmarks/bench_infer_speed.py [--region-um 6500] [--margin exact|effective|PX]
[--runtime torch|onnx|openvino] [--patch-all] [--threads 2]``. ``--region-um 300`` runs in about a minute. Prints one JSON
object on stdout; each part is also printed to stderr as soon as it is done.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_infer_memory  # the sibling script: run as a script, its folder is on sys.path
import numpy as np
import torch

from hexpress.infer import ModelInfo, TissueMask, grid_bins, make_tile_grid, predict_slide
from hexpress.infer.aggregate_disk import write_geometries
from hexpress.infer.engine import RUNTIMES, core_region, dense_forward, max_tile_px
from hexpress.infer.onnx_export import EXPORTERS
from hexpress.infer.patch_engine import predict_patches
from hexpress.io import open_image
from hexpress.models import create_model

MODEL_MPP = 0.5
N_GENES = 250
BIN_SIZES = (16, 8, 2)


_PEAK_KB = 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``VmHWM``), MB.

    Linux updates the recorded high-water mark lazily, so a later ``VmHWM`` can read below an
    earlier one (it includes the resident size at the moment of reading); the largest reading
    so far is returned, which never decreases."""
    global _PEAK_KB
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    _PEAK_KB = max(_PEAK_KB, kb)
    return round(_PEAK_KB / 1024, 1)


def matmul_gflops(n: int = 2048, min_s: float = 1.0) -> float:
    """float32 ``n x n`` matmul rate of this process, GFLOP/s (best of repeated runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best, t_all = float("inf"), 0.0
    while t_all < min_s:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        dt = time.perf_counter() - t0
        best, t_all = min(best, dt), t_all + dt
    return 2 * n**3 / best / 1e9


def count_flops(model: torch.nn.Module, side: int, region=None) -> int:
    """FLOPs of one forward pass on a ``side`` x ``side`` input, counted on the meta device."""
    return call_flops(model, [(3, side, side)], **({} if region is None else {"region": region}))


def call_flops(module: torch.nn.Module, shapes, **kwargs) -> int:
    """FLOPs of ``module(*inputs, **kwargs)`` on inputs ``(1, *shape)``, on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(module).to("meta")
    xs = [torch.empty(1, *shape, device="meta") for shape in shapes]
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        meta(*xs, **kwargs)
    return int(counter.get_total_flops())


def staged_flops(model: torch.nn.Module, margin_px: int, grid, tiles_run: int) -> dict:
    """FLOPs of each stage of a staged run (:mod:`hexpress.infer.staged`) over ``grid``, and
    the share of each stage's computed input px that is the region's (its tiles' margins and
    what it computes beyond the region both count as not kept)."""
    from hexpress.infer import staged

    plan = staged.make_stage_plan(model, margin_px)
    lay = staged.stage_layout(plan, grid, list(grid))
    assert len(grid) == tiles_run, "the region is all tissue: every map tile runs"
    (cay, cax), (cby, cbx) = lay.core_a_px, lay.core_b
    ha, hb = plan.halo_a_px, plan.halo_b
    cc, hc = grid.core_cells, plan.halo_c
    side_c = cc + 2 * hc
    kb, f = plan.level_b, plan.stride_b // plan.stride
    a = call_flops(staged.StageA(model, plan), [(3, cay + 2 * ha, cax + 2 * ha)])
    b = call_flops(
        staged.StageB(model, plan), [(plan.channels[kb], cby + 2 * hb, cbx + 2 * hb)],
        region=(hb, hb, hb + cby, hb + cbx),
    )  # fmt: skip
    fine = [(plan.channels[k], side_c >> k, side_c >> k) for k in range(kb)]
    c = call_flops(
        staged.StageC(model, plan), [(model.head.in_channels, side_c // f, side_c // f), *fine],
        region=(hc, hc, hc + cc, hc + cc),
    )  # fmt: skip
    n = {"a": len(lay.a_tiles), "b": len(lay.b_tiles), "c": len(grid)}
    per = {"a": a, "b": b, "c": c}
    kept_px = grid.map_shape[0] * grid.map_shape[1] * grid.stride**2
    computed = {  # input px under each stage's computed cells
        "a": (cay + 2 * ha) * (cax + 2 * ha),
        "b": (cby + 2 * hb) * (cbx + 2 * hb) * plan.stride_b**2,
        "c": ((cc + 2) * plan.stride) ** 2,  # the finest DFFN's 3x3 halo
    }
    kept = {k: kept_px / (n[k] * computed[k]) for k in n}
    return {
        "stage_tiles": n,
        "stage_tile_px": {
            "a": [cay + 2 * ha, cax + 2 * ha],
            "b": [(cby + 2 * hb) * plan.stride_b, (cbx + 2 * hb) * plan.stride_b],
            "c": [side_c * plan.stride] * 2,
        },
        "stage_kept_over_computed_px": {k: round(v, 4) for k, v in kept.items()},
        "stage_flop": {k: per[k] * n[k] for k in per},
        "flop": sum(per[k] * n[k] for k in per),
    }


def _timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def _write_bins(dm, side: int, folder: Path) -> dict[str, int]:
    """Every 16, 8 and 2 µm bin of the region into one ``.h5ad`` per size, as ``hexpress
    predict --bins 16,8,2`` writes them (:func:`hexpress.infer.write_geometries`)."""
    sets = [grid_bins(side, side, MODEL_MPP, float(um)) for um in BIN_SIZES]
    paths = [folder / f"bins_{um:03d}um.h5ad" for um in BIN_SIZES]
    counts = write_geometries(dm, sets, paths, progress=False)
    assert counts == [len(u) for u in sets], counts
    out = {f"bins_{um}um": n for um, n in zip(BIN_SIZES, counts, strict=True)}
    out["files_mb"] = round(sum(p.stat().st_size for p in paths) / 2**20, 1)
    for p in paths:
        p.unlink()
    return out


def _deviation(info: ModelInfo, slide, grid, exact_margin: int, n_tiles: int) -> dict:
    """Largest difference between tiles at ``grid``'s margin and the same cores at the exact one."""
    exact = make_tile_grid(
        grid.image_shape, stride=info.stride, receptive_field_px=exact_margin,
        tile_px=grid.tile_px - 2 * grid.margin_px + 2 * exact_margin, align_px=info.align_px,
    )  # fmt: skip
    order = sorted(
        range(len(grid)),
        key=lambda i: (
            abs(grid.tile(i).row - grid.n_rows // 2) + abs(grid.tile(i).col - grid.n_cols // 2)
        ),
    )  # noqa: E501
    worst, std = 0.0, 0.0
    model = info.model
    with torch.inference_mode():
        for i in order[:n_tiles]:
            outs = []
            for g in (grid, exact):
                t = g.tile(i)
                px = slide.read_region(
                    t.read_x, t.read_y, g.tile_px, g.tile_px, mpp=MODEL_MPP, units="target"
                )
                x = torch.from_numpy(px[None]).permute(0, 3, 1, 2).float() / 255
                region = core_region(model, g)
                y = dense_forward(model, x, region=region)
                if region is None:
                    m = g.margin_px // g.stride
                    y = y[..., m : m + g.core_cells, m : m + g.core_cells]
                outs.append(y)
            worst = max(worst, float((outs[0] - outs[1]).abs().max()))
            std = max(std, float(outs[1].std()))
    return {
        "tiles_compared": min(n_tiles, len(grid)),
        "largest_deviation": round(worst, 5),
        "largest_deviation_over_map_std": round(worst / std, 5) if std > 0 else None,
    }


def bench_dense(args, work: Path, slide_path: Path, side: int) -> dict:
    torch.manual_seed(0)
    matmul = matmul_gflops()  # the machine's rate, right before the map, in this process
    t_start = time.perf_counter()
    (slide, model, info, margin), t_setup = _timed(_setup, args, slide_path)
    grid = make_tile_grid(
        (side, side), stride=info.stride, receptive_field_px=margin, tile_px=args.tile_px,
        align_px=info.align_px, max_tile_px=max_tile_px(args.runtime),
    )  # fmt: skip
    timings: dict[str, float] = {}
    dm, t_map = _timed(
        predict_slide, slide, info, work / "map.zarr", tile_px=args.tile_px, margin=margin,
        batch_size=args.batch_size, tissue=TissueMask.full(slide), progress=False,
        resume=False, timings=timings, runtime=args.runtime, exporter=args.exporter,
        staged=args.staged,
    )  # fmt: skip
    parts = {"setup": t_setup, "map": t_map}
    bins, parts["bins_to_files"] = _timed(_write_bins, dm, side, work)
    t_total = time.perf_counter() - t_start
    tiles_run = int(dm.attrs["n_tiles_run"])
    region = core_region(model, grid)
    flop_tile = count_flops(model, grid.tile_px, region)
    flop_untiled_px = count_flops(model, 1024) / 1024**2
    kept_px = grid.map_shape[0] * grid.map_shape[1] * info.stride**2
    net_flop = flop_tile * tiles_run
    computed_px = tiles_run * grid.tile_px**2
    stages = {}
    if args.staged:
        stages = staged_flops(model, grid.margin_px, grid, tiles_run)
        net_flop = stages.pop("flop")
        # the share of computed input px that is kept, each stage weighted by its FLOPs
        w = stages["stage_flop"]
        kept_share = sum(w[k] * stages["stage_kept_over_computed_px"][k] for k in w) / net_flop
        computed_px = round(kept_px / kept_share)
        stages = {
            **stages,
            **{f"seconds_map_stage_{k}": round(timings[f"stage_{k}"], 2) for k in "abc"},
        }
    out = {
        "model": f"{args.model} ({N_GENES} genes, stride {info.stride}, untrained decoder)",
        "runtime": args.runtime,
        "staged": args.staged,
        **({"onnx_exporter": args.exporter} if args.runtime != "torch" else {}),
        "region_um": args.region_um,
        "input_px": side,
        "margin": str(args.margin),
        "receptive_field_px": info.receptive_field_px,
        "margin_px": grid.margin_px,
        "tile_px": grid.tile_px,
        "core_px": grid.core_cells * info.stride,
        "batch_size": args.batch_size,
        "tiles_in_region": len(grid),
        "tiles_run": tiles_run,
        "tiles_empty": int(dm.attrs.get("n_tiles_empty", 0) or 0),
        **bins,
        **{f"seconds_{k}": round(v, 2) for k, v in parts.items()},
        "seconds_map_wait_read": round(timings.get("wait_read", 0.0), 2),
        "seconds_map_net": round(timings.get("net", 0.0), 2),
        "seconds_map_wait_write": round(timings.get("wait_write", 0.0), 2),
        "seconds_sum_of_parts": round(sum(parts.values()), 2),
        "seconds_total": round(t_total, 2),
        "kept_px": kept_px,
        "computed_px": computed_px,
        "kept_over_computed_px": round(kept_px / computed_px, 4),
        **({} if args.staged else {"flop_per_tile": flop_tile}),
        **stages,
        "flop_per_px_untiled": round(flop_untiled_px, 1),
        "kept_over_computed_flop": round(kept_px * flop_untiled_px / net_flop, 4),
        "net_gflop_per_s": round(net_flop / timings["net"] / 1e9, 2),
        "matmul_gflop_per_s": round(matmul, 2),
        "peak_rss_mb_after_dense": peak_rss_mb(),
    }
    out["net_over_matmul"] = round(out["net_gflop_per_s"] / out["matmul_gflop_per_s"], 4)
    if str(args.margin) != "exact":
        out["deviation"] = _deviation(
            info, slide, grid, info.receptive_field_px, args.deviation_tiles
        )
    return out


def _setup(args, slide_path: Path):
    slide = open_image(slide_path)
    model = create_model(args.model, n_genes=N_GENES).eval()
    info = ModelInfo(model, {"model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(N_GENES)]})
    margin = info.margin_px(args.margin)  # measures the receptive field (and effective margin)
    return slide, model, info, margin


def bench_patch(args, slide_path: Path, side: int) -> dict:
    torch.manual_seed(0)
    model = create_model(args.patch_model, n_genes=N_GENES, pretrained=False).eval()
    meta = {
        "model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(N_GENES)], "kind": "patch",
        "patch_um": float(model.patch_um), "input_px": int(model.input_px),
    }  # fmt: skip
    info = ModelInfo(model, meta)
    slide = open_image(slide_path)
    bins = grid_bins(side, side, MODEL_MPP, 8.0)
    n8 = len(bins)
    if not args.patch_all:
        # a spread-out sample of the region's bins
        bins = bins.subset(np.linspace(0, n8 - 1, min(args.patch_crops, n8)).astype(np.int64))
    predict_patches(slide, info, bins.subset(np.arange(2)), batch_size=2, progress=False)
    a, t_crops = _timed(
        predict_patches, slide, info, bins, batch_size=args.patch_batch, progress=args.patch_all
    )
    assert a.n_obs == len(bins)
    per_crop = t_crops / len(bins)
    return {
        "model": f"{args.patch_model} ({model.patch_um:g} µm crops, {model.input_px} px input)",
        "crops_timed": len(bins),
        "seconds_crops_timed": round(t_crops, 2),
        "seconds_per_crop": round(per_crop, 5),
        "bins_8um": n8,
        "seconds_8um_bins": round(t_crops if args.patch_all else per_crop * n8, 1),
        "extrapolated_8um": not args.patch_all,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--region-um", type=float, default=6500.0, help="side of the square region")
    p.add_argument(
        "--margin", default="exact", help="exact, effective or px (see --help of predict)"
    )
    p.add_argument("--tile-px", type=int, default=None, help="default: the engine's (3072)")
    p.add_argument("--runtime", default="torch", choices=RUNTIMES, help="what runs the net")
    p.add_argument(
        "--exporter", default="dynamo", choices=EXPORTERS, help="torch's ONNX exporter (onnx)"
    )
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument(
        "--staged", action="store_true", help="the map in three stages (hexpress.infer.staged)"
    )
    p.add_argument("--deviation-tiles", type=int, default=2)
    p.add_argument("--patch-crops", type=int, default=256)
    p.add_argument("--patch-batch", type=int, default=32)
    p.add_argument("--patch-all", action="store_true", help="one crop per 8 µm bin of the region")
    p.add_argument("--model", default="pixnet_lite0", help="dense model (test_pixnet: checks)")
    p.add_argument("--patch-model", default="lite0_patch", help="patch baseline (test_patch)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--skip", default="", help="comma list of dense,patch")
    p.add_argument("--workdir", default=None, help="where the slide and map go (then removed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    side = int(round(args.region_um / MODEL_MPP))
    work = Path(tempfile.mkdtemp(prefix="hexpress_speed_", dir=args.workdir))
    out: dict = {"benchmark": "infer_speed_region", "threads": args.threads, "device": "cpu"}
    try:
        slide_path, t_write = _timed(bench_infer_memory.write_slide, work / "region.tif", side)
        out["seconds_write_slide_untimed_part"] = round(t_write, 1)
        if "dense" not in skip:
            out["dense"] = bench_dense(args, work, slide_path, side)
            print(json.dumps({"dense": out["dense"]}), file=sys.stderr, flush=True)
        if "patch" not in skip:
            out["patch"] = bench_patch(args, slide_path, side)
            print(json.dumps({"patch": out["patch"]}), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "dense" in out and "patch" in out:
        # the dense side also writes the 2 and 16 µm bins: the ratio is the patch baseline's
        # 8 µm bins over everything the dense run does
        out["patch_8um_over_dense_all_bins"] = round(
            out["patch"]["seconds_8um_bins"] / out["dense"]["seconds_total"], 2
        )
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
