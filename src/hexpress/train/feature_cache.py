"""Frozen-encoder features of training slides, computed once per dihedral transform and kept on disk.

Training a dense model's decoder on a frozen encoder does not need the encoder's forward pass at
every step: the encoder pyramid of each training slide is computed once per transform of the
square's 8 symmetries (flip left-right, then ``k`` quarter turns, as
:mod:`hexpress.train.augment`) at ``model_mpp``, and each step slices it.

The frame: the slide at ``model_mpp`` (``shape_at``), white-padded by ``pad_px`` on every side
and then on the bottom/right up to a multiple of the network's total downsampling ``R``
(the *canvas*; ``pad_px`` is a multiple of ``R`` and covers every aligned training crop, see
:func:`hexpress.train.data.aligned_pad_px`). Transform ``t`` maps the canvas as
:func:`hexpress.train.augment.d4_image` maps an image, and level ``l`` of its pyramid (stride
``s_l``) is stored as a ``(C_l, H_t / s_l, W_t / s_l)`` array. The pyramid is computed tile by
tile with a margin of the model's receptive field (``context_px``), as whole-slide inference does
(:mod:`hexpress.infer.tiling`), so every stored cell equals one untiled pass over the canvas.

A training crop at corner ``(x0, y0)`` (a multiple of ``R``), side ``S`` and transform ``t`` is
read as the slice of the canvas rectangle ``[x0 + pad, y0 + pad, S, S]`` mapped by ``t``, at each
level's stride. That slice is exactly what the encoder gives for the transformed crop read with
``context_px`` of its surroundings (:class:`hexpress.train.data.DenseCropDataset` with
``context_px``), which is how a frozen encoder is run on the fly; both paths round the features
to the cache's dtype, so a run learns the same numbers from either.

Layout, one zarr group per slide, encoder and ``model_mpp``::

    <root>/<sample_id>/<encoder>_<mpp>umpx[_stain-<hash>]/   (the suffix with data.stain)
        zarr.json           attrs: kind, format_version, key (what the features depend on)
        t<t>/l<l>           (C_l, H_t / s_l, W_t / s_l) float16
        done/t<t>.json      the key and transform, written last (atomically) per transform

The key holds the encoder name, a SHA-256 of its weights, ``model_mpp``, the levels, the slide
file's SHA-256 (or of its pixels for in-memory images), its stain normalisation (``data.stain``),
the canvas and the dtype. A group whose
key differs is rebuilt, with a log line naming what changed; a transform without its ``done``
file (a killed or failed build) is computed again, so a half-written cache never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hexpress._files import TEMP_GLOB, atomic_dir, sha256_file, write_json
from hexpress.errors import ConfigError, FormatError
from hexpress.train.augment import AugmentParams, d4_image, d4_points

__all__ = [
    "FORMAT_VERSION",
    "FeatureCache",
    "build_feature_cache",
    "build_pooled_cache",
    "PooledFeatures",
    "cache_key",
    "cache_size_bytes",
    "clear_cache",
    "describe_cache",
    "transform_index",
    "transforms_for",
    "weights_sha256",
    "slide_sha256",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_KIND = "hexpress-feature-cache"


# -- what a cache depends on ----------------------------------------------------------------------


def transform_index(params: AugmentParams | None) -> int:
    """``k + 4 * flip`` of an augmentation draw (0: identity, also for ``None``)."""
    if params is None:
        return 0
    return int(params.k) % 4 + 4 * int(bool(params.flip))


def transforms_for(augment) -> list[int]:
    """The transforms an augmentation config can draw (all 8 with flips and rot90)."""
    if augment is None:
        return [0]
    ks = range(4) if augment.rot90 else [0]
    flips = (False, True) if augment.flips else (False,)
    return sorted(k + 4 * f for f in flips for k in ks)


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values, in order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)};".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def slide_sha256(slide) -> str:
    """SHA-256 of a training slide's image file, or of its pixels when it has no file."""
    path = getattr(slide, "image_path", None)
    if path is not None and Path(path).is_file():
        return sha256_file(path)
    img = slide.image
    arr = getattr(img, "array", None)
    if arr is None:
        h, w = img.shape_at(img.mpp)
        arr = img.read_region(0, 0, w, h, mpp=img.mpp, units="target")
    h = hashlib.sha256(f"{arr.shape}:{arr.dtype}:{img.mpp!r};".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def cache_key(model, slide, *, model_mpp: float, pad_px: int, context_px: int,
              dtype: str = "float16") -> dict:  # fmt: skip
    """What the cached pyramid of ``slide`` depends on (stored with it and checked on reuse)."""
    h, w = slide.source.shape_at(model_mpp)
    r = int(model.reduction)
    return {
        "encoder": str(model.encoder.name),
        "weights_sha256": weights_sha256(model.encoder),
        "model_mpp": float(model_mpp),
        "levels": [int(s) for s in model.level_strides],
        "slide": slide.sample_id,
        "slide_sha256": slide_sha256(slide),
        "stain": getattr(slide, "stain", None),
        "slide_shape": [int(h), int(w)],
        "pad_px": int(pad_px),
        "canvas_shape": [_round_up(h + 2 * pad_px, r), _round_up(w + 2 * pad_px, r)],
        "context_px": int(context_px),
        "dtype": str(dtype),
    }


_MAX_CORE_PX = 4096
"""Largest tile core of a cache build: the margins (the receptive field, 512 px for
EfficientNet-Lite0) are recomputed around every core, so cores are large (a canvas of up to 4096 px
is one tile; Lite0 costs about 1.5 µs per pixel on 2 cores at any tile side from 1024 to 3712 px,
so every margin saved pays); the encoder alone on a 5120 px tile fits in a few GB on a CPU."""


def _tile_px(canvas_shape, align: int, context: int) -> int:
    """Tile side whose equal cores cover the canvas in as few tiles as ``_MAX_CORE_PX`` allows."""
    side = max(canvas_shape)
    n = math.ceil(side / _MAX_CORE_PX)
    return _round_up(math.ceil(side / n), align) + 2 * _round_up(context, align)


def _round_up(v: int, a: int) -> int:
    return int(math.ceil(v / a) * a)


def _folder(root: Path, sample_id: str, name: str, stain: dict | None) -> Path:
    """A slide's cache group: one per encoder set-up (``name``) and stain normalisation, so runs
    with and without ``data.stain`` keep their own features instead of rebuilding each other's."""
    return root / sample_id / (name + _stain_suffix(stain))


def _stain_suffix(stain: dict | None) -> str:
    if not stain:
        return ""
    text = json.dumps(stain, sort_keys=True, default=str)
    return "_stain-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def d4_rect(x0: int, y0: int, w: int, h: int, width: int, height: int, k: int, flip: bool):
    """Where the rectangle ``[x0, x0 + w) x [y0, y0 + h)`` of a ``width x height`` image lies
    after :func:`hexpress.train.augment.d4_image`: ``(x0', y0', w', h')``."""
    p = d4_points(np.array([[x0, y0], [x0 + w, y0 + h]]), width, height, k, flip)
    lo, hi = p.min(axis=0), p.max(axis=0)
    return (
        int(round(lo[0])),
        int(round(lo[1])),
        int(round(hi[0] - lo[0])),
        int(round(hi[1] - lo[1])),
    )


def _key_diff(old: dict, new: dict) -> list[str]:
    return [
        f"{k} {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


# -- building -------------------------------------------------------------------------------------


def _open_group(folder: Path, key: dict):
    """The slide's zarr group, created (or recreated, saying why) when its key differs.

    Raises:
        FormatError: ``folder`` exists and is not a hexpress feature cache (never deleted).
    """
    import zarr

    if folder.exists():
        try:
            group = zarr.open_group(str(folder), mode="r+")
            attrs = dict(group.attrs)
        except Exception as e:  # zarr raises several types for foreign folders
            attrs = {"error": str(e)}
        if attrs.get("kind") != _KIND:
            raise FormatError(
                f"{folder} is not a hexpress feature cache ({attrs.get('error') or 'no ' + _KIND!r}"
                " marker); move it away or choose another run.feature_cache folder."
            )
        old = attrs.get("key", {})
        if attrs.get("format_version") == FORMAT_VERSION and old == key:
            return group
        if attrs.get("format_version") != FORMAT_VERSION:
            why = f"format {attrs.get('format_version')} -> {FORMAT_VERSION}"
        else:
            why = "; ".join(_key_diff(old, key))
        log.info("feature cache %s was built for other inputs (%s): rebuilding it", folder, why)
        shutil.rmtree(folder)
    else:
        log.info("no feature cache for %s at %s yet: building it", key["slide"], folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # the group appears under its final name only once it describes itself
    with atomic_dir(folder) as tmp:
        group = zarr.open_group(str(tmp), mode="w")
        group.attrs.update({"kind": _KIND, "format_version": FORMAT_VERSION, "key": key})
    return zarr.open_group(str(folder), mode="r+")


def _marker(folder: Path, t: int) -> Path:
    return folder / "done" / f"t{t}.json"


def _transform_done(folder: Path, t: int, key: dict) -> bool:
    try:
        meta = json.loads(_marker(folder, t).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("key") == key and meta.get("transform") == t


def build_feature_cache(
    model,
    slides: Sequence,
    *,
    root: str | Path,
    model_mpp: float,
    crop_px: int,
    transforms: Sequence[int],
    tile_px: int | None = None,
    dtype: str = "float16",
    progress: bool = True,
) -> FeatureCache:
    """Compute (or reuse) the frozen-encoder pyramid of every slide for every transform.

    Args:
        model: a dense model with ``encode`` / ``level_strides`` / ``reduction`` /
            ``receptive_field_px`` (:class:`hexpress.models.PixNet`); its encoder runs in eval
            mode, without gradients.
        slides: :class:`hexpress.train.data.SlideData` to cache.
        root: the cache folder (``run.feature_cache``).
        model_mpp: µm per input px.
        crop_px: side of the training crops (sets how far the canvas reaches past the slide).
        transforms: transform indices ``k + 4 * flip`` to cache.
        tile_px: encoder tile side (default: equal cores of at most 4096 px plus the margins).
        dtype: storage dtype (``float16``).
        progress: show a progress bar.

    Returns:
        :class:`FeatureCache` over ``slides`` in their order.
    """
    from tqdm.auto import tqdm

    from hexpress.infer.tiling import make_tile_grid
    from hexpress.train.data import aligned_pad_px

    root = Path(root)
    r = int(model.reduction)
    pad = aligned_pad_px(crop_px, r)
    context = int(model.receptive_field_px)
    strides = [int(s) for s in model.level_strides]
    plans = []
    for slide in slides:
        key = cache_key(model, slide, model_mpp=model_mpp, pad_px=pad, context_px=context,
                        dtype=dtype)  # fmt: skip
        name = f"{key['encoder']}_{model_mpp:g}umpx"
        folder = _folder(root, slide.sample_id, name, key["stain"])
        group = _open_group(folder, key)
        todo = [t for t in transforms if not _transform_done(folder, t, key)]
        if tile_px is None:
            tile_px = _tile_px(key["canvas_shape"], r, context)
        grid = make_tile_grid(tuple(key["canvas_shape"]), stride=r, receptive_field_px=context,
                              tile_px=tile_px, align_px=r)  # fmt: skip
        plans.append((slide, key, folder, group, todo, grid))
    total = sum(len(todo) * len(grid) for *_, todo, grid in plans)
    was_training = model.encoder.training
    model.encoder.eval()
    bar = tqdm(total=total, desc="feature cache", unit="tile", disable=not progress or not total)
    try:
        for slide, key, folder, group, todo, grid in plans:
            hc, wc = key["canvas_shape"]
            for t in todo:
                k, flip = t % 4, t >= 4
                ht, wt = (wc, hc) if k % 2 else (hc, wc)
                arrays = []
                for lv, s in enumerate(strides):
                    ch = int(model.encoder.feature_info.channels()[model.levels[lv]])
                    side = max(1, 256 // s)
                    arrays.append(
                        group.create_array(
                            f"t{t}/l{lv}",
                            shape=(ch, ht // s, wt // s),
                            chunks=(ch, side, side),
                            dtype=dtype,
                            overwrite=True,
                        )  # fmt: skip
                    )
                for tile in grid:
                    _encode_tile(model, slide, tile, grid, key, k, flip, arrays, strides, dtype)
                    bar.update(1)
                write_json(_marker(folder, t), {"key": key, "transform": t}, fsync=True)
            log.info(
                "feature cache %s: %d transform(s) built, %d reused, %.1f MB on disk",
                folder, len(todo), len(transforms) - len(todo), cache_size_bytes(folder) / 1e6,
            )  # fmt: skip
    finally:
        bar.close()
        model.encoder.train(was_training)
    return FeatureCache(
        [folder for _, _, folder, *_ in plans],
        [key for _, key, *_ in plans],
        transforms=list(transforms),
    )


@torch.no_grad()
def _encode_tile(model, slide, tile, grid, key, k, flip, arrays, strides, dtype) -> None:
    hc, wc = key["canvas_shape"]
    pad, mpp, r = key["pad_px"], key["model_mpp"], int(model.reduction)
    side = grid.tile_px
    img = slide.image.read_region(
        tile.read_x - pad, tile.read_y - pad, side, side, mpp=mpp, units="target"
    )
    img = d4_image(img, k, flip)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))[None].astype(np.float32))
    device = next(model.parameters()).device
    feats = model.encode((x / 255.0).to(device))
    # the tile's core, in canvas px, then in the transformed tile and the transformed canvas
    cx0, cy0 = tile.cell_x0 * r, tile.cell_y0 * r
    cw, ch = (tile.cell_x1 - tile.cell_x0) * r, (tile.cell_y1 - tile.cell_y0) * r
    tx, ty, tw, th = d4_rect(cx0 - tile.read_x, cy0 - tile.read_y, cw, ch, side, side, k, flip)
    ux, uy, _, _ = d4_rect(cx0, cy0, cw, ch, wc, hc, k, flip)
    for f, s, arr in zip(feats, strides, arrays, strict=True):
        core = f[0, :, ty // s : (ty + th) // s, tx // s : (tx + tw) // s]
        arr[:, uy // s : (uy + th) // s, ux // s : (ux + tw) // s] = (
            core.to(getattr(torch, dtype)).cpu().numpy()
        )


# -- reading --------------------------------------------------------------------------------------


IN_MEMORY_BYTES = 4 << 30
"""Cached pyramids up to this many bytes in all are read into memory on first use (per slide and
transform, in the order training asks for them); the rest stay on disk. A crop then costs array
slices instead of a zarr read of every chunk it touches (for a 256 px crop of Lite0's stride 8 /
16 / 32 levels on 2 busy cores: 0.5 ms instead of 19 ms)."""


@dataclass
class FeatureCache:
    """Cached pyramids of a list of slides, read as training crops (``DenseCropDataset.features``).

    Attributes:
        folders: one cache group per slide, in the dataset's slide order.
        keys: their keys.
        transforms: the transforms cached (a crop drawn with another one is an error).
        memory_bytes: how many bytes of pyramids to hold in memory (``IN_MEMORY_BYTES``; 0 reads
            every crop from disk).
    """

    folders: list[Path]
    keys: list[dict]
    transforms: list[int]
    memory_bytes: int = IN_MEMORY_BYTES

    def __post_init__(self) -> None:
        self._arrays: dict[tuple[int, int], list] = {}
        self._in_memory = 0

    def __getstate__(self) -> dict:  # loader workers reopen the stores
        return {"folders": self.folders, "keys": self.keys, "transforms": self.transforms,
                "memory_bytes": self.memory_bytes}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._arrays = {}
        self._in_memory = 0

    def _levels(self, si: int, t: int) -> list:
        got = self._arrays.get((si, t))
        if got is None:
            import zarr

            if t not in self.transforms:
                raise ConfigError(
                    f"transform {t} is not in the feature cache (cached: {self.transforms}); "
                    "build the cache with the run's augmentation."
                )
            group = zarr.open_group(str(self.folders[si]), mode="r")
            got = [group[f"t{t}/l{lv}"] for lv in range(len(self.keys[si]["levels"]))]
            size = sum(math.prod(a.shape) * a.dtype.itemsize for a in got)
            if self._in_memory + size <= self.memory_bytes:
                got = [np.asarray(a[:]) for a in got]
                self._in_memory += size
            self._arrays[(si, t)] = got
        return got

    def read(self, si: int, x0: int, y0: int, crop_px: int, params: AugmentParams | None):
        """The pyramid of the crop at ``(x0, y0)`` (slide px at ``model_mpp``, multiples of the
        network's downsampling) after ``params``' flip/rotation: per level
        ``(C_l, crop_px / s_l, crop_px / s_l)`` in the cache's dtype."""
        key = self.keys[si]
        pad = key["pad_px"]
        hc, wc = key["canvas_shape"]
        t = transform_index(params)
        x, y = x0 + pad, y0 + pad
        if x < 0 or y < 0 or x + crop_px > wc or y + crop_px > hc:
            raise ConfigError(
                f"crop at ({x0}, {y0}) of {crop_px} px lies outside the cached canvas of "
                f"{key['slide']} (pad {pad} px); rebuild the cache for this crop size."
            )
        ux, uy, _, _ = d4_rect(x, y, crop_px, crop_px, wc, hc, t % 4, t >= 4)
        out = []
        for arr, s in zip(self._levels(si, t), key["levels"], strict=True):
            n = crop_px // s
            out.append(np.asarray(arr[:, uy // s : uy // s + n, ux // s : ux // s + n]))
        return out

    def size_bytes(self) -> int:
        return sum(cache_size_bytes(f) for f in self.folders)


# -- pooled features of spot-centred patches (patch models and ridge) -----------------------------


def pooled_cache_key(model, slide) -> dict:
    """What the pooled patch features of ``slide``'s first-geometry units depend on."""
    us = slide.units[0]
    centers = np.ascontiguousarray(us.centers_um, dtype=np.float64)
    return {
        "kind": "pooled",
        "encoder": str(model.encoder.name),
        "weights_sha256": weights_sha256(model.encoder),
        "patch_um": float(model.patch_um),
        "input_px": int(model.input_px),
        "model_mpp": float(model.patch_um) / int(model.input_px),
        "slide": slide.sample_id,
        "slide_sha256": slide_sha256(slide),
        "stain": getattr(slide, "stain", None),
        "units_sha256": hashlib.sha256(centers.tobytes()).hexdigest(),
        "n_units": len(us),
        "n_features": int(model.encoder.num_features),
        "dtype": "float32",
    }


def build_pooled_cache(
    model,
    slides: Sequence,
    *,
    root: str | Path,
    transforms: Sequence[int],
    batch_size: int = 32,
    progress: bool = True,
) -> PooledFeatures:
    """Compute (or reuse) the frozen encoder's pooled features of every first-geometry unit's
    patch (``model.patch_um`` around its centre, resized to ``model.input_px``), per transform.

    The patch is read and transformed as :class:`hexpress.train.data.PatchDataset` reads it
    (flips and rotations only), and kept as float32, so a fit or a frozen phase from the cache
    learns from exactly the numbers the encoder gives on the fly.

    Returns:
        :class:`PooledFeatures` over ``slides`` in their order.
    """
    from tqdm.auto import tqdm

    from hexpress.train.augment import augment
    from hexpress.train.data import _to_tensor

    root = Path(root)
    plans = []
    for slide in slides:
        key = pooled_cache_key(model, slide)
        name = f"{key['encoder']}_patch{key['patch_um']:g}um_{key['input_px']}px"
        folder = _folder(root, slide.sample_id, name, key["stain"])
        group = _open_group(folder, key)
        plans.append((slide, key, folder, group,
                      [t for t in transforms if not _transform_done(folder, t, key)]))  # fmt: skip
    total = sum(len(todo) * key["n_units"] for _, key, _, _, todo in plans)
    encoder = model.encoder
    was_training = encoder.training
    encoder.eval()
    device = next(model.parameters()).device
    bar = tqdm(total=total, desc="patch features", unit="patch", disable=not progress or not total)
    try:
        for slide, key, folder, group, todo in plans:
            us, n, f = slide.units[0], key["n_units"], key["n_features"]
            for t in todo:
                arr = group.create_array(f"t{t}", shape=(n, f), chunks=(max(1, min(n, 4096)), f),
                                         dtype="float32", overwrite=True)  # fmt: skip
                params = AugmentParams(k=t % 4, flip=t >= 4)
                for i in range(0, n, batch_size):
                    imgs = [
                        augment(
                            slide.read_patch(us.centers_um[u], key["patch_um"], key["input_px"]),
                            params,
                        )  # fmt: skip
                        for u in range(i, min(i + batch_size, n))
                    ]
                    with torch.no_grad():
                        arr[i : i + len(imgs)] = encoder(_to_tensor(imgs).to(device)).cpu().numpy()
                    bar.update(len(imgs))
                write_json(_marker(folder, t), {"key": key, "transform": t}, fsync=True)
    finally:
        bar.close()
        encoder.train(was_training)
    return PooledFeatures([p[2] for p in plans], [p[1] for p in plans], list(transforms))


@dataclass
class PooledFeatures:
    """Cached pooled patch features of a list of slides (``PatchDataset.features``)."""

    folders: list[Path]
    keys: list[dict]
    transforms: list[int]

    def __post_init__(self) -> None:
        self._arrays: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"folders": self.folders, "keys": self.keys, "transforms": self.transforms}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._arrays = {}

    def read(self, si: int, ui: int, params: AugmentParams | None) -> np.ndarray:
        """``(n_features,)`` float32 of unit ``ui`` of slide ``si`` after ``params``' transform."""
        t = transform_index(params)
        got = self._arrays.get((si, t))
        if got is None:
            import zarr

            if t not in self.transforms:
                raise ConfigError(f"transform {t} is not cached (cached: {self.transforms}).")
            got = np.asarray(zarr.open_group(str(self.folders[si]), mode="r")[f"t{t}"][:])
            self._arrays[(si, t)] = got  # small: one row per unit
        return got[int(ui)]

    def size_bytes(self) -> int:
        return sum(cache_size_bytes(f) for f in self.folders)


# -- looking after the cache folder ---------------------------------------------------------------


def cache_size_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_cache(root: str | Path) -> list[dict]:
    """One entry per cached slide group under ``root``: folder, kind (``pyramid`` of dense
    models or ``pooled`` patch features), slide, encoder, ``model_mpp``, transforms complete,
    bytes on disk."""
    import zarr

    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for zj in sorted(root.glob("*/*/zarr.json")):
        folder = zj.parent
        if folder.name.startswith("."):  # a group still being created
            continue
        try:
            attrs = dict(zarr.open_group(str(folder), mode="r").attrs)
        except Exception:  # zarr raises several types for foreign folders
            continue
        if attrs.get("kind") != _KIND:
            continue
        key = attrs.get("key", {})
        done = sorted(t for t in range(8) if _transform_done(folder, t, key))
        out.append(
            {
                "folder": str(folder),
                "kind": key.get("kind", "pyramid"),
                "slide": key.get("slide"),
                "encoder": key.get("encoder"),
                "model_mpp": key.get("model_mpp"),
                "transforms_done": done,
                "bytes": cache_size_bytes(folder),
            }
        )
    return out


def clear_cache(root: str | Path) -> int:
    """Delete the feature cache groups under ``root`` (only folders that are hexpress feature
    caches); returns the bytes freed."""
    root = Path(root)
    freed = 0
    for tmp in root.glob(f"*/{TEMP_GLOB}") if root.is_dir() else []:  # left by a killed build
        if tmp.is_dir() and tmp.name.endswith(".tmp"):
            freed += cache_size_bytes(tmp)
            shutil.rmtree(tmp)
    for entry in describe_cache(root):
        folder = Path(entry["folder"])
        freed += entry["bytes"]
        shutil.rmtree(folder)
        parent = folder.parent
        if parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return freed
