"""Legacy Spatial Transcriptomics (Ståhl et al. 2016) in the HER2ST layout.

The layout is the one the HER2ST authors publish (Andersson et al. 2021: ``ST-cnts/``,
``ST-spotfiles/``, ``ST-imgs/``) plus a ``sections.tsv`` that hexpress needs because those files
do not say which image belongs to which section, how its pixels relate to the spot files' pixels
or what size a pixel is. The ST-Net release (He et al. 2020: per-section ``*_stdata.tsv``,
``spots_*.csv`` and ``*.jpg`` under ``stnet/``) is a different layout and is not read here.

A data set folder holds::

    sections.tsv                      section, patient, image, coord_scale, um_per_px,
                                      spot_diameter_um, spot_pitch_um (one row per section)
    ST-cnts/<section>.tsv.gz          counts: one row per spot "<x>x<y>", one column per gene
    ST-spotfiles/<section>_selection.tsv
                                      x, y (array index), pixel_x, pixel_y (spot centre in pixels
                                      of the original scan), selected (1 = under tissue)
    ST-imgs/...                       the H&E image of each section (path in sections.tsv)

Counts and selection rows are joined on the array index ``<x>x<y>``; a spot is kept when it is
selected and has a counts row. Spot centres in image pixels are ``pixel_x/pixel_y *
coord_scale`` (``coord_scale`` < 1 when the image is a downscaled copy of the scan).

Pixel size (see :mod:`hexpress.io._pixel_size`): ``mpp`` given, else the image file's metadata,
else ``um_per_px`` of ``sections.tsv`` (itself measured from the 200 µm pitch), else the 200 µm
spot pitch measured from the selected spots' array indices and pixel positions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress.data.sample import Sample, make_units
from hexpress.errors import (
    ConfigError,
    DataMismatchError,
    FormatError,
    InputFileError,
    UnitsError,
)
from hexpress.io._pixel_size import Estimate, image_file_mpp, mpp_from_lattice, resolve_mpp
from hexpress.io._tables import positive, require_dir
from hexpress.io.image import open_image

__all__ = ["read_legacy_st", "list_sections", "read_sections_table"]

log = logging.getLogger(__name__)

LAYOUT = """  sections.tsv  (section, patient, image, coord_scale, um_per_px, spot_diameter_um)
  ST-cnts/<section>.tsv.gz
  ST-spotfiles/<section>_selection.tsv
  ST-imgs/...  (image paths as listed in sections.tsv)"""

SECTION_COLUMNS = ("section", "patient", "image", "coord_scale", "um_per_px", "spot_diameter_um")
DEFAULT_SPOT_DIAMETER_UM = 100.0
DEFAULT_SPOT_PITCH_UM = 200.0


def read_sections_table(root: str | Path) -> pd.DataFrame:
    """The ``sections.tsv`` table of a legacy ST data set, indexed by section id."""
    root = require_dir(root, "Legacy ST data set", LAYOUT)
    path = root / "sections.tsv"
    if not path.is_file():
        raise InputFileError(
            f"{path} not found. A legacy ST folder needs a sections.tsv that gives each section's "
            f"image and pixel size. Expected layout:\n{LAYOUT}"
        )
    table = pd.read_csv(path, sep="\t", dtype={"section": str, "patient": str})
    missing = [c for c in SECTION_COLUMNS if c not in table.columns and c != "spot_diameter_um"]
    if missing:
        raise FormatError(
            f"{path}: missing column(s) {missing}; expected {', '.join(SECTION_COLUMNS)}."
        )
    if table["section"].duplicated().any():
        dup = table["section"][table["section"].duplicated()].tolist()
        raise FormatError(f"{path}: section id(s) listed twice: {dup}.")
    return table.set_index("section", drop=False)


def list_sections(root: str | Path) -> list[str]:
    """Section ids listed in ``<root>/sections.tsv``, in file order."""
    return [str(s) for s in read_sections_table(root).index]


def read_legacy_st(
    root: str | Path,
    section: str,
    *,
    mpp: float | None = None,
    image: str | Path | None = None,
) -> Sample:
    """Read one section of a legacy ST data set (HER2ST / STNet layout).

    Args:
        root: the data set folder (holding ``sections.tsv``).
        section: section id, a row of ``sections.tsv``.
        mpp: µm per pixel of the image; default the image file's metadata, else ``um_per_px``
            from ``sections.tsv``, else the 200 µm spot pitch measured on the image.
        image: an image to use instead of the one in ``sections.tsv``; spot pixel positions are
            still multiplied by that section's ``coord_scale``.

    Returns:
        A :class:`Sample` of 100 µm disc spots (``spot_diameter_um``), centres in pixels of the
        image, raw counts in ``X``; ``obs`` holds the array index ``array_x``/``array_y``.

    Raises:
        ConfigError: unknown section (the message lists the valid ones).
        InputFileError: a counts, selection or image file is missing.
        DataMismatchError: no selected spot has counts.
    """
    root = Path(root)
    table = read_sections_table(root)
    section = str(section)
    if section not in table.index:
        raise ConfigError(
            f"Section {section!r} is not in {root / 'sections.tsv'}; valid sections: "
            f"{', '.join(table.index)}."
        )
    row = table.loc[section]
    cnt_path = root / "ST-cnts" / f"{section}.tsv.gz"
    sel_path = root / "ST-spotfiles" / f"{section}_selection.tsv"
    for p, what in ((cnt_path, "Counts file"), (sel_path, "Spot selection file")):
        if not p.is_file():
            raise InputFileError(f"{what} for section {section} not found: {p}. Layout:\n{LAYOUT}")
    coord_scale = positive(row.get("coord_scale", 1.0), "coord_scale", root / "sections.tsv")
    diameter_um = positive(
        row.get("spot_diameter_um", DEFAULT_SPOT_DIAMETER_UM), "spot_diameter_um", sel_path
    )
    img_path = Path(image) if image is not None else root / str(row["image"])
    pitch_um = positive(row.get("spot_pitch_um", DEFAULT_SPOT_PITCH_UM), "spot_pitch_um", root)

    counts = pd.read_csv(cnt_path, sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    sel = pd.read_csv(sel_path, sep="\t")
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need <= set(sel.columns):
        raise FormatError(
            f"{sel_path}: missing column(s) {sorted(need - set(sel.columns))}; expected x, y, "
            "pixel_x, pixel_y, selected."
        )
    if "selected" in sel.columns:
        sel = sel[sel["selected"].astype(int) == 1]
    sel.index = sel["x"].astype(int).astype(str) + "x" + sel["y"].astype(int).astype(str)
    if sel.index.has_duplicates:
        dup = sel.index[sel.index.duplicated()].unique().tolist()
        raise FormatError(f"{sel_path}: array position(s) listed twice: {dup[:5]}.")
    keep = sel.index.intersection(counts.index, sort=False)
    n_no_counts = len(sel) - len(keep)
    if len(keep) == 0:
        raise DataMismatchError(
            f"{sel_path}: none of the {len(sel)} selected spots has a row in {cnt_path} (rows "
            f"look like {list(counts.index[:3])}, spots like {list(sel.index[:3])})."
        )
    if n_no_counts:
        log.info("%s: %d selected spot(s) have no counts and are left out", section, n_no_counts)
    fit = mpp_from_lattice(
        sel[["y", "x"]].to_numpy(dtype=float),
        sel[["pixel_x", "pixel_y"]].to_numpy(dtype=float) * coord_scale,
        lattice="square",
        pitch_um=pitch_um,
    )
    file_mpp = image_file_mpp(img_path) if img_path.is_file() else None
    table_mpp = positive(row.get("um_per_px"), "um_per_px", root / "sections.tsv")
    chosen = resolve_mpp(
        f"legacy ST section {section}",
        given=mpp,
        metadata=None if file_mpp is None else Estimate(file_mpp, f"metadata of {img_path.name}"),
        pitch=[
            None if table_mpp is None else Estimate(table_mpp, "um_per_px in sections.tsv"),
            None if fit is None else Estimate(fit, f"the {pitch_um:g} µm spot pitch"),
        ],
    )
    if chosen is None:
        raise UnitsError(
            f"Section {section}: no pixel size (no um_per_px in sections.tsv, none in "
            f"{img_path.name}, too few spots to measure the pitch). Pass mpp=... (--mpp)."
        )
    slide = open_image(img_path, mpp=chosen.mpp)  # lazy: reads the size, not the pixels
    sel = sel.loc[keep]
    centers = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64) * coord_scale
    obs = pd.DataFrame(
        {"array_x": sel["x"].to_numpy(dtype=int), "array_y": sel["y"].to_numpy(dtype=int)}
    )
    adata = make_units(
        counts.loc[keep].to_numpy(),
        genes=counts.columns.astype(str),
        unit_ids=keep,
        centers_px=centers,
        geometry=K.DISC,
        size_um=diameter_um,
        source=cnt_path,
        image=slide,
        obs=obs,
    )
    log.info(
        "legacy ST %s: %d spots x %d genes, image %d x %d px at %.4g µm/px",
        section,
        adata.n_obs,
        adata.n_vars,
        slide.width,
        slide.height,
        slide.mpp,
    )
    return Sample(
        adata=adata,
        image=slide,
        sample_id=section,
        patient_id=str(row["patient"]),
        technology="legacy-st",
        meta={
            "root": str(root),
            "coord_scale": float(coord_scale),
            "spot_pitch_um": float(pitch_um),
            "mpp_source": chosen.source,
            "spots_selected_without_counts": int(n_no_counts),
        },
    )
