"""Training configuration: nested dataclasses, YAML recipes and ``key.sub=value`` overrides.

Precedence (after litgpt): the dataclass defaults < a YAML recipe < command-line overrides.
Every key is checked against the dataclass fields: an unknown key is a :class:`ConfigError` that
lists the valid ones, never silently ignored. Values are typed by the field types, so
``optim.lr=1e-3`` is a float and ``data.train=[C2,C3]`` a list. The resolved config is written
as ``config.yaml`` in the run folder and into every checkpoint.

A recipe looks like::

    data:
      format: legacy-st
      root: ../shared/data/her2st     # relative paths resolve against the current folder
      train: [C2, C3, C4, C5, C6]
      test: [A1]                      # recorded with the run; never read by training
      genes: {n: 250, method: heg}
      model_mpp: 1.0
      crop_px: 384
    model: {name: pixnet, kwargs: {mode: field}}
    optim: {lr: 5.0e-4, weight_decay: 1.0e-4, batch_size: 4, max_steps: 2000}
    run: {out_dir: runs/pixnet_her2st_A, seed: 0}
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hexpress import _config as _engine
from hexpress._config import build_dataclass, read_yaml
from hexpress._config import fail as _fail
from hexpress.errors import ConfigError

__all__ = [
    "TrainConfig",
    "DataConfig",
    "GenesConfig",
    "SampleSource",
    "GeometryConfig",
    "ModelConfig",
    "OptimConfig",
    "LossConfig",
    "AugmentConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "build_dataclass",
    "config_from_dict",
    "config_to_dict",
    "save_config",
]

GENE_METHODS = ("heg", "hvg")
DEVICES = ("auto", "cpu", "cuda")
SELECT = ("last", "best_val")
SCHEDULES = ("constant", "cosine")
PHASES = ("frozen", "finetune")


@dataclass
class GenesConfig:
    """Which genes the model predicts, chosen on the training sections only.

    Attributes:
        n: number of genes for ``heg`` / ``hvg``.
        method: ``"heg"`` (highest mean expression, the paper's choice) or ``"hvg"``.
        file: a gene list (plain text, one per line, or ``.gmt``); overrides ``n``/``method``.
        gene_set: the set to read from a GMT ``file`` (default: the union of its sets).
        names: an explicit gene list; overrides everything else.
    """

    n: int = 250
    method: str = "heg"
    file: str | None = None
    gene_set: str | None = None
    names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.method not in GENE_METHODS:
            raise _fail("data.genes.method", f"must be one of {GENE_METHODS}, got {self.method!r}.")
        if self.n < 1:
            raise _fail("data.genes.n", f"must be a positive number of genes, got {self.n}.")


@dataclass
class SampleSource:
    """Where one sample (slide) is read from, when ``data.root``/``data.format`` do not say.

    Attributes:
        path: data folder or file for the reader (default ``data.root``).
        format: reader name (default ``data.format``).
        section: the reader's section / library id (legacy ST default: the sample id).
        mpp: µm per pixel of the full-resolution image, where the data do not say.
        image: an image file to use instead of the reader's default.
        options: more reader keyword arguments (e.g. ``patient_id``).
    """

    path: str | None = None
    format: str | None = None
    section: str | None = None
    mpp: float | None = None
    image: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeometryConfig:
    """One set of supervising units on every slide (e.g. Visium HD 8 µm bins) and its loss weight.

    Attributes:
        name: label in logs (``"spots"``, ``"bin_8um"``...).
        weight: weight of this geometry's loss in the sum over geometries.
        options: reader keyword arguments that select these units (e.g. ``{bin_um: 8}``).
    """

    name: str = "units"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise _fail(f"data.geometries[{self.name}].weight", f"must be >= 0, got {self.weight}.")


@dataclass
class StainConfig:
    """Stain normalisation of every slide (:mod:`hexpress.data.stain`), recorded in the checkpoint
    so prediction applies the same transform.

    Attributes:
        method: ``none`` or ``macenko``.
        reference: a training sample id (default: the first training sample) or an image file
            whose stains every slide is mapped to.
    """

    method: str = "none"
    reference: str | None = None

    def __post_init__(self) -> None:
        from hexpress.data.stain import STAIN_METHODS

        if self.method not in STAIN_METHODS:
            raise _fail(
                "data.stain.method", f"must be one of {STAIN_METHODS}, got {self.method!r}."
            )


@dataclass
class DataConfig:
    """Training data: samples, split, genes, normalisation and crop geometry.

    Attributes:
        format: default reader (``legacy-st``, ``visium``, ``visium-hd``, ``xenium``, ``h5ad``).
        root: default data folder (legacy ST: the folder holding ``sections.tsv``).
        samples: per-sample reading details, by sample id (see :class:`SampleSource`).
        train: ids of the training samples.
        val: ids of validation samples (part of the training side, never test data).
        val_fraction: without ``val``, the fraction of spatial blocks of each training sample
            held out for validation (their units are never supervised).
        val_block_um: side of those blocks in µm.
        test: ids of the test samples; recorded with the run, never read by training.
        split_file: a split file (YAML/TSV, see :func:`hexpress.data.read_split_file`) and
            ``split`` the split to use; fills ``train``/``val``/``test``.
        split: the split's name in ``split_file``.
        genes: gene selection.
        norm_scale: normalisation scale: targets are ``log1p(counts / total * norm_scale)``.
        model_mpp: µm per input pixel of dense models (patch models use
            ``patch_um / input_px`` from the model).
        crop_px: side of the square training crops of dense models, in px at ``model_mpp``.
        min_coverage: a unit enters a crop when at least this fraction of its footprint lies
            inside the crop (its prediction then uses the inside part; see
            :mod:`hexpress.train.data`).
        geometries: the unit sets that supervise every slide, with loss weights.
        preload_max_mpx: read a whole slide into memory once (at the training resolution) when
            it has at most this many megapixels there; larger slides are read crop by crop.
        stain: stain normalisation to a reference (:class:`StainConfig`).
        center_sections: shift each training section's targets, gene by gene, so that its mean
            over its supervised units equals the mean over all training sections. A per-gene
            offset between sections (sequencing depth, batch) then no longer rewards a model
            for telling sections apart; correlations within a section are unchanged.
    """

    format: str = "legacy-st"
    root: str | None = None
    samples: dict[str, SampleSource] = field(default_factory=dict)
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    val_block_um: float = 500.0
    test: list[str] = field(default_factory=list)
    split_file: str | None = None
    split: str | None = None
    genes: GenesConfig = field(default_factory=GenesConfig)
    norm_scale: float = 1e4
    model_mpp: float = 1.0
    crop_px: int = 256
    min_coverage: float = 0.9
    geometries: list[GeometryConfig] = field(default_factory=lambda: [GeometryConfig()])
    preload_max_mpx: float = 64.0
    stain: StainConfig = field(default_factory=StainConfig)
    center_sections: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise _fail("data.val_fraction", f"must be in [0, 1), got {self.val_fraction}.")
        if self.val and self.val_fraction:
            raise _fail("data.val", "give validation samples (val) or val_fraction, not both.")
        for name in ("norm_scale", "model_mpp", "val_block_um"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise _fail(f"data.{name}", f"must be a positive number, got {v}.")
        if self.crop_px < 16:
            raise _fail("data.crop_px", f"must be at least 16 px, got {self.crop_px}.")
        if not 0.0 < self.min_coverage <= 1.0:
            raise _fail("data.min_coverage", f"must be in (0, 1], got {self.min_coverage}.")
        if not self.geometries:
            raise _fail("data.geometries", "needs at least one geometry.")
        names = [g.name for g in self.geometries]
        if len(set(names)) != len(names):
            raise _fail("data.geometries", f"names must be unique, got {names}.")
        if sum(g.weight for g in self.geometries) <= 0:
            raise _fail("data.geometries", "at least one geometry needs a positive weight.")
        overlap = (set(self.train) | set(self.val)) & set(self.test)
        if overlap:
            raise _fail(
                "data.test", f"sample(s) {sorted(overlap)} are both trained/validated and tested."
            )
        if set(self.train) & set(self.val):
            raise _fail("data.val", f"{sorted(set(self.train) & set(self.val))} also in train.")
        if (self.split_file is None) != (self.split is None) and self.split_file is not None:
            raise _fail("data.split", "name the split to use from data.split_file.")


@dataclass
class ModelConfig:
    """The model: a registered name and its keyword arguments.

    Attributes:
        name: a name from ``hexpress models`` (``pixnet``, ``effnet_b0_patch``, ``stnet``...).
        kwargs: keyword arguments of the factory (``mode``, ``patch_um``, ``input_px``,
            ``pretrained``, ``encoder_weights``...); ``n_genes`` comes from the genes.
        init_bias: start the output bias at the training mean expression.
    """

    name: str = "pixnet"
    kwargs: dict[str, Any] = field(default_factory=dict)
    init_bias: bool = True

    def __post_init__(self) -> None:
        if "n_genes" in self.kwargs:
            raise _fail("model.kwargs.n_genes", "is set from the selected genes; remove it.")


@dataclass
class OptimConfig:
    """Optimiser and schedule (paper: Adam, lr 5e-4, weight decay 1e-4).

    Attributes:
        lr: learning rate.
        weight_decay: Adam's L2 weight decay.
        batch_size: crops (dense) or patches (patch models) per step and per process.
        max_steps: optimiser steps (fixed: no model selection on test data).
        epochs: when set, ``max_steps`` is derived from it: passes over the training units
            (anchor spots for dense crops).
        grad_clip: clip the gradient norm to this (0: off).
        schedule: ``"constant"`` or ``"cosine"`` (to 0 at ``max_steps``).
        warmup_steps: linear warm-up steps.
        phases: training phases in order, e.g. ``[{frozen: 3000}, {finetune: 300}]``: ``frozen``
            trains all but the encoder (dense models: from cached encoder features, see
            ``run.feature_cache``), ``finetune`` trains end to end. When given, the run lasts
            their sum of steps (``max_steps`` is ignored); empty: end to end for ``max_steps``.
    """

    lr: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 4
    max_steps: int = 1000
    epochs: float | None = None
    grad_clip: float = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    phases: list[dict[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise _fail("optim.lr", f"must be positive, got {self.lr}.")
        if self.weight_decay < 0:
            raise _fail("optim.weight_decay", f"must be >= 0, got {self.weight_decay}.")
        if self.batch_size < 1:
            raise _fail("optim.batch_size", f"must be >= 1, got {self.batch_size}.")
        if self.max_steps < 0:
            raise _fail("optim.max_steps", f"must be >= 0, got {self.max_steps}.")
        if self.epochs is not None and not self.epochs > 0:
            raise _fail("optim.epochs", f"must be positive, got {self.epochs}.")
        if self.grad_clip < 0:
            raise _fail("optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}.")
        if self.schedule not in SCHEDULES:
            raise _fail("optim.schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.warmup_steps < 0:
            raise _fail("optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}.")
        for i, ph in enumerate(self.phases):
            if len(ph) != 1 or next(iter(ph)) not in PHASES or next(iter(ph.values())) < 0:
                raise _fail(
                    f"optim.phases[{i}]",
                    f"must be one {{phase: steps}} with phase in {PHASES} and steps >= 0, "
                    f"got {ph!r} (e.g. [{{frozen: 3000}}, {{finetune: 300}}]).",
                )
        if self.phases and self.epochs is not None:
            raise _fail("optim.phases", "give the steps of each phase or optim.epochs, not both.")


@dataclass
class LossConfig:
    """Loss: MSE + ``lam`` * (1 - mean per-gene PCC), summed over geometries with their weights.

    Attributes:
        lam: weight of the correlation term (paper 0.5; 0 = plain MSE, as ST-Net).
    """

    lam: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise _fail("loss.lam", f"must be >= 0, got {self.lam}.")


@dataclass
class AugmentConfig:
    """Morphology-preserving augmentation of training crops / patches.

    Attributes:
        flips: random horizontal flip.
        rot90: random 90-degree rotations (with ``flips``: the 8 symmetries of the square).
        hed_sigma: stain jitter: per image, each haematoxylin / eosin / DAB channel is scaled by
            ``U(1 - s, 1 + s)`` ...
        hed_bias: ... and shifted by ``U(-b, b)`` in optical density (0: off).
        brightness: multiply intensities by ``U(1 - b, 1 + b)`` (0: off).
        saturation: scale the distance from grey by ``U(1 - s, 1 + s)`` (0: off).
        stain_rotation_deg: turn the haematoxylin and eosin colour vectors by ``U(-d, d)``
            degrees each (hue changes across labs; 0: off). Recipes with stronger stain
            augmentation use e.g. ``hed_sigma: 0.2, hed_bias: 0.05, stain_rotation_deg: 5``.
    """

    flips: bool = True
    rot90: bool = True
    hed_sigma: float = 0.05
    hed_bias: float = 0.02
    brightness: float = 0.0
    saturation: float = 0.0
    stain_rotation_deg: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hed_sigma", "hed_bias", "brightness", "saturation"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v < 1):
                raise _fail(f"augment.{name}", f"must be in [0, 1), got {v}.")
        if not (math.isfinite(self.stain_rotation_deg) and 0 <= self.stain_rotation_deg <= 30):
            raise _fail(
                "augment.stain_rotation_deg", f"must be in [0, 30], got {self.stain_rotation_deg}."
            )


@dataclass
class RunConfig:
    """Where and how the run goes.

    Attributes:
        out_dir: run folder (config, log, checkpoints).
        seed: seed of everything (model init, data order, augmentation).
        log_every: steps between CSV log rows.
        val_every: steps between validations (0: only at the end).
        ckpt_every: steps between checkpoints (0: only at the end).
        val_max_units: cap on validation units (a fixed, seeded subset), to bound its cost.
        num_workers: data-loading processes (0: in the training process).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        precision: ``"auto"`` (bfloat16 autocast on GPUs that support it, else float32),
            ``"fp32"``, ``"bf16"`` or ``"fp16"`` (GPUs only; with loss scaling).
        threads: torch CPU threads (default: torch's choice).
        progress: show a progress bar.
        tensorboard: also log to TensorBoard when it is installed.
        select: which weights the run's ``model`` checkpoint holds: ``"last"`` (the last step)
            or ``"best_val"`` (those of the validation with the highest mean PCC over the
            validation units of the training sections; needs ``val_every``). The steps a run
            keeps are then chosen on its validation blocks, never on test sections.
        feature_cache: folder of the frozen-encoder feature cache (see
            :mod:`hexpress.train.feature_cache`; shared by runs, reused while its key matches);
            ``null``: frozen phases run the encoder on every crop instead.
    """

    out_dir: str = "runs/train"
    seed: int = 0
    log_every: int = 10
    val_every: int = 0
    ckpt_every: int = 500
    val_max_units: int = 2000
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    progress: bool = True
    tensorboard: bool = True
    feature_cache: str | None = "runs/feature_cache"
    select: str = "last"

    def __post_init__(self) -> None:
        from hexpress._device import PRECISIONS

        if self.device not in DEVICES:
            raise _fail("run.device", f"must be one of {DEVICES}, got {self.device!r}.")
        if self.precision not in PRECISIONS:
            raise _fail("run.precision", f"must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.select not in SELECT:
            raise _fail("run.select", f"must be one of {SELECT}, got {self.select!r}.")
        for name in ("log_every",):
            if getattr(self, name) < 1:
                raise _fail(f"run.{name}", f"must be >= 1, got {getattr(self, name)}.")
        for name in ("val_every", "ckpt_every", "num_workers", "seed", "val_max_units"):
            if getattr(self, name) < 0:
                raise _fail(f"run.{name}", f"must be >= 0, got {getattr(self, name)}.")
        if self.threads is not None and self.threads < 1:
            raise _fail("run.threads", f"must be >= 1, got {self.threads}.")


@dataclass
class TrainConfig:
    """A whole training run: ``data``, ``model``, ``optim``, ``loss``, ``augment``, ``run``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)


# -- the TrainConfig side of the generic engine in hexpress._config ---------------------------------


def config_from_dict(values: dict | None) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a nested dict (missing keys take defaults)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}.")
    return build_dataclass(TrainConfig, values)


def config_to_dict(config: TrainConfig) -> dict:
    """Plain nested dict (JSON/YAML-serialisable) of a config."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def apply_overrides(
    values: dict, overrides: list[str] | tuple[str, ...], root: type | None = None
) -> dict:
    """:func:`hexpress._config.apply_overrides` with :class:`TrainConfig` as the default root."""
    return _engine.apply_overrides(values, overrides, root or TrainConfig)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults < YAML recipe ``path`` < ``overrides`` (``section.key=value``).

    Raises:
        ConfigError: unknown keys (the message lists the valid ones), wrong types or invalid
            values.
        InputFileError: ``path`` does not exist.
    """
    values = read_yaml(path) if path is not None else {}
    try:
        return config_from_dict(apply_overrides(values, list(overrides)))
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from hexpress._files import write_file

    return write_file(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
