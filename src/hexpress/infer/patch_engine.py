"""Single-patch baselines through the same units: one crop per unit, batched.

Each unit gets a square crop of ``patch_um`` µm centred on it, read from the slide resampled to the
checkpoint's ``model_mpp`` (and resized to the model's ``input_px`` when the checkpoint has one),
so dense and patch models are compared on identical units (:mod:`hexpress.infer.units`).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hexpress._device import autocast, autocast_dtype, pin, prepare_model, resolve_device, to_device
from hexpress.errors import CheckpointError
from hexpress.infer.engine import ModelInfo
from hexpress.infer.units import Units
from hexpress.io.image import SlideImage
from hexpress.models.fuse import torch_inference_copy
from hexpress.models.tta import tta_predict

__all__ = ["predict_patches", "patch_forward"]

log = logging.getLogger(__name__)


def patch_forward(model: torch.nn.Module, x: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """``(B, 3, h, w)`` in [0, 1] -> ``(B, G)`` float32; mean over 8 flips/rotations with ``tta``.

    The transforms are those of :func:`hexpress.models.tta.tta_predict`.
    """
    return tta_predict(model, x, n=8 if tta else 1)


def predict_patches(
    slide: SlideImage,
    info: ModelInfo,
    units: Units,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    precision: str = "auto",
    tta: bool = False,
    progress: bool = True,
) -> ad.AnnData:
    """Predict every unit from one crop centred on it.

    Args:
        slide: the slide.
        info: a patch model (``info.kind == "patch"``) with ``patch_um``.
        units: units in level-0 px of ``slide``.
        batch_size: crops per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda:0"``...
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (half precisions on GPUs).
        tta: average over the 8 flips/rotations.
        progress: progress bar over batches.

    Returns:
        AnnData like :func:`hexpress.infer.aggregate_units`: ``X`` (n, genes) predictions in the
        normalised space of training, ``obsm["spatial"]``, ``obs``, ``uns["hexpress"]``.
    """
    if info.patch_um is None or not float(info.patch_um) > 0:
        raise CheckpointError(
            "this checkpoint has no patch_um: it is not a patch model, or its metadata is "
            "incomplete; predict with a dense model or retrain the baseline."
        )
    device = resolve_device(device)
    model = prepare_model(torch_inference_copy(info.model), device)
    dtype = autocast_dtype(device, precision)
    side = max(1, round(float(info.patch_um) / info.model_mpp))
    centers = units.centers_model_px(slide.mpp, info.model_mpp)
    corners = np.floor(centers - side / 2).astype(np.int64)
    n = len(units)
    out = np.zeros((n, len(info.genes)), dtype=np.float32)
    starts = list(range(0, n, batch_size))

    def load(a: int) -> np.ndarray:
        b = min(n, a + batch_size)
        crops = [
            slide.read_region(int(x), int(y), side, side, mpp=info.model_mpp, units="target")
            for x, y in corners[a:b]
        ]
        return pin(torch.from_numpy(np.stack(crops)), device)

    bar = tqdm(total=math.ceil(n / batch_size), desc="patches", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        pending = pool.submit(load, starts[0]) if starts else None
        for i, a in enumerate(starts):
            crops = pending.result()
            pending = pool.submit(load, starts[i + 1]) if i + 1 < len(starts) else None
            x = to_device(crops, device).permute(0, 3, 1, 2).float().div_(255.0)
            if info.input_px and int(info.input_px) != side:
                size = (int(info.input_px), int(info.input_px))
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
            with autocast(device, dtype):
                y = patch_forward(model, x, tta=tta)
            out[a : a + len(crops)] = y.cpu().numpy()
            bar.update(1)
    bar.close()
    uns = {
        "genes": list(info.genes),
        "normalization": info.normalization,
        "values": "X holds predictions in the normalised space of training "
        "(uns['hexpress']['normalization']).",
        "mode": "patch",
        "model": {"name": info.identity["model_name"], "kwargs": info.identity["model_kwargs"]},
        "checkpoint": {"path": info.identity["path"], "sha256": info.identity["sha256"]},
        "model_mpp": info.model_mpp,
        "patch_um": float(info.patch_um),
        "mpp": float(slide.mpp),
        "image_path": str(slide.path) if slide.path is not None else "",
        "image_size": [int(slide.width), int(slide.height)],
        "geometry_name": units.name,
        "predicted": True,
    }
    return units.to_anndata(out, genes=list(info.genes), uns=uns)
