"""10x Visium HD: Space Ranger ``binned_outputs/square_XXXum/`` folders.

Files read::

    outs/
      spatial/                            tissue_hires_image.png, tissue_lowres_image.png
      binned_outputs/
        square_002um/ square_008um/ square_016um/
          filtered_feature_bc_matrix.h5   (or filtered_feature_bc_matrix/, raw_...)
          spatial/
            tissue_positions.parquet      barcode, in_tissue, array_row, array_col,
                                          pxl_row_in_fullres, pxl_col_in_fullres
            scalefactors_json.json        microns_per_pixel, bin_size_um, spot_diameter_fullres
                                          (the bin side in full-resolution px),
                                          tissue_hires_scalef, tissue_lowres_scalef
            tissue_hires_image.png, tissue_lowres_image.png (in some versions)

Space Ranger 4 also segments cells (``pool="cells"``)::

    outs/segmented_outputs/
      filtered_feature_cell_matrix.h5     barcodes cellid_000000001-1, ...
      cell_segmentations.geojson          one Polygon per cell, properties.cell_id = 1, ...;
                                          vertices in full-resolution px
      spatial/scalefactors_json.json      (else outs/spatial/ or a square_XXXum/spatial/ one)

Bins are squares of side ``bin_um`` centred on their position. Cells are polygons (vertices in
``uns["hexpress"]["polygons"]``, level-0 px of the chosen image) centred on their centroid, with
``size_um`` their area-equivalent diameter. The full-resolution mpp is the user's, else
``microns_per_pixel`` (checked against the bin pitch), else ``bin_um / spot_diameter_fullres``
(see :mod:`hexpress.io._pixel_size`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from hexpress import _keys as K
from hexpress.data.sample import Sample
from hexpress.errors import ConfigError, FormatError, InputFileError
from hexpress.io._spaceranger import Lattice, read_positions, resolve_image, spaceranger_units
from hexpress.io._tables import (
    find_file,
    first_existing,
    polygon_area,
    read_json,
    require_dir,
)

__all__ = ["read_visium_hd", "square_folder_name", "POOLS"]

log = logging.getLogger(__name__)

LAYOUT = """  binned_outputs/
    square_002um/ square_008um/ square_016um/
      filtered_feature_bc_matrix.h5
      spatial/
        tissue_positions.parquet
        scalefactors_json.json
        tissue_hires_image.png, tissue_lowres_image.png (or in outs/spatial/)"""

_SQUARE = re.compile(r"^square_(\d+)um$")
POOLS = ("bins", "cells")
SEGMENTED = "segmented_outputs"
SEGMENTED_LAYOUT = """  segmented_outputs/
    filtered_feature_cell_matrix.h5
    cell_segmentations.geojson
    spatial/scalefactors_json.json  (or outs/spatial/)"""
MATRIX_CANDIDATES = (
    "filtered_feature_bc_matrix.h5",
    "filtered_feature_bc_matrix",
    "raw_feature_bc_matrix.h5",
    "raw_feature_bc_matrix",
)


def square_folder_name(bin_um: int) -> str:
    """``square_008um`` for 8: the folder Space Ranger writes for a bin size."""
    return f"square_{int(bin_um):03d}um"


def _square_dir(path: Path, bin_um: int | None) -> tuple[Path, int]:
    m = _SQUARE.match(path.name)
    if m:
        size = int(m.group(1))
        if bin_um is not None and int(bin_um) != size:
            raise ConfigError(
                f"{path} holds {size} µm bins but bin_um={bin_um} was asked; pass the matching "
                f"folder ({square_folder_name(int(bin_um))}) or leave bin_um out."
            )
        return path, size
    size = 8 if bin_um is None else int(bin_um)
    for base in (path, path / "binned_outputs", path / "outs" / "binned_outputs"):
        cand = base / square_folder_name(size)
        if cand.is_dir():
            return cand, size
    found = sorted(
        p.name
        for base in (path, path / "binned_outputs", path / "outs" / "binned_outputs")
        if base.is_dir()
        for p in base.iterdir()
        if _SQUARE.match(p.name)
    )
    raise InputFileError(
        f"No {square_folder_name(size)} folder in {path}"
        + (f" (bin sizes present: {', '.join(found)})" if found else "")
        + f". Pass the binned_outputs folder with bin_um=2, 8 or 16, or a square_XXXum folder. "
        f"Expected layout:\n{LAYOUT}"
    )


def _lattice(bin_um: float) -> Lattice:
    return Lattice("square", float(bin_um), float(bin_um), "bin")


def read_visium_hd(
    path: str | Path,
    *,
    bin_um: int | None = None,
    pool: str | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    sample_id: str | None = None,
    patient_id: str | None = None,
) -> Sample:
    """Read one bin size, or the segmented cells, of a Visium HD Space Ranger output.

    Args:
        path: ``binned_outputs/`` (or ``outs/``) with ``bin_um``, or one ``square_XXXum/`` folder;
            for cells, ``outs/`` or ``segmented_outputs/``.
        bin_um: bin side in µm (2, 8, 16); default 8, or the square folder's own size.
        pool: ``"bins"`` (default) or ``"cells"`` (Space Ranger 4 ``segmented_outputs/``;
            the default when ``path`` is that folder).
        image: the full-resolution H&E file the positions refer to, or ``"hires"`` /
            ``"lowres"``. Default: hires PNG, else lowres (a blank hires PNG is skipped).
        mpp: µm per pixel of the full-resolution image; default the image file's metadata,
            else ``microns_per_pixel`` from the scale factors, else the bin pitch, else
            ``bin_um / spot_diameter_fullres``.
        sample_id: default the run folder's name.
        patient_id: default ``sample_id``.

    Returns:
        A :class:`Sample` of square bins of side ``bin_um`` under tissue with counts, or of cell
        polygons.
    """
    path = require_dir(path, "Visium HD output folder", LAYOUT)
    if pool is None:
        pool = "cells" if path.name == SEGMENTED else "bins"
    if pool not in POOLS:
        raise ConfigError(f"Visium HD pool must be one of {POOLS}, got {pool!r}.")
    if pool == "cells":
        return _read_cells(path, image=image, mpp=mpp, sample_id=sample_id, patient_id=patient_id)
    square, size = _square_dir(path, bin_um)
    pos_path = find_file(
        square,
        ["spatial/tissue_positions.parquet", "spatial/tissue_positions.csv"],
        "Bin positions file",
        LAYOUT,
    )
    sf_path = find_file(square, ["spatial/scalefactors_json.json"], "Scale factors", LAYOUT)
    mtx_path = find_file(square, MATRIX_CANDIDATES, "Feature-barcode matrix", LAYOUT)
    scalefactors = read_json(sf_path)
    sf_bin = scalefactors.get("bin_size_um")
    if sf_bin is not None and abs(float(sf_bin) - size) > 1e-6:
        log.warning("%s says bin_size_um=%s but the folder is %s", sf_path, sf_bin, square.name)
    binned = square.parent
    image_dirs = [square / "spatial", binned.parent / "spatial"]
    positions = read_positions(pos_path)
    chosen = resolve_image(
        image,
        mpp=mpp,
        scalefactors=scalefactors,
        scalefactors_path=sf_path,
        image_dirs=image_dirs,
        positions=positions,
        lattice=_lattice(size),
    )
    adata, stats = spaceranger_units(
        positions, pos_path, mtx_path, chosen, geometry=K.SQUARE, size_um=float(size)
    )
    run = binned.parent
    run_name = run.parent.name if run.name == "outs" else run.name
    sample_id = sample_id or run_name
    adata.uns[K.UNS] = {"mpp_fullres": float(chosen.mpp_fullres), "mpp_source": chosen.mpp_source}
    log.info(
        "Visium HD %s: %d bins of %d µm x %d genes, image %d x %d px at %.4g µm/px",
        sample_id,
        adata.n_obs,
        size,
        adata.n_vars,
        chosen.image.width,
        chosen.image.height,
        chosen.image.mpp,
    )
    return Sample(
        adata=adata,
        image=chosen.image,
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        technology="visium-hd",
        meta={
            "square_dir": str(square),
            "bin_um": int(size),
            "positions_file": str(pos_path),
            "matrix_file": str(mtx_path),
            "scalefactors": {k: v for k, v in scalefactors.items() if v is not None},
            "image_kind": chosen.kind,
            "image_scale_from_fullres": float(chosen.scale),
            "mpp_fullres": float(chosen.mpp_fullres),
            "mpp_source": chosen.mpp_source,
            **stats,
        },
    )


def _segmented_dir(path: Path) -> Path:
    for cand in (path, path / SEGMENTED, path / "outs" / SEGMENTED):
        if cand.name == SEGMENTED and cand.is_dir():
            return cand
    raise InputFileError(
        f"No {SEGMENTED}/ folder in {path}: cell segmentation needs Space Ranger 4 or later. "
        f"Expected layout:\n{SEGMENTED_LAYOUT}"
    )


def read_cell_segmentations(path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Cell polygons of a Space Ranger ``cell_segmentations.geojson``.

    Returns:
        ``(barcodes, polygons)``: ``cellid_<9-digit cell_id>-1`` (the barcodes of
        ``filtered_feature_cell_matrix.h5``) and one ``(k, 2)`` array of x, y full-resolution px
        per cell (the closing vertex dropped).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"Cannot read GeoJSON {path}: {e}.") from e
    feats = data.get("features") if isinstance(data, dict) else None
    if not isinstance(feats, list):
        raise FormatError(f"{path}: expected a GeoJSON FeatureCollection with 'features'.")
    ids, polys = [], []
    for i, f in enumerate(feats):
        geom = (f or {}).get("geometry") or {}
        props = (f or {}).get("properties") or {}
        if geom.get("type") == "Polygon":
            ring = geom["coordinates"][0]
        elif geom.get("type") == "MultiPolygon":
            ring = max((p[0] for p in geom["coordinates"]), key=len)
        else:
            continue
        cid = props.get("cell_id")
        if cid is None:
            raise FormatError(f"{path}: feature {i} has no properties.cell_id.")
        ids.append(f"cellid_{int(cid):09d}-1")
        ring = np.asarray(ring, dtype=np.float64)[:, :2]
        if len(ring) > 3 and np.allclose(ring[0], ring[-1]):
            ring = ring[:-1]
        polys.append(ring)
    return ids, polys


def _read_cells(path, *, image, mpp, sample_id, patient_id) -> Sample:
    from hexpress.data.sample import make_units
    from hexpress.infer.units import _polygon_centroid
    from hexpress.io._pixel_size import Estimate, image_file_mpp, resolve_mpp
    from hexpress.io._spaceranger import IMAGE_FILES, SCALEF_KEYS
    from hexpress.io._tables import gene_expression_only, positive, read_feature_matrix
    from hexpress.io.image import open_image

    seg = _segmented_dir(path)
    outs = seg.parent
    mtx_path = find_file(
        seg, ["filtered_feature_cell_matrix.h5", "raw_feature_cell_matrix.h5"],
        "Cell-feature matrix", SEGMENTED_LAYOUT,
    )  # fmt: skip
    geo_path = find_file(seg, ["cell_segmentations.geojson"], "Cell polygons", SEGMENTED_LAYOUT)
    sf_path = first_existing(seg, ["spatial/scalefactors_json.json"]) or first_existing(
        outs, ["spatial/scalefactors_json.json"]
    )
    square = None
    if sf_path is None:
        for b in (2, 8, 16):
            cand = outs / "binned_outputs" / square_folder_name(b)
            sf_path = first_existing(cand, ["spatial/scalefactors_json.json"])
            if sf_path is not None:
                square = cand
                break
    if sf_path is None:
        raise InputFileError(f"No scalefactors_json.json for {seg}. Expected:\n{SEGMENTED_LAYOUT}")
    scalefactors = read_json(sf_path)
    barcodes, polys = read_cell_segmentations(geo_path)
    tenx = gene_expression_only(read_feature_matrix(mtx_path), mtx_path)
    poly_of = dict(zip(barcodes, polys, strict=True))
    missing = [b for b in tenx.barcodes if b not in poly_of]
    if missing:
        raise FormatError(
            f"{len(missing)} of {len(tenx.barcodes)} cells of {mtx_path.name} have no polygon in "
            f"{geo_path.name} (e.g. {', '.join(missing[:3])})."
        )
    polys_full = [poly_of[b] for b in tenx.barcodes]
    # pixel size: as for bins; the lattice pitch comes from a bin folder's positions if present
    pitch = []
    sf_mpp = positive(scalefactors.get("microns_per_pixel"), "microns_per_pixel", sf_path)
    if sf_mpp is not None:
        pitch.append(Estimate(sf_mpp, f"microns_per_pixel in {sf_path.name}"))
    fullres = image is not None and str(image) not in IMAGE_FILES
    meta_est = None
    if fullres:
        fm = image_file_mpp(image)
        meta_est = None if fm is None else Estimate(fm, f"metadata of {Path(image).name}")
    chosen = resolve_mpp(str(seg), given=mpp, metadata=meta_est, pitch=pitch)
    if chosen is None:
        raise InputFileError(
            f"{sf_path} has no microns_per_pixel: pass the µm per full-resolution pixel (--mpp)."
        )
    if fullres:
        slide, scale, kind = open_image(image, mpp=chosen.mpp), 1.0, "fullres"
    else:
        kinds = [str(image)] if image is not None else ["hires", "lowres"]
        dirs = [sf_path.parent, outs / "spatial"] + ([square / "spatial"] if square else [])
        found = [
            (k, d / IMAGE_FILES[k]) for k in kinds for d in dirs if (d / IMAGE_FILES[k]).exists()
        ]
        if not found:
            raise InputFileError(
                f"No {' or '.join(IMAGE_FILES[k] for k in kinds)} next to {sf_path}; pass the "
                "full-resolution H&E with image=... (--image)."
            )
        kind, png = found[0]
        scale = positive(scalefactors.get(SCALEF_KEYS[kind]), SCALEF_KEYS[kind], sf_path)
        slide = open_image(png, mpp=chosen.mpp / scale)
    polys_px = [p * scale for p in polys_full]
    centers = np.stack([_polygon_centroid(p) for p in polys_px])
    diam_um = np.array([2 * np.sqrt(polygon_area(p) / np.pi) * chosen.mpp for p in polys_full])
    adata = make_units(
        tenx.counts,
        genes=tenx.genes,
        unit_ids=tenx.barcodes,
        centers_px=centers,
        geometry=K.POLYGON,
        size_um=diam_um,
        source=mtx_path,
        image=slide,
    )
    adata.var["gene_ids"] = list(tenx.gene_ids)
    adata.uns[K.UNS] = {
        "mpp_fullres": float(chosen.mpp),
        "mpp_source": chosen.source,
        "polygons": polys_px,
    }
    run_name = outs.parent.name if outs.name == "outs" else outs.name
    sample_id = sample_id or run_name
    log.info("Visium HD %s: %d segmented cells x %d genes", sample_id, adata.n_obs, adata.n_vars)
    return Sample(
        adata=adata,
        image=slide,
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        technology="visium-hd",
        meta={
            "segmented_dir": str(seg),
            "pool": "cells",
            "matrix_file": str(mtx_path),
            "polygons_file": str(geo_path),
            "scalefactors": {k: v for k, v in scalefactors.items() if v is not None},
            "image_kind": kind,
            "image_scale_from_fullres": float(scale),
            "mpp_fullres": float(chosen.mpp),
            "mpp_source": chosen.source,
        },
    )
