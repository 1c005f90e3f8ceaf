"""Multi-process data-parallel training under ``torchrun`` (DDP).

``torchrun --nproc_per_node N -m hexpress.cli train CONFIG`` starts N processes with
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set; :func:`init_distributed` then joins the process group
(``gloo`` on CPU, ``nccl`` on CUDA). Each rank trains on its own deterministic share of the crops
(see :mod:`hexpress.train.data`), DDP averages the gradients, and only rank 0 logs, validates and
writes checkpoints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hexpress._device import resolve_device  # re-exported: the trainer imports it from here

__all__ = ["DistInfo", "init_distributed", "barrier", "cleanup", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    log.info("process %d of %d (%s)", rank, world, backend)
    return DistInfo(rank, world, local, backend)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
