"""Stain normalisation of H&E slides to a reference (Macenko et al., ISBI 2009).

A slide's colours are converted to optical density (OD) ``-log((I + 1) / Io)``; pixels with
``OD < beta`` in any channel are glass and ignored, and so are pixels darker than ``dark_od`` in
every channel (black: the padding of an image pasted on a black canvas, as HER2ST's A1 is, or
ink; left in, black is a third "stain" along the grey axis and pulls the eosin vector onto it). On the tissue pixels the plane of the two
largest principal directions of OD holds the haematoxylin and eosin vectors: they are the
directions at the ``alpha`` and ``100 - alpha`` percentiles of the angle in that plane
(haematoxylin the one with the larger red OD). Each pixel's stain concentrations are its OD
solved against the two vectors (least squares); ``max_conc`` is their 99th percentile over the
tissue pixels. (The original and ``torchstain`` take that percentile over every pixel, glass
included, which makes it depend on how much of the image is tissue; the two agree on an image
of tissue only.)

Normalising a slide maps its own stains onto the reference's: concentrations scaled by
``max_conc_ref / max_conc_slide`` and recomposed with the reference vectors. That is one fixed
3 x 3 linear map in OD space per slide, so every tile of a slide gets the same transform:
the slide's stains are fitted once, on a thumbnail of the whole slide
(:data:`FIT_MAX_SIDE` px), never per tile.

:class:`StainNormalizer` is what training records in the checkpoint (the reference's stain
vectors and concentrations, ``Io``, ``alpha``, ``beta``), and :func:`stain_normalized` is what
inference applies, from that record alone: a checkpoint trained on normalised slides predicts on
slides normalised exactly the same way, with no reference image needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hexpress.errors import ConfigError, DataMismatchError, FormatError
from hexpress.io.image import SlideImage

__all__ = [
    "FIT_MAX_SIDE",
    "STAIN_METHODS",
    "StainNormalizedImage",
    "StainNormalizer",
    "Stains",
    "fit_macenko",
    "normalize_rgb",
    "reference_normalizer",
    "stain_normalized",
]

log = logging.getLogger(__name__)

STAIN_METHODS = ("none", "macenko")
FIT_MAX_SIDE = 2048  # a slide's stains are fitted on a thumbnail of at most this many px a side
MIN_TISSUE_PIXELS = 500  # fewer tissue pixels than this: no stain estimate is trustworthy


@dataclass(frozen=True)
class Stains:
    """The stains of one image.

    Attributes:
        vectors: ``(3, 2)`` unit OD vectors (RGB rows), columns haematoxylin then eosin.
        max_conc: ``(2,)`` 99th percentile of each stain's concentration on the tissue.
    """

    vectors: np.ndarray
    max_conc: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "vectors": np.asarray(self.vectors, dtype=float).tolist(),
            "max_conc": np.asarray(self.max_conc, dtype=float).tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stains:
        try:
            v = np.asarray(d["vectors"], dtype=np.float64)
            c = np.asarray(d["max_conc"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"a stain record needs vectors (3 x 2) and max_conc (2): {e}") from e
        if v.shape != (3, 2) or c.shape != (2,) or not (np.isfinite(v).all() and (c > 0).all()):
            raise FormatError(
                f"invalid stain record: vectors {v.shape} (need 3 x 2), max_conc {c.tolist()} "
                "(need two positive numbers)."
            )
        return cls(v, c)


def _od(rgb: np.ndarray, io: float) -> np.ndarray:
    """``(n, 3)`` float64 optical density of uint8 RGB pixels."""
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)


def fit_macenko(
    rgb: np.ndarray,
    *,
    io: float = 240.0,
    alpha: float = 1.0,
    beta: float = 0.15,
    dark_od: float = 2.0,
    source: str = "image",
) -> Stains:
    """Macenko stain vectors and concentrations of an H&E image.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        io: transmitted light intensity (the brightness of glass).
        alpha: angle percentile defining the extreme stain directions.
        beta: OD below which a channel counts as transparent (glass).
        dark_od: pixels with an OD above this in every channel (RGB below about
            ``Io * exp(-dark_od)``: 32 of 255 by default) are black, not stain, and ignored.
        source: the image's name, for messages.

    Returns:
        :class:`Stains`.

    Raises:
        DataMismatchError: fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise FormatError(f"{source}: need (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}.")
    od = _od(rgb, io)
    tissue = od[~np.any(od < beta, axis=1) & ~np.all(od > dark_od, axis=1)]
    if tissue.shape[0] < MIN_TISSUE_PIXELS:
        raise DataMismatchError(
            f"{source} has no tissue to fit stains on: {tissue.shape[0]} of {od.shape[0]} pixels "
            f"are stained (optical density >= {beta} in every channel and not black; "
            f"{MIN_TISSUE_PIXELS} needed). Is it blank glass or background? Choose a stain "
            "reference that shows H&E-stained tissue."
        )
    _, eigvecs = np.linalg.eigh(np.cov(tissue.T))
    plane = eigvecs[:, 1:3]  # the two largest principal directions
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    vectors = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    vectors = vectors * np.sign(vectors.sum(axis=0, keepdims=True))  # OD vectors point outward
    conc = np.linalg.lstsq(vectors, tissue.T, rcond=None)[0]
    max_conc = np.percentile(conc, 99, axis=1)
    if not (max_conc > 0).all():
        raise DataMismatchError(
            f"{source}: stain concentrations are not positive ({max_conc.tolist()}); the image "
            "does not look like H&E."
        )
    return Stains(vectors, max_conc)


def _od_map(source: Stains, target: Stains) -> np.ndarray:
    """``(3, 3)`` matrix ``M`` with ``od_target = M @ od_source`` (per pixel, column vectors)."""
    unmix = np.linalg.pinv(source.vectors)  # (2, 3): least-squares concentrations
    return target.vectors @ np.diag(target.max_conc / source.max_conc) @ unmix


def normalize_rgb(rgb: np.ndarray, source: Stains, target: Stains, *, io: float = 240.0):
    """``(H, W, 3)`` uint8 RGB with stains ``source`` recoloured to stains ``target``.

    Returns:
        ``(H, W, 3)`` uint8 (rounded; clipped to ``[0, 255]``).
    """
    rgb = np.asarray(rgb)
    m = _od_map(source, target).astype(np.float32)
    # OD of each of the 256 grey levels, looked up rather than a log per pixel
    lut = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / io)).astype(np.float32)
    od = lut[rgb.reshape(-1, 3)]
    out = np.float32(io) * np.exp(-(od @ m.T)) - np.float32(1.0)  # the inverse of the OD
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


@dataclass(frozen=True)
class StainNormalizer:
    """Normalisation of every slide to one reference's stains (what a checkpoint records).

    Attributes:
        target: the reference's :class:`Stains`.
        reference: what the reference was (a sample id or a file), for the record.
        io, alpha, beta, dark_od: the Macenko parameters (see :func:`fit_macenko`).
    """

    target: Stains
    reference: str = ""
    io: float = 240.0
    alpha: float = 1.0
    beta: float = 0.15
    dark_od: float = 2.0
    method: str = "macenko"

    @classmethod
    def from_image(cls, image: SlideImage | np.ndarray, *, reference: str = "", **kw):
        """Fit the reference stains on a slide (its thumbnail) or an RGB array."""
        rgb = _fit_pixels(image)
        target = fit_macenko(rgb, source=f"stain reference {reference or image}", **kw)
        log.info("stain reference %s: H %s, E %s, max conc %s", reference,
                 np.round(target.vectors[:, 0], 3).tolist(),
                 np.round(target.vectors[:, 1], 3).tolist(),
                 np.round(target.max_conc, 3).tolist())  # fmt: skip
        return cls(target, reference, **kw)

    @classmethod
    def from_file(cls, path: str | Path, **kw) -> StainNormalizer:
        """Fit the reference stains on an image file (its pixel size does not matter)."""
        from hexpress.io.image import open_image

        p = Path(path).expanduser()
        try:
            image = open_image(p)
        except Exception:  # a PNG / JPEG has no pixel size; colours do not need one
            image = open_image(p, mpp=1.0)
        return cls.from_image(image, reference=str(p), **kw)

    def to_meta(self) -> dict[str, Any]:
        """The JSON record kept in checkpoints."""
        return {
            "method": self.method,
            "reference": self.reference,
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
            "dark_od": self.dark_od,
            "fit_max_side": FIT_MAX_SIDE,
            **self.target.to_dict(),
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> StainNormalizer:
        method = meta.get("method")
        if method != "macenko":
            raise FormatError(
                f"unknown stain normalisation {method!r} in the checkpoint; this hexpress knows "
                f"{STAIN_METHODS[1:]}. Upgrade hexpress."
            )
        try:
            params = {k: float(meta[k]) for k in ("io", "alpha", "beta", "dark_od")}
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"the checkpoint's stain record lacks a parameter: {e}.") from e
        return cls(Stains.from_dict(meta), str(meta.get("reference", "")), **params)

    def fit(self, image: SlideImage | np.ndarray, source: str = "slide") -> Stains:
        """The stains of one slide, fitted on its thumbnail with this normaliser's parameters."""
        return fit_macenko(
            _fit_pixels(image), io=self.io, alpha=self.alpha, beta=self.beta,
            dark_od=self.dark_od, source=source,
        )  # fmt: skip

    def wrap(self, image: SlideImage) -> StainNormalizedImage:
        """``image`` read through this normalisation (its stains fitted once, now)."""
        if isinstance(image, StainNormalizedImage):
            if image.normalizer == self:
                return image
            image = image.base
        return StainNormalizedImage(image, self)

    def __eq__(self, other) -> bool:
        return isinstance(other, StainNormalizer) and self.to_meta() == other.to_meta()

    def __hash__(self) -> int:
        return hash(repr(self.to_meta()))


def _fit_pixels(image: SlideImage | np.ndarray) -> np.ndarray:
    if isinstance(image, SlideImage):
        return image.thumbnail(FIT_MAX_SIDE)[0]
    return np.asarray(image)


class StainNormalizedImage(SlideImage):
    """A slide read through a stain normalisation: every ``read_region`` (and so every tile,
    crop and thumbnail) is recoloured with the slide's fixed OD map."""

    def __init__(self, base: SlideImage, normalizer: StainNormalizer):
        self.base = base
        self.normalizer = normalizer
        self.width, self.height, self.mpp, self.path = base.width, base.height, base.mpp, base.path
        name = str(base.path) if base.path is not None else repr(base)
        self.stains = normalizer.fit(base, source=name)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.base.level_downsamples

    def level_shape(self, level: int) -> tuple[int, int]:
        return self.base.level_shape(level)

    def _read_level(self, level, x0, y0, x1, y1):
        return self.base._read_level(level, x0, y0, x1, y1)

    def read_region(self, *args, **kwargs) -> np.ndarray:
        rgb = self.base.read_region(*args, **kwargs)
        return normalize_rgb(rgb, self.stains, self.normalizer.target, io=self.normalizer.io)

    def __repr__(self) -> str:
        return f"StainNormalized({self.base!r}, reference {self.normalizer.reference!r})"


def stain_normalized(image: SlideImage, record: Mapping[str, Any] | None) -> SlideImage:
    """``image`` normalised as a checkpoint's stain record says (unchanged when it has none).

    This is the one call inference makes, so prediction applies exactly the transform training
    applied.
    """
    if not record or record.get("method") in (None, "none"):
        return image
    return StainNormalizer.from_meta(record).wrap(image)


def reference_normalizer(config, train_ids, samples: Mapping[str, Any]) -> StainNormalizer | None:
    """The normaliser of a ``data.stain`` config: fitted on ``reference`` (a training sample id,
    default the first, or an image file); ``None`` when ``method`` is ``none``.

    Raises:
        ConfigError: the reference is neither a training sample nor an existing image file.
    """
    if config.method == "none":
        return None
    ref = config.reference or train_ids[0]
    if ref in samples:
        if ref not in train_ids:
            raise ConfigError(
                f"data.stain.reference {ref!r} is not a training sample ({list(train_ids)}); a "
                "reference must come from the training side."
            )
        return StainNormalizer.from_image(samples[ref], reference=ref)
    if Path(ref).expanduser().is_file():
        return StainNormalizer.from_file(ref)
    raise ConfigError(
        f"data.stain.reference {ref!r} is neither a training sample id ({list(train_ids)}) nor "
        "an image file."
    )
