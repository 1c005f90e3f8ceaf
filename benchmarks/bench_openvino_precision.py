"""OpenVINO's bfloat16 against float32 on one tile of a trained dense model, on this CPU.

OpenVINO's CPU plugin runs in bfloat16 by default on CPUs that have it; ``hexpress predict
--runtime openvino`` asks for float32. This script measures what that choice costs and saves:
it exports ``--checkpoint`` for one ``--tile-px`` tile with the exact margin
(:func:`hexpress.infer.onnx_export.export_onnx`), reads that tile from the top-left corner of
``--slide`` at the model's ``model_mpp``, and runs it once per precision hint (after a warm-up
call), reporting the seconds and the deviation of the bfloat16 map from the float32 one: the
largest absolute difference over the map's standard deviation, the same per channel over that
channel's standard deviation (median and worst), and the lowest per-channel PCC between them.

Usage: ``python benchmarks/bench_openvino_precision.py --checkpoint RUN/model --slide IMAGE
[--tile-px 1440] [--threads 2]`` (the ``openvino`` extra). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from hexpress.infer import make_tile_grid
from hexpress.infer.engine import core_region
from hexpress.infer.onnx_export import export_onnx
from hexpress.infer.pipeline import load_model_info
from hexpress.io import open_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--slide", required=True)
    p.add_argument("--tile-px", type=int, default=1440)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = p.parse_args()
    import openvino as ov

    torch.set_num_threads(args.threads)
    info = load_model_info(args.checkpoint)
    grid = make_tile_grid(
        (args.tile_px, args.tile_px), stride=info.stride,
        receptive_field_px=info.margin_px("exact"), tile_px=args.tile_px, align_px=info.align_px,
    )  # fmt: skip
    region = core_region(info.model, grid)
    slide = open_image(args.slide)
    px = slide.read_region(0, 0, grid.tile_px, grid.tile_px, mpp=info.model_mpp, units="target")
    x = np.ascontiguousarray(px[None].transpose(0, 3, 1, 2), dtype=np.float32) / 255
    core = ov.Core()
    graph = core.read_model(export_onnx(info.model, grid.tile_px, region=region))
    out: dict = {
        "benchmark": "openvino_precision",
        "openvino_version": ov.__version__,
        "checkpoint": str(args.checkpoint),
        "mode": info.mode,
        "tile_px": grid.tile_px,
        "margin_px": grid.margin_px,
        "threads": args.threads,
    }
    maps = {}
    for hint in ("f32", "bf16"):
        compiled = core.compile_model(
            graph, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                           "INFERENCE_NUM_THREADS": args.threads},
        )  # fmt: skip
        req = compiled.create_infer_request()
        req.infer({0: x})
        t0 = time.perf_counter()
        maps[hint] = req.infer({0: x}, share_outputs=False)[0][0]
        out[f"seconds_{hint}"] = round(time.perf_counter() - t0, 4)
    a, b = maps["f32"].astype(np.float64), maps["bf16"].astype(np.float64)
    per = np.abs(a - b).max(axis=(1, 2)) / a.std(axis=(1, 2))
    pcc = [np.corrcoef(a[c].ravel(), b[c].ravel())[0, 1] for c in range(len(a))]
    out.update(
        channels=len(a),
        map_cells=list(a.shape[1:]),
        bf16_speedup=round(out["seconds_f32"] / out["seconds_bf16"], 2),
        max_dev_over_std=round(float(np.abs(a - b).max() / a.std()), 4),
        channel_max_dev_over_std_median=round(float(np.median(per)), 4),
        channel_max_dev_over_std_worst=round(float(per.max()), 4),
        channel_pcc_lowest=round(float(np.min(pcc)), 6),
        channel_pcc_median=round(float(np.median(pcc)), 6),
    )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
