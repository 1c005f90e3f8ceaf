"""Where tensors run: device choice, mixed precision and host-to-device copies.

One home for what training and inference both need:

* :func:`resolve_device`: ``"auto"`` picks CUDA (this process's GPU under ``torchrun``), then
  Apple MPS, then the CPU; an explicit device that is not there is a clear error.
* :func:`autocast_dtype` / :func:`autocast`: mixed precision on accelerators (bfloat16 where
  the GPU supports it, else float16); the CPU runs float32, so CPU results do not change.
* :func:`to_device` / :func:`pin`: page-locked host buffers and non-blocking copies on CUDA,
  plain copies elsewhere.
* :func:`loader_kwargs`: the ``DataLoader`` settings that go with a device.
* :class:`MixedPrecision`: a training step under autocast, with loss scaling for float16.
"""

from __future__ import annotations

import contextlib
import os

import torch

from hexpress.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "resolve_device",
    "autocast_dtype",
    "autocast",
    "pin",
    "to_device",
    "loader_kwargs",
    "place_model",
    "prepare_model",
    "MixedPrecision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bfloat16 on a CUDA GPU that supports it, float16 on other GPUs, float32 on CPU."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(
    device: str | torch.device | None = "auto", local_rank: int | None = None
) -> torch.device:
    """The device to run on.

    Args:
        device: ``"auto"`` / ``None`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"`` or a ``torch.device``.
        local_rank: this process's GPU on its node for a bare ``"cuda"`` (default: the
            ``LOCAL_RANK`` that ``torchrun`` sets, else 0).

    Raises:
        ConfigError: a CUDA or MPS device is asked for and is not available.
    """
    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} was asked for but no CUDA GPU is available; use 'cpu' or 'auto'."
            )
        n = torch.cuda.device_count()
        if dev.index is None:
            rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
            return torch.device("cuda", int(rank) % n)
        if dev.index >= n:
            raise ConfigError(f"device {name!r} does not exist: this machine has {n} CUDA GPU(s).")
        return dev
    if dev.type == "mps" and not _mps_available():
        raise ConfigError("device 'mps' was asked for but MPS is not available; use 'cpu'.")
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain float32.

    Raises:
        ConfigError: an unknown precision, or a half precision asked for on the CPU.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32":
        return None
    if device.type == "cpu":
        if precision == "auto":
            return None
        raise ConfigError(
            f"precision {precision!r} needs a GPU; on the CPU use 'fp32' or 'auto' (float32)."
        )
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pin(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` in page-locked host memory when it is bound for a CUDA device (else ``t``)."""
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        return t.pin_memory()
    return t


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy ``t`` to ``device``: from pinned memory and without blocking on CUDA."""
    if t.device == device:
        return t
    if device.type == "cuda":
        return pin(t, device).to(device, non_blocking=True)
    return t.to(device)


def loader_kwargs(device: torch.device, num_workers: int = 0) -> dict:
    """``DataLoader`` keyword arguments for ``device``: pinned batches on CUDA, and with
    workers, a prefetch of two batches each kept alive between epochs."""
    kw: dict = {"pin_memory": device.type == "cuda", "num_workers": int(num_workers)}
    if num_workers > 0:
        kw.update(prefetch_factor=2, persistent_workers=True)
    return kw


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move ``model`` to ``device`` with its 4-d weights in channels-last memory format.

    oneDNN on CPUs and tensor-core GPUs run convolutions faster in that layout, forward and
    backward (on 2 CPU cores a training step of the HER2ST Lite0 patch recipe takes 0.71 times
    as long, of its PixNet recipe 0.85 times: benchmarks/bench_train_recipe.py); the values are
    the same up to float rounding. The parameters stay the same objects, so an optimiser built
    over them before still holds them.
    """
    return model.to(device=device, memory_format=torch.channels_last)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """:func:`place_model` in eval mode: how inference runs a model."""
    return place_model(model, device).eval()


class MixedPrecision:
    """Training under autocast: the forward pass in ``precision``, the loss and its
    aggregation in float32, a gradient scaler for float16 (bfloat16 needs none).

    ``precision="auto"`` trains in bfloat16 on GPUs that support it and in float32 elsewhere
    (float16 training is only used when asked for, since it needs loss scaling).
    """

    def __init__(self, device: torch.device, precision: str = "auto") -> None:
        self.device = device
        dtype = autocast_dtype(device, precision)
        if precision == "auto" and dtype == torch.float16:
            dtype = None
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def forward(self, model, *args, **kwargs) -> torch.Tensor:
        """``model(*args, **kwargs)`` under autocast, returned as float32."""
        with autocast(self.device, self.dtype):
            y = model(*args, **kwargs)
        return y.float()

    def wrap(self, model):
        """``model`` itself in float32; else a callable running :meth:`forward` with it, whose
        ``.module`` is the model inside (as a ``DistributedDataParallel`` wrapper exposes it)."""
        return model if self.dtype is None else _AutocastCall(self, model)

    def step(self, loss: torch.Tensor, optimizer, params, grad_clip: float = 0.0) -> None:
        """Backward, optional gradient-norm clipping, optimiser step (scaled for float16)."""
        if self.scaler is None:
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()


class _AutocastCall:
    """``net(*args)`` under a :class:`MixedPrecision`'s autocast (see :meth:`MixedPrecision.wrap`)."""

    def __init__(self, amp: MixedPrecision, net) -> None:
        self._amp, self._net = amp, net
        self.module = getattr(net, "module", net)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self._amp.forward(self._net, *args, **kwargs)
