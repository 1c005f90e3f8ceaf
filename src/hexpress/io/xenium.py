"""10x Xenium: cells, transcripts and a registered H&E image.

Files read from a Xenium Onboard Analysis output folder::

    cells.parquet            cell_id, x_centroid, y_centroid (µm), cell_area (µm²), ...
    cell_feature_matrix.h5   10x HDF5 feature-barcode matrix, barcodes = cell ids (Q20 already)
    transcripts.parquet      cell_id, feature_name, x_location, y_location (µm), qv,
                             is_gene (XOA >= 3.0), codeword_category (XOA >= 2.0); only the
                             columns needed are read, in batches
    experiment.xenium        JSON manifest; ``pixel_size`` (µm per morphology pixel, 0.2125)
    cell_boundaries.parquet  optional: cell_id, vertex_x, vertex_y (µm), for cell areas

plus an H&E image and its alignment: the 3 x 3 affine matrix CSV that Xenium Explorer exports
after image alignment (``*_he_imagealignment.csv``), or its keypoints CSV
(``fixedX,fixedY,alignmentX,alignmentY``) from which the matrix is fitted. A post-Xenium H&E in the
folder (``*he_image.ome.tif``) and its alignment are found without being named. That matrix maps **H&E image pixels** ``(x, y, 1)`` to **Xenium
morphology pixels** (``pixel_size`` µm each, origin at the Xenium frame's origin). Here the
inverse is applied: ``H&E px = M⁻¹ · (x_µm / pixel_size, y_µm / pixel_size, 1)``. Without an
alignment the H&E image is taken to be registered to the Xenium frame already, origin at (0, 0)
µm, so ``H&E px = µm / mpp``.

Pooling:

* ``pool="cells"``: one unit per cell, counts from ``cell_feature_matrix.h5`` (gene features
  only). Geometry: a **disc of the cell's area-equivalent diameter** ``2 * sqrt(area / π)``
  (``cell_area`` from ``cells.parquet``, else the polygon area from ``cell_boundaries.parquet``,
  else ``size_um`` for every cell). Polygons are not stored.
* ``pool="square"``: transcripts binned into squares of side ``size_um`` on a grid anchored at
  the Xenium frame's origin (0, 0) µm.
* ``pool="disc"``: transcripts within discs of diameter ``size_um`` centred on a hexagonal grid of
  pitch ``pitch_um`` (default ``2 * size_um``, the legacy ST / Visium ratio of about 2); the
  transcripts between discs are not counted, as with real spots.

For ``square`` and ``disc``, transcripts with ``qv < min_qv`` (default 20, the Xenium default)
and non-gene features are dropped: ``is_gene`` false where that column exists, else a
``codeword_category`` other than ``predesigned_gene`` / ``custom_gene``, else names starting
with ``NegControl``, ``BLANK``, ``Unassigned``, ``Deprecated``, ``antisense`` or
``Intergenic``; only units with at least one transcript are kept.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hexpress import _keys as K
from hexpress.data.lattice import DiscLattice, bin_centers_um, bin_index
from hexpress.data.sample import Sample, make_units
from hexpress.errors import (
    ConfigError,
    DataMismatchError,
    FormatError,
    InputFileError,
    UnitsError,
)
from hexpress.io._pixel_size import Estimate, image_file_mpp, resolve_mpp
from hexpress.io._tables import (
    find_file,
    first_existing,
    gene_expression_only,
    polygon_area,
    positive,
    read_json,
    require_dir,
)
from hexpress.io.image import SlideImage, open_image
from hexpress.io.tenx_h5 import read_10x_h5

__all__ = [
    "read_xenium",
    "read_alignment",
    "read_transcripts",
    "find_he_image",
    "xenium_to_image_px",
    "XENIUM_PIXEL_SIZE_UM",
    "CONTROL_PREFIXES",
    "CELL_SHAPES",
    "read_cell_boundaries",
    "POOLS",
]

log = logging.getLogger(__name__)

XENIUM_PIXEL_SIZE_UM = 0.2125
CONTROL_PREFIXES = (
    "NegControl",
    "BLANK",
    "Unassigned",
    "Deprecated",
    "antisense",
    "Intergenic",
)
POOLS = ("cells", "square", "disc")
CELL_SHAPES = ("disc", "polygon")

LAYOUT = """  cells.parquet  (cell_id, x_centroid, y_centroid in µm, cell_area in µm²)
  cell_feature_matrix.h5
  transcripts.parquet  (cell_id, feature_name, x_location, y_location in µm, qv)
  experiment.xenium  (optional; pixel_size)
  plus the H&E image (image=...) and its Xenium Explorer alignment matrix CSV (alignment=...)"""


KEYPOINT_COLUMNS = ("fixedX", "fixedY", "alignmentX", "alignmentY")
# transcripts.parquet: codeword_category values that are genes (XOA >= 2.0; is_gene in >= 3.0)
GENE_CATEGORIES = ("predesigned_gene", "custom_gene")
TRANSCRIPT_BATCH_ROWS = 1_000_000


def read_alignment(path: str | Path, pixel_size_um: float = XENIUM_PIXEL_SIZE_UM) -> np.ndarray:
    """Read a Xenium Explorer alignment: H&E image px -> Xenium morphology px.

    Two files are accepted:

    * the 3 x 3 affine matrix CSV (``*_imagealignment.csv``: three comma-separated rows, the last
      ``0,0,1``);
    * the keypoints CSV (header ``fixedX,fixedY,alignmentX,alignmentY``: ``fixed`` in Xenium µm,
      ``alignment`` in H&E image px), from which the affine matrix is fitted by least squares
      (at least three keypoints not on a line); ``pixel_size_um`` turns µm into morphology px.

    Returns:
        ``(3, 3)`` float64 matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            f"Alignment file not found: {path}. Expected the matrix or keypoints CSV that "
            "Xenium Explorer exports."
        )
    with open(path) as f:
        first = f.readline()
    header = [h.strip().strip('"') for h in first.split(",")]
    if set(KEYPOINT_COLUMNS) <= set(header):
        return _alignment_from_keypoints(path, pixel_size_um)
    rows = []
    with open(path) as f:
        for line in f:
            parts = [p.strip() for p in line.replace(";", ",").split(",") if p.strip()]
            try:
                rows.append([float(p) for p in parts])
            except ValueError:
                continue  # a header line
    M = np.array(rows, dtype=float) if rows else np.zeros((0,))
    if M.shape != (3, 3):
        raise FormatError(
            f"{path}: expected a 3 x 3 affine matrix (three comma-separated rows, the last "
            f"0,0,1) or a keypoints table ({','.join(KEYPOINT_COLUMNS)}) as Xenium Explorer "
            f"exports, got shape {M.shape}."
        )
    _check_affine(M, path)
    return M


def _check_affine(M: np.ndarray, path) -> None:
    if not np.allclose(M[2], [0, 0, 1], atol=1e-6) or abs(np.linalg.det(M[:2, :2])) < 1e-12:
        raise FormatError(
            f"{path}: not an invertible affine matrix (last row {M[2].tolist()}, "
            f"det {np.linalg.det(M[:2, :2]):.3g})."
        )


def _alignment_from_keypoints(path: Path, pixel_size_um: float) -> np.ndarray:
    try:
        kp = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise FormatError(f"Cannot read keypoints {path}: {e}.") from e
    kp.columns = [str(c).strip() for c in kp.columns]
    vals = kp[list(KEYPOINT_COLUMNS)].to_numpy(dtype=float)
    vals = vals[np.isfinite(vals).all(1)]
    src = vals[:, 2:4]  # H&E px
    dst = vals[:, 0:2] / pixel_size_um  # Xenium µm -> morphology px
    design = np.column_stack([src, np.ones(len(src))])
    if len(src) < 3 or np.linalg.matrix_rank(design) < 3:
        raise FormatError(
            f"{path}: {len(src)} keypoint(s); an affine alignment needs at least 3 that are not "
            "on one line. Add keypoints in Xenium Explorer or export the alignment matrix."
        )
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    M = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    resid = design @ coef - dst
    rms_um = float(np.sqrt(np.mean(np.sum(resid**2, axis=1)))) * pixel_size_um
    log.info(
        "%s: affine fitted to %d keypoints (RMS residual %.3g µm)", path.name, len(src), rms_um
    )
    _check_affine(M, path)
    return M


def find_he_image(root: Path) -> tuple[Path | None, Path | None]:
    """The post-Xenium H&E in a Xenium bundle and its alignment file, if there.

    The H&E is ``*he_image.ome.tif`` (as Xenium Onboard Analysis names a post-Xenium H&E; also
    ``images.he_image_filepath`` of ``experiment.xenium`` when present); its alignment is
    ``<name without .ome.tif>alignment.csv`` (``*_he_imagealignment.csv``), else the only
    ``*imagealignment.csv`` or ``*keypoints.csv`` of the folder.
    """
    spec = root / "experiment.xenium"
    named = None
    if spec.is_file():
        imgs = read_json(spec).get("images") or {}
        rel = imgs.get("he_image_filepath") if isinstance(imgs, dict) else None
        if rel and (root / rel).is_file():
            named = root / rel
    cands = sorted(root.glob("*he_image.ome.tif")) + sorted(root.glob("*he_image.ome.tiff"))
    he = named or (cands[0] if len(cands) == 1 else None)
    if he is None and len(cands) > 1:
        raise InputFileError(
            f"{root} holds several H&E images ({', '.join(c.name for c in cands)}); choose one "
            "with image=... (--image)."
        )
    if he is None:
        return None, None
    stem = he.name.replace(".ome.tiff", "").replace(".ome.tif", "")
    exact = root / f"{stem}alignment.csv"
    if exact.is_file():
        return he, exact
    for pattern in ("*imagealignment.csv", "*keypoints.csv"):
        found = sorted(root.glob(pattern))
        if len(found) == 1:
            return he, found[0]
    return he, None


def xenium_to_image_px(
    xy_um: np.ndarray, alignment: np.ndarray | None, pixel_size_um: float, image_mpp: float
) -> np.ndarray:
    """Map ``(n, 2)`` Xenium positions in µm to H&E level-0 pixels (x, y).

    With an alignment ``M`` (H&E px -> Xenium px): ``M⁻¹ · (xy / pixel_size, 1)``. Without:
    ``xy / image_mpp`` (the image is registered to the Xenium frame).
    """
    xy = np.asarray(xy_um, dtype=float)
    if alignment is None:
        return xy / image_mpp
    inv = np.linalg.inv(alignment)
    px = xy / pixel_size_um
    return px @ inv[:2, :2].T + inv[:2, 2]


def _table(path: Path) -> pd.DataFrame:
    try:
        if path.name.endswith(".parquet"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise FormatError(f"Cannot read {path}: {e}.") from e
    for col in ("cell_id", "feature_name"):
        if col in df.columns and len(df) and isinstance(df[col].iloc[0], bytes):
            df[col] = df[col].str.decode("utf-8")
    return df


def _need(df: pd.DataFrame, cols, path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise FormatError(f"{path}: missing column(s) {missing}. Expected layout:\n{LAYOUT}")


def _is_control(names: pd.Series) -> np.ndarray:
    return names.astype(str).str.startswith(CONTROL_PREFIXES).to_numpy()


def read_cell_boundaries(path: Path, cell_ids: list[str]) -> list[np.ndarray]:
    """One ``(k, 2)`` array of vertices (µm, x then y) per cell of ``cell_ids``, in that order.

    A closing vertex equal to the first is dropped (the vertex table is parsed by
    :func:`hexpress.infer.units.read_cells`, as ``predict --cells`` does).

    Raises:
        DataMismatchError: a cell has no boundary.
    """
    from hexpress.infer.units import read_cells

    cells = read_cells(path, mpp=1.0)  # vertex_x / vertex_y over 1 µm per px: µm
    rings = dict(zip((str(i) for i in cells.get_ids()), cells.polygons, strict=True))
    missing = [c for c in cell_ids if c not in rings]
    if missing:
        raise DataMismatchError(
            f"{len(missing)} of {len(cell_ids)} cells have no boundary in {path} (e.g. "
            f"{', '.join(missing[:3])})."
        )
    return [rings[c] for c in cell_ids]


def _polygon_areas(path: Path) -> pd.Series:
    """Shoelace area (µm²) of each cell's boundary polygon."""
    b = _table(path)
    _need(b, ["cell_id", "vertex_x", "vertex_y"], path)
    b["cell_id"] = b["cell_id"].astype(str)

    def area(g):
        return polygon_area(g[["vertex_x", "vertex_y"]].to_numpy(float))

    return b.groupby("cell_id", sort=False)[["vertex_x", "vertex_y"]].apply(area)


def _open_he(
    image: str | Path | None, alignment: np.ndarray | None, mpp: float | None, pixel_size: float
) -> tuple[SlideImage, str]:
    if image is None:
        raise InputFileError(
            "read_xenium needs the H&E image (image=... / --image; a *he_image.ome.tif in the "
            "folder is found by itself) and, unless the image is already registered to the "
            "Xenium frame, its Xenium Explorer alignment (alignment=...). Expected layout:\n"
            f"{LAYOUT}"
        )
    path = Path(image)
    file_mpp = image_file_mpp(path)
    derived = None
    if alignment is not None:
        derived = Estimate(
            pixel_size * math.sqrt(abs(np.linalg.det(alignment[:2, :2]))),
            "the alignment's scale x pixel_size",
        )
    chosen = resolve_mpp(
        str(path),
        given=mpp,
        metadata=None if file_mpp is None else Estimate(file_mpp, f"metadata of {path.name}"),
        pitch=derived,
    )
    if chosen is None:
        raise UnitsError(
            f"{path} has no pixel size and no alignment was given. Pass mpp=... (--mpp), or the "
            "Xenium Explorer alignment (alignment=...)."
        )
    return open_image(path, mpp=chosen.mpp), chosen.source


def _gene_mask(batch: pd.DataFrame) -> np.ndarray:
    """Transcripts of genes: ``is_gene`` where present, else ``codeword_category``, else names
    without a control prefix."""
    if "is_gene" in batch.columns:
        return batch["is_gene"].to_numpy(dtype=bool)
    if "codeword_category" in batch.columns:
        return batch["codeword_category"].astype(str).isin(GENE_CATEGORIES).to_numpy()
    return ~_is_control(batch["feature_name"])


def read_transcripts(
    path: Path, *, min_qv: float, batch_rows: int = TRANSCRIPT_BATCH_ROWS
) -> tuple[pd.DataFrame, dict]:
    """Gene transcripts of ``transcripts.parquet`` (or ``.csv.gz``) passing ``qv >= min_qv``.

    Only ``feature_name``, ``x_location``, ``y_location`` and, where present, ``qv``,
    ``is_gene`` and ``codeword_category`` are read, ``batch_rows`` rows at a time, so memory
    holds the kept transcripts' names and positions, not the whole table.

    Returns:
        ``(table, stats)``: columns ``feature_name`` (categorical), ``x_location``,
        ``y_location`` (µm); counts of rows read and dropped.
    """
    need = ["feature_name", "x_location", "y_location"]
    optional = ["qv", "is_gene", "codeword_category"]
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (OSError, ValueError) as e:
            raise FormatError(f"Cannot read {path}: {e}.") from e
        names = pf.schema_arrow.names
        _need(pd.DataFrame(columns=names), need, path)
        cols = need + [c for c in optional if c in names]
        batches = (b.to_pandas() for b in pf.iter_batches(batch_size=batch_rows, columns=cols))
    else:
        try:
            head = pd.read_csv(path, nrows=0)
        except (OSError, ValueError) as e:
            raise FormatError(f"Cannot read {path}: {e}.") from e
        _need(head, need, path)
        cols = need + [c for c in optional if c in head.columns]
        batches = pd.read_csv(path, usecols=cols, chunksize=batch_rows)
    has_qv = "qv" in cols
    if not has_qv:
        log.warning("%s has no qv column; no quality filter applied", path)
    kept, n0, n_ctrl, n_lowq = [], 0, 0, 0
    for b in batches:
        if len(b) and isinstance(b["feature_name"].iloc[0], bytes):
            b["feature_name"] = b["feature_name"].str.decode("utf-8")
        n0 += len(b)
        ok = _gene_mask(b)
        n_ctrl += int((~ok).sum())
        if has_qv:
            low = b["qv"].to_numpy(float) < min_qv
            n_lowq += int((low & ok).sum())
            ok &= ~low
        sub = b.loc[ok, need]
        sub["feature_name"] = sub["feature_name"].astype("category")
        kept.append(sub)
    tx = (
        pd.concat(kept, ignore_index=True)
        if kept
        else pd.DataFrame({c: pd.Series(dtype=float) for c in need})
    )
    tx["feature_name"] = tx["feature_name"].astype(str).astype("category")
    log.info(
        "%s: kept %d of %d transcripts (dropped %d control/unassigned, %d with qv < %g)",
        path.name,
        len(tx),
        n0,
        n_ctrl,
        n_lowq,
        min_qv,
    )
    return tx, {"n_read": n0, "n_control": n_ctrl, "n_low_qv": n_lowq}


def _pool_transcripts(
    tx: pd.DataFrame, pool: str, size_um: float, pitch_um: float, genes: list[str]
) -> tuple[sp.csr_matrix, list[str], np.ndarray, pd.DataFrame]:
    """Counts per square/disc: ``(units x genes)``, ids, centres in µm, grid indices."""
    x = tx["x_location"].to_numpy(float)
    y = tx["y_location"].to_numpy(float)
    gene_index = pd.Index(genes)
    gcol = gene_index.get_indexer(tx["feature_name"].astype(str))
    if pool == "square":
        row, col = bin_index(x, y, size_um)
        inside = np.ones(len(x), dtype=bool)
    else:  # hexagonal grid from the origin, closed discs (hexpress.data.lattice)
        lattice = DiscLattice("hex", pitch_um)
        row, col, inside = lattice.assign(x, y, size_um)
    keep = inside & (gcol >= 0)
    row, col, gcol = row[keep], col[keep], gcol[keep]
    uniq, codes = np.unique(np.stack([row, col], axis=1), axis=0, return_inverse=True)
    uniq = uniq.reshape(-1, 2)
    counts = sp.csr_matrix(
        (np.ones(len(codes), dtype=np.float32), (codes.ravel(), gcol)),
        shape=(len(uniq), len(genes)),
    )
    counts.sum_duplicates()
    ur, uc = uniq[:, 0], uniq[:, 1]
    if pool == "square":
        centers = np.stack(bin_centers_um(ur, uc, size_um), axis=1)
    else:
        centers = np.stack(lattice.centers_um(ur, uc), axis=1)
    prefix = "sq" if pool == "square" else "disc"
    ids = [f"{prefix}_{r}_{c}" for r, c in zip(ur, uc, strict=True)]
    grid = pd.DataFrame({"grid_row": ur, "grid_col": uc})
    return counts, ids, centers, grid


def read_xenium(
    path: str | Path,
    *,
    image: str | Path | None = None,
    alignment: str | Path | np.ndarray | None = None,
    pool: str = "cells",
    size_um: float | None = None,
    pitch_um: float | None = None,
    mpp: float | None = None,
    min_qv: float = 20.0,
    cell_shape: str = "disc",
    sample_id: str | None = None,
    patient_id: str | None = None,
) -> Sample:
    """Read a Xenium output folder, pooled into cells, squares or discs, placed on the H&E.

    Args:
        path: the Xenium output folder.
        image: the H&E image (any format :func:`~hexpress.io.open_image` reads). Default: the
            post-Xenium H&E of the bundle (``*he_image.ome.tif``, see :func:`find_he_image`),
            with its ``*imagealignment.csv`` when ``alignment`` is not given.
        alignment: Xenium Explorer's alignment (matrix or keypoints CSV, or a ``(3, 3)`` array),
            H&E pixels -> Xenium morphology pixels. ``None``: the image is registered to the
            Xenium frame.
        pool: ``"cells"``, ``"square"`` or ``"disc"`` (see the module docstring).
        size_um: square side / disc diameter in µm (required for ``square`` and ``disc``;
            for ``cells``, a diameter used only when the folder gives no cell areas).
        pitch_um: disc centre spacing on the hexagonal grid; default ``2 * size_um``.
        mpp: µm per pixel of the H&E image; default the file's value, else derived from the
            alignment's scale (``pixel_size * sqrt(|det M|)``).
        min_qv: transcripts below this quality are dropped when pooling transcripts.
        cell_shape: for ``pool="cells"``: ``"disc"`` (area-equivalent diameter) or
            ``"polygon"`` (the boundaries of ``cell_boundaries.parquet``, mapped onto the H&E).
        sample_id: default the folder name.
        patient_id: default ``sample_id``.

    Returns:
        A :class:`Sample` with disc (cells, discs) or square units, centres in H&E level-0 px.
    """
    root = require_dir(path, "Xenium output folder", LAYOUT)
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}.")
    if cell_shape not in CELL_SHAPES:
        raise ConfigError(f"cell_shape must be one of {CELL_SHAPES}, got {cell_shape!r}.")
    if pool != "cells":
        if size_um is None:
            raise UnitsError(f"pool={pool!r} needs size_um (square side / disc diameter in µm).")
        size_um = positive(size_um, "size_um", "read_xenium")
    spec_path = root / "experiment.xenium"
    pixel_size = XENIUM_PIXEL_SIZE_UM
    if spec_path.is_file():
        pixel_size = positive(read_json(spec_path).get("pixel_size"), "pixel_size", spec_path) or (
            XENIUM_PIXEL_SIZE_UM
        )
    if image is None:
        he, found = find_he_image(root)
        if he is not None:
            image = he
            if alignment is None:
                alignment = found
            log.info("H&E %s found in the bundle (alignment: %s)", he.name, found)
    M = None
    if alignment is not None:
        M = (
            read_alignment(alignment, pixel_size)
            if isinstance(alignment, (str, Path))
            else np.asarray(alignment, dtype=float)
        )
        if M.shape != (3, 3):
            raise FormatError(f"alignment must be a 3 x 3 matrix, got shape {M.shape}.")
        angle = math.degrees(math.atan2(M[1, 0], M[0, 0]))
        if pool == "square" and abs(angle) > 1 and abs(abs(angle) - 90) > 1:
            log.warning(
                "alignment rotates by %.1f°: squares are axis-aligned in the Xenium frame, so "
                "they are rotated on the H&E image",
                angle,
            )
    slide, mpp_source = _open_he(image, M, mpp, pixel_size)

    matrix_path = first_existing(root, ["cell_feature_matrix.h5"])
    if pool == "cells":
        cells_path = find_file(root, ["cells.parquet", "cells.csv.gz"], "Cell table", LAYOUT)
        h5 = find_file(root, ["cell_feature_matrix.h5"], "Cell-feature matrix", LAYOUT)
        cells = _table(cells_path)
        _need(cells, ["cell_id", "x_centroid", "y_centroid"], cells_path)
        cells["cell_id"] = cells["cell_id"].astype(str)
        cells = cells.drop_duplicates("cell_id").set_index("cell_id")
        tenx = read_10x_h5(h5)
        tenx = gene_expression_only(tenx, h5)
        keep = ~_is_control(pd.Series(tenx.genes))
        if not keep.all():
            tenx = tenx.select_features(keep)
        ids = pd.Index(tenx.barcodes)
        unknown = ids.difference(cells.index)
        if len(unknown):
            raise DataMismatchError(
                f"{len(unknown)} of {len(ids)} cells in {h5} are not in {cells_path} (e.g. "
                f"{', '.join(unknown[:3])}). Both files must come from the same Xenium run."
            )
        c = cells.loc[ids]
        if "cell_area" in c.columns:
            area = c["cell_area"].to_numpy(float)
            geom_src = "cell_area"
        elif (root / "cell_boundaries.parquet").exists():
            area = _polygon_areas(root / "cell_boundaries.parquet").reindex(ids).to_numpy(float)
            geom_src = "cell_boundaries.parquet"
        else:
            area = None
            geom_src = "size_um"
        if area is not None:
            diam = 2 * np.sqrt(np.clip(area, 0, None) / math.pi)
            bad = ~np.isfinite(diam) | (diam <= 0)
            if bad.any():
                if size_um is None:
                    raise UnitsError(
                        f"{cells_path}: {int(bad.sum())} cell(s) have no positive area; pass "
                        "size_um=... as their diameter in µm."
                    )
                diam[bad] = size_um
        elif size_um is None:
            raise UnitsError(
                f"{cells_path} has no cell_area and there is no cell_boundaries.parquet; pass "
                "size_um=... (a cell diameter in µm) to pool into cells."
            )
        else:
            diam = np.full(len(ids), float(size_um))
        xy_um = c[["x_centroid", "y_centroid"]].to_numpy(float)
        counts, unit_ids, genes = tenx.counts, list(ids), tenx.genes
        geometry, sizes = K.DISC, diam
        if cell_shape == "polygon":
            geometry = K.POLYGON
            b_path = find_file(
                root,
                ["cell_boundaries.parquet", "cell_boundaries.csv.gz"],
                "Cell boundaries",
                LAYOUT,
            )
            polygons_um = read_cell_boundaries(b_path, list(ids))
        obs = pd.DataFrame({"x_um": xy_um[:, 0], "y_um": xy_um[:, 1]})
        source = h5
        filt = {"features": "gene expression features of cell_feature_matrix.h5 (Q20)"}
    else:
        tx_path = find_file(
            root, ["transcripts.parquet", "transcripts.csv.gz"], "Transcript table", LAYOUT
        )
        tx, _ = read_transcripts(tx_path, min_qv=min_qv)
        if matrix_path is not None:
            panel = read_10x_h5(matrix_path)
            genes = [
                g
                for g, t in zip(panel.genes, panel.feature_types, strict=True)
                if t == "Gene Expression" and not g.startswith(CONTROL_PREFIXES)
            ]
        else:
            genes = sorted(tx["feature_name"].astype(str).unique())
        if pool == "disc":
            pitch_um = 2 * size_um if pitch_um is None else positive(pitch_um, "pitch_um", "")
            if pitch_um < size_um:
                raise ConfigError(
                    f"pitch_um={pitch_um:g} is smaller than the disc diameter {size_um:g}: discs "
                    "would overlap. Use pitch_um >= size_um."
                )
        counts, unit_ids, xy_um, obs = _pool_transcripts(
            tx, pool, size_um, pitch_um or size_um, genes
        )
        if not unit_ids:
            raise DataMismatchError(f"{tx_path}: no transcript left to pool after filtering.")
        obs["x_um"], obs["y_um"] = xy_um[:, 0], xy_um[:, 1]
        geometry = K.SQUARE if pool == "square" else K.DISC
        sizes = float(size_um)
        source = tx_path
        geom_src = "grid"
        filt = {"min_qv": float(min_qv), "dropped_prefixes": list(CONTROL_PREFIXES)}
    centers = xenium_to_image_px(xy_um, M, pixel_size, slide.mpp)
    polygons_px = None
    if pool == "cells" and cell_shape == "polygon":
        polygons_px = [xenium_to_image_px(p, M, pixel_size, slide.mpp) for p in polygons_um]
    adata = make_units(
        counts,
        genes=genes,
        unit_ids=unit_ids,
        centers_px=centers,
        geometry=geometry,
        size_um=sizes,
        source=source,
        image=slide,
        obs=obs,
    )
    if polygons_px is not None:
        adata.uns[K.UNS] = {"polygons": polygons_px}
    sample_id = sample_id or root.name
    log.info("Xenium %s: %d %s x %d genes on %s", sample_id, adata.n_obs, pool, adata.n_vars, slide)
    return Sample(
        adata=adata,
        image=slide,
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        technology="xenium",
        meta={
            "root": str(root),
            "pool": pool,
            "size_um": None if size_um is None else float(size_um),
            "pitch_um": None if pitch_um is None else float(pitch_um),
            "pixel_size_um": float(pixel_size),
            "image": None if slide.path is None else str(slide.path),
            "alignment_file": str(alignment) if isinstance(alignment, (str, Path)) else None,
            "alignment": None if M is None else M.tolist(),
            "mpp_source": mpp_source,
            "cell_size_from": geom_src,
            "cell_shape": cell_shape if pool == "cells" else None,
            "filters": filt,
        },
    )
