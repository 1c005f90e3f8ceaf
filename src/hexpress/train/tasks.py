"""Training tasks: what differs between model kinds, behind the one interface the trainer drives.

* :class:`DenseTask`: dense models (PixNet) learn from crops holding several units of every
  geometry; in a ``frozen`` phase the decoder learns from the frozen encoder's pyramid, read from
  the feature cache (:mod:`hexpress.train.feature_cache`) or computed on each crop with its
  receptive-field context (``run.feature_cache: null``); both give the same numbers.
* :class:`PatchTask`: patch models learn from spot-centred patches of the first geometry; in a
  ``frozen`` phase only their head learns.
* :class:`ClosedFormTask`: frozen encoder + PCA + ridge, or the training mean, fitted in one pass
  over the training patches.

:func:`make_task` picks the task from the model's declared ``kind`` and ``closed_form``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from hexpress.errors import ConfigError
from hexpress.train.config import TrainConfig
from hexpress.train.data import (
    DenseBatch,
    DenseCropDataset,
    PatchBatch,
    PatchDataset,
    TrainingData,
    all_train_patches,
    dense_val_batches,
    patch_val_batches,
)

__all__ = [
    "TrainingTask",
    "DenseTask",
    "PatchTask",
    "ClosedFormTask",
    "make_task",
    "FROZEN",
    "FINETUNE",
    "CACHE_DTYPE",
]

log = logging.getLogger(__name__)

FROZEN = "frozen"
FINETUNE = "finetune"
CACHE_DTYPE = "float16"


class _Decoder(nn.Module):
    """A dense model's decoder and head as a module of their own (what a frozen phase trains
    and wraps for data-parallel training)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: list[torch.Tensor], size_px: tuple[int, int]) -> torch.Tensor:
        return self.model.decode(feats, size_px)


class _PatchHead(nn.Module):
    """A patch model's head on pooled encoder features (a frozen phase from the cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.drop(feats))


class TrainingTask:
    """One model kind's data, loss and validation.

    Args:
        cfg: the resolved config.
        data: the training data.
        model: the model (on ``device``).
        device: where it trains.
        rank, world_size: this process and the number of processes.
        is_main: whether this process writes (builds caches, shows progress).
        barrier: waits for every process.

    Attributes:
        model_mpp: µm per input pixel of the model.
        val_names: names of the geometries validation reports.
    """

    closed_form = False
    model_mpp: float
    val_names: list[str]

    def __init__(self, cfg: TrainConfig, data: TrainingData, model: nn.Module, *,
                 device: torch.device, rank: int = 0, world_size: int = 1, is_main: bool = True,
                 barrier: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.cfg, self.data, self.model, self.device = cfg, data, model, device
        self.rank, self.world_size, self.is_main, self.barrier = rank, world_size, is_main, barrier
        self.scale = float(cfg.data.norm_scale)
        self.mode = getattr(model, "mode", "field")

    # -- training -----------------------------------------------------------------------------
    def dataset(self, phase: str):
        """The step-indexed dataset of ``phase``."""
        raise NotImplementedError

    def network(self, phase: str) -> nn.Module:
        """The module a training step calls in ``phase`` (wrapped for data-parallel runs)."""
        return self.model

    def enter(self, phase: str) -> None:
        """Set what learns and the train/eval modes for ``phase``."""
        frozen = phase == FROZEN
        encoder = getattr(self.model, "encoder", None)
        if frozen and encoder is None:
            raise ConfigError(
                f"model {self.cfg.model.name!r} has no encoder to freeze; drop the frozen phase "
                "from optim.phases."
            )
        self.model.train()
        if encoder is not None:
            encoder.requires_grad_(not frozen)
            if frozen:
                encoder.eval()  # frozen: batch norm statistics never move

    def loss(self, net: nn.Module, batch) -> tuple[torch.Tensor, list]:
        """``(loss, [(prediction, target) per geometry])`` of one batch."""
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------------
    def val_batches(self) -> Iterator:
        """Fixed validation batches: validation slides, then held-out blocks of training ones."""
        raise NotImplementedError

    def val_predictions(self, batch) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per validation geometry, ``(prediction, target)`` of a batch (``None``: no unit)."""
        raise NotImplementedError

    def _val_sources(self):
        return [(s, all_units) for s, all_units in [(self.data.val, True), (self.data.train, False)]
                if s]  # fmt: skip


class DenseTask(TrainingTask):
    """Dense models: crops of ``data.crop_px`` at ``data.model_mpp`` with every geometry's units."""

    def __init__(self, cfg, data, model, **kw) -> None:
        super().__init__(cfg, data, model, **kw)
        if len(cfg.data.geometries) < 1:
            raise ConfigError("data.geometries is empty.")
        self.model_mpp = float(cfg.data.model_mpp)
        for s in data.train + data.val:
            s.preload(self.model_mpp, cfg.data.preload_max_mpx)
        self.val_names = [g.name for g in cfg.data.geometries]
        self._end_to_end = DenseCropDataset(
            data.train,
            crop_px=cfg.data.crop_px,
            model_mpp=self.model_mpp,
            stride=int(model.stride),
            batch_size=cfg.optim.batch_size,
            seed=cfg.run.seed,
            augment=cfg.augment,
            min_coverage=cfg.data.min_coverage,
            rank=self.rank,
            world_size=self.world_size,
        )
        self._frozen: DenseCropDataset | None = None

    def dataset(self, phase: str) -> DenseCropDataset:
        if phase != FROZEN:
            return self._end_to_end
        if self._frozen is None:
            self._frozen = self._frozen_dataset()
        return self._frozen

    def _frozen_dataset(self) -> DenseCropDataset:
        from hexpress.train.feature_cache import build_feature_cache, transforms_for

        cfg, model = self.cfg, self.model
        a = cfg.augment
        colour = ("hed_sigma", "hed_bias", "brightness", "saturation", "stain_rotation_deg")
        if a is not None and any(getattr(a, c, 0) for c in colour):
            log.info("frozen phase: features come from unjittered pixels (flips and rotations "
                     "only); colour augmentation applies in end-to-end phases")  # fmt: skip
        r = int(model.reduction)
        base = self._end_to_end.replace(align_px=r, colour=False)
        if cfg.run.feature_cache is None:
            return base.replace(context_px=int(model.receptive_field_px))

        def build():
            return build_feature_cache(
                model, self.data.train, root=cfg.run.feature_cache, model_mpp=self.model_mpp,
                crop_px=cfg.data.crop_px, transforms=transforms_for(cfg.augment),
                dtype=CACHE_DTYPE, progress=cfg.run.progress and self.is_main,
            )  # fmt: skip

        cache = build() if self.is_main else None
        self.barrier()
        if cache is None:
            cache = build()  # the main process built it: this only checks the keys
        log.info("feature cache: %.1f MB on disk for %d slide(s)", cache.size_bytes() / 1e6,
                 len(self.data.train))  # fmt: skip
        return base.replace(features=cache)

    def network(self, phase: str) -> nn.Module:
        return _Decoder(self.model) if phase == FROZEN else self.model

    def _frozen_features(self, batch: DenseBatch) -> list[torch.Tensor]:
        """The batch's pyramid: cached, or the frozen encoder on the crops and their context
        (cut back to the crops and rounded as the cache stores them)."""
        dev = self.device
        if batch.features is not None:
            return [f.to(dev, non_blocking=True) for f in batch.features]
        c, side = batch.context_px, self.cfg.data.crop_px
        dtype = getattr(torch, CACHE_DTYPE)
        with torch.no_grad():
            full = self.model.encode(batch.images.to(dev, non_blocking=True))
            return [
                f[..., c // s : (c + side) // s, c // s : (c + side) // s].to(dtype).float()
                for f, s in zip(full, self.model.level_strides, strict=True)
            ]

    def loss(self, net, batch: DenseBatch):
        from hexpress.models.aggregate import predict_units
        from hexpress.models.loss import pixnet_loss

        if isinstance(net, _Decoder) or isinstance(getattr(net, "module", None), _Decoder):
            side = self.cfg.data.crop_px
            maps = net(self._frozen_features(batch), (side, side))
        else:
            maps = net(batch.images.to(self.device, non_blocking=True))
        total = maps.sum() * 0.0  # keeps every parameter in the graph even with no unit
        parts = []
        for g, geom in enumerate(self.cfg.data.geometries):
            n = batch.targets[g].shape[0]
            if n == 0 or geom.weight == 0:
                continue
            pred = predict_units(maps, batch.weights[g], self.mode, self.scale)
            target = batch.targets[g].to(self.device)
            total = total + geom.weight * pixnet_loss(pred, target, lam=self.cfg.loss.lam)
            parts.append((pred.detach(), target))
        return total, parts

    def val_batches(self):
        for slides, all_units in self._val_sources():
            yield from dense_val_batches(
                self._end_to_end, slides, all_units=all_units,
                max_units=self.cfg.run.val_max_units, seed=self.cfg.run.seed,
            )  # fmt: skip

    def val_predictions(self, batch: DenseBatch):
        from hexpress.models.aggregate import predict_units

        out = self.model(batch.images.to(self.device))
        return [
            (predict_units(out, batch.weights[g], self.mode, self.scale), batch.targets[g])
            if batch.targets[g].shape[0]
            else None
            for g in range(len(self.val_names))
        ]


class PatchTask(TrainingTask):
    """Patch models: a ``patch_um`` square around each unit of the first geometry, resized to
    the model's ``input_px``."""

    def __init__(self, cfg, data, model, **kw) -> None:
        super().__init__(cfg, data, model, **kw)
        if len(cfg.data.geometries) != 1:
            raise ConfigError(
                f"patch model {cfg.model.name!r} learns from one geometry, got "
                f"{len(cfg.data.geometries)} in data.geometries; keep one."
            )
        patch_um, input_px = float(model.patch_um), int(model.input_px)
        self.model_mpp = patch_um / input_px
        for s in data.train + data.val:
            s.preload(max(self.model_mpp, s.image.mpp), cfg.data.preload_max_mpx)
        self.val_names = [cfg.data.geometries[0].name]
        self._dataset = PatchDataset(
            data.train,
            patch_um=patch_um,
            input_px=input_px,
            batch_size=cfg.optim.batch_size,
            seed=cfg.run.seed,
            augment=cfg.augment,
            rank=self.rank,
            world_size=self.world_size,
        )
        self._frozen: PatchDataset | None = None

    def _cached(self) -> bool:
        return self.cfg.run.feature_cache is not None and hasattr(self.model, "head")

    def dataset(self, phase: str) -> PatchDataset:
        if phase != FROZEN:
            return self._dataset
        if self._frozen is None:
            base = self._dataset.replace(colour=False)
            if self._cached():
                from hexpress.train.feature_cache import transforms_for

                base = base.replace(features=self._pooled(transforms_for(self.cfg.augment)))
            self._frozen = base
        return self._frozen

    def _pooled(self, transforms):
        from hexpress.train.feature_cache import build_pooled_cache

        def build():
            return build_pooled_cache(
                self.model, self.data.train, root=self.cfg.run.feature_cache,
                transforms=transforms, batch_size=max(self.cfg.optim.batch_size, 32),
                progress=self.cfg.run.progress and self.is_main,
            )  # fmt: skip

        cache = build() if self.is_main else None
        self.barrier()
        return cache if cache is not None else build()

    def network(self, phase: str) -> nn.Module:
        return _PatchHead(self.model) if phase == FROZEN and self._cached() else self.model

    def loss(self, net, batch: PatchBatch):
        from hexpress.models.loss import pixnet_loss

        x = batch.features if batch.features is not None else batch.images
        pred = net(x.to(self.device, non_blocking=True))
        target = batch.targets.to(self.device)
        return pixnet_loss(pred, target, lam=self.cfg.loss.lam), [(pred.detach(), target)]

    def val_batches(self):
        for slides, all_units in self._val_sources():
            yield from patch_val_batches(
                self._dataset, slides, all_units=all_units,
                max_units=self.cfg.run.val_max_units, seed=self.cfg.run.seed,
            )  # fmt: skip

    def val_predictions(self, batch: PatchBatch):
        return [(self.model(batch.images.to(self.device)), batch.targets)]


class ClosedFormTask(PatchTask):
    """Frozen encoder + PCA + ridge, or the training mean: one pass over the training patches."""

    closed_form = True

    def fit(self) -> None:
        """Fit the model on every supervised unit's patch once (unaugmented)."""
        from tqdm.auto import tqdm

        model, cfg = self.model, self.cfg
        feats, targets = [], []
        wants_features = hasattr(model, "features")
        dataset = self._dataset
        if wants_features and cfg.run.feature_cache is not None:
            dataset = dataset.replace(features=self._pooled([0]))
        batches = all_train_patches(dataset, max(cfg.optim.batch_size, 32))
        n = len(dataset.stream)
        with torch.no_grad():
            bar = tqdm(total=n, desc=f"features {cfg.model.name}", disable=not cfg.run.progress)
            for batch in batches:
                if batch.features is not None:
                    feats.append(batch.features)
                elif wants_features:
                    feats.append(model.features(batch.images.to(self.device)).cpu())
                targets.append(batch.targets)
                bar.update(len(batch.targets))
            bar.close()
        y = torch.cat(targets)
        if wants_features:
            model.fit(torch.cat(feats), y)
        else:
            model.fit(y)


_TASKS: dict[str, type[TrainingTask]] = {"dense": DenseTask, "patch": PatchTask}


def make_task(cfg: TrainConfig, data: TrainingData, model: nn.Module, kind: str,
              **kw) -> TrainingTask:  # fmt: skip
    """The task of a model of ``kind`` (``"dense"`` / ``"patch"``; closed-form models fit)."""
    if getattr(model, "closed_form", False):
        return ClosedFormTask(cfg, data, model, **kw)
    try:
        cls = _TASKS[kind]
    except KeyError:
        raise ConfigError(
            f"model {cfg.model.name!r} declares kind {kind!r}; the trainer knows {sorted(_TASKS)}."
        ) from None
    return cls(cfg, data, model, **kw)
