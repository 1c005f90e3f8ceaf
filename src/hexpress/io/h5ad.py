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
from hexpress.io._pixel_size import VISIUM_SCALEFACTOR_SPOT_UM
from hexpress.io._tables import positive
from hexpress.io.image import ArrayImage, open_image
from hexpress.io.visium import VISIUM_SPOT_DIAMETER_UM, VISIUM_SPOT_PITCH_UM

__all__ = [
    "read_h5ad",
    "read_h5ad_libraries",
    "libraries",
    "write_h5ad",
    "spatial_uns",
    "HIRES_MAX_SIDE",
    "LOWRES_MAX_SIDE",
]

log = logging.getLogger(__name__)

HIRES_MAX_SIDE = 2000  # Space Ranger's tissue_hires_image.png
LOWRES_MAX_SIDE = 600  # Space Ranger's tissue_lowres_image.png
LIBRARY_KEY = "library_id"  # scanpy's concat(..., label="library_id") of several slides
# unit centres in obs columns, (image x, image y): Space Ranger / HEST names, and the
# SpaGCN / DeepSpot names, where ``x_pixel`` is the row (``pxl_row_in_fullres``) and ``y_pixel``
# the column; on the HEST-style Xenium fixture only that reading puts cells on stained tissue
POSITION_COLUMNS = (("pxl_col_in_fullres", "pxl_row_in_fullres"), ("y_pixel", "x_pixel"))


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


def libraries(adata: ad.AnnData) -> list[str]:
    """Library ids of an AnnData: ``obs["library_id"]`` values, else ``uns["spatial"]`` keys."""
    if LIBRARY_KEY in adata.obs:
        return [str(v) for v in pd.unique(adata.obs[LIBRARY_KEY].astype(str))]
    spatial = adata.uns.get(K.SPATIAL, {})
    return [str(k) for k in spatial.keys()] if isinstance(spatial, dict) else []


def _pick_library(adata: ad.AnnData, library_id: str | None, path: Path) -> str | None:
    libs = libraries(adata)
    if library_id is not None:
        if str(library_id) not in libs:
            raise ConfigError(
                f"{path}: library {library_id!r} is not in the file; libraries present: "
                f"{', '.join(libs) or 'none'}."
            )
        return str(library_id)
    if len(libs) > 1:
        if LIBRARY_KEY in adata.obs:
            n = adata.obs[LIBRARY_KEY].astype(str).value_counts()
            listing = ", ".join(f"{lib} ({int(n[lib])} spots)" for lib in libs)
        else:
            listing = ", ".join(libs)
        raise ConfigError(
            f"{path} holds {len(libs)} libraries (one slide each): {listing}. Choose one with "
            "library_id=... (--library), or read each with read_h5ad_libraries()."
        )
    return libs[0] if libs else None


def _count_matrix(adata: ad.AnnData, layer: str | None, path: Path):
    """The raw counts of ``adata``: ``layer``, else ``layers["counts"]``, else ``X``; refuses a
    matrix of non-integer values (normalised / log-transformed), naming where counts may be."""
    if layer is not None:
        if layer not in adata.layers:
            raise ConfigError(
                f"{path}: no layer {layer!r}; layers present: {list(adata.layers) or 'none'}."
            )
        X, where = adata.layers[layer], f"layers[{layer!r}]"
    elif K.COUNTS in adata.layers:
        X, where = adata.layers[K.COUNTS], f"layers[{K.COUNTS!r}]"
    else:
        X, where = adata.X, "X"
    if X is None:
        raise FormatError(f"{path} has no expression matrix in X.")
    bad = _first_non_count(X)
    if bad is not None:
        raw_ok = adata.raw is not None and _first_non_count(adata.raw.X) is None
        hint = (
            " adata.raw holds whole counts: write them to a layer (adata.layers['counts'] = "
            "adata.raw[:, adata.var_names].X) and read again."
            if raw_ok
            else ""
        )
        raise FormatError(
            f"{path}: {where} holds {bad:g}, not a whole non-negative count: it looks normalised "
            "or log-transformed (scanpy normalize_total / log1p). hexpress needs raw counts: "
            f"name a layer of raw counts with layer=... (--layer); layers present: "
            f"{list(adata.layers) or 'none'}.{hint}"
        )
    return X


def _first_non_count(X, limit: int = 1_000_000) -> float | None:
    """A value of ``X`` (its first ``limit`` stored values) that is not a whole count, or None."""
    data = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
    data = np.asarray(data).ravel()[:limit]
    if not data.size:
        return None
    bad = ~np.isfinite(data) | (data < 0) | (np.abs(data - np.round(data)) > 1e-6)
    return float(data[np.argmax(bad)]) if bad.any() else None


def _positions(adata: ad.AnnData, path: Path) -> tuple[np.ndarray, str]:
    """Unit centres, x then y: ``obsm["spatial"]``, else ``obs`` columns (HEST / DeepSpot)."""
    if K.SPATIAL in adata.obsm:
        return np.asarray(adata.obsm[K.SPATIAL], dtype=float)[:, :2], "obsm['spatial']"
    for cx, cy in POSITION_COLUMNS:
        if cx in adata.obs and cy in adata.obs:
            xy = adata.obs[[cx, cy]].to_numpy(dtype=float)
            return xy, f"obs[{cx!r}], obs[{cy!r}]"
    raise FormatError(
        f"{path} has no unit positions: neither obsm['spatial'] nor obs columns "
        f"{' / '.join(f'{a}, {b}' for a, b in POSITION_COLUMNS)}; it is not a spatial AnnData."
    )


def _visium_like(adata: ad.AnnData) -> bool:
    """Spots on the Visium lattice: ``array_row + array_col`` even for every spot."""
    if not {"array_row", "array_col"} <= set(adata.obs.columns) or adata.n_obs < 3:
        return False
    rc = adata.obs[["array_row", "array_col"]].to_numpy(dtype=float)
    return bool(np.all(np.isfinite(rc)) and np.all(rc.sum(1) % 2 == 0))


def _sidecar(path: Path) -> tuple[dict, Path | None]:
    """HEST-style ``<stem>.json`` next to the file (``cell_diameter`` / ``spot_diameter`` µm)."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}, None
    from hexpress.io._tables import read_json

    return read_json(side), side


def _sibling_image(path: Path) -> Path | None:
    from hexpress.io.image import IMAGE_SUFFIXES

    for suffix in IMAGE_SUFFIXES:
        cand = path.with_name(path.stem + suffix)
        if cand.is_file():
            return cand
    return None


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

    Also reads hexpress's own outputs (predictions: normalised values, kept as they are, with
    ``Sample.meta["normalization"]``) and HEST-style files (positions in ``obs`` columns of a
    sibling image's pixels, unit size in a sibling ``<stem>.json``).

    Args:
        path: the ``.h5ad`` file.
        image: the full-resolution image the positions refer to. Default: the ``hires`` (else
            ``lowres``) image in ``uns["spatial"][library_id]["images"]`` with positions scaled
            by its scale factor, else an image file with the same stem next to ``path``.
        mpp: µm per full-resolution pixel; default (:mod:`hexpress.io._pixel_size`):
            ``uns["hexpress"]["mpp_fullres"]`` / ``["mpp"]`` (files hexpress wrote), the image
            file's metadata, the 100 µm Visium pitch (``obs`` ``array_row`` / ``array_col``,
            as ``sc.read_visium`` keeps them), ``65 / spot_diameter_fullres`` (Visium).
        library_id: the library (one slide) to read when the file holds several
            (``obs["library_id"]`` / ``uns["spatial"]`` keys).
        sample_id: default ``uns["hexpress"]["sample_id"]``, else the library id or file stem.
        patient_id: default ``uns["hexpress"]["patient_id"]``, else ``sample_id``.
        layer: raw counts layer; default ``layers["counts"]`` if present, else ``X``. Values
            that are not whole counts are refused unless the file records its normalisation.

    Returns:
        A :class:`Sample`; geometry and size from ``obs`` when present, else 55 µm discs for
        Visium spots, else the sidecar JSON's ``cell_diameter`` / ``spot_diameter``, else discs
        of ``spot_diameter_fullres * mpp`` µm.
    """
    from hexpress.io._pixel_size import Estimate, image_file_mpp, mpp_from_lattice, resolve_mpp

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"AnnData file not found: {path}.")
    try:
        adata = ad.read_h5ad(path)
    except Exception as e:  # h5py/anndata raise many types for broken files
        raise FormatError(f"Cannot read {path} as .h5ad: {e}.") from e
    lib = _pick_library(adata, library_id, path)
    if lib is not None and LIBRARY_KEY in adata.obs:
        adata = adata[adata.obs[LIBRARY_KEY].astype(str).to_numpy() == lib].copy()
    spatial_all = adata.uns.get(K.SPATIAL, {})
    spatial = (
        dict(spatial_all.get(lib, {})) if lib is not None and isinstance(spatial_all, dict) else {}
    )
    scalef = dict(spatial.get("scalefactors", {}))
    hx = dict(adata.uns.get(K.UNS, {}))
    norm = hx.get(K.NORMALIZATION) or None
    side, side_path = _sidecar(path)
    centers_full, pos_source = _positions(adata, path)
    visium = K.SIZE_UM not in adata.obs and _visium_like(adata)

    # the image and the factor from full-resolution px to its px
    images = spatial.get("images", {})
    image_path = Path(image) if image is not None else None
    kind = None
    if image_path is None:
        kind = next((k for k in ("hires", "lowres") if k in images), None)
        if kind is None:
            image_path = _sibling_image(path)
            if image_path is None and hx.get("image_path") and Path(hx["image_path"]).is_file():
                image_path = Path(hx["image_path"])
    if image_path is not None:
        kind, scale = "fullres", 1.0
    elif kind is not None:
        key = f"tissue_{kind}_scalef"
        scale = positive(scalef.get(key), key, path)
        if scale is None:
            raise UnitsError(f"{path}: uns['spatial'][{lib!r}]['scalefactors'] has no {key}.")
    else:
        raise InputFileError(
            f"{path}: no image in uns['spatial'][{lib!r}]['images'], none next to it "
            f"({path.stem}.tif / .jpg / .png) and none given. Pass the full-resolution image "
            "with image=... (--image)."
        )

    # the pixel size, by precedence
    recorded = hx.get("mpp_fullres", hx.get("mpp"))
    metadata = None
    if recorded is not None:
        metadata = Estimate(
            positive(recorded, "uns['hexpress']['mpp_fullres']", path),
            f"uns['hexpress'] of {path.name}",
        )
    elif image_path is not None:
        fm = image_file_mpp(image_path)
        metadata = None if fm is None else Estimate(fm, f"metadata of {image_path.name}")
    diam_px = positive(scalef.get("spot_diameter_fullres"), "spot_diameter_fullres", path)
    pitch = scale_est = None
    if visium:
        fit = mpp_from_lattice(
            adata.obs[["array_row", "array_col"]].to_numpy(dtype=float),
            centers_full,
            lattice="hex",
            pitch_um=VISIUM_SPOT_PITCH_UM,
        )
        pitch = None if fit is None else Estimate(fit, "the 100 µm Visium spot pitch")
        if diam_px is not None:
            scale_est = Estimate(
                VISIUM_SCALEFACTOR_SPOT_UM / diam_px,
                f"spot_diameter_fullres = {diam_px:.5g} px spanning 65 µm",
            )
    chosen = resolve_mpp(
        str(path), given=mpp, metadata=metadata, pitch=pitch, scalefactors=scale_est
    )
    if chosen is None:
        hint = (
            f" For Visium, spot_diameter_fullres spans a theoretical 65 µm spot: 65 / "
            f"{diam_px:.5g} = {65 / diam_px:.4g} µm/px (not 55 / {diam_px:.5g})."
            if diam_px
            else ""
        )
        raise UnitsError(
            f"{path} does not say its pixel size. Pass mpp=... (--mpp), the µm per pixel "
            f"of the full-resolution image.{hint}"
        )
    mpp_full = chosen.mpp
    if kind == "fullres":
        slide = open_image(image_path, mpp=mpp_full)
    else:
        slide = ArrayImage(np.asarray(images[kind]), mpp=mpp_full / scale, path=None)
    centers = centers_full * scale

    # geometry and unit size
    if K.GEOMETRY in adata.obs:
        geoms = adata.obs[K.GEOMETRY].astype(str).unique()
        if len(geoms) != 1:
            raise FormatError(f"{path}: mixed unit geometries {list(geoms)} in obs['geometry'].")
        geometry = str(geoms[0])
    else:
        geometry = K.DISC
    size_source = "obs['size_um']"
    if K.SIZE_UM in adata.obs:
        size_um = adata.obs[K.SIZE_UM].to_numpy(float)
        if geometry == K.POLYGON and np.isnan(size_um).all():
            size_um = None
    elif visium:
        size_um, size_source = VISIUM_SPOT_DIAMETER_UM, "the 55 µm Visium spot"
    elif side.get("cell_diameter") or side.get("spot_diameter"):
        key = "cell_diameter" if side.get("cell_diameter") else "spot_diameter"
        size_um = positive(side[key], key, side_path)
        size_source = f"{key} in {side_path.name}"
    elif diam_px is not None:
        size_um, size_source = diam_px * mpp_full, "spot_diameter_fullres x mpp"
    else:
        raise UnitsError(
            f"{path}: no obs['size_um'], no spot_diameter_fullres scale factor and no "
            f"{path.stem}.json with cell_diameter, so the unit size is unknown."
        )
    polygons = hx.get("polygons")
    if isinstance(polygons, dict):  # h5ad stores a list of arrays as a dict "0", "1", ...
        polygons = [np.asarray(polygons[k]) for k in sorted(polygons, key=int)]
    extra = adata.obs.drop(columns=[K.GEOMETRY, K.SIZE_UM], errors="ignore")
    if norm:
        # normalised values (a prediction, a normalised truth): kept as they are, NaN included
        units = adata.copy()
        units.obsm[K.SPATIAL] = centers
        units.obs[K.GEOMETRY] = pd.Categorical(
            [geometry] * units.n_obs, categories=list(K.GEOMETRIES)
        )
        sizes = np.broadcast_to(
            np.asarray(np.nan if size_um is None else size_um, float), (units.n_obs,)
        )
        units.obs[K.SIZE_UM] = np.array(sizes)
    else:
        X = _count_matrix(adata, layer, path)
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
    units.uns[K.UNS] = {k: v for k, v in hx.items() if k not in ("mpp", "image_size", "polygons")}
    units.uns[K.UNS]["mpp_fullres"] = float(mpp_full)
    if polygons is not None:
        units.uns[K.UNS]["polygons"] = [np.asarray(p, dtype=float) * scale for p in polygons]
    units.uns[K.SPATIAL] = {lib: spatial} if lib is not None and spatial else {}
    sid = sample_id or str(hx.get("sample_id", lib or path.stem))
    return Sample(
        adata=units,
        image=slide,
        sample_id=sid,
        patient_id=patient_id or str(hx.get("patient_id", sid)),
        technology=str(hx.get("technology", "visium" if visium else "h5ad")),
        meta={
            "h5ad": str(path),
            "library_id": lib,
            "positions": pos_source,
            "image_kind": kind,
            "image_scale_from_fullres": float(scale),
            "mpp_fullres": float(mpp_full),
            "mpp_source": chosen.source,
            "size_source": size_source,
            "normalization": dict(norm) if norm else None,
        },
    )


def read_h5ad_libraries(path: str | Path, **kw) -> list[Sample]:
    """One :class:`Sample` per library of an ``.h5ad`` (see :func:`read_h5ad` for ``kw``)."""
    path = Path(path)
    try:
        adata = ad.read_h5ad(path, backed="r")
        libs = libraries(adata)
        adata.file.close()
    except Exception as e:  # h5py/anndata raise many types for broken files
        raise FormatError(f"Cannot read {path} as .h5ad: {e}.") from e
    return [read_h5ad(path, library_id=lib, **kw) for lib in libs] or [read_h5ad(path, **kw)]


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
    scale factors and ``spot_diameter_fullres``: the median of ``sizes_um`` over the slide's mpp,
    except for 55 µm Visium spots, where it keeps Space Ranger's meaning (the pixels spanning a
    theoretical 65 µm spot), so that readers of Space Ranger output size them right.

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
    if finite.size and np.allclose(finite, VISIUM_SPOT_DIAMETER_UM):
        diam_um = VISIUM_SCALEFACTOR_SPOT_UM
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
