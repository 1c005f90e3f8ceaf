"""The pixel size of a sample's full-resolution image: one rule for every reader.

Sources, best first (see docs/formats.md for where each fact comes from):

1. ``given``: what the user passed (``mpp=...``, ``--mpp``);
2. ``metadata``: the image file's own pixel size (TIFF resolution tags, OME-XML, SVS);
3. ``pitch``: the spot or bin lattice measured in full-resolution pixels (Visium: 100 µm
   centre to centre; legacy ST: 200 µm; Visium HD: ``microns_per_pixel`` and the bin pitch);
4. ``scalefactors``: ``spot_diameter_fullres``, which spans a *theoretical 65 µm* spot for
   Visium (never the 55 µm capture spot) and one bin for Visium HD.

The first source present wins; every other one present is compared with it and a disagreement
of more than :data:`TOLERANCE` is logged as a warning naming both values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hexpress.errors import UnitsError

__all__ = [
    "Estimate",
    "resolve_mpp",
    "mpp_from_lattice",
    "image_file_mpp",
    "TOLERANCE",
    "VISIUM_SCALEFACTOR_SPOT_UM",
]

log = logging.getLogger(__name__)

TOLERANCE = 0.02
# Space Ranger's spot_diameter_fullres: "the number of pixels that span the diameter of a
# theoretical 65 µm spot in the original, full-resolution image" (10x Space Ranger docs).
VISIUM_SCALEFACTOR_SPOT_UM = 65.0
RANKS = ("given", "metadata", "pitch", "scalefactors")


@dataclass(frozen=True)
class Estimate:
    """A pixel size (µm per full-resolution pixel) and where it comes from."""

    mpp: float
    source: str


def _as_list(x) -> list[Estimate]:
    if x is None:
        return []
    if isinstance(x, Estimate):
        return [x]
    return [e for e in x if e is not None]


def resolve_mpp(
    what: str,
    *,
    given: float | None = None,
    metadata: Estimate | None = None,
    pitch: Estimate | Sequence[Estimate | None] | None = None,
    scalefactors: Estimate | Sequence[Estimate | None] | None = None,
) -> Estimate | None:
    """Choose the full-resolution pixel size by precedence and report disagreements.

    Args:
        what: the sample or file, named in messages.
        given: the user's value (µm per full-resolution pixel).
        metadata: from the image file.
        pitch: from the spot / bin lattice (several allowed, best first).
        scalefactors: from scale factors (several allowed, best first).

    Returns:
        The chosen :class:`Estimate`, or ``None`` when no source has a value.

    Raises:
        UnitsError: ``given`` is not a positive finite number.
    """
    found: list[tuple[str, Estimate]] = []
    if given is not None:
        v = float(given) if isinstance(given, (int, float, np.floating)) else math.nan
        if not math.isfinite(v) or v <= 0:
            raise UnitsError(
                f"{what}: mpp must be a positive number of µm per pixel, got {given!r}."
            )
        found.append(("given", Estimate(v, "given")))
    if metadata is not None:
        found.append(("metadata", metadata))
    found += [("pitch", e) for e in _as_list(pitch)]
    found += [("scalefactors", e) for e in _as_list(scalefactors)]
    found = [(r, e) for r, e in found if e.mpp is not None and math.isfinite(e.mpp) and e.mpp > 0]
    if not found:
        return None
    chosen = found[0][1]
    for _, other in found[1:]:
        rel = abs(other.mpp - chosen.mpp) / chosen.mpp
        if rel > TOLERANCE:
            log.warning(
                "%s: pixel size %.5g µm/px from %s and %.5g µm/px from %s differ by %.1f %%; "
                "using %.5g",
                what,
                chosen.mpp,
                chosen.source,
                other.mpp,
                other.source,
                100 * rel,
                chosen.mpp,
            )
    log.info("%s: %.5g µm per full-resolution pixel (%s)", what, chosen.mpp, chosen.source)
    return chosen


def mpp_from_lattice(
    array_rc: np.ndarray, xy_px: np.ndarray, *, lattice: str, pitch_um: float
) -> float | None:
    """µm per pixel from lattice indices and pixel positions (an affine least-squares fit).

    Args:
        array_rc: ``(n, 2)`` lattice indices ``(row, col)`` (Space Ranger ``array_row``,
            ``array_col``; legacy ST ``y``, ``x``).
        xy_px: ``(n, 2)`` centres, x then y, in pixels of the image to measure.
        lattice: ``"hex"`` (Visium: ``array_col`` steps 2 per spot along a row, rows
            ``sqrt(3) / 2`` pitches apart) or ``"square"`` (legacy ST, Visium HD bins).
        pitch_um: centre-to-centre distance of neighbouring spots / bins.

    Returns:
        The pixel size, or ``None`` when the points do not span two dimensions (fewer than three
        non-collinear spots). Rotation, flips and shear are absorbed by the fit.
    """
    rc = np.asarray(array_rc, dtype=np.float64).reshape(-1, 2)
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    ok = np.isfinite(rc).all(1) & np.isfinite(xy).all(1)
    rc, xy = rc[ok], xy[ok]
    if len(rc) < 3:
        return None
    if lattice == "hex":
        um = np.stack([rc[:, 1] * pitch_um / 2, rc[:, 0] * pitch_um * math.sqrt(3) / 2], axis=1)
    elif lattice == "square":
        um = np.stack([rc[:, 1] * pitch_um, rc[:, 0] * pitch_um], axis=1)
    else:
        raise ValueError(f"lattice must be 'hex' or 'square', got {lattice!r}")
    design = np.column_stack([um, np.ones(len(um))])
    if np.linalg.matrix_rank(design) < 3:
        return None
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    det = abs(np.linalg.det(coef[:2, :2]))  # pixels² per µm²
    if not math.isfinite(det) or det <= 0:
        return None
    return float(1.0 / math.sqrt(det))


def image_file_mpp(path: str | Path) -> float | None:
    """The pixel size an image file states in its metadata, or ``None``."""
    from hexpress.io.image import open_image

    try:
        return float(open_image(path).mpp)
    except UnitsError:
        return None
