"""Private pieces shared by the Visium and Visium HD readers (Space Ranger output layout)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hexpress.errors import (
    DataMismatchError,
    FormatError,
    GeometryError,
    InputFileError,
    UnitsError,
)
from hexpress.io._pixel_size import Estimate, image_file_mpp, mpp_from_lattice, resolve_mpp
from hexpress.io._tables import is_blank, positive
from hexpress.io.image import SlideImage, open_image
from hexpress.io.tenx_h5 import TenxMatrix

log = logging.getLogger(__name__)

POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
SCALEF_KEYS = {"hires": "tissue_hires_scalef", "lowres": "tissue_lowres_scalef"}


def read_positions(path: Path) -> pd.DataFrame:
    """Spot/bin positions indexed by barcode, with the six Space Ranger columns.

    ``tissue_positions_list.csv`` (Space Ranger 1.x) has no header; ``tissue_positions.csv``
    (2.0+) and ``tissue_positions.parquet`` (Visium HD) have one.
    """
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            with open(path) as f:
                first = f.readline()
            has_header = first.split(",")[0].strip().lower() == "barcode"
            df = pd.read_csv(path, header=0 if has_header else None)
            if not has_header:
                if df.shape[1] != len(POSITION_COLUMNS):
                    raise FormatError(
                        f"{path}: expected {len(POSITION_COLUMNS)} columns "
                        f"({', '.join(POSITION_COLUMNS)}), found {df.shape[1]}."
                    )
                df.columns = POSITION_COLUMNS
    except (OSError, ValueError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(f"Cannot read spot positions {path}: {e}.") from e
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise FormatError(
            f"{path}: missing column(s) {missing}; Space Ranger position files have "
            f"{', '.join(POSITION_COLUMNS)}."
        )
    df["barcode"] = df["barcode"].astype(str)
    if df["barcode"].duplicated().any():
        dup = df["barcode"][df["barcode"].duplicated()].unique()
        raise FormatError(
            f"{path}: {len(dup)} barcode(s) listed twice, e.g. {', '.join(dup[:3])}. Each spot "
            "must appear once."
        )
    return df.set_index("barcode")


def match_counts_to_positions(
    matrix: TenxMatrix, positions: pd.DataFrame, matrix_path: Path, positions_path: Path
) -> tuple[TenxMatrix, pd.DataFrame, dict]:
    """Keep in-tissue barcodes that have counts, in matrix order; check both files agree."""
    barcodes = pd.Index(matrix.barcodes)
    if barcodes.has_duplicates:
        dup = barcodes[barcodes.duplicated()].unique()
        raise GeometryError(
            f"{matrix_path}: {len(dup)} duplicate barcode(s), e.g. {', '.join(dup[:3])}."
        )
    unknown = barcodes.difference(positions.index)
    if len(unknown):
        raise DataMismatchError(
            f"{len(unknown)} of {len(barcodes)} barcodes in {matrix_path} have no position in "
            f"{positions_path} (e.g. {', '.join(unknown[:3])}). Counts and positions must come "
            "from the same Space Ranger run."
        )
    in_tissue = positions["in_tissue"].astype(int).to_numpy() == 1
    tissue_barcodes = positions.index[in_tissue]
    keep = barcodes.isin(tissue_barcodes)
    n_off = int((~keep).sum())
    n_tissue_without_counts = int((~tissue_barcodes.isin(barcodes)).sum())
    if not keep.any():
        raise DataMismatchError(
            f"None of the {len(barcodes)} barcodes in {matrix_path} is marked in_tissue=1 in "
            f"{positions_path}."
        )
    if n_off:
        log.info("%s: %d barcode(s) outside the tissue left out", matrix_path.name, n_off)
    if n_tissue_without_counts:
        log.warning(
            "%s: %d of %d in-tissue spot(s) have no counts in %s and are left out",
            positions_path.name,
            n_tissue_without_counts,
            len(tissue_barcodes),
            matrix_path.name,
        )
    idx = np.flatnonzero(keep)
    kept = TenxMatrix(
        counts=matrix.counts[idx].tocsr(),
        barcodes=[matrix.barcodes[i] for i in idx],
        genes=matrix.genes,
        gene_ids=matrix.gene_ids,
        feature_types=matrix.feature_types,
    )
    stats = {
        "barcodes_outside_tissue": n_off,
        "tissue_spots_without_counts": n_tissue_without_counts,
    }
    return kept, positions.loc[kept.barcodes], stats


@dataclass
class ChosenImage:
    image: SlideImage
    kind: str  # "fullres", "hires" or "lowres"
    scale: float  # image pixels per full-resolution pixel
    mpp_fullres: float
    mpp_source: str


@dataclass(frozen=True)
class Lattice:
    """How a Space Ranger product lays its units out, for the pixel-size estimates.

    Attributes:
        kind: ``"hex"`` (Visium spots) or ``"square"`` (Visium HD bins).
        pitch_um: centre-to-centre distance of neighbouring units (100 µm; the bin side).
        scalefactor_um: the physical size ``spot_diameter_fullres`` spans (65 µm for Visium,
            the bin side for Visium HD).
        name: e.g. ``"Visium spot"``, for messages.
    """

    kind: str
    pitch_um: float
    scalefactor_um: float
    name: str


def fullres_mpp_estimates(
    positions: pd.DataFrame, scalefactors: dict, scalefactors_path: Path, lattice: Lattice
) -> dict:
    """The ``pitch`` and ``scalefactors`` estimates of the full-resolution pixel size.

    Returns:
        ``{"pitch": [Estimate, ...], "scalefactors": [Estimate, ...]}`` for
        :func:`~hexpress.io._pixel_size.resolve_mpp`.
    """
    name = scalefactors_path.name
    pitch: list[Estimate] = []
    sf_mpp = positive(scalefactors.get("microns_per_pixel"), "microns_per_pixel", scalefactors_path)
    if sf_mpp is not None:
        pitch.append(Estimate(sf_mpp, f"microns_per_pixel in {name}"))
    fit = mpp_from_lattice(
        positions[["array_row", "array_col"]].to_numpy(dtype=float),
        positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float),
        lattice=lattice.kind,
        pitch_um=lattice.pitch_um,
    )
    if fit is not None:
        pitch.append(
            Estimate(fit, f"the {lattice.pitch_um:g} µm {lattice.name} pitch in full-resolution px")
        )
    scale: list[Estimate] = []
    diam_px = positive(
        scalefactors.get("spot_diameter_fullres"), "spot_diameter_fullres", scalefactors_path
    )
    if diam_px is not None:
        scale.append(
            Estimate(
                lattice.scalefactor_um / diam_px,
                f"spot_diameter_fullres = {diam_px:.5g} px spanning {lattice.scalefactor_um:g} µm "
                f"in {name}",
            )
        )
    return {"pitch": pitch, "scalefactors": scale}


def resolve_image(
    image: str | Path | None,
    *,
    mpp: float | None,
    scalefactors: dict,
    scalefactors_path: Path,
    image_dirs: list[Path],
    positions: pd.DataFrame,
    lattice: Lattice,
) -> ChosenImage:
    """Pick the image, its mpp and the factor from full-resolution pixels to its pixels.

    ``image``: a file (the full-resolution image the positions refer to), ``"hires"``,
    ``"lowres"``, or ``None``: the hires PNG unless it is missing or blank (a single colour, as
    some Space Ranger outputs ship), then the lowres PNG.

    The full-resolution mpp follows :func:`~hexpress.io._pixel_size.resolve_mpp`: ``mpp`` given,
    else the full-resolution image file's own metadata, else the lattice pitch (and
    ``microns_per_pixel`` for Visium HD), else ``spot_diameter_fullres``.
    """
    estimates = fullres_mpp_estimates(positions, scalefactors, scalefactors_path, lattice)
    fullres = image is not None and str(image) not in IMAGE_FILES
    metadata = None
    if fullres:
        path = Path(image)
        file_mpp = image_file_mpp(path)
        if file_mpp is not None:
            metadata = Estimate(file_mpp, f"metadata of {path.name}")
    chosen_mpp = resolve_mpp(
        str(scalefactors_path.parent.parent), given=mpp, metadata=metadata, **estimates
    )

    if fullres:
        if chosen_mpp is None:
            raise UnitsError(
                f"{path} states no pixel size and {scalefactors_path} gives none either. Pass the "
                "µm per pixel of the full-resolution image: mpp=... in Python or --mpp."
            )
        slide = open_image(path, mpp=chosen_mpp.mpp)
        return ChosenImage(slide, "fullres", 1.0, chosen_mpp.mpp, chosen_mpp.source)

    kinds = [str(image)] if image is not None else ["hires", "lowres"]
    tried = []
    for kind in kinds:
        path = next(
            (d / IMAGE_FILES[kind] for d in image_dirs if (d / IMAGE_FILES[kind]).exists()), None
        )
        if path is None:
            tried.append(f"{IMAGE_FILES[kind]} (absent)")
            continue
        if image is None and is_blank(path):
            log.warning("%s is blank (a single colour); trying the next image", path)
            tried.append(f"{path.name} (blank)")
            continue
        scalef = positive(scalefactors.get(SCALEF_KEYS[kind]), SCALEF_KEYS[kind], scalefactors_path)
        if scalef is None:
            raise UnitsError(
                f"{scalefactors_path} has no {SCALEF_KEYS[kind]}, so positions cannot be placed "
                f"on {path.name}. Pass the full-resolution image (image=... / --image) and its "
                "mpp instead."
            )
        if chosen_mpp is None:
            raise UnitsError(
                f"The pixel size of {scalefactors_path.parent.parent} is unknown: no "
                "microns_per_pixel or spot_diameter_fullres in the scale factors and too few "
                "spots to measure the lattice pitch. Pass the µm per pixel of the full-resolution "
                "image: mpp=... in Python or --mpp on the command line."
            )
        slide = open_image(path, mpp=chosen_mpp.mpp / scalef)
        return ChosenImage(slide, kind, scalef, chosen_mpp.mpp, chosen_mpp.source)
    dirs = ", ".join(str(d) for d in image_dirs)
    raise InputFileError(
        f"No usable image: tried {', '.join(tried)} in {dirs}. Pass the full-resolution H&E "
        "image with image=... (--image) and its mpp."
    )


def spaceranger_units(
    positions: pd.DataFrame,
    pos_path: Path,
    mtx_path: Path,
    chosen,
    *,
    geometry: str,
    size_um: float,
):
    """The units of a Space Ranger matrix at their positions on the chosen image.

    Reads the gene-expression part of the feature-barcode matrix, matches its
    barcodes (see :func:`match_counts_to_positions`) and builds the units' AnnData with
    ``in_tissue``, ``array_row`` and ``array_col`` in ``obs`` and ``var["gene_ids"]``.

    Args:
        positions: the positions file as :func:`read_positions` returns it.
        pos_path, mtx_path: positions file and matrix (``.h5`` or Matrix Market folder).
        chosen: the image :func:`resolve_image` chose (its ``scale`` from full-resolution px).
        geometry: ``disc`` (Visium spots) or ``square`` (Visium HD bins).
        size_um: spot diameter or bin side in µm.

    Returns:
        ``(adata, stats)``: the AnnData and the matching statistics.
    """
    from hexpress import _keys as K
    from hexpress.data.sample import make_units
    from hexpress.io._tables import gene_expression_only, read_feature_matrix

    tenx = gene_expression_only(read_feature_matrix(mtx_path), mtx_path)
    tenx, pos, stats = match_counts_to_positions(tenx, positions, mtx_path, pos_path)
    centers = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float) * chosen.scale
    obs = pd.DataFrame(
        {
            K.IN_TISSUE: pos["in_tissue"].to_numpy(dtype=int),
            "array_row": pos["array_row"].to_numpy(dtype=int),
            "array_col": pos["array_col"].to_numpy(dtype=int),
        }
    )
    adata = make_units(
        tenx.counts,
        genes=tenx.genes,
        unit_ids=tenx.barcodes,
        centers_px=centers,
        geometry=geometry,
        size_um=size_um,
        source=mtx_path,
        image=chosen.image,
        obs=obs,
    )
    adata.var["gene_ids"] = list(tenx.gene_ids)
    return adata, stats
