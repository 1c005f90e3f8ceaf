"""Private helpers shared by the readers: finding files, small tables, Matrix Market folders."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from hexpress.errors import FormatError, InputFileError, UnitsError
from hexpress.io.tenx_h5 import GENE_EXPRESSION, TenxMatrix, read_10x_h5

log = logging.getLogger(__name__)


def require_dir(path: str | Path, what: str, layout: str) -> Path:
    """``path`` as a folder, or an :class:`InputFileError` describing the expected layout."""
    path = Path(path)
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise InputFileError(f"{what}: {path} {state}. Expected layout:\n{layout}")
    return path


def find_file(folder: Path, candidates: Sequence[str], what: str, layout: str) -> Path:
    """The first of ``candidates`` (relative to ``folder``) that exists, else a clear error.

    10x downloads prefix file names with the sample name (``<sample>_filtered_feature_bc_matrix.h5``,
    ``<sample>_tissue_positions.csv``): such a name is found too (see :func:`first_existing`).
    """
    found = first_existing(folder, candidates)
    if found is not None:
        return found
    raise InputFileError(
        f"{what} not found in {folder}: expected one of {', '.join(candidates)} (optionally "
        f"prefixed with the sample name and '_'). Expected layout:\n{layout}"
    )


def first_existing(folder: Path, candidates: Sequence[str]) -> Path | None:
    """The first of ``candidates`` that exists under ``folder``, each tried as named and then
    sample-prefixed (``<sample>_<name>`` in the candidate's folder or in ``folder`` itself, when
    exactly one file has that name); ``None`` when none exists.

    Raises:
        InputFileError: several sample-prefixed files match one candidate.
    """
    for name in candidates:
        p = folder / name
        if p.exists():
            return p
        rel = Path(name)
        places = {folder / rel.parent, folder}
        matches = sorted({m for d in places if d.is_dir() for m in d.glob(f"*_{rel.name}")})
        if len(matches) == 1:
            log.info("using %s for %s", matches[0], name)
            return matches[0]
        if len(matches) > 1:
            raise InputFileError(
                f"{folder}: several files match {name} with a sample prefix: "
                f"{', '.join(m.name for m in matches)}. Keep one sample per folder or name the "
                "file explicitly."
            )
    return None


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"Cannot read JSON {path}: {e}.") from e
    if not isinstance(out, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(out).__name__}.")
    return out


def positive(value, name: str, source: Path | str) -> float | None:
    """``value`` as a positive finite float, ``None`` when absent, else a :class:`UnitsError`."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise UnitsError(f"{source}: {name} must be a positive number, got {value!r}.")
    return v


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_text(path: Path):
    """A text file, gzip or not whatever its name says (some ``.tsv.gz`` are plain text)."""
    import gzip

    return gzip.open(path, "rt") if _is_gzip(path) else open(path)


def read_mtx_folder(folder: Path) -> TenxMatrix:
    """Read a Matrix Market feature-barcode folder (Cell Ranger / Space Ranger layout).

    ``barcodes.tsv[.gz]``, ``features.tsv[.gz]`` (id, name, type) or ``genes.tsv`` (id, name),
    and ``matrix.mtx[.gz]`` holding a features x barcodes matrix.
    """
    layout = "  barcodes.tsv[.gz]\n  features.tsv[.gz] (or genes.tsv)\n  matrix.mtx[.gz]"
    bc_path = find_file(folder, ["barcodes.tsv.gz", "barcodes.tsv"], "Barcode list", layout)
    ft_path = find_file(
        folder,
        ["features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"],
        "Feature list",
        layout,
    )
    mtx_path = find_file(folder, ["matrix.mtx.gz", "matrix.mtx"], "Matrix Market file", layout)
    with _open_text(bc_path) as f:
        barcodes = pd.read_csv(f, sep="\t", header=None, dtype=str)[0].tolist()
    with _open_text(ft_path) as f:
        feats = pd.read_csv(f, sep="\t", header=None, dtype=str)
    ids = feats[0].tolist()
    names = feats[1].tolist() if feats.shape[1] > 1 else list(ids)
    types = feats[2].tolist() if feats.shape[1] > 2 else [GENE_EXPRESSION] * len(ids)
    try:
        with _open_text(mtx_path) as f:
            m = scipy.io.mmread(f)
    except (OSError, ValueError) as e:
        raise FormatError(f"Cannot read Matrix Market file {mtx_path}: {e}.") from e
    m = sp.csr_matrix(m)
    if m.shape != (len(ids), len(barcodes)):
        raise FormatError(
            f"{mtx_path}: the matrix is {m.shape[0]} features x {m.shape[1]} barcodes but "
            f"{ft_path.name} lists {len(ids)} features and {bc_path.name} {len(barcodes)} barcodes."
        )
    return TenxMatrix(m.T.tocsr(), barcodes, names, ids, types)


def read_feature_matrix(path: Path) -> TenxMatrix:
    """A 10x ``.h5`` file or a Matrix Market folder."""
    return read_mtx_folder(path) if path.is_dir() else read_10x_h5(path)


def gene_expression_only(m: TenxMatrix, source: Path) -> TenxMatrix:
    """Drop non-gene features (antibody capture, control probes) so units are genes only."""
    keep = np.array([t == GENE_EXPRESSION for t in m.feature_types])
    if not keep.any():
        raise FormatError(
            f"{source}: no feature has type {GENE_EXPRESSION!r} "
            f"(types found: {sorted(set(m.feature_types))})."
        )
    if not keep.all():
        dropped = sorted({t for t, k in zip(m.feature_types, keep, strict=True) if not k})
        log.info("%s: dropped %d non-gene features (%s)", source, int((~keep).sum()), dropped)
        m = m.select_features(keep)
    return m


def polygon_area(vertices: np.ndarray) -> float:
    """Area of a simple polygon, ``(k, 2)`` vertices in any order of winding (shoelace)."""
    v = np.asarray(vertices, dtype=np.float64)
    x, y = v[:, 0], v[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def is_blank(path: Path) -> bool:
    """True for an image of a single colour (e.g. an empty placeholder PNG)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((256, 256))
            extrema = im.convert("RGB").getextrema()
    except Exception:  # unreadable images are reported by open_image later
        return False
    return all(lo == hi for lo, hi in extrema)
