"""One check of a machine with a GPU (about 2 minutes on one): train, predict, compare with the CPU.

1. ``train``: a simulated slide (``hexpress simulate``, 0.6 mm, legacy ST layout), then 50
   optimiser steps of PixNet-Lite0 (256 px crops, batch 8) on the GPU under autocast
   (``run.precision``), timed: steps and samples per second.
2. ``predict``: a 4 mm x 4 mm synthetic H&E slide at 0.5 µm/px (8000 x 8000 px, the JPEG-tiled
   TIFF of ``bench_infer_memory.py``) through :func:`hexpress.infer.predict_slide` with
   PixNet-Lite0 and 250 genes on the GPU, timed: input Mpx per second.
3. ``agreement``: the same model on a 2048 x 2048 px part of that slide on the GPU (autocast and
   float32) and on the CPU (float32): the largest absolute difference of the maps, over the CPU
   map's standard deviation, must stay under ``--tol-bf16`` / ``--tol-fp32``.

Without a GPU it runs the CPU parts, small (a tiny PixNet, 5 steps, a 0.5 mm slide), and says
that the GPU parts were skipped. Prints one JSON object; exits 1 when a check fails.

Usage: ``benchmarks/device_check.sh [--out DIR]`` (or ``python benchmarks/device_check.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL_MPP = 0.5


def _write_slide(path: Path, side: int) -> Path:
    import bench_infer_memory  # the sibling script: run as a script, its folder is on sys.path

    return bench_infer_memory.write_slide(path, side)


def check_train(work: Path, device: str, gpu: bool) -> dict:
    from hexpress.train import load_config, train

    sim = work / "sim"
    cmd = [sys.executable, "-m", "hexpress", "simulate", "--out", str(sim), "--size-mm", "0.6",
           "--n-genes", "20", "--formats", "legacy_st"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    steps, batch, crop = (50, 8, 256) if gpu else (5, 2, 64)
    model = "pixnet_lite0" if gpu else "test_pixnet"
    cfg = load_config(
        REPO / "configs" / "tiny_smoke.yaml",
        [
            f"data.root={sim / 'legacy_st'}", "data.train=[SIM1]", f"data.crop_px={crop}",
            f"model.name={model}", f"optim.batch_size={batch}", f"optim.max_steps={steps}",
            f"run.out_dir={work / 'run'}", f"run.device={device}", "run.progress=false",
            "run.tensorboard=false", f"run.ckpt_every={steps}", f"run.log_every={steps}",
        ],
    )  # fmt: skip
    t0 = time.perf_counter()
    res = train(cfg)
    dt = time.perf_counter() - t0
    return {
        "model": model,
        "device": device,
        "precision": cfg.run.precision,
        "steps": res.steps,
        "batch_size": batch,
        "crop_px": crop,
        "seconds": round(dt, 2),
        "steps_per_second": round(res.steps / dt, 2),
        "samples_per_second": round(res.steps * batch / dt, 2),
    }


def _info(name: str, n_genes: int):
    from hexpress.infer import ModelInfo
    from hexpress.models import create_model

    torch.manual_seed(0)
    model = create_model(name, n_genes=n_genes).eval()
    return ModelInfo(model, {"model_mpp": MODEL_MPP, "genes": [f"g{i}" for i in range(n_genes)]})


def _map(slide, info, path: Path, device: str, precision: str) -> tuple[np.ndarray, float]:
    from hexpress.infer import TissueMask, predict_slide

    t0 = time.perf_counter()
    dm = predict_slide(
        slide, info, path, device=device, precision=precision, tissue=TissueMask.full(slide),
        progress=False, resume=False,
    )  # fmt: skip
    if device != "cpu":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    vals, _ = dm.read(0, dm.shape[0], 0, dm.shape[1])
    return vals, dt


def check_predict(work: Path, gpu: bool, args) -> dict:
    from hexpress.io import ArrayImage, open_image

    side = int(args.slide_mm * 1000 / MODEL_MPP) if gpu else 1000
    name, n_genes = ("pixnet_lite0", 250) if gpu else ("test_pixnet", 16)
    info = _info(name, n_genes)
    slide = open_image(_write_slide(work / "slide.tif", side))
    out: dict = {"model": f"{name} ({n_genes} genes)", "slide_px": side}
    _, dt = _map(slide, info, work / "cpu_or_gpu.zarr", "cuda" if gpu else "cpu", "auto")
    out.update(device="cuda" if gpu else "cpu", seconds=round(dt, 2),
               input_mpx_per_second=round(side * side / 1e6 / dt, 2))  # fmt: skip
    if not gpu:
        return out
    part = min(side, args.compare_px)
    sub = ArrayImage(slide.read_region(0, 0, part, part, mpp=MODEL_MPP, units="target"), MODEL_MPP)
    ref, t_cpu = _map(sub, info, work / "ref_cpu.zarr", "cpu", "fp32")
    std = float(np.nanstd(ref))
    agree = {"compare_px": part, "seconds_cpu": round(t_cpu, 2), "cpu_map_std": round(std, 4)}
    for precision, tol in (("auto", args.tol_bf16), ("fp32", args.tol_fp32)):
        got, t_gpu = _map(sub, info, work / f"gpu_{precision}.zarr", "cuda", precision)
        dev = float(np.nanmax(np.abs(got - ref)))
        agree[precision] = {
            "seconds_gpu": round(t_gpu, 2),
            "largest_deviation": round(dev, 5),
            "over_cpu_std": round(dev / std, 5),
            "tolerance": tol,
            "ok": bool(dev / std <= tol),
        }
    out["agreement"] = agree
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--slide-mm", type=float, default=4.0)
    p.add_argument("--compare-px", type=int, default=2048)
    p.add_argument("--tol-bf16", type=float, default=0.1, help="largest deviation / CPU std")
    # cuDNN convolutions use TF32 by default (10-bit mantissa), so fp32 is not bit-equal either
    p.add_argument("--tol-fp32", type=float, default=0.02, help="largest deviation / CPU std")
    p.add_argument("--cpu-only", action="store_true", help="skip the GPU even if there is one")
    args = p.parse_args()
    gpu = torch.cuda.is_available() and not args.cpu_only
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hexpress_device_"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {
        "check": "device",
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    if not gpu:
        out["gpu_parts"] = (
            "SKIPPED: no CUDA GPU here (or --cpu-only); only the small CPU parts ran. "
            "Run this on a machine with a GPU for training, prediction and CPU/GPU agreement."
        )
        print(out["gpu_parts"], file=sys.stderr)
    t0 = time.perf_counter()
    out["train"] = check_train(work, "cuda" if gpu else "cpu", gpu)
    print(json.dumps({"train": out["train"]}), file=sys.stderr, flush=True)
    out["predict"] = check_predict(work, gpu, args)
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    agree = out["predict"].get("agreement", {})
    out["ok"] = all(v["ok"] for v in agree.values() if isinstance(v, dict))
    print(json.dumps(out, indent=1))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
