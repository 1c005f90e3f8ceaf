"""Forward cost of a patch baseline alone: plain, batch norms folded, channels-last, as the patch
engine runs it (folded, unpadded stride-2 "same" convolutions, channels-last), and plain
beside a busy Python thread; with the machine's float32 matmul rate for scale.

Weights are untrained (speed does not depend on them). Usage::

    python benchmarks/bench_patch_forward.py [--model lite0_patch] [--batch 32] [--repeats 5]
        [--threads 2]

Prints one JSON object: milliseconds per crop for each case.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import torch

from hexpress._device import prepare_model
from hexpress.models import create_model
from hexpress.models.fuse import fold_batchnorms, torch_inference_copy


def _ms_per_crop(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return round((time.perf_counter() - t) / repeats / x.shape[0] * 1000, 2)


def _matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round(2 * n**3 * repeats / (time.perf_counter() - t) / 1e9, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lite0_patch")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    def fresh() -> torch.nn.Module:
        return create_model(args.model, n_genes=250, pretrained=False).eval()

    side = int(fresh().input_px)
    x = torch.rand(args.batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    out = {"model": args.model, "batch": args.batch, "input_px": side,
           "threads": torch.get_num_threads(), "matmul_gflops": _matmul_gflops()}  # fmt: skip
    plain = fresh()
    out["plain_ms"] = _ms_per_crop(plain, x, args.repeats)
    out["folded_ms"] = _ms_per_crop(fold_batchnorms(fresh()).eval(), x, args.repeats)
    cl = fresh().to(memory_format=torch.channels_last)
    out["channels_last_ms"] = _ms_per_crop(cl, x.to(memory_format=torch.channels_last),
                                           args.repeats)  # fmt: skip
    folded_cl = prepare_model(fold_batchnorms(fresh()), torch.device("cpu"))
    out["folded_channels_last_ms"] = _ms_per_crop(
        folded_cl, x.to(memory_format=torch.channels_last), args.repeats
    )
    # as the patch engine runs it: folded, stride-2 "same" convolutions unpadded, channels-last
    engine = prepare_model(torch_inference_copy(fresh()), torch.device("cpu"))
    out["engine_ms"] = _ms_per_crop(engine, x.to(memory_format=torch.channels_last), args.repeats)
    stop = threading.Event()

    def busy() -> None:
        a = np.random.default_rng(0).random(200_000)
        while not stop.is_set():
            np.sort(a)

    th = threading.Thread(target=busy)
    th.start()
    try:
        out["plain_beside_busy_thread_ms"] = _ms_per_crop(plain, x, args.repeats)
    finally:
        stop.set()
        th.join()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
