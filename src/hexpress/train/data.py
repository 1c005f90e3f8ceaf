"""Training data: slides with their supervising units, dense crops and spot-centred patches.

Reading and targets:

* each sample is read once per geometry (``data.geometries``: e.g. Visium HD 2/8/16 µm bins of
  one slide); genes are chosen on the **training** samples only; targets are
  ``log1p(counts / total * norm_scale)`` (:func:`hexpress.data.normalize`); units with total 0
  have no defined target and are never supervised.
* units keep their level-0 px geometry (:class:`hexpress.data.Units`) and the slide's µm per
  px, and reach the pixels of a crop at ``model_mpp`` through :meth:`Units.footprints`, the
  conversion prediction uses.
* slides small enough (``data.preload_max_mpx``) are read whole once at the training resolution
  and cropped from memory; larger ones are read crop by crop from the lazy reader.

Dense crops (:class:`DenseCropDataset`): square crops of ``crop_px`` at ``model_mpp``, placed so
an *anchor* unit of the first geometry lies inside (anchors: every supervised unit, visited in a
seeded permutation per epoch). Every geometry contributes the units whose centre lies in the crop
and whose footprint is at least ``min_coverage`` inside it. A unit cut by the crop edge is
predicted from its inside part only: in ``field`` mode as the mean of the map over that part, in
``density`` mode as ``log1p(scale * sum(gene) / sum(total))`` over it. Both are ratios (a mean;
counts over total counts), so the inside part estimates the same quantity as the whole footprint
without rescaling, and the same weights serve both modes; the coverage threshold keeps the
estimate close.

Patches (:class:`PatchDataset`): a ``patch_um`` square centred on each unit, resampled to
``input_px`` (the model's own attributes).

Determinism: a batch is a pure function of ``(seed, step, rank)``: its anchors come from the
seeded per-epoch permutation at positions ``(step * world_size + rank) * batch_size + i``, and
its augmentation from ``numpy.random.default_rng([seed, step, rank])``. So any number of loader
workers, a resumed run and an uninterrupted one all see the same batches, and ranks of a
distributed run see disjoint anchors.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from hexpress.data.sample import Sample
from hexpress.data.units import Units
from hexpress.errors import ConfigError, DataMismatchError
from hexpress.io.image import ArrayImage, SlideImage
from hexpress.train.augment import AugmentParams, augment, d4_points, sample_params
from hexpress.train.config import AugmentConfig, DataConfig, SampleSource

__all__ = [
    "UnitSet",
    "SlideData",
    "TrainingData",
    "DenseBatch",
    "PatchBatch",
    "DenseCropDataset",
    "PatchDataset",
    "load_training_data",
    "read_samples",
    "resolve_split",
    "crop_units",
    "aligned_pad_px",
    "dense_val_batches",
    "patch_val_batches",
]

log = logging.getLogger(__name__)


# -- slides and their units ------------------------------------------------------------------------


@dataclass
class UnitSet:
    """The units of one geometry on one slide, with their targets.

    Attributes:
        name: geometry name.
        geometry: where the units are (:class:`hexpress.data.Units`: centres and polygon
            vertices in level-0 px of the slide, sizes in µm, one kind per set).
        slide_mpp: µm per level-0 px of the slide.
        targets: ``(n, G)`` CSR float32 normalised expression.
        measured: ``(n,)`` bool: total count > 0 (only these are supervised or evaluated).
        val: ``(n,)`` bool: held out for validation (never supervised).
        weight: this geometry's loss weight.
    """

    name: str
    geometry: Units
    slide_mpp: float
    targets: sp.csr_matrix
    measured: np.ndarray
    val: np.ndarray
    weight: float = 1.0

    def __len__(self) -> int:
        return len(self.geometry)

    @property
    def kind(self) -> str:
        """``"disc"``, ``"square"`` or ``"polygon"``."""
        return self.geometry.kind

    @property
    def size_um(self) -> np.ndarray:
        """``(n,)`` disc diameter / square side in µm (NaN for polygons)."""
        return self.geometry.size_um

    @cached_property
    def centers_um(self) -> np.ndarray:
        """``(n, 2)`` x, y centres in µm from the slide's top-left corner."""
        return self.geometry.centers_level0_px * self.slide_mpp

    @property
    def polygons_um(self) -> list[np.ndarray] | None:
        """Polygon vertices in µm from the slide's top-left corner (polygons only)."""
        polys = self.geometry.polygons
        return None if polys is None else [p * self.slide_mpp for p in polys]

    def centers_model_px(self, model_mpp: float, *, index=None) -> np.ndarray:
        """``(k, 2)`` centres in px of the slide at ``model_mpp`` (:meth:`Units.centers_model_px`)."""
        return self.geometry.centers_model_px(self.slide_mpp, model_mpp, index=index)

    def footprints(self, model_mpp: float, origin_px=(0.0, 0.0), *, index=None):
        """Footprints in px of the slide at ``model_mpp`` (:meth:`Units.footprints`)."""
        return self.geometry.footprints(self.slide_mpp, model_mpp, origin_px, index=index)

    @property
    def train_mask(self) -> np.ndarray:
        return self.measured & ~self.val


@dataclass
class SlideData:
    """One slide: its image, one :class:`UnitSet` per geometry, and the image's file and stain
    normalisation (``None``: none), which the feature cache's keys record."""

    sample_id: str
    image: SlideImage
    units: list[UnitSet]
    _view: SlideImage | None = field(default=None, repr=False)
    image_path: Path | None = None
    stain: dict | None = None

    def __post_init__(self) -> None:
        # kept after preload() replaces the reader, for the feature cache's keys
        if self.image_path is None:
            self.image_path = self.image.path
        normalizer = getattr(self.image, "normalizer", None)
        if self.stain is None and normalizer is not None:
            self.stain = normalizer.to_meta()

    def preload(self, mpp: float, max_mpx: float) -> None:
        """Read the whole slide at ``mpp`` into memory when it has at most ``max_mpx`` Mpx.

        The in-memory copy then replaces :attr:`image`, so reads must be at ``mpp`` or coarser.
        """
        h, w = self.image.shape_at(mpp)
        if h * w > max_mpx * 1e6:
            log.info("%s: %d x %d px at %g µm/px, read crop by crop", self.sample_id, w, h, mpp)
            self._view = None
            return
        self._view = ArrayImage(self.image.read_region(0, 0, w, h, mpp=mpp, units="target"), mpp)
        # Release the reader (a decoded JPEG can hold the full-resolution pixels): every later
        # read is at this resolution and comes from the copy.
        self.image = self._view
        log.info("%s: preloaded %d x %d px at %g µm/px", self.sample_id, w, h, mpp)

    @property
    def source(self) -> SlideImage:
        """The image crops are read from: the preloaded copy, else the lazy reader."""
        return self._view if self._view is not None else self.image

    def read_patch(self, center_um: np.ndarray, patch_um: float, input_px: int) -> np.ndarray:
        """``(input_px, input_px, 3)`` uint8: a ``patch_um`` square centred at ``center_um``."""
        img = self.source
        side = patch_um / img.mpp
        cx, cy = center_um[0] / img.mpp, center_um[1] / img.mpp
        return img.read_region(
            cx - side / 2,
            cy - side / 2,
            side,
            side,
            mpp=patch_um / input_px,
            out_shape=(input_px, input_px),
        )


@dataclass
class TrainingData:
    """Everything the trainer needs from the data.

    Attributes:
        train: training slides (units may carry ``val`` flags when ``val_fraction`` is set).
        val: validation slides (``data.val``), all their measured units evaluated.
        genes: the selected genes, in model output order.
        normalization: how targets were made (goes into the checkpoint).
        geometries: geometry names, in order.
        stain: the stain normalisation every slide is read through (goes into the checkpoint;
            ``None``: none).
    """

    train: list[SlideData]
    val: list[SlideData]
    genes: list[str]
    normalization: dict
    geometries: list[str]
    stain: dict | None = None

    def target_mean(self) -> np.ndarray:
        """``(G,)`` mean target over the supervised units of the first geometry."""
        rows = [s.units[0].targets[s.units[0].train_mask] for s in self.train]
        stacked = sp.vstack(rows) if rows else sp.csr_matrix((0, len(self.genes)))
        if stacked.shape[0] == 0:
            raise DataMismatchError("no supervised unit in the training samples.")
        return np.asarray(stacked.mean(axis=0), dtype=np.float32).ravel()

    def n_train_units(self) -> int:
        return int(sum(s.units[0].train_mask.sum() for s in self.train))

    def has_val(self) -> bool:
        return bool(self.val) or any(s.units[0].val.any() for s in self.train)


def _resolve(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())


def read_samples(config: DataConfig, ids: Sequence[str]) -> dict[str, list[Sample]]:
    """Read each sample once per geometry with the registered reader (never guessed by path).

    Returns:
        ``{sample_id: [Sample per geometry]}``.
    """
    from hexpress.io import read_sample

    out: dict[str, list[Sample]] = {}
    for sid in ids:
        src = config.samples.get(sid, SampleSource())
        fmt = src.format or config.format
        path = src.path or config.root
        if path is None:
            raise ConfigError(f"sample {sid!r}: no path; set data.root or data.samples.{sid}.path.")
        section = src.section
        if section is None and fmt in ("legacy-st",):
            section = sid
        read = []
        for geom in config.geometries:
            kw = {**src.options, **geom.options}
            if fmt != "legacy-st" and fmt != "h5ad":
                kw.setdefault("sample_id", sid)
            sample = read_sample(
                _resolve(path),
                fmt,
                section=section,
                mpp=src.mpp,
                image=_resolve(src.image),
                **kw,
            )
            read.append(sample)
        out[sid] = read
        log.info("read %s: %s", sid, read[0])
    return out


def _unit_set(sample: Sample, genes: list[str], scale: float, name: str, weight: float):
    from hexpress.data.preprocess import normalize, total_counts

    adata = sample.adata
    units = Units.from_anndata(
        adata,
        name=name,
        source=f"sample {sample.sample_id}",
        error=DataMismatchError,
        hint="give each geometry its own entry in data.geometries",
    )
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise DataMismatchError(
            f"sample {sample.sample_id} ({name}) lacks {len(missing)} selected gene(s), e.g. "
            f"{missing[:5]}; genes must be measured in every sample."
        )
    totals = total_counts(adata)
    normed = normalize(adata, genes, scale=scale)
    return UnitSet(
        name=name,
        geometry=units,
        slide_mpp=float(sample.image.mpp),
        targets=sp.csr_matrix(np.asarray(normed.X, dtype=np.float32)),
        measured=totals > 0,
        val=np.zeros(adata.n_obs, dtype=bool),
        weight=float(weight),
    )


def _val_blocks(slide: SlideData, fraction: float, block_um: float, seed: int) -> None:
    """Flag the units of a seeded fraction of ``block_um`` squares of a slide as validation."""
    anchor = slide.units[0]
    blocks = np.floor(anchor.centers_um[anchor.measured] / block_um).astype(np.int64)
    uniq = np.unique(blocks, axis=0)
    if len(uniq) < 2:
        log.warning("%s: too few %g µm blocks to hold some out", slide.sample_id, block_um)
        return
    n_val = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    rng = np.random.default_rng([seed, zlib.crc32(slide.sample_id.encode())])
    chosen = uniq[rng.choice(len(uniq), n_val, replace=False)]
    keys = {tuple(b) for b in chosen.tolist()}
    for us in slide.units:
        b = np.floor(us.centers_um / block_um).astype(np.int64)
        us.val = np.fromiter((tuple(v) in keys for v in b.tolist()), bool, count=len(b))
    log.info(
        "%s: %d of %d blocks (%d units) held out for validation",
        slide.sample_id,
        n_val,
        len(uniq),
        int(anchor.val.sum()),
    )


def _center_sections(slides: list[SlideData]) -> None:
    """Shift each slide's targets per gene to the mean over all slides (``data.center_sections``).

    Means are over supervised units (measured, not validation), geometry by geometry; every
    measured unit of a slide, validation blocks included, gets the same shift, so that
    validation scores what training fits. Unmeasured units stay at 0 (never supervised).
    """
    for g in range(len(slides[0].units)):
        sets = [s.units[g] for s in slides]
        rows = [us.targets[us.train_mask] for us in sets]
        means = [np.asarray(r.mean(axis=0)).ravel() for r in rows]
        n = np.array([r.shape[0] for r in rows], dtype=np.float64)
        if n.sum() == 0:
            continue
        overall = sum(m * k for m, k in zip(means, n, strict=True)) / n.sum()
        for slide, us, m, k in zip(slides, sets, means, n, strict=True):
            if k == 0:
                continue
            dense = us.targets.toarray()
            dense[us.measured] += (overall - m).astype(np.float32)
            us.targets = sp.csr_matrix(dense)
            log.info(
                "%s (%s): targets centred, largest per-gene shift %.3f",
                slide.sample_id, us.name, float(np.abs(overall - m).max()),
            )  # fmt: skip


def resolve_split(config: DataConfig) -> DataConfig:
    """``config`` with ``train`` / ``val`` / ``test`` filled from ``split_file`` when it names
    one (validation samples of the config are kept where the split names none)."""
    if config.split_file is None:
        return config
    from hexpress.data.preprocess import read_split_file

    splits = {s.name: s for s in read_split_file(config.split_file)}
    if config.split not in splits:
        raise ConfigError(
            f"data.split {config.split!r} is not in {config.split_file}; splits: "
            f"{', '.join(splits)}."
        )
    chosen = splits[config.split]
    return replace(
        config,
        train=list(chosen.train),
        val=list(chosen.val or config.val),
        test=list(chosen.test or config.test),
    )


def load_training_data(
    config: DataConfig,
    *,
    seed: int = 0,
    samples: Mapping[str, Sample | Sequence[Sample]] | None = None,
) -> TrainingData:
    """Read (or take) the training and validation samples, choose genes, build targets.

    Args:
        config: the ``data`` section.
        seed: the run seed (chooses validation blocks).
        samples: already-read samples by id (one per geometry, in ``config.geometries`` order);
            ids not given here are read from disk. Test ids are never read.

    Raises:
        ConfigError: no training sample, or an id that cannot be read.
        DataMismatchError: a sample lacks a selected gene, or a geometry count mismatch.
    """
    from hexpress.data.preprocess import read_gene_list, select_genes
    from hexpress.data.stain import reference_normalizer

    resolved = resolve_split(config)
    train_ids, val_ids = list(resolved.train), list(resolved.val)
    if not train_ids:
        raise ConfigError("data.train is empty: name the training sample ids.")
    given = dict(samples or {})
    need = [s for s in [*train_ids, *val_ids] if s not in given]
    read = read_samples(config, need) if need else {}
    by_id: dict[str, list[Sample]] = {}
    n_geom = len(config.geometries)
    for sid in [*train_ids, *val_ids]:
        got = given.get(sid, read.get(sid))
        got = [got] if isinstance(got, Sample) else list(got)
        if len(got) != n_geom:
            raise DataMismatchError(
                f"sample {sid!r}: {len(got)} unit set(s) given for {n_geom} geometries "
                f"({[g.name for g in config.geometries]})."
            )
        for s in got:
            if s.image is None:
                raise DataMismatchError(f"sample {sid!r} has no image; training needs one.")
        by_id[sid] = got
    g = config.genes
    if g.names:
        genes = select_genes([by_id[s][0] for s in train_ids], genes=g.names)
    elif g.file:
        listed = read_gene_list(g.file, g.gene_set)
        genes = select_genes([by_id[s][0] for s in train_ids], genes=listed, strict=False)
    else:
        genes = select_genes(
            [by_id[s][0] for s in train_ids], n=g.n, method=g.method, scale=config.norm_scale
        )

    stain = reference_normalizer(
        config.stain, train_ids, {sid: got[0].image for sid, got in by_id.items()}
    )

    def slide(sid: str) -> SlideData:
        sets = [
            _unit_set(s, genes, config.norm_scale, geom.name, geom.weight)
            for s, geom in zip(by_id[sid], config.geometries, strict=True)
        ]
        image = by_id[sid][0].image
        return SlideData(sid, image if stain is None else stain.wrap(image), sets)

    train = [slide(s) for s in train_ids]
    val = [slide(s) for s in val_ids]
    if config.val_fraction > 0:
        for s in train:
            _val_blocks(s, config.val_fraction, config.val_block_um, seed)
    normalization = {
        "method": "log1p_total",
        "scale": float(config.norm_scale),
        "total": "all genes",
        "genes": len(genes),
    }
    if config.center_sections:
        _center_sections(train)
        normalization["centered"] = "training sections, per gene"
    return TrainingData(
        train, val, genes, normalization, [g.name for g in config.geometries],
        stain=None if stain is None else stain.to_meta(),
    )  # fmt: skip


# -- batches ------------------------------------------------------------------------------------


@dataclass
class DenseBatch:
    """A batch of dense crops.

    Attributes:
        images: ``(B, 3, S + 2c, S + 2c)`` float32 RGB in ``[0, 1]``, the crop with ``c =
            context_px`` more on every side (``None`` when ``features`` are given).
        weights: per geometry, ``B`` CSR matrices ``(n_b, h*w)`` of footprint weights on the map.
        targets: per geometry, ``(sum n_b, G)`` float32.
        counts: per geometry, ``[n_b]`` units per crop.
        unit_index: per geometry, ``(sum n_b, 2)`` int64 (slide index, unit index).
        features: cached encoder features of the crops instead of images: per pyramid level,
            ``(B, C_l, S / s_l, S / s_l)`` float32 (see :mod:`hexpress.train.feature_cache`).
        context_px: input px read around each crop (frozen encoders see the crop's context).
    """

    images: torch.Tensor | None
    weights: list[list[sp.csr_matrix]]
    targets: list[torch.Tensor]
    counts: list[list[int]]
    unit_index: list[np.ndarray]
    features: list[torch.Tensor] | None = None
    context_px: int = 0


@dataclass
class PatchBatch:
    """A batch of patches: ``images (B, 3, P, P)``, ``targets (B, G)``, ``unit_index (B, 2)``;
    or, from a feature cache, ``features (B, F)`` of the frozen encoder instead of ``images``."""

    images: torch.Tensor | None
    targets: torch.Tensor
    unit_index: np.ndarray
    features: torch.Tensor | None = None


def crop_units(
    units: UnitSet,
    allowed: np.ndarray,
    x0: int,
    y0: int,
    crop_px: int,
    *,
    model_mpp: float,
    stride: int,
    min_coverage: float,
    params: AugmentParams | None = None,
):
    """The units of one geometry that a crop supervises, and their weights on the crop's map.

    Args:
        units: the slide's units of one geometry.
        allowed: ``(n,)`` bool, units that may be used (e.g. supervised, not validation).
        x0, y0: crop corner in px of the slide at ``model_mpp``.
        crop_px: crop side in px (a multiple of ``stride``).
        model_mpp: µm per px of the crop.
        stride: input px per map cell.
        min_coverage: minimum fraction of a footprint inside the crop.
        params: augmentation applied to the crop (the footprints follow it).

    Returns:
        ``(index, weights)``: ``(k,)`` unit indices and ``(k, m*m)`` CSR weights,
        ``m = crop_px // stride``.
    """
    from hexpress.models.aggregate import Footprints, footprint_weights

    c = units.centers_model_px(model_mpp)
    inside = (
        allowed
        & (c[:, 0] >= x0)
        & (c[:, 0] < x0 + crop_px)
        & (c[:, 1] >= y0)
        & (c[:, 1] < y0 + crop_px)
    )
    idx = np.flatnonzero(inside)
    m = math.ceil(crop_px / stride)
    if len(idx) == 0:
        return idx, sp.csr_matrix((0, m * m), dtype=np.float64)
    fp = units.footprints(model_mpp, (x0, y0), index=idx)
    if params is not None and (params.k or params.flip):
        centers = d4_points(fp.centers_model_px, crop_px, crop_px, params.k, params.flip)
        polys = fp.polygons
        if polys is not None:
            polys = [d4_points(p, crop_px, crop_px, params.k, params.flip) for p in polys]
        fp = Footprints(centers, fp.kind, fp.size_px, polys)
    weights, coverage = footprint_weights(fp, (m, m), stride, return_coverage=True)
    keep = coverage >= min_coverage
    return idx[keep], weights[keep]


def aligned_pad_px(crop_px: int, align_px: int) -> int:
    """How far (px at ``model_mpp``) an aligned training crop can reach beyond a slide's edge:
    a crop holds a unit whose centre is on the slide, and its corner snaps to ``align_px``."""
    return math.ceil((int(crop_px) + int(align_px)) / int(align_px)) * int(align_px)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    arr = np.stack(images).astype(np.float32, copy=False)
    if arr.max(initial=0) > 1.5:  # uint8 scale
        arr = arr / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


class _AnchorStream:
    """Supervised anchor units visited in a seeded permutation per epoch."""

    def __init__(self, slides: list[SlideData], seed: int):
        pairs = [
            np.stack([np.full(int(m.sum()), i), np.flatnonzero(m)], axis=1)
            for i, s in enumerate(slides)
            for m in [s.units[0].train_mask]
        ]
        self.anchors = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        if len(self.anchors) == 0:
            raise DataMismatchError(
                "no supervised unit to train on (all units unmeasured or held out)."
            )
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.anchors)

    @lru_cache(maxsize=4)  # noqa: B019  (a few epochs in flight; the stream lives as long)
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(len(self.anchors))

    def take(self, start: int, n: int) -> np.ndarray:
        pos = np.arange(start, start + n)
        epoch, within = np.divmod(pos, len(self.anchors))
        return np.stack(
            [self.anchors[self._perm(int(e))[w]] for e, w in zip(epoch, within, strict=True)]
        )


class DenseCropDataset(torch.utils.data.Dataset):
    """Training batches of dense crops, indexed by step (``dataset[step]`` is one batch).

    Args:
        slides: training slides.
        crop_px: crop side in px at ``model_mpp``.
        model_mpp: µm per px.
        stride: the model's output stride (``crop_px`` must be a multiple).
        batch_size: crops per batch (per process).
        seed: run seed.
        augment: augmentation config (``None``: none).
        min_coverage: see :func:`crop_units`.
        rank, world_size: this process and the number of processes.
        align_px: crop corners fall on multiples of this many px of the slide at ``model_mpp``
            (frozen-encoder training: the network's total downsampling, so a crop's features
            are a slice of the whole slide's; 1: anywhere).
        context_px: px read around each crop on every side (the receptive field of a frozen
            encoder); the crop's units and map are those of the crop alone.
        colour: apply the colour part of the augmentation (off for frozen encoders: their
            features are computed once, from unjittered pixels).
        features: a source of cached encoder features (``read(slide_index, x0, y0, crop_px,
            params) -> [(C_l, h_l, w_l)]``), read instead of pixels.
    """

    def __init__(
        self,
        slides: list[SlideData],
        *,
        crop_px: int,
        model_mpp: float,
        stride: int,
        batch_size: int,
        seed: int,
        augment: AugmentConfig | None,
        min_coverage: float = 0.9,
        rank: int = 0,
        world_size: int = 1,
        align_px: int = 1,
        context_px: int = 0,
        colour: bool = True,
        features=None,
    ):
        if crop_px % stride:
            raise ConfigError(
                f"data.crop_px={crop_px} must be a multiple of the model's stride {stride}, so "
                f"the map covers the crop exactly (e.g. {stride * max(1, crop_px // stride)})."
            )
        if crop_px % align_px:
            raise ConfigError(
                f"data.crop_px={crop_px} must be a multiple of {align_px} px (the network's "
                "total downsampling) to train on frozen encoder features, e.g. "
                f"{align_px * max(1, round(crop_px / align_px))}."
            )
        self._options = dict(
            crop_px=crop_px, model_mpp=model_mpp, stride=stride, batch_size=batch_size,
            seed=seed, augment=augment, min_coverage=min_coverage, rank=rank,
            world_size=world_size, align_px=align_px, context_px=context_px, colour=colour,
            features=features,
        )  # fmt: skip
        self.slides = slides
        self.crop_px = int(crop_px)
        self.model_mpp = float(model_mpp)
        self.stride = int(stride)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = augment
        self.min_coverage = float(min_coverage)
        self.rank, self.world_size = int(rank), int(world_size)
        self.align_px = int(align_px)
        self.context_px = int(context_px)
        self.colour = bool(colour)
        self.features = features

    def replace(self, **changes) -> DenseCropDataset:
        """A dataset like this one with some constructor arguments changed (e.g. ``slides``)."""
        options = {"slides": self.slides, **self._options, **changes}
        return DenseCropDataset(options.pop("slides"), **options)

    @cached_property
    def stream(self) -> _AnchorStream:
        """The anchor units, in a seeded order per epoch (built on first use)."""
        return _AnchorStream(self.slides, self.seed)

    def __len__(self) -> int:
        return 2**62  # indexed by step; the sampler says which steps

    def __getitem__(self, step: int) -> DenseBatch:
        b = self.batch_size
        anchors = self.stream.take((int(step) * self.world_size + self.rank) * b, b)
        rng = np.random.default_rng([self.seed, int(step), self.rank])
        crops = []
        for si, ui in anchors:
            crops.append(self._place(int(si), int(ui), rng))
        return self._assemble(crops, rng, train=True)

    def _place(self, si: int, ui: int, rng: np.random.Generator) -> tuple[int, int, int]:
        fp = self.slides[si].units[0].footprints(self.model_mpp, index=[ui])
        cx, cy = fp.centers_model_px[0]
        r = fp.size_px[0] / 2 + 1
        s = self.crop_px
        lo, hi = min(r / s, 0.5), max(1 - r / s, 0.5)
        fx, fy = lo + (hi - lo) * rng.random(2)
        if self.align_px == 1:
            return si, int(math.floor(cx - fx * s)), int(math.floor(cy - fy * s))
        a = self.align_px
        h, w = self.slides[si].source.shape_at(self.model_mpp)
        pad = aligned_pad_px(s, a)
        corner = []
        for c, f, size in ((cx, fx, w), (cy, fy, h)):
            # the aligned corners that keep the anchor's footprint inside, drawn by f as above
            first, last = math.ceil((c + r - s) / a), math.floor((c - r) / a)
            if first > last:
                first = last = round((c - s / 2) / a)
            k = first + min(int((f - lo) / max(hi - lo, 1e-12) * (last - first + 1)), last - first)
            corner.append(int(np.clip(k * a, -pad, (size + pad - s) // a * a)))
        return si, corner[0], corner[1]

    def _assemble(self, crops, rng, *, train: bool, allowed=None) -> DenseBatch:
        n_geom = len(self.slides[0].units) if self.slides else 0
        images, weights = [], [[] for _ in range(n_geom)]
        targets = [[] for _ in range(n_geom)]
        index = [[] for _ in range(n_geom)]
        feats: list[list[np.ndarray]] = []
        c = self.context_px
        for ci, (si, x0, y0) in enumerate(crops):
            slide = self.slides[si]
            params = sample_params(self.augment, rng) if train and self.augment else None
            if params is not None and not self.colour:
                params = AugmentParams(k=params.k, flip=params.flip)
            if self.features is not None:
                feats.append(self.features.read(si, x0, y0, self.crop_px, params))
            else:
                side = self.crop_px + 2 * c
                img = slide.image.read_region(
                    x0 - c, y0 - c, side, side, mpp=self.model_mpp, units="target"
                )
                images.append(augment(img, params) if params is not None else img)
            for g, us in enumerate(slide.units):
                ok = us.train_mask if allowed is None else allowed[ci][g]
                idx, w = crop_units(
                    us,
                    ok,
                    x0,
                    y0,
                    self.crop_px,
                    model_mpp=self.model_mpp,
                    stride=self.stride,
                    min_coverage=self.min_coverage,
                    params=params,
                )
                weights[g].append(w)
                targets[g].append(us.targets[idx].toarray())
                index[g].append(np.stack([np.full(len(idx), si), idx], axis=1))
        return DenseBatch(
            images=_to_tensor(images) if images else None,
            weights=weights,
            targets=[torch.from_numpy(np.concatenate(t).astype(np.float32)) for t in targets],
            counts=[[w.shape[0] for w in ws] for ws in weights],
            unit_index=[np.concatenate(ix).astype(np.int64) for ix in index],
            features=[
                torch.from_numpy(np.stack([f[lv] for f in feats]).astype(np.float32))
                for lv in range(len(feats[0]))
            ]
            if feats
            else None,
            context_px=c,
        )


class PatchDataset(torch.utils.data.Dataset):
    """Training batches of spot-centred patches, indexed by step (first geometry only).

    Args:
        slides: training slides.
        patch_um: patch side in µm.
        input_px: side in px the patch is resampled to.
        batch_size, seed, augment, rank, world_size, colour: as for :class:`DenseCropDataset`.
        features: cached pooled encoder features (``read(slide_index, unit_index, params) ->
            (F,)``, :class:`hexpress.train.feature_cache.PooledFeatures`), read instead of pixels.
    """

    def __init__(
        self,
        slides: list[SlideData],
        *,
        patch_um: float,
        input_px: int,
        batch_size: int,
        seed: int,
        augment: AugmentConfig | None,
        rank: int = 0,
        world_size: int = 1,
        colour: bool = True,
        features=None,
    ):
        self._options = dict(
            patch_um=patch_um, input_px=input_px, batch_size=batch_size, seed=seed,
            augment=augment, rank=rank, world_size=world_size, colour=colour, features=features,
        )  # fmt: skip
        self.colour = bool(colour)
        self.features = features
        self.slides = slides
        self.patch_um = float(patch_um)
        self.input_px = int(input_px)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = augment
        self.rank, self.world_size = int(rank), int(world_size)

    def replace(self, **changes) -> PatchDataset:
        """A dataset like this one with some constructor arguments changed (e.g. ``slides``)."""
        options = {"slides": self.slides, **self._options, **changes}
        return PatchDataset(options.pop("slides"), **options)

    @cached_property
    def stream(self) -> _AnchorStream:
        """The anchor units, in a seeded order per epoch (built on first use)."""
        return _AnchorStream(self.slides, self.seed)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> PatchBatch:
        b = self.batch_size
        units = self.stream.take((int(step) * self.world_size + self.rank) * b, b)
        rng = np.random.default_rng([self.seed, int(step), self.rank])
        return self.batch(units, rng)

    def batch(self, units: np.ndarray, rng: np.random.Generator | None) -> PatchBatch:
        """Patches of ``(slide, unit)`` pairs; augmented when ``rng`` is given."""
        images, targets, feats = [], [], []
        for si, ui in units:
            us = self.slides[int(si)].units[0]
            params = None
            if rng is not None and self.augment is not None:
                params = sample_params(self.augment, rng)
                if not self.colour:
                    params = AugmentParams(k=params.k, flip=params.flip)
            if self.features is not None:
                feats.append(self.features.read(int(si), int(ui), params))
            else:
                img = self.slides[int(si)].read_patch(us.centers_um[ui], self.patch_um,
                                                      self.input_px)  # fmt: skip
                images.append(augment(img, params) if params is not None else img)
            targets.append(us.targets[int(ui)].toarray()[0])
        return PatchBatch(
            images=_to_tensor(images) if images else None,
            targets=torch.from_numpy(np.stack(targets).astype(np.float32)),
            unit_index=np.asarray(units, dtype=np.int64).reshape(-1, 2),
            features=torch.from_numpy(np.stack(feats).astype(np.float32)) if feats else None,
        )


# -- validation ---------------------------------------------------------------------------------


def _val_units(slides: list[SlideData], all_units: bool, max_units: int, seed: int) -> np.ndarray:
    """(slide, unit) pairs of first-geometry validation units, a seeded subset of at most
    ``max_units`` in a fixed order."""
    pairs = []
    for i, s in enumerate(slides):
        us = s.units[0]
        m = us.measured if all_units else (us.measured & us.val)
        pairs.append(np.stack([np.full(int(m.sum()), i), np.flatnonzero(m)], axis=1))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    if max_units and len(pairs) > max_units:
        keep = np.random.default_rng([seed, 0xA1]).choice(len(pairs), max_units, replace=False)
        pairs = pairs[np.sort(keep)]
    return pairs.astype(np.int64)


def dense_val_batches(
    dataset: DenseCropDataset,
    slides: list[SlideData],
    *,
    all_units: bool,
    max_units: int,
    seed: int,
):
    """Fixed validation batches of crops centred on validation units (no augmentation).

    Each unit is evaluated once, in the first crop that holds it (centre inside, coverage
    ``min_coverage``). ``all_units``: every measured unit (validation samples); otherwise the
    units flagged ``val`` (held-out blocks of training samples).

    Yields:
        :class:`DenseBatch` of at most ``dataset.batch_size`` crops.
    """
    view = dataset.replace(slides=slides, align_px=1, context_px=0, features=None)
    pairs = _val_units(slides, all_units, max_units, seed)
    done = [[np.zeros(len(us), bool) for us in s.units] for s in slides]  # units already evaluated
    s = dataset.crop_px
    crops, allowed = [], []
    chosen = [np.zeros(len(sl.units[0]), bool) for sl in slides]
    for si, ui in pairs:
        chosen[si][ui] = True
    for si, ui in pairs:
        slide = slides[si]
        if done[si][0][ui]:
            continue
        cx, cy = slide.units[0].centers_model_px(dataset.model_mpp, index=[ui])[0]
        x0, y0 = int(math.floor(cx - s / 2)), int(math.floor(cy - s / 2))
        ok = []
        for g, us in enumerate(slide.units):
            base = us.measured if all_units else (us.measured & us.val)
            if g == 0:
                base = base & chosen[si]
            m = base & ~done[si][g]
            idx, _ = crop_units(
                us,
                m,
                x0,
                y0,
                s,
                model_mpp=dataset.model_mpp,
                stride=dataset.stride,
                min_coverage=dataset.min_coverage,
            )
            done[si][g][idx] = True
            sel = np.zeros(len(us), bool)
            sel[idx] = True
            ok.append(sel)
        crops.append((int(si), x0, y0))
        allowed.append(ok)
        if len(crops) == dataset.batch_size:
            yield view._assemble(crops, None, train=False, allowed=allowed)
            crops, allowed = [], []
    if crops:
        yield view._assemble(crops, None, train=False, allowed=allowed)


def patch_val_batches(
    dataset: PatchDataset,
    slides: list[SlideData],
    *,
    all_units: bool,
    max_units: int,
    seed: int,
    batch_size: int | None = None,
):
    """Fixed validation batches of patches (no augmentation); see :func:`dense_val_batches`."""
    view = dataset.replace(slides=slides)
    pairs = _val_units(slides, all_units, max_units, seed)
    b = batch_size or dataset.batch_size
    for i in range(0, len(pairs), b):
        yield view.batch(pairs[i : i + b], None)


def all_train_patches(dataset: PatchDataset, batch_size: int):
    """Every supervised unit's patch once, in a fixed order, unaugmented (closed-form fits)."""
    pairs = dataset.stream.anchors
    for i in range(0, len(pairs), batch_size):
        yield dataset.batch(pairs[i : i + batch_size], None)
