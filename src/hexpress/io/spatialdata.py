"""Export units (measured or predicted) to a SpatialData zarr store (``hexpress[spatialdata]``).

The store holds, in one ``global`` coordinate system in level-0 pixels of the slide:

* ``shapes["units"]``: circles (discs, radius in px), squares (as polygons) or cell polygons;
* ``tables["table"]``: the AnnData (``X`` as it is: counts or predictions), annotating
  ``units`` through ``obs["region"]`` / ``obs["instance_id"]``;
* ``images["hires"]``: the ``uns["spatial"]`` hires thumbnail, scaled back to level 0, when the
  AnnData has one.

``uns["hexpress"]`` (mpp, normalisation) travels in the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from hexpress import _keys as K
from hexpress.errors import ConfigError, OutputExistsError

__all__ = ["write_spatialdata"]

log = logging.getLogger(__name__)

REGION = "units"


def _geometries(adata: ad.AnnData, mpp: float):
    from shapely.geometry import Point, Polygon, box

    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2]
    kind = str(adata.obs[K.GEOMETRY].iloc[0]) if adata.n_obs else K.DISC
    size_px = adata.obs[K.SIZE_UM].to_numpy(dtype=np.float64) / mpp
    if kind == K.DISC:
        return [Point(x, y) for x, y in xy], size_px / 2
    if kind == K.SQUARE:
        h = size_px / 2
        return [box(x - r, y - r, x + r, y + r) for (x, y), r in zip(xy, h, strict=True)], None
    polys = adata.uns.get(K.UNS, {}).get("polygons")
    if polys is None:
        raise ConfigError("polygon units need uns['hexpress']['polygons'] to be exported.")
    if isinstance(polys, dict):
        polys = [polys[k] for k in sorted(polys, key=int)]
    return [Polygon(np.asarray(p, dtype=np.float64)) for p in polys], None


def write_spatialdata(
    sample_or_adata, path: str | Path, *, mpp: float | None = None, overwrite: bool = False
) -> Path:
    """Write units to a SpatialData zarr store.

    Args:
        sample_or_adata: a :class:`~hexpress.data.Sample` or an AnnData with ``obsm["spatial"]``
            (level-0 px), ``obs["geometry"]``, ``obs["size_um"]``.
        path: the ``.zarr`` folder to write.
        mpp: µm per level-0 px; default the sample's image, else ``uns["hexpress"]["mpp"]``.
        overwrite: replace an existing store.

    Returns:
        ``path``.
    """
    try:
        import geopandas as gpd
        import spatialdata as sd
        from spatialdata.models import Image2DModel, ShapesModel, TableModel
        from spatialdata.transformations import Identity, Scale
    except ImportError as e:
        raise ConfigError(
            "SpatialData export needs the spatialdata extra: pip install 'hexpress[spatialdata]'."
        ) from e
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    adata = getattr(sample_or_adata, "adata", sample_or_adata)
    image = getattr(sample_or_adata, "image", None)
    if mpp is None:
        mpp = image.mpp if image is not None else adata.uns.get(K.UNS, {}).get("mpp")
    if mpp is None:
        raise ConfigError("write_spatialdata needs mpp=... (µm per level-0 pixel).")
    geoms, radius = _geometries(adata, float(mpp))
    ids = pd.Index(adata.obs_names.astype(str))
    frame = {} if radius is None else {"radius": radius}
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(frame, geometry=geoms, index=ids), transformations={"global": Identity()}
    )
    table = adata.copy()
    table.obs["region"] = pd.Categorical([REGION] * table.n_obs)
    table.obs["instance_id"] = ids.to_numpy()
    table.uns.pop(K.SPATIAL, None)
    hx = dict(table.uns.get(K.UNS, {}))
    hx.pop("polygons", None)
    hx["mpp"] = float(mpp)
    table.uns[K.UNS] = hx
    table = TableModel.parse(table, region=REGION, region_key="region", instance_key="instance_id")
    images = {}
    spatial = adata.uns.get(K.SPATIAL, {})
    lib = next(iter(spatial.values()), None) if isinstance(spatial, dict) else None
    if lib is not None and "hires" in lib.get("images", {}):
        s = 1.0 / float(lib["scalefactors"]["tissue_hires_scalef"])
        hires = np.moveaxis(np.asarray(lib["images"]["hires"]), -1, 0)
        images["hires"] = Image2DModel.parse(
            hires, dims=("c", "y", "x"), transformations={"global": Scale([s, s], axes=("y", "x"))}
        )
    sdata = sd.SpatialData(shapes={REGION: shapes}, tables={"table": table}, images=images)
    sdata.write(path, overwrite=overwrite)
    log.info("wrote %s (%d units, SpatialData)", path, adata.n_obs)
    return path
