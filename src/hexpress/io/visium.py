"""10x Visium: a Space Ranger ``outs/`` folder.

Files read (Space Ranger 1.x and 2.0+)::

    outs/
      filtered_feature_bc_matrix.h5      (or filtered_feature_bc_matrix/ in Matrix Market form,
                                          or the raw_ matrices; only in-tissue spots are kept)
      spatial/
        tissue_positions.csv             2.0+: header barcode,in_tissue,array_row,array_col,
                                         pxl_row_in_fullres,pxl_col_in_fullres
        tissue_positions_list.csv        1.x: the same columns, no header
        scalefactors_json.json           spot_diameter_fullres, tissue_hires_scalef,
                                         tissue_lowres_scalef (fiducial_diameter_fullres)
        tissue_hires_image.png           longest side 2000 px
        tissue_lowres_image.png          longest side 600 px

Positions are in pixels of the full-resolution image given to Space Ranger, which ``outs/`` does
not contain. With that image (``image=path``) spots are placed on it directly; otherwise on the
hires (or lowres) PNG, multiplied by ``tissue_hires_scalef`` (``tissue_lowres_scalef``).

Pixel size: Space Ranger does not write the µm per pixel of a standard Visium image. Unless
``mpp`` is given or a full-resolution TIFF states it, it is measured from the 100 µm spot pitch:
an affine fit of ``pxl_col_in_fullres, pxl_row_in_fullres`` against the lattice (``array_col``
steps 50 µm, ``array_row`` steps ``50 * sqrt(3)`` µm). ``spot_diameter_fullres`` spans a
*theoretical 65 µm* spot (not the 55 µm capture spot), so ``65 / spot_diameter_fullres`` is the
fallback and a cross-check. A PNG's ``mpp = mpp_fullres / scalef``. The value and how it was
found are logged and kept in ``Sample.meta``; sources that disagree by more than 2 % are warned
about (see :mod:`hexpress.io._pixel_size`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hexpress import _keys as K
from hexpress.data.sample import Sample
from hexpress.io._pixel_size import VISIUM_SCALEFACTOR_SPOT_UM
from hexpress.io._spaceranger import Lattice, read_positions, resolve_image, spaceranger_units
from hexpress.io._tables import (
    find_file,
    read_json,
    require_dir,
)

__all__ = ["read_visium", "VISIUM_SPOT_DIAMETER_UM", "VISIUM_SPOT_PITCH_UM"]

log = logging.getLogger(__name__)

VISIUM_SPOT_DIAMETER_UM = 55.0
VISIUM_SPOT_PITCH_UM = 100.0
VISIUM_LATTICE = Lattice("hex", VISIUM_SPOT_PITCH_UM, VISIUM_SCALEFACTOR_SPOT_UM, "Visium spot")

LAYOUT = """  outs/
    filtered_feature_bc_matrix.h5  (or filtered_feature_bc_matrix/, raw_feature_bc_matrix[.h5])
    spatial/
      tissue_positions.csv  (Space Ranger 2.0+; tissue_positions_list.csv in 1.x)
      scalefactors_json.json
      tissue_hires_image.png, tissue_lowres_image.png"""

MATRIX_CANDIDATES = (
    "filtered_feature_bc_matrix.h5",
    "filtered_feature_bc_matrix",
    "raw_feature_bc_matrix.h5",
    "raw_feature_bc_matrix",
)
POSITION_CANDIDATES = (
    "spatial/tissue_positions.csv",
    "spatial/tissue_positions_list.csv",
    "spatial/tissue_positions.parquet",
)


def _outs_dir(path: str | Path, what: str, layout: str) -> Path:
    """The folder holding ``spatial/``: ``path`` itself or its ``outs/``."""
    path = require_dir(path, what, layout)
    if not (path / "spatial").is_dir() and (path / "outs" / "spatial").is_dir():
        return path / "outs"
    return path


def read_visium(
    outs: str | Path,
    *,
    image: str | Path | None = None,
    mpp: float | None = None,
    sample_id: str | None = None,
    patient_id: str | None = None,
    matrix: str | Path | None = None,
) -> Sample:
    """Read a Space Ranger Visium output folder.

    Args:
        outs: the ``outs/`` folder (or the run folder that contains it).
        image: the full-resolution H&E file the positions refer to, or ``"hires"`` /
            ``"lowres"`` for Space Ranger's PNGs. Default: the hires PNG, or the lowres PNG when
            the hires one is missing or blank (a single colour).
        mpp: µm per pixel of the **full-resolution** image. Default: the image file's own value
            when a full-resolution image with metadata is given, else the 100 µm spot pitch
            measured in full-resolution pixels, else ``65 / spot_diameter_fullres``.
        sample_id: default the run folder's name.
        patient_id: default ``sample_id``.
        matrix: a feature-barcode matrix (``.h5`` file or Matrix Market folder) to use instead of
            the first of ``filtered_feature_bc_matrix.h5``, ``filtered_feature_bc_matrix/``,
            ``raw_feature_bc_matrix.h5``, ``raw_feature_bc_matrix/``.

    Returns:
        A :class:`Sample` of 55 µm disc spots under tissue with counts; ``obs`` holds
        ``in_tissue``, ``array_row``, ``array_col``; centres are in pixels of the chosen image.

    Raises:
        InputFileError: folder, positions, scale factors, matrix or image missing.
        UnitsError: no way to know the pixel size (no mpp, no scale factors).
        DataMismatchError: barcodes with counts but no position (with how many).
        GeometryError: spots outside the image (wrong image or scale factor), duplicate ids.
        FormatError: negative or non-finite counts, malformed files.
    """
    outs = _outs_dir(outs, "Space Ranger output folder", LAYOUT)
    pos_path = find_file(outs, POSITION_CANDIDATES, "Spot positions file", LAYOUT)
    sf_path = find_file(outs, ["spatial/scalefactors_json.json"], "Scale factors", LAYOUT)
    mtx_path = (
        Path(matrix)
        if matrix is not None
        else find_file(outs, MATRIX_CANDIDATES, "Feature-barcode matrix", LAYOUT)
    )
    scalefactors = read_json(sf_path)
    positions = read_positions(pos_path)
    chosen = resolve_image(
        image,
        mpp=mpp,
        scalefactors=scalefactors,
        scalefactors_path=sf_path,
        image_dirs=[outs / "spatial", outs],
        positions=positions,
        lattice=VISIUM_LATTICE,
    )
    adata, stats = spaceranger_units(
        positions, pos_path, mtx_path, chosen, geometry=K.DISC, size_um=VISIUM_SPOT_DIAMETER_UM
    )
    run = outs.parent.name if outs.name == "outs" else outs.name
    sample_id = sample_id or run
    log.info(
        "Visium %s: %d spots x %d genes on %s (%d x %d px, %.4g µm/px)",
        sample_id,
        adata.n_obs,
        adata.n_vars,
        chosen.image.path.name if chosen.image.path else chosen.kind,
        chosen.image.width,
        chosen.image.height,
        chosen.image.mpp,
    )
    meta = {
        "outs": str(outs),
        "positions_file": str(pos_path),
        "matrix_file": str(mtx_path),
        "scalefactors": {k: v for k, v in scalefactors.items() if v is not None},
        "image_kind": chosen.kind,
        "image_scale_from_fullres": float(chosen.scale),
        "mpp_fullres": float(chosen.mpp_fullres),
        "mpp_source": chosen.mpp_source,
        "spot_pitch_um": VISIUM_SPOT_PITCH_UM,
        **stats,
    }
    adata.uns[K.UNS] = {"mpp_fullres": float(chosen.mpp_fullres), "mpp_source": chosen.mpp_source}
    return Sample(
        adata=adata,
        image=chosen.image,
        sample_id=sample_id,
        patient_id=patient_id or sample_id,
        technology="visium",
        meta=meta,
    )
