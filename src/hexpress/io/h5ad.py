"""AnnData ``.h5ad`` in scanpy's ``uns["spatial"]`` convention, read and written.

What scanpy (``sc.read_visium``, ``sc.pl.spatial``) and squidpy (``sq.pl.spatial_scatter``) use::

    obsm["spatial"]                         (n, 2) spot centres, x then y, full-resolution px
    uns["spatial"][library_id]["images"]    {"hires": (h, w, 3) array, "lowres": ...}
    uns["spatial"][library_id]["scalefactors"]
        tissue_hires_scalef                 hires px per full-resolution px
        tissue_lowres_scalef                lowres px per full-resolution px
        spot_diameter_fullres               spot diameter in full-resolution px
    uns["spatial"][library_id]["metadata"]  free text (chemistry, software version)

hexpress adds, where present, ``obs["geometry"]``, ``obs["size_um"]`` and ``uns["hexpress"]``
with ``mpp_fullres`` (µm per full-resolution pixel), so a file written here reads back with its
units. Files written by scanpy from Space Ranger output carry no pixel size: pass ``mpp``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress._files import atomic_path
from hexpress.data.sample import Sample, make_units
from hexpress.errors import ConfigError, FormatError, InputFileError, UnitsError
from hexpress.io._tables import positive
from hexpress.io.image import ArrayImage, open_image

__all__ = ["read_h5ad", "write_h5ad", "spatial_uns", "HIRES_MAX_SIDE", "LOWRES_MAX_SIDE"]

log = logging.getLogger(__name__)

HIRES_MAX_SIDE = 2000  # Space Ranger's tissue_hires_image.png
LOWRES_MAX_SIDE = 600  # Space Ranger's tissue_lowres_image.png


def _plain(value):
    """A value h5ad can store: no None, no Path, numpy scalars as Python scalars."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value if v is not None]
        if items and all(isinstance(v, (int, float, str, bool)) for v in items):
            return np.asarray(items)
        return {str(i): v for i, v in enumerate(items)} if items else np.asarray([])
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _pick_library(adata: ad.AnnData, library_id: str | None, path: Path) -> str | None:
    spatial = adata.uns.get(K.SPATIAL, {})
    libs = list(spatial.keys()) if isinstance(spatial, dict) else []
    if library_id is not None:
        if library_id not in libs:
            raise ConfigError(
                f"{path}: library_id {library_id!r} not in uns['spatial'] (present: {libs})."
            )
        return library_id
    if len(libs) > 1:
        raise ConfigError(
            f"{path} holds several libraries in uns['spatial']: {libs}. Choose one with "
            "library_id=... (--section)."
        )
    return libs[0] if libs else None


def read_h5ad(
    path: str | Path,
    *,
    image: str | Path | None = None,
    mpp: float | None = None,
    library_id: str | None = None,
    sample_id: str | None = None,
    patient_id: str | None = None,
    layer: str | None = None,
) -> Sample:
    """Read an ``.h5ad`` with scanpy's spatial convention into a :class:`Sample`.

    Args:
        path: the ``.h5ad`` file.
        image: the full-resolution image ``obsm["spatial"]`` refers to. Default: the ``hires``
            (else ``lowres``) image stored in ``uns["spatial"][library_id]["images"]``, with
            positions scaled by its scale factor.
        mpp: µm per full-resolution pixel; default ``uns["hexpress"]["mpp_fullres"]`` (files
            written by :func:`write_h5ad`), else the image file's own value.
        library_id: key of ``uns["spatial"]``; needed when there are several.
        sample_id: default ``uns["hexpress"]["sample_id"]``, else the library id or file stem.
        patient_id: default ``uns["hexpress"]["patient_id"]``, else ``sample_id``.
        layer: raw counts layer; default ``layers["counts"]`` if present, else ``X``.

    Returns:
        A :class:`Sample`; geometry and size from ``obs`` when present, else discs of
        ``spot_diameter_fullres * mpp`` µm.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"AnnData file not found: {path}.")
    try:
        adata = ad.read_h5ad(path)
    except Exception as e:  # h5py/anndata raise many types for broken files
        raise FormatError(f"Cannot read {path} as .h5ad: {e}.") from e
    if K.SPATIAL not in adata.obsm:
        raise FormatError(
            f"{path} has no obsm['spatial'] (spot centres in full-resolution pixels); it is not "
            "a spatial AnnData."
        )
    lib = _pick_library(adata, library_id, path)
    spatial = adata.uns[K.SPATIAL][lib] if lib is not None else {}
    scalef = dict(spatial.get("scalefactors", {}))
    hx = dict(adata.uns.get(K.UNS, {}))
    mpp_full = positive(mpp, "mpp", "mpp argument")
    mpp_source = "given"
    if mpp_full is None and "mpp_fullres" in hx:
        mpp_full = positive(hx["mpp_fullres"], "uns['hexpress']['mpp_fullres']", path)
        mpp_source = f"uns['hexpress']['mpp_fullres'] of {path.name}"
    if image is not None:
        slide = open_image(image, mpp=mpp_full)
        mpp_full, scale, kind = slide.mpp, 1.0, "fullres"
        if mpp_source == "given" and mpp is None:
            mpp_source = f"metadata of {Path(image).name}"
    else:
        images = spatial.get("images", {})
        kind = next((k for k in ("hires", "lowres") if k in images), None)
        if kind is None:
            raise InputFileError(
                f"{path}: no image in uns['spatial'][{lib!r}]['images'] and none given. Pass the "
                "full-resolution image with image=... (--image)."
            )
        key = f"tissue_{kind}_scalef"
        scale = positive(scalef.get(key), key, path)
        if scale is None:
            raise UnitsError(f"{path}: uns['spatial'][{lib!r}]['scalefactors'] has no {key}.")
        if mpp_full is None:
            diam = scalef.get("spot_diameter_fullres")
            hint = (
                f" For standard Visium (55 µm spots) that is 55 / {float(diam):.4g} = "
                f"{55 / float(diam):.4g}."
                if diam
                else ""
            )
            raise UnitsError(
                f"{path} does not say its pixel size. Pass mpp=... (--mpp), the µm per pixel "
                f"of the full-resolution image.{hint}"
            )
        slide = ArrayImage(np.asarray(images[kind]), mpp=mpp_full / scale, path=None)
    centers = np.asarray(adata.obsm[K.SPATIAL], dtype=float)[:, :2] * scale
    if K.GEOMETRY in adata.obs:
        geoms = adata.obs[K.GEOMETRY].astype(str).unique()
        if len(geoms) != 1:
            raise FormatError(f"{path}: mixed unit geometries {list(geoms)} in obs['geometry'].")
        geometry = str(geoms[0])
    else:
        geometry = K.DISC
    if K.SIZE_UM in adata.obs:
        size_um = adata.obs[K.SIZE_UM].to_numpy(float)
        if geometry == K.POLYGON and np.isnan(size_um).all():
            size_um = None
    else:
        diam = positive(scalef.get("spot_diameter_fullres"), "spot_diameter_fullres", path)
        if diam is None:
            raise UnitsError(
                f"{path}: no obs['size_um'] and no spot_diameter_fullres scale factor, so the "
                "spot size is unknown."
            )
        size_um = diam * mpp_full
    if layer is None and K.COUNTS in adata.layers:
        layer = K.COUNTS
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise FormatError(f"{path} has no expression matrix in X.")
    extra = adata.obs.drop(columns=[K.GEOMETRY, K.SIZE_UM], errors="ignore")
    units = make_units(
        X,
        genes=adata.var_names,
        unit_ids=adata.obs_names,
        centers_px=centers,
        geometry=geometry,
        size_um=size_um,
        source=path,
        image=slide,
        obs=extra,
    )
    units.var = adata.var.copy()
    units.uns[K.UNS] = {k: v for k, v in hx.items() if k not in ("mpp", "image_size")}
    units.uns[K.UNS]["mpp_fullres"] = float(mpp_full)
    units.uns[K.SPATIAL] = {lib: spatial} if lib is not None else {}
    sid = sample_id or str(hx.get("sample_id", lib or path.stem))
    return Sample(
        adata=units,
        image=slide,
        sample_id=sid,
        patient_id=patient_id or str(hx.get("patient_id", sid)),
        technology=str(hx.get("technology", "h5ad")),
        meta={
            "h5ad": str(path),
            "library_id": lib,
            "image_kind": kind,
            "image_scale_from_fullres": float(scale),
            "mpp_fullres": float(mpp_full),
            "mpp_source": mpp_source,
        },
    )


def spatial_uns(
    slide,
    sizes_um,
    library_id: str,
    *,
    hires_max_side: int = HIRES_MAX_SIDE,
    lowres_max_side: int = LOWRES_MAX_SIDE,
    thumbnails: tuple | None = None,
) -> dict:
    """scanpy's ``uns["spatial"]`` for units on ``slide``: hires / lowres thumbnails with their
    scale factors and ``spot_diameter_fullres`` (median of ``sizes_um`` over the slide's mpp).

    Args:
        slide: a :class:`~hexpress.io.SlideImage` (level 0 = "full resolution").
        sizes_um: unit sizes in µm (NaN entries ignored).
        library_id: the key under ``uns["spatial"]``.
        thumbnails: ``((hires, scale), (lowres, scale))`` already made (many files, one slide).
    """
    hi, lo = thumbnails or (slide.thumbnail(hires_max_side), slide.thumbnail(lowres_max_side))
    (hires, s_hi), (lowres, s_lo) = hi, lo
    sizes = np.asarray(sizes_um, dtype=float)
    finite = sizes[np.isfinite(sizes)]
    diam_um = float(np.median(finite)) if finite.size else float("nan")
    meta = {"software_version": "hexpress"}
    if slide.path is not None:
        meta["source_image_path"] = str(slide.path)
    return {
        str(library_id): {
            "images": {
                "hires": np.ascontiguousarray(hires),
                "lowres": np.ascontiguousarray(lowres),
            },
            "scalefactors": {
                "tissue_hires_scalef": float(s_hi),
                "tissue_lowres_scalef": float(s_lo),
                "spot_diameter_fullres": float(diam_um / slide.mpp)
                if math.isfinite(diam_um)
                else 1.0,
            },
            "metadata": meta,
        }
    }


def write_h5ad(
    sample: Sample | ad.AnnData,
    path: str | Path,
    *,
    library_id: str | None = None,
    image=None,
    mpp: float | None = None,
    hires_max_side: int = HIRES_MAX_SIDE,
    lowres_max_side: int = LOWRES_MAX_SIDE,
    overwrite: bool = True,
) -> Path:
    """Write a sample as an ``.h5ad`` that scanpy and squidpy open and plot as they are.

    The sample image's level 0 is the "full resolution" of the file: ``obsm["spatial"]`` stays
    in its pixels, and hires / lowres thumbnails (longest side ``hires_max_side`` /
    ``lowres_max_side``, uint8 RGB) go to ``uns["spatial"][library_id]["images"]`` with their
    scale factors. ``spot_diameter_fullres`` is the median unit size in µm over ``mpp``.

    Args:
        sample: a :class:`Sample`, or an ``AnnData`` with ``image`` (a
            :class:`~hexpress.io.SlideImage`) given.
        path: output file; written to a temporary file beside it, then renamed.
        library_id: default the sample id.
        image: the slide image when ``sample`` is an ``AnnData``.
        mpp: µm per level-0 pixel when ``image`` is an array rather than a ``SlideImage``.
        hires_max_side, lowres_max_side: thumbnail sizes.
        overwrite: when false, an existing file raises :class:`OutputExistsError`.

    Returns:
        ``path``.
    """
    from hexpress.errors import OutputExistsError

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it.")
    if isinstance(sample, Sample):
        adata, slide = sample.adata, sample.image
        sid, pid, tech = sample.sample_id, sample.patient_id, sample.technology
    else:
        adata, slide = sample, image
        hx = dict(adata.uns.get(K.UNS, {}))
        sid = str(hx.get("sample_id", path.stem))
        pid, tech = str(hx.get("patient_id", sid)), str(hx.get("technology", "h5ad"))
    if slide is not None and not hasattr(slide, "thumbnail"):
        if mpp is None:
            raise UnitsError("write_h5ad: an image array needs mpp=... (µm per pixel).")
        slide = ArrayImage(np.asarray(slide), mpp=mpp)
    if slide is None:
        raise UnitsError(
            "write_h5ad needs the sample's image (for the spatial images and the pixel size)."
        )
    lib = str(library_id or sid)
    out = adata.copy()
    sizes = out.obs[K.SIZE_UM].to_numpy(float) if K.SIZE_UM in out.obs else np.array([])
    out.uns[K.SPATIAL] = spatial_uns(
        slide, sizes, lib, hires_max_side=hires_max_side, lowres_max_side=lowres_max_side
    )
    hx = dict(out.uns.get(K.UNS, {}))
    hx.update(
        sample_id=str(sid),
        patient_id=str(pid),
        technology=str(tech),
        mpp_fullres=float(slide.mpp),
        mpp=float(slide.mpp),
        image_size=[int(slide.width), int(slide.height)],
    )
    if slide.path is not None:
        hx["image_path"] = str(slide.path)
    out.uns[K.UNS] = _plain(hx)
    out.obsm[K.SPATIAL] = np.asarray(out.obsm[K.SPATIAL], dtype=np.float64)
    for col in out.obs.columns:  # h5ad cannot store object columns of mixed types
        if out.obs[col].dtype == object:
            out.obs[col] = out.obs[col].astype(str)
    out.obs = pd.DataFrame(out.obs)
    with atomic_path(path) as tmp:
        out.write_h5ad(tmp)
    log.info("wrote %s (%d units, library %s)", path, out.n_obs, lib)
    return path
