"""One sample = one slide: its image, its measured units and who it comes from.

:func:`make_units` is the one place where measured units (spots, bins, cells) become an
``AnnData``; every reader goes through it, so every reader gets the same checks: matching shapes,
unique ids, finite non-negative counts, finite positions inside the image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from hexpress import _keys as K
from hexpress.errors import DataMismatchError, FormatError, GeometryError, UnitsError
from hexpress.io.image import SlideImage

__all__ = ["Sample", "make_units"]

log = logging.getLogger(__name__)


def _describe(ids: Sequence[str], limit: int = 5) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more


def make_units(
    counts,
    *,
    genes: Sequence[str],
    unit_ids: Sequence[str],
    centers_px: np.ndarray,
    geometry: str,
    size_um: float | np.ndarray | None,
    source: str | Path,
    image: SlideImage | None = None,
    obs: pd.DataFrame | None = None,
    allow_outside: bool = False,
) -> ad.AnnData:
    """Build the ``AnnData`` of measured units, checking everything a reader can get wrong.

    Args:
        counts: ``(n_units, n_genes)`` raw counts, dense or sparse.
        genes: gene names (``var_names``).
        unit_ids: unit ids (``obs_names``), unique.
        centers_px: ``(n_units, 2)`` centres, x then y, in level-0 pixels of ``image``.
        geometry: ``"disc"``, ``"square"`` or ``"polygon"``.
        size_um: disc diameter / square side in µm, one value or one per unit (``None`` only for
            polygons).
        source: file or folder the data came from, named in errors.
        image: the sample's image; when given, centres must lie inside it.
        obs: extra per-unit columns (index ignored; same order as ``unit_ids``).
        allow_outside: keep units outside the image instead of raising.

    Returns:
        ``AnnData`` with float32 CSR counts in ``X``, ``obsm["spatial"]``, ``obs["geometry"]`` and
        ``obs["size_um"]``.
    """
    src = str(source)
    if geometry not in K.GEOMETRIES:
        raise FormatError(f"{src}: geometry must be one of {K.GEOMETRIES}, got {geometry!r}.")
    X = sp.csr_matrix(counts, dtype=np.float32)
    genes = [str(g) for g in genes]
    unit_ids = [str(u) for u in unit_ids]
    centers = np.asarray(centers_px, dtype=np.float64)
    n, g = X.shape
    if len(genes) != g:
        raise DataMismatchError(
            f"{src}: the count matrix has {g} gene columns but {len(genes)} gene names were read."
        )
    if len(unit_ids) != n or centers.shape != (n, 2):
        raise DataMismatchError(
            f"{src}: {n} units have counts but {len(unit_ids)} ids and {len(centers)} positions "
            "were read; counts and positions must describe the same units."
        )
    dup = pd.Index(unit_ids)[pd.Index(unit_ids).duplicated()].unique()
    if len(dup):
        raise GeometryError(
            f"{src}: {len(dup)} duplicate unit id(s): {_describe(dup)}. Each spot/bin/cell must "
            "appear once; remove or rename the duplicates."
        )
    data = X.data
    if not np.all(np.isfinite(data)):
        bad = np.unique(X.nonzero()[0][~np.isfinite(data)])
        raise FormatError(
            f"{src}: non-finite counts (NaN/inf) in {len(bad)} unit(s), e.g. "
            f"{_describe([unit_ids[i] for i in bad])}. Counts must be raw, finite UMI counts."
        )
    if np.any(data < 0):
        bad = np.unique(X.nonzero()[0][data < 0])
        raise FormatError(
            f"{src}: negative counts in {len(bad)} unit(s), e.g. "
            f"{_describe([unit_ids[i] for i in bad])}. Counts must be raw, non-negative UMI "
            "counts, not normalised or scaled values."
        )
    if not np.all(np.isfinite(centers)):
        bad = np.where(~np.isfinite(centers).all(1))[0]
        raise GeometryError(
            f"{src}: {len(bad)} unit(s) have non-finite positions, e.g. "
            f"{_describe([unit_ids[i] for i in bad])}."
        )
    if geometry != K.POLYGON:
        if size_um is None:
            raise UnitsError(f"{src}: a {geometry} geometry needs its size in µm.")
        sizes = np.broadcast_to(np.asarray(size_um, dtype=np.float64), (n,))
        if np.any(~np.isfinite(sizes)) or np.any(sizes <= 0):
            raise UnitsError(f"{src}: unit sizes must be positive µm, got {np.unique(sizes)[:5]}.")
    else:
        sizes = np.full(n, np.nan) if size_um is None else np.broadcast_to(size_um, (n,))
    if image is not None:
        outside = (
            (centers[:, 0] < 0)
            | (centers[:, 1] < 0)
            | (centers[:, 0] >= image.width)
            | (centers[:, 1] >= image.height)
        )
        if outside.any() and not allow_outside:
            ex = [
                f"{unit_ids[i]} at ({centers[i, 0]:.0f}, {centers[i, 1]:.0f})"
                for i in np.where(outside)[0][:3]
            ]
            raise GeometryError(
                f"{src}: {int(outside.sum())} of {n} unit(s) lie outside the "
                f"{image.width} x {image.height} px image (e.g. {'; '.join(ex)}). The positions "
                "probably refer to another resolution of the image: check the scale factor "
                "(e.g. coord_scale, tissue_hires_scalef) or pass the full-resolution image."
            )
    frame = pd.DataFrame(index=pd.Index(unit_ids, name=None))
    if obs is not None:
        for col in obs.columns:
            frame[col] = np.asarray(obs[col])
    frame[K.GEOMETRY] = pd.Categorical([geometry] * n, categories=list(K.GEOMETRIES))
    frame[K.SIZE_UM] = np.asarray(sizes, dtype=np.float64)
    adata = ad.AnnData(X=X, obs=frame, var=pd.DataFrame(index=pd.Index(genes)))
    if adata.var_names.has_duplicates:
        adata.var_names_make_unique()
    adata.obsm[K.SPATIAL] = centers
    return adata


@dataclass
class Sample:
    """One slide: image, measured units, ids and technology.

    Attributes:
        adata: measured units (see :mod:`hexpress._keys` for the layout).
        image: lazy slide image with its ``mpp``; ``None`` for expression-only data.
        sample_id: section / slide id (unique within a data set).
        patient_id: the patient the section comes from (splits group on it).
        technology: one of :data:`hexpress._keys.TECHNOLOGIES`.
        meta: anything else a reader knows (paths, scale factors).
    """

    adata: ad.AnnData
    image: SlideImage | None
    sample_id: str
    patient_id: str
    technology: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        uns = self.adata.uns.setdefault(K.UNS, {})
        uns.update(
            sample_id=str(self.sample_id),
            patient_id=str(self.patient_id),
            technology=str(self.technology),
        )
        if self.image is not None:
            uns["mpp"] = float(self.image.mpp)
            uns["image_size"] = [int(self.image.width), int(self.image.height)]
            if self.image.path is not None:
                uns["image_path"] = str(self.image.path)

    @property
    def mpp(self) -> float:
        if self.image is None:
            raise UnitsError(f"Sample {self.sample_id} has no image, so no mpp.")
        return self.image.mpp

    @property
    def n_units(self) -> int:
        return self.adata.n_obs

    def summary(self) -> dict:
        """Plain-JSON summary: what ``hexpress info`` prints."""
        sizes = self.adata.obs[K.SIZE_UM].to_numpy(dtype=float)
        finite = sizes[np.isfinite(sizes)]
        geometry = self.adata.obs[K.GEOMETRY]
        X = self.adata.layers[K.COUNTS] if K.COUNTS in self.adata.layers else self.adata.X
        if hasattr(X, "toarray"):  # sparse counts
            total, per_unit = float(X.sum()), np.asarray(X.sum(1)).ravel()
        else:  # dense predictions hold NaN where the map did not reach
            total, per_unit = float(np.nansum(X)), np.nansum(np.asarray(X), axis=1)
        out = {
            "technology": self.technology,
            "section": self.sample_id,
            "patient": self.patient_id,
            "n_spots": int(self.adata.n_obs),
            "n_genes": int(self.adata.n_vars),
            "geometry": str(geometry.iloc[0]) if len(geometry) else None,
            "spot_size_um": float(np.median(finite)) if finite.size else None,
            "total_counts": total,
            "median_counts_per_spot": float(np.median(per_unit)) if self.adata.n_obs else 0.0,
        }
        norm = self.adata.uns.get(K.UNS, {}).get(K.NORMALIZATION)
        if norm:  # normalised values (a prediction), not counts: say so
            out["normalization"] = {str(k): v for k, v in dict(norm).items()}
        if self.image is not None:
            out.update(
                image=str(self.image.path) if self.image.path is not None else None,
                image_width_px=int(self.image.width),
                image_height_px=int(self.image.height),
                mpp=float(self.image.mpp),
            )
        return out

    def __repr__(self) -> str:
        return (
            f"Sample({self.sample_id!r}, patient={self.patient_id!r}, {self.technology}, "
            f"{self.adata.n_obs} units x {self.adata.n_vars} genes, image={self.image!r})"
        )
