"""Units (spots, bins, cells): where each one is on the slide and how big, in one type.

A :class:`Units` set has one geometry kind (``"disc"``, ``"square"`` or ``"polygon"``), centres in
**level-0 pixels** of its slide (``centers_level0_px``), sizes in **µm** (disc diameter, square
side) and, for polygons, vertices in level-0 px. It reads itself from an AnnData laid out as
hexpress writes one (:meth:`Units.from_anndata`), writes itself with per-unit values into one
(:meth:`Units.to_anndata`: predictions) and gives the footprints a model's output map is summed
over, in pixels of the model input (:meth:`Units.footprints`, ``centers_model_px``)::

    model px = level-0 px * slide_mpp / model_mpp - origin_px

:func:`geometry_kind` is the one check that a set of units has a single geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress.errors import GeometryError, UnitsError

__all__ = ["Units", "geometry_kind", "model_px_per_level0_px"]


def geometry_kind(
    adata,
    *,
    source: str = "AnnData",
    allowed: Sequence[str] = K.GEOMETRIES,
    default: str | None = None,
    error: type[Exception] = GeometryError,
    hint: str = "subset the AnnData by obs['geometry'] and use one set per geometry",
) -> str:
    """The single geometry kind of a set of units (``obs["geometry"]``).

    Args:
        adata: the units.
        source: what the units are, for messages.
        allowed: the kinds the caller can handle.
        default: the kind when ``obs["geometry"]`` is absent or the set is empty (``None``: the
            column is required).
        error: the exception class to raise (the caller's boundary error).
        hint: what to do, appended to the message.

    Raises:
        ``error``: no geometry column (and no default), several kinds, or a kind not allowed.
    """
    if K.GEOMETRY not in adata.obs or (default is not None and adata.n_obs == 0):
        if default is None:
            raise error(f"{source}: no obs['{K.GEOMETRY}'] naming the units' geometry.")
        return default
    kinds = np.unique(np.asarray(adata.obs[K.GEOMETRY]).astype(str))
    if len(kinds) != 1 or kinds[0] not in allowed:
        raise error(
            f"{source}: units must all have one geometry of {tuple(allowed)}, found "
            f"{[str(k) for k in kinds]}; {hint}."
        )
    return str(kinds[0])


@dataclass
class Units:
    """A set of units of one geometry, positions in level-0 px of their slide.

    Attributes:
        name: label of the set, used for the output file (``bins_008um``, ``discs_055um``...).
        kind: ``"disc"``, ``"square"`` or ``"polygon"``.
        centers_level0_px: ``(n, 2)`` float64 centres, x then y, level-0 px.
        size_um: ``(n,)`` disc diameter / square side in µm (NaN for polygons).
        ids: ``(n,)`` unit ids, or ``None`` to build them lazily with :meth:`get_ids`.
        polygons: for polygons, a list of ``(k, 2)`` vertex arrays (x, y) in level-0 px.
        obs: extra per-unit columns (e.g. ``array_row``, ``array_col``).
        id_format: builds ids lazily from ``obs["array_row"]``, ``obs["array_col"]`` (bins:
            10 million ids are slow to make).
    """

    name: str
    kind: str
    centers_level0_px: np.ndarray
    size_um: np.ndarray
    ids: np.ndarray | list | None = None
    polygons: list[np.ndarray] | None = None
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    id_format: str | None = None

    def __len__(self) -> int:
        return len(self.centers_level0_px)

    def get_ids(self) -> list[str]:
        if self.ids is not None:
            return [str(i) for i in self.ids]
        if self.id_format is not None:
            rows, cols = self.obs["array_row"], self.obs["array_col"]
            return [
                self.id_format.format(r, c)
                for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
            ]
        return [f"{self.name}_{i}" for i in range(len(self))]

    def subset(self, keep: np.ndarray) -> Units:
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Units(
            name=self.name,
            kind=self.kind,
            centers_level0_px=self.centers_level0_px[idx],
            size_um=self.size_um[idx],
            ids=None if self.ids is None else np.asarray(self.ids, dtype=object)[idx],
            polygons=None if self.polygons is None else [self.polygons[i] for i in idx],
            obs={k: np.asarray(v)[idx] for k, v in self.obs.items()},
            id_format=self.id_format,
        )

    @classmethod
    def from_anndata(
        cls,
        adata,
        *,
        name: str = "units",
        size_um=None,
        source: str = "AnnData",
        allowed: Sequence[str] = K.GEOMETRIES,
        default_kind: str | None = None,
        error: type[Exception] = GeometryError,
        hint: str | None = None,
    ) -> Units:
        """The units of an AnnData laid out as hexpress writes one.

        Args:
            adata: ``obsm["spatial"]`` (level-0 px), ``obs["geometry"]``, ``obs["size_um"]``;
                for polygons ``uns["hexpress"]["polygons"]`` (one ``(k, 2)`` array of level-0 px
                per unit).
            name: label of the set.
            size_um: sizes (µm, scalar or ``(n,)``) where ``obs["size_um"]`` is absent.
            source, allowed, default_kind, error, hint: as in :func:`geometry_kind`.

        Raises:
            ``error``: no positions, mixed or unsupported geometries, polygons without vertices.
            UnitsError: no size for discs or squares.
        """
        if K.SPATIAL not in adata.obsm:
            raise error(f"{source}: no obsm['{K.SPATIAL}'] with unit positions in level-0 px.")
        xy = np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2]
        more = {} if hint is None else {"hint": hint}
        kind = geometry_kind(
            adata, source=source, allowed=allowed, default=default_kind, error=error, **more
        )
        n = len(xy)
        if K.SIZE_UM in adata.obs:
            size = adata.obs[K.SIZE_UM].to_numpy(dtype=np.float64)
        elif size_um is not None:
            size = np.broadcast_to(np.asarray(size_um, dtype=np.float64), (n,)).copy()
        elif kind == K.POLYGON:
            size = np.full(n, np.nan)
        else:
            raise UnitsError(f"{source}: no obs['{K.SIZE_UM}'] with the units' size in µm.")
        polys = None
        if kind == K.POLYGON:
            raw = adata.uns.get(K.UNS, {}).get("polygons")
            if raw is None:
                raise error(
                    f"{source}: polygon units need their vertices in uns['{K.UNS}']['polygons'] "
                    "(one (k, 2) array of level-0 px per unit)."
                )
            polys = [np.asarray(p, dtype=np.float64) for p in raw]
        ids = np.asarray(adata.obs_names, dtype=object)
        return cls(
            name=name, kind=kind, centers_level0_px=xy, size_um=size, ids=ids, polygons=polys
        )

    def to_anndata(
        self,
        X: np.ndarray | None,
        *,
        genes: Sequence[str],
        uns: dict,
        obs: dict[str, np.ndarray] | None = None,
    ) -> ad.AnnData:
        """An AnnData of per-unit values (predictions) laid out as :meth:`from_anndata` reads.

        Args:
            X: ``(n, len(genes))`` values, stored as float32 (``None``: an AnnData without
                ``X``, for a writer that fills it on disk).
            genes: the variable names.
            uns: stored as ``uns["hexpress"]`` (``None`` becomes ``""``, tuples lists, numpy
                scalars Python values, so that h5ad can write it).
            obs: extra per-unit columns, after :attr:`obs`.

        Returns:
            AnnData with ``obs_names`` the unit ids (:meth:`get_ids`), ``obs["geometry"]``
            (categorical over every geometry kind), ``obs["size_um"]``, the :attr:`obs` columns
            and ``obs``, and ``obsm["spatial"]`` the centres in level-0 px. Polygon vertices are
            not stored.
        """
        frame = pd.DataFrame(index=pd.Index(self.get_ids(), dtype=str))
        frame[K.GEOMETRY] = pd.Categorical.from_codes(
            np.full(len(self), list(K.GEOMETRIES).index(self.kind), dtype=np.int8),
            categories=list(K.GEOMETRIES),
        )
        frame[K.SIZE_UM] = np.asarray(self.size_um, dtype=np.float64)
        for k, v in {**self.obs, **(obs or {})}.items():
            frame[k] = np.asarray(v)
        a = ad.AnnData(
            X=None if X is None else np.asarray(X, dtype=np.float32),
            obs=frame,
            var=pd.DataFrame(index=list(genes)),
        )
        a.obsm[K.SPATIAL] = np.asarray(self.centers_level0_px, dtype=np.float64)
        a.uns[K.UNS] = _h5ad_value(uns)
        return a

    def centers_model_px(
        self,
        slide_mpp: float,
        model_mpp: float,
        origin_px: tuple[float, float] = (0.0, 0.0),
        *,
        index=None,
    ) -> np.ndarray:
        """``(k, 2)`` centres (x, y) in pixels of the slide resampled to ``model_mpp``.

        Args: as for :meth:`footprints`.
        """
        f = model_px_per_level0_px(slide_mpp, model_mpp)
        xy = self.centers_level0_px if index is None else self.centers_level0_px[index]
        return xy * f - np.asarray(origin_px, dtype=np.float64)

    def footprints(
        self,
        slide_mpp: float,
        model_mpp: float,
        origin_px: tuple[float, float] = (0.0, 0.0),
        *,
        index=None,
    ):
        """Footprints in pixels of the slide resampled to ``model_mpp`` (the model input).

        Args:
            slide_mpp: µm per level-0 px of the units' slide.
            model_mpp: µm per model-input px.
            origin_px: model-input px position (x, y) that becomes ``(0, 0)`` (a crop's corner).
            index: the units to take (integer index or boolean mask); default all.

        Returns:
            :class:`hexpress.models.aggregate.Footprints` (``centers_model_px``, ``size_px``,
            polygons in model px).
        """
        from hexpress.models.aggregate import Footprints

        f = model_px_per_level0_px(slide_mpp, model_mpp)
        idx = np.arange(len(self)) if index is None else np.arange(len(self))[index]
        origin = np.asarray(origin_px, dtype=np.float64)
        centers = self.centers_model_px(slide_mpp, model_mpp, origin_px, index=idx)
        polys = None
        if self.kind == K.POLYGON:
            polys = [self.polygons[i] * f - origin for i in idx]
        return Footprints(centers, self.kind, self.size_um[idx] / float(model_mpp), polys)


def model_px_per_level0_px(slide_mpp: float, model_mpp: float) -> float:
    """Model-input px per level-0 px, ``slide_mpp / model_mpp`` (both checked positive): the one
    level-0 px -> model px factor (:meth:`Units.centers_model_px`, :meth:`Units.footprints`)."""
    for value, what in ((slide_mpp, "slide_mpp"), (model_mpp, "model_mpp")):
        if value is None or not np.isfinite(value) or value <= 0:
            raise UnitsError(f"{what} must be a positive µm per pixel, got {value!r}.")
    return float(slide_mpp) / float(model_mpp)


def _h5ad_value(value):
    """A value h5ad can store: ``None`` becomes ``""``, tuples lists, numpy scalars Python."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return {str(k): _h5ad_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_h5ad_value(v) for v in value]
        if items and all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object)
        return items if any(isinstance(v, dict) for v in items) else np.asarray(items)
    if isinstance(value, np.generic):
        return value.item()
    return value
