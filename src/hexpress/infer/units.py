"""The units predictions are aggregated into: bins, discs, user spots and cell polygons.

All positions are **level-0 pixels** of the slide (x then y), all sizes **µm**, as in the rest of
hexpress (:mod:`hexpress._keys`). Generated grids start at the slide's top-left corner and are
:mod:`hexpress.data.lattice`'s lattices:

* bins (Visium HD style): squares of side ``bin_um`` tiling the slide; bin ``(row, col)`` covers
  ``[col, col + 1) * bin_um`` by ``[row, row + 1) * bin_um`` µm; kept where its centre is on
  tissue; ids ``s_008um_00012_00034`` (side in µm, row, col).
* discs: diameter ``diameter_um`` on a hexagonal grid (Visium: 55 µm discs at 100 µm pitch) or a
  square grid (legacy ST: 100 µm discs at 200 µm pitch); other diameters default to a hexagonal
  grid at twice the diameter.

Files:

* spots: CSV / parquet with columns ``x``, ``y`` (level-0 px) and ``diameter_um`` (or one
  diameter for all), an optional ``id``/``barcode`` column; or an ``.h5ad`` with
  ``obsm["spatial"]`` (level-0 px) and ``obs["size_um"]`` or scanpy's
  ``uns["spatial"][...]["scalefactors"]["spot_diameter_fullres"]``.
* cells: GeoJSON (a QuPath export: polygon vertices in **level-0 px**), or parquet of vertices
  with ``cell_id`` and either ``x_px``, ``y_px`` (level-0 px) or ``vertex_x``, ``vertex_y`` in
  **µm of the slide** (Xenium ``cell_boundaries.parquet`` after registration to the H&E, so that
  µm = level-0 px * slide mpp).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress.data.lattice import (
    LEGACY_DIAMETER_UM,
    LEGACY_PITCH_UM,
    VISIUM_DIAMETER_UM,
    VISIUM_PITCH_UM,
    DiscLattice,
    bin_centers_um,
)
from hexpress.data.units import Units
from hexpress.errors import FormatError, GeometryError, InputFileError, UnitsError
from hexpress.infer.tissue import TissueMask

__all__ = [
    "Units",
    "grid_bins",
    "grid_discs",
    "read_spots",
    "read_cells",
    "units_from_anndata",
    "default_disc_layout",
    "keep_inside",
]

log = logging.getLogger(__name__)


def _check_positive(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise UnitsError(f"{what} must be a positive number of µm, got {value!r}.")
    return value


def grid_bins(
    width_px: int,
    height_px: int,
    mpp: float,
    bin_um: float,
    *,
    tissue: TissueMask | None = None,
    rows_per_step: int = 512,
) -> Units:
    """Square bins of side ``bin_um`` tiling a slide of ``width_px`` x ``height_px`` level-0 px.

    Args:
        width_px, height_px: slide size in level-0 px.
        mpp: µm per level-0 px.
        bin_um: bin side in µm.
        tissue: keep only bins whose centre lies on tissue (default: all bins).
        rows_per_step: bin rows generated at a time (memory).
    """
    bin_um = _check_positive(bin_um, "bin side")
    side_px = bin_um / mpp
    n_rows = math.floor(height_px / side_px)
    n_cols = math.floor(width_px / side_px)
    if n_rows == 0 or n_cols == 0:
        raise GeometryError(
            f"bins of {bin_um:g} µm do not fit in the {width_px} x {height_px} px slide "
            f"({width_px * mpp:.0f} x {height_px * mpp:.0f} µm)."
        )
    cols = np.arange(n_cols, dtype=np.int64)
    all_r, all_c = [], []
    for r0 in range(0, n_rows, rows_per_step):
        r = np.arange(r0, min(n_rows, r0 + rows_per_step), dtype=np.int64)
        rr = np.repeat(r, n_cols)
        cc = np.tile(cols, len(r))
        if tissue is not None:
            on = tissue.contains(np.stack(bin_centers_um(rr, cc, bin_um), axis=1) / mpp)
            rr, cc = rr[on], cc[on]
        all_r.append(rr)
        all_c.append(cc)
    rows = np.concatenate(all_r) if all_r else np.zeros(0, np.int64)
    cols_ = np.concatenate(all_c) if all_c else np.zeros(0, np.int64)
    centers = np.stack(bin_centers_um(rows, cols_, bin_um), axis=1) / mpp
    label = f"{bin_um:g}".replace(".", "p")
    tag = f"{int(round(bin_um)):03d}" if float(bin_um).is_integer() else label
    return Units(
        name=f"bins_{tag}um",
        kind=K.SQUARE,
        centers_level0_px=centers,
        size_um=np.full(len(rows), bin_um),
        obs={"array_row": rows, "array_col": cols_},
        id_format=f"s_{tag}um_{{:05d}}_{{:05d}}",
    )


def default_disc_layout(diameter_um: float) -> tuple[str, float]:
    """``(layout, pitch_um)`` for a disc diameter: Visium, legacy ST, or hex at 2x diameter."""
    if abs(diameter_um - VISIUM_DIAMETER_UM) < 1e-6:
        return "hex", VISIUM_PITCH_UM
    if abs(diameter_um - LEGACY_DIAMETER_UM) < 1e-6:
        return "square", LEGACY_PITCH_UM
    return "hex", 2.0 * diameter_um


def grid_discs(
    width_px: int,
    height_px: int,
    mpp: float,
    diameter_um: float,
    *,
    pitch_um: float | None = None,
    layout: str | None = None,
    tissue: TissueMask | None = None,
) -> Units:
    """Discs of ``diameter_um`` on a regular grid over the slide (see the module docstring).

    Args:
        width_px, height_px, mpp: the slide (level-0 px, µm per px).
        diameter_um: disc diameter in µm.
        pitch_um: centre-to-centre distance in µm (default: :func:`default_disc_layout`).
        layout: ``"hex"`` (odd rows shifted by half a pitch, rows ``pitch * sqrt(3)/2`` apart)
            or ``"square"``.
        tissue: keep only discs whose centre lies on tissue.
    """
    diameter_um = _check_positive(diameter_um, "disc diameter")
    d_layout, d_pitch = default_disc_layout(diameter_um)
    layout = layout or d_layout
    pitch = _check_positive(pitch_um if pitch_um is not None else d_pitch, "disc pitch")
    if layout not in ("hex", "square"):
        raise UnitsError(f"disc layout must be 'hex' or 'square', got {layout!r}.")
    w_um, h_um = width_px * mpp, height_px * mpp
    r_um = diameter_um / 2
    lattice = DiscLattice(layout, pitch, (r_um, r_um))
    arow, acol = lattice.sites_within(w_um, h_um, diameter_um)
    if not len(arow):
        raise GeometryError(
            f"discs of {diameter_um:g} µm do not fit in the {w_um:.0f} x {h_um:.0f} µm slide."
        )
    centers = np.stack(lattice.centers_um(arow, acol), axis=1) / mpp
    units = Units(
        name=f"discs_{int(round(diameter_um)):03d}um"
        if float(diameter_um).is_integer()
        else f"discs_{diameter_um:g}um".replace(".", "p"),
        kind=K.DISC,
        centers_level0_px=centers,
        size_um=np.full(len(centers), diameter_um),
        obs={"array_row": arow, "array_col": acol},
        id_format=f"d_{diameter_um:g}um_{{:04d}}_{{:04d}}".replace(".", "p"),
    )
    if tissue is not None:
        units = units.subset(tissue.contains(units.centers_level0_px))
    return units


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".gz", ".txt", ".tsv"):
            sep = "\t" if ".tsv" in path.name.lower() else ","
            return pd.read_csv(path, sep=sep)
    except Exception as e:
        raise FormatError(f"Cannot read table {path}: {e}.") from e
    raise FormatError(f"{path}: unsupported table type {suffix!r}; use CSV or parquet.")


def _checked(name, kind, xy, size, ids, source, obs=None) -> Units:
    if not np.all(np.isfinite(xy)):
        raise GeometryError(
            f"{source}: {int((~np.isfinite(xy)).any(1).sum())} non-finite positions."
        )
    if np.any(~np.isfinite(size)) or np.any(size <= 0):
        raise UnitsError(f"{source}: unit sizes (spot diameters, bin sides) must be positive µm.")
    return Units(name=name, kind=kind, centers_level0_px=xy, size_um=size, ids=ids, obs=obs or {})


def _scanpy_spot_diameter_um(adata, mpp: float) -> float | None:
    """Spot diameter in µm from scanpy's ``uns["spatial"][library]["scalefactors"]``, if any."""
    for lib in (adata.uns.get("spatial") or {}).values():
        sf = (lib or {}).get("scalefactors") or {}
        if "spot_diameter_fullres" in sf:
            return float(sf["spot_diameter_fullres"]) * mpp
    return None


def units_from_anndata(
    adata,
    *,
    mpp: float,
    name: str = "spots",
    diameter_um: float | None = None,
    source: str = "AnnData",
) -> Units:
    """The units of an AnnData of measured (or predicted) units, to predict at the same places.

    Args:
        adata: ``obsm["spatial"]`` (level-0 px) and ``obs["geometry"]`` (disc or square; discs
            when absent) with ``obs["size_um"]``, or scanpy's
            ``uns["spatial"][...]["scalefactors"]["spot_diameter_fullres"]`` for discs.
        mpp: µm per level-0 px of the slide the positions refer to.
        name: label of the unit set (output file name).
        diameter_um: disc diameter where the AnnData records no size.
        source: what the AnnData is, for messages.

    Returns:
        :class:`Units` with the AnnData's ``obs_names`` as ids.

    Raises:
        FormatError: no positions, or mixed / polygon geometries.
        UnitsError: no size.
    """
    size = diameter_um if diameter_um is not None else _scanpy_spot_diameter_um(adata, mpp)
    try:
        u = Units.from_anndata(
            adata,
            name=name,
            size_um=size,  # used where obs["size_um"] is absent
            source=source,
            allowed=(K.DISC, K.SQUARE),
            default_kind=K.DISC,
            error=FormatError,
            hint="give cells as polygons (--cells)",
        )
    except UnitsError as e:  # the one error it raises for a set of discs or squares: no size
        raise UnitsError(
            f"{source}: no spot size: add obs['size_um'], scanpy's "
            "uns['spatial'][...]['scalefactors']['spot_diameter_fullres'], or pass "
            "--spot-diameter-um."
        ) from e
    return _checked(name, u.kind, u.centers_level0_px, u.size_um, u.ids, source)


def read_spots(path: str | Path, *, mpp: float, diameter_um: float | None = None) -> Units:
    """Read user spot positions (see the module docstring for the accepted files).

    Args:
        path: CSV, parquet or h5ad.
        mpp: µm per level-0 px of the slide the positions refer to.
        diameter_um: spot diameter for files that do not carry one.

    Raises:
        InputFileError, FormatError, UnitsError.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Spots file not found: {path}.")
    if path.suffix.lower() == ".h5ad":
        import anndata as ad

        u = units_from_anndata(
            ad.read_h5ad(path), mpp=mpp, diameter_um=diameter_um, source=str(path)
        )
        if u.kind != K.DISC:
            raise FormatError(f"{path}: spots are discs, but its units are {u.kind}s.")
        return u
    df = _read_table(path)
    missing = [c for c in ("x", "y") if c not in df.columns]
    if missing:
        raise FormatError(
            f"{path}: missing column(s) {missing}; a spots table needs x, y (level-0 px) "
            f"and diameter_um. Columns found: {list(df.columns)[:10]}."
        )
    xy = df[["x", "y"]].to_numpy(dtype=np.float64)
    if "diameter_um" in df.columns:
        size = df["diameter_um"].to_numpy(dtype=np.float64)
    elif diameter_um is not None:
        size = np.full(len(df), float(diameter_um))
    else:
        raise UnitsError(
            f"{path}: no diameter_um column; add one or pass the spot diameter "
            "(--spot-diameter-um)."
        )
    id_col = next((c for c in ("id", "barcode", "spot_id") if c in df.columns), None)
    ids = (
        df[id_col].astype(str).to_numpy(dtype=object)
        if id_col
        else np.array([f"spot_{i}" for i in range(len(df))], dtype=object)
    )
    return _checked("spots", K.DISC, xy, size, ids, str(path))


def _polygon_centroid(v: np.ndarray) -> np.ndarray:
    x, y = v[:, 0], v[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    a = cross.sum() / 2
    if abs(a) < 1e-12:
        return v.mean(axis=0)
    return np.array([((x + x1) * cross).sum() / (6 * a), ((y + y1) * cross).sum() / (6 * a)])


def _polygons_units(ids, polys, source) -> Units:
    if not polys:
        raise GeometryError(f"{source}: no polygons found.")
    polys = [np.asarray(p, dtype=np.float64)[:, :2] for p in polys]
    bad = [i for i, p in enumerate(polys) if len(p) < 3 or not np.all(np.isfinite(p))]
    if bad:
        raise GeometryError(
            f"{source}: {len(bad)} polygon(s) have fewer than 3 finite vertices, e.g. {ids[bad[0]]}."
        )
    centers = np.stack([_polygon_centroid(p) for p in polys])
    return Units(
        name="cells",
        kind=K.POLYGON,
        centers_level0_px=centers,
        size_um=np.full(len(polys), np.nan),
        ids=np.asarray(ids, dtype=object),
        polygons=polys,
    )


def _um_vertices_to_px(xy_um: np.ndarray, mpp: float, alignment) -> np.ndarray:
    """µm vertices -> level-0 px: through a Xenium alignment when one is given, else / mpp."""
    if alignment is None:
        return xy_um / mpp
    from hexpress.io.xenium import XENIUM_PIXEL_SIZE_UM, read_alignment, xenium_to_image_px

    M = (
        read_alignment(alignment)
        if isinstance(alignment, (str, Path))
        else np.asarray(alignment, dtype=np.float64)
    )
    if M.shape != (3, 3):
        raise FormatError(f"A cells alignment must be a 3 x 3 matrix, got shape {M.shape}.")
    return xenium_to_image_px(xy_um, M, XENIUM_PIXEL_SIZE_UM, mpp)


def read_cells(
    path: str | Path, *, mpp: float, alignment: str | Path | np.ndarray | None = None
) -> Units:
    """Read cell polygons (GeoJSON in level-0 px, or parquet of vertices; see module docstring).

    Args:
        path: ``.geojson`` / ``.json`` or ``.parquet`` / ``.csv``.
        mpp: µm per level-0 px (to convert µm vertices of an image in the cells' own frame).
        alignment: for µm vertices (``vertex_x``, ``vertex_y``: Xenium's
            ``cell_boundaries.parquet``) on an H&E that is not in the Xenium frame, Xenium
            Explorer's alignment of that H&E (matrix or keypoints CSV, or a ``(3, 3)`` array,
            H&E px -> Xenium px; see :func:`hexpress.io.xenium.read_alignment`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Cells file not found: {path}.")
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: not valid GeoJSON: {e}.") from e
        feats = data.get("features", data) if isinstance(data, dict) else data
        if isinstance(feats, dict):
            feats = [feats]
        ids, polys = [], []
        for i, f in enumerate(feats):
            geom = (f or {}).get("geometry") or {}
            gtype, coords = geom.get("type"), geom.get("coordinates")
            if gtype == "Polygon":
                ring = coords[0]
            elif gtype == "MultiPolygon":
                ring = max((p[0] for p in coords), key=len)
            else:
                continue
            props = f.get("properties") or {}
            fid = f.get("id", props.get("name", props.get("id", f"cell_{i}")))
            ids.append(str(fid))
            ring = np.asarray(ring, dtype=np.float64)
            if len(ring) > 3 and np.allclose(ring[0], ring[-1]):
                ring = ring[:-1]
            polys.append(ring)
        return _polygons_units(ids, polys, path)
    df = _read_table(path)
    if "cell_id" not in df.columns:
        raise FormatError(f"{path}: a vertex table needs a cell_id column.")
    if {"x_px", "y_px"} <= set(df.columns):
        xy = df[["x_px", "y_px"]].to_numpy(dtype=np.float64)
    elif {"vertex_x", "vertex_y"} <= set(df.columns):
        xy = _um_vertices_to_px(df[["vertex_x", "vertex_y"]].to_numpy(np.float64), mpp, alignment)
    else:
        raise FormatError(
            f"{path}: vertex columns not found: give x_px, y_px (level-0 px) or vertex_x, "
            f"vertex_y (µm). Columns found: {list(df.columns)[:10]}."
        )
    cell = df["cell_id"].astype(str).to_numpy()
    order = np.argsort(cell, kind="stable")
    cell, xy = cell[order], xy[order]
    uniq, start = np.unique(cell, return_index=True)
    ends = np.append(start[1:], len(cell))
    polys = []
    for s, e in zip(start, ends, strict=True):
        ring = xy[s:e]
        if len(ring) > 3 and np.allclose(ring[0], ring[-1]):
            ring = ring[:-1]
        polys.append(ring)
    return _polygons_units(list(uniq), polys, path)


def keep_inside(units: Units, width_px: int, height_px: int, *, source: str = "") -> Units:
    """Drop units whose centre lies outside the slide, with a warning.

    Units whose centre is on the slide but whose footprint reaches past its edge are kept (the
    part outside is not covered by the map and does not count; see ``obs["map_coverage"]``).

    Raises:
        GeometryError: every unit lies outside the slide (the positions are probably at another
            resolution).
    """
    c = units.centers_level0_px
    inside = (c[:, 0] >= 0) & (c[:, 1] >= 0) & (c[:, 0] < width_px) & (c[:, 1] < height_px)
    n_out = int((~inside).sum())
    if n_out == 0:
        return units
    where = f"{source}: " if source else ""
    if n_out == len(units):
        raise GeometryError(
            f"{where}all {n_out} {units.name} lie outside the {width_px} x {height_px} px "
            "slide. Positions must be level-0 pixels of this slide; check their scale."
        )
    log.warning(
        "%s%d of %d %s lie outside the %d x %d px slide and are dropped",
        where,
        n_out,
        len(units),
        units.name,
        width_px,
        height_px,
    )
    return units.subset(inside)
