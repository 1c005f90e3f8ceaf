"""One dense tile through PyTorch (as ``predict_tiles`` runs it), ONNX Runtime and OpenVINO on the CPU.

For each tile side (``--tile-px``, default 1024 and 2048) the script builds PixNet-Lite0 (250
genes, untrained decoder: speed does not depend on the weights), lays out the tile grid's margin
and core as :func:`hexpress.infer.make_tile_grid` does (the margin is the model's receptive field,
or the largest aligned margin that leaves a core of half the tile where the tile is too small
for it), and times on the same input tile:

* ``torch``: :func:`hexpress.infer.engine.predict_tiles`'s path, a copy of the model with batch
  norms folded and stride-2 "same" convolutions unpadded
  (:func:`hexpress.models.fuse.torch_inference_copy`), :func:`hexpress._device.prepare_model`
  (channels-last), a channels-last input (an NHWC tile permuted), :func:`torch.inference_mode`,
  ``region`` = the tile's core cells; ``torch_padded_same``: the same with batch norms folded
  only (timm's stride-2 "same" convolutions pad their whole input), the earlier path;
* ``ort_<level>``: the same folded model exported to ONNX for this tile side and core
  (:func:`hexpress.infer.onnx_export.export_onnx`) and run by ONNX Runtime's CPU execution
  provider at each graph optimisation level of ``--levels`` (``extended``: fusions, NCHW;
  ``all``: also the blocked NCHWc layout, ONNX Runtime's layout optimisation for CPU
  convolutions; its CPU provider has no float NHWC option). The timed call includes making the
  channels-last tile a contiguous NCHW array, as the runtime takes it;
* ``openvino``: the same graph compiled by OpenVINO for the CPU in float32, exactly as
  ``hexpress predict --runtime openvino`` runs it (:class:`hexpress.infer.onnx_export.OnnxTileNet`;
  skipped, saying so, where the ``openvino`` package is missing or with ``--no-openvino``).
  PixNet's DFFN blocks run
  in strips of rows without autograd on the CPU (:class:`hexpress.models.pixnet.DFFN`) and are
  exported so (strips joined by ``ScatterND``); ``--whole-dffn`` exports them as one pass each.

Each is timed as the median of ``--repeats`` calls after one warm-up call, in seconds per tile;
``speedup`` is torch's median over the runtime's. ``max_abs_dev_over_std`` is the largest absolute
difference of the runtime's output from torch's over the standard deviation of torch's output.
The machine's own rate (a 2048 x 2048 float32 ``torch.matmul``, the helper of
``bench_infer_speed.py``) is measured in the same process; each path's rate is the tile's FLOPs
(counted on the meta device) over its seconds.

Usage: ``python benchmarks/bench_onnx.py [--tile-px 1024 2048] [--threads 2] [--repeats 5]
[--levels extended,all] [--no-openvino] [--exporter dynamo|torchscript] [--whole-dffn]``. ``--model test_pixnet --tile-px 128``
runs in seconds. Prints one JSON object on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time

import bench_infer_speed  # the sibling script (matmul rate, FLOP count, peak RSS)
import numpy as np
import torch

from hexpress._device import prepare_model
from hexpress.infer import make_tile_grid
from hexpress.infer.engine import core_region, dense_forward
from hexpress.infer.onnx_export import (
    EXPORTERS,
    GRAPH_LEVELS,
    export_onnx,
    openvino_model,
    ort_session,
)
from hexpress.models import create_model
from hexpress.models.fuse import fold_batchnorms, torch_inference_copy
from hexpress.models.pixnet import DFFN


def _median_seconds(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call; and its output."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _margin(model, tile_px: int, align: int) -> int:
    """The receptive field, or the largest aligned margin leaving a core of half the tile."""
    room = (tile_px // 4) // align * align
    return min(int(model.receptive_field_px), room)


def _whole_dffn(model):
    """A copy of ``model`` whose DFFN blocks run in one pass, not in strips of rows."""
    whole = copy.deepcopy(model)
    for mod in whole.modules():
        if isinstance(mod, DFFN):
            mod.strip_bytes = 1 << 62
    return whole


def bench_tile(args, model, tile_px: int, speed) -> dict:
    align = int(getattr(model, "reduction", model.stride))
    margin = _margin(model, tile_px, align)
    grid = make_tile_grid(
        (tile_px, tile_px), stride=model.stride, receptive_field_px=margin, tile_px=tile_px,
        align_px=align,
    )  # fmt: skip
    region = core_region(model, grid)
    flop = speed.count_flops(model, grid.tile_px, region)
    gen = torch.Generator().manual_seed(0)
    # an NHWC tile permuted to NCHW: channels-last strides, as predict_tiles hands it over
    x = torch.rand(1, grid.tile_px, grid.tile_px, 3, generator=gen).permute(0, 3, 1, 2)
    net = prepare_model(torch_inference_copy(model), torch.device("cpu"))

    def run_torch():
        with torch.inference_mode():
            return dense_forward(net, x, region=region).numpy()

    t_torch, ref = _median_seconds(run_torch, args.repeats)
    std = float(ref.std())
    out = {
        "tile_px": grid.tile_px,
        "margin_px": grid.margin_px,
        "core_px": grid.core_cells * grid.stride,
        "region_cells": list(region) if region is not None else None,
        "output_shape": list(ref.shape),
        "flop_per_tile": flop,
        "torch": {"seconds_per_tile": round(t_torch, 4),
                  "gflop_per_s": round(flop / t_torch / 1e9, 2)},
    }  # fmt: skip
    # the torch path before the stride-2 "same" convolutions lost their full pad
    folded = prepare_model(fold_batchnorms(model), torch.device("cpu"))

    def run_folded():
        with torch.inference_mode():
            return dense_forward(folded, x, region=region).numpy()

    t_folded, y_folded = _median_seconds(run_folded, args.repeats)
    out["torch_padded_same"] = {
        "seconds_per_tile": round(t_folded, 4),
        "torch_speedup_over_it": round(t_folded / t_torch, 3),
        "max_abs_dev": float(np.abs(y_folded - ref).max()),
    }
    print(json.dumps({"tile_px": tile_px, "torch": out["torch"]}), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    exported = _whole_dffn(model) if args.whole_dffn else model
    with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines
        graph = export_onnx(exported, grid.tile_px, region=region, exporter=args.exporter)
    out["seconds_export"] = round(time.perf_counter() - t0, 2)
    out["graph_mb"] = round(len(graph) / 2**20, 2)

    def timed(key: str, make, run) -> None:
        """Time ``run(made)`` after ``made = make()`` (a session or a compiled model)."""
        t0 = time.perf_counter()
        made = make()
        t_make = time.perf_counter() - t0
        t_run, y = _median_seconds(lambda: run(made), args.repeats)
        if y.shape != ref.shape:
            raise RuntimeError(f"{key} gave {y.shape}, torch {ref.shape}")
        dev = float(np.abs(y - ref).max())
        out[key] = {
            "seconds_per_tile": round(t_run, 4),
            "gflop_per_s": round(flop / t_run / 1e9, 2),
            "speedup_over_torch": round(t_torch / t_run, 3),
            "seconds_session": round(t_make, 2),
            "max_abs_dev": dev,
            "max_abs_dev_over_std": dev / std if std > 0 else None,
        }
        print(json.dumps({"tile_px": tile_px, key: out[key]}), file=sys.stderr, flush=True)

    def nchw() -> np.ndarray:  # what the runtimes take; making it is part of each call
        return np.ascontiguousarray(x.numpy())

    for level in args.levels:
        timed(
            f"ort_{level}",
            lambda level=level: ort_session(graph, threads=args.threads, level=level),
            lambda sess: sess.run(None, {sess.get_inputs()[0].name: nchw()})[0],
        )
    if args.openvino:
        timed(
            "openvino",
            lambda: openvino_model(graph, threads=args.threads).create_infer_request(),
            lambda req: req.infer({0: nchw()}, share_outputs=False)[0],
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile-px", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--levels", default="extended,all", help=f"comma list of {GRAPH_LEVELS}")
    p.add_argument("--exporter", default="dynamo", choices=EXPORTERS)
    p.add_argument("--no-openvino", dest="openvino", action="store_false", help="skip OpenVINO")
    p.add_argument(
        "--whole-dffn", action="store_true",
        help="export the DFFN blocks as one pass each (default: in strips of rows, as torch runs)",
    )  # fmt: skip
    p.add_argument("--model", default="pixnet_lite0", help="dense model (test_pixnet: checks)")
    p.add_argument("--n-genes", type=int, default=250)
    args = p.parse_args()
    args.levels = [v.strip() for v in args.levels.split(",") if v.strip()]
    if bad := [v for v in args.levels if v not in GRAPH_LEVELS]:
        p.error(f"unknown level(s) {bad}; choose from {GRAPH_LEVELS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    speed = bench_infer_speed
    import onnxruntime

    try:
        import openvino
    except ImportError:
        openvino = None
    if args.openvino and openvino is None:
        print("openvino is not installed: its column is skipped", file=sys.stderr)
        args.openvino = False

    model = create_model(args.model, n_genes=args.n_genes).eval()
    out: dict = {
        "benchmark": "onnx_runtime_tile",
        "model": f"{args.model} ({args.n_genes} genes, stride {model.stride}, untrained)",
        "threads": args.threads,
        "repeats": args.repeats,
        "exporter": args.exporter,
        "ort_dffn": "whole" if args.whole_dffn else "strips",
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "openvino_version": openvino.__version__ if args.openvino else None,
        "receptive_field_px": int(model.receptive_field_px),
        "matmul_gflop_per_s": round(speed.matmul_gflops(), 2),
    }
    out["tiles"] = [bench_tile(args, model, t, speed) for t in args.tile_px]
    for tile in out["tiles"]:
        keys = ("torch", *(f"ort_{lv}" for lv in args.levels), *(("openvino",) * args.openvino))
        for key in keys:
            tile[key]["over_matmul"] = round(
                tile[key]["gflop_per_s"] / out["matmul_gflop_per_s"], 4
            )
    out["peak_rss_mb"] = speed.peak_rss_mb()
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
