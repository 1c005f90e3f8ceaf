"""Peak memory of dense prediction against the tile side, one fresh process per tile side.

Each tile side ``T`` runs in its own subprocess (so peaks do not mix) that builds the dense
model (PixNet-Lite0, 250 genes, packaged encoder weights, untrained decoder: memory does not
depend on the weights) and predicts, with :func:`hexpress.infer.predict_slide` itself, a
synthetic all-tissue slide one core high and ``--tiles`` cores wide at ``model_mpp``: the real
engine (batch norms folded, channels-last, inference mode, one tile at a time through the net,
the decoder on the core only, the next batch read and the previous one written in background
threads, the float16 map written to a zarr store). The slide's pixels are made on the fly in
bands of rows (the texture of ``bench_infer_memory.py``), so they add nothing to the peak.

Reported per tile side: ``peak_rss_mb`` (``VmHWM`` of the process at the end),
``rss_mb_before_tiles`` / ``peak_rss_mb_before_tiles`` (``VmRSS`` / ``VmHWM`` once the model is
built and its receptive field measured, right before the prediction), and seconds (taken under
whatever else runs on the machine: labelled ``_under_load``). ``kept_over_computed_px`` is the
core's area over the tile's. The margins (``exact``: the receptive field; ``effective``: the
model's measured effective margin; or px) are measured once in the parent process, whose own
peak while measuring them is ``peak_rss_mb_measuring_margin``.

``--trace`` adds, per tile side, the modules after which the process's resident memory was
highest (forward hooks reading ``VmRSS``; repeated modules such as strips count once, at their
highest), to show which layers hold the peak.

Usage: ``python benchmarks/bench_tile_memory.py [--sizes 2560,3072,3584,4096,4608]
[--margin effective|exact|PX] [--tiles 2] [--batch-size 2] [--model pixnet_lite0]
[--genes 250] [--threads 2] [--trace]``. Prints one JSON object on stdout; each tile side's
result is also printed to stderr as soon as it is done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_infer_memory  # sibling scripts: run as a script, its folder is on sys.path
import bench_infer_speed
import numpy as np

MODEL_MPP = 0.5
BAND_ROWS = 128


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return round(kb / 1024, 1)


def _synthetic_slide(height: int, width: int):
    """A lazy all-tissue slide at ``MODEL_MPP`` whose pixels are made when read."""
    from hexpress.io.image import SlideImage

    texture = bench_infer_memory._texture
    side = 8 * max(height, width)  # the texture's ellipse much larger than the slide: all tissue

    class _Slide(SlideImage):
        level_downsamples = (1.0,)

        def __init__(self) -> None:
            self.height, self.width, self.mpp, self.path = height, width, MODEL_MPP, None

        def _read_level(self, level, x0, y0, x1, y1):
            out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
            for a in range(y0, y1, BAND_ROWS):  # bands, so the texture's temporaries stay small
                b = min(y1, a + BAND_ROWS)
                out[a - y0 : b - y0] = texture(a + side // 2, x0 + side // 2, b - a, x1 - x0,
                                               side, 1)  # fmt: skip
            return out

    return _Slide()


def _model(name: str, genes: int):
    import torch

    from hexpress.infer import ModelInfo
    from hexpress.models import create_model

    torch.manual_seed(0)
    model = create_model(name, n_genes=genes).eval()
    info = ModelInfo(model, {"model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(genes)]})
    return model, info


def _trace_hooks(model, seen: dict[str, float]) -> dict[str, float]:
    """Forward hooks writing into ``seen`` the highest ``VmRSS`` (MB) after each leaf module."""
    for name, mod in model.named_modules():
        if next(mod.children(), None) is not None:
            continue

        def hook(_m, _i, _o, name=name):
            seen[name] = max(seen.get(name, 0.0), _rss_mb())

        mod.register_forward_hook(hook)
    return seen


def child(args) -> dict:
    """One tile side in this process: predict ``args.tiles`` tiles, report memory and time."""
    import torch

    from hexpress.infer import TissueMask, make_tile_grid, predict_slide

    torch.set_num_threads(args.threads)
    model, info = _model(args.model, args.genes)
    margin = int(args.margin)
    grid = make_tile_grid(
        (1, 1), stride=info.stride, receptive_field_px=margin, tile_px=args.tile_px,
        align_px=info.align_px,
    )  # fmt: skip
    core_px = grid.core_cells * info.stride
    slide = _synthetic_slide(core_px, args.tiles * core_px)
    seen: dict[str, float] = {}
    if args.trace:
        import hexpress.infer.engine as engine

        copy_for_torch = engine.torch_inference_copy

        def traced_copy(m):  # hooks on the inference copy that predict_tiles runs
            folded = copy_for_torch(m)
            _trace_hooks(folded, seen)
            return folded

        engine.torch_inference_copy = traced_copy
    rss0, hwm0 = _rss_mb(), _peak_rss_mb()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hexpress_tilemem_") as tmp:
        t0 = time.perf_counter()
        dm = predict_slide(
            slide, info, Path(tmp) / "map.zarr", tile_px=args.tile_px, margin=margin,
            batch_size=args.batch_size, tissue=TissueMask.full(slide), progress=False,
            resume=False, timings=timings,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        tiles_run = int(dm.attrs["n_tiles_run"])
    out = {
        "tile_px": grid.tile_px,
        "margin_px": grid.margin_px,
        "core_px": core_px,
        "tiles_run": tiles_run,
        "kept_over_computed_px": round(core_px**2 / grid.tile_px**2, 4),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_mb_before_tiles": rss0,
        "peak_rss_mb_before_tiles": hwm0,
        "seconds_map_under_load": round(seconds, 2),
        "seconds_net_per_tile_under_load": round(timings.get("net", 0.0) / max(tiles_run, 1), 2),
    }
    if args.trace:
        top = sorted(seen.items(), key=lambda kv: -kv[1])[:10]
        out["rss_mb_after_module_top"] = dict(top)
    return out


def _peak_rss_mb() -> float:
    return bench_infer_speed.peak_rss_mb()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2560,3072,3584,4096,4608", help="tile sides, px")
    p.add_argument("--margin", default="effective", help="exact, effective or px")
    p.add_argument("--tiles", type=int, default=2, help="tiles predicted per tile side")
    p.add_argument("--batch-size", type=int, default=2, help="tiles per batch (the CLI's: 2)")
    p.add_argument("--model", default="pixnet_lite0")
    p.add_argument("--genes", type=int, default=250)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--trace", action="store_true", help="the modules holding the peak")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tile-px", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    torch.set_num_threads(args.threads)
    _, info = _model(args.model, args.genes)
    margins = {"exact": info.margin_px("exact"), "chosen": info.margin_px(args.margin)}
    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--child", "--tile-px", str(size), "--margin",
               str(margins["chosen"]), "--tiles", str(args.tiles), "--batch-size",
               str(args.batch_size), "--model", args.model, "--genes", str(args.genes),
               "--threads", str(args.threads)] + (["--trace"] if args.trace else [])  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"tile side {size} failed:\n{proc.stderr[-3000:]}")
        results[str(size)] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps({str(size): results[str(size)]}), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "tile_memory",
                "model": f"{args.model} ({args.genes} genes, untrained decoder)",
                "margin": args.margin,
                "margin_px": margins["chosen"],
                "receptive_field_px": margins["exact"],
                "peak_rss_mb_measuring_margin": _peak_rss_mb(),
                "tiles_per_side": args.tiles,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
