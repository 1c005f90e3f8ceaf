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

Bins are squares of side ``bin_um`` centred on their position. The full-resolution mpp is
``microns_per_pixel`` when the scale factors have it, else ``bin_um / spot_diameter_fullres``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hexpress import _keys as K
from hexpress.data.sample import Sample
from hexpress.errors import ConfigError, InputFileError
from hexpress.io._spaceranger import resolve_image, spaceranger_units
from hexpress.io._tables import (
    find_file,
    read_json,
    require_dir,
)

__all__ = ["read_visium_hd", "square_folder_name"]

log = logging.getLogger(__name__)

LAYOUT = """  binned_outputs/
    square_002um/ square_008um/ square_016um/
      filtered_feature_bc_matrix.h5
      spatial/
        tissue_positions.parquet
        scalefactors_json.json
        tissue_hires_image.png, tissue_lowres_image.png (or in outs/spatial/)"""

_SQUARE = re.compile(r"^square_(\d+)um$")
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


def read_visium_hd(
    path: str | Path,
    *,
    bin_um: int | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    sample_id: str | None = None,
    patient_id: str | None = None,
) -> Sample:
    """Read one bin size of a Visium HD Space Ranger output.

    Args:
        path: ``binned_outputs/`` (or ``outs/``) with ``bin_um``, or one ``square_XXXum/`` folder.
        bin_um: bin side in µm (2, 8, 16); default 8, or the square folder's own size.
        image: the full-resolution H&E file the positions refer to, or ``"hires"`` /
            ``"lowres"``. Default: hires PNG, else lowres (a blank hires PNG is skipped).
        mpp: µm per pixel of the full-resolution image; default ``microns_per_pixel`` from the
            scale factors, else ``bin_um / spot_diameter_fullres``.
        sample_id: default the run folder's name.
        patient_id: default ``sample_id``.

    Returns:
        A :class:`Sample` of square bins of side ``bin_um`` under tissue with counts.
    """
    path = require_dir(path, "Visium HD output folder", LAYOUT)
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
    chosen = resolve_image(
        image,
        mpp=mpp,
        scalefactors=scalefactors,
        scalefactors_path=sf_path,
        image_dirs=image_dirs,
        unit_um=float(size),
        unit_name="bin side",
    )
    adata, stats = spaceranger_units(
        pos_path, mtx_path, chosen, geometry=K.SQUARE, size_um=float(size)
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
