"""Expression of any units, aggregated from an on-disk dense map block by block.

The map is read in spatial blocks (with a halo that holds every footprint whose centre falls in
the block), so memory is bounded by the block, not the slide. Within a block:

* **squares** (bins) use a summed-area table: the input-pixel sum of a nearest-upsampled map over
  ``[X0, X1) x [Y0, Y1)`` is ``stride**2`` times a bilinear read of the cell-level table at
  ``(Y/stride, X/stride)``, so each bin costs four (aligned bins) or sixteen table reads whatever
  its size, and equals the exact pixel-count weights of training;
* **discs and polygons** use the exact footprint weights of training
  (:func:`hexpress.models.aggregate.footprint_weights`) restricted to the block window.

A unit's footprint is the set of input pixels (the slide at ``model_mpp``; pixel ``p`` spans
``[p, p + 1)``, centre ``p + 0.5``) whose centres it holds. Per unit the gene channels, the total
channel (density mode) and the covered pixel count are summed; then

* ``mode="field"``: prediction = sum / covered pixels (the mean of the map over the footprint);
* ``mode="density"``: prediction = ``log1p(scale * sum(gene) / sum(total))``, the normalisation of
  training applied to predicted counts.

Map cells never predicted (no tissue) do not count: a unit half over background is the mean over
its covered half; ``obs["map_coverage"]`` is the covered fraction and a unit with none is NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np
from tqdm.auto import tqdm

from hexpress import _keys as K
from hexpress._files import atomic_path
from hexpress.data.preprocess import normalize_counts
from hexpress.data.units import model_px_per_level0_px
from hexpress.errors import ConfigError
from hexpress.infer.dense_map import DenseMap
from hexpress.infer.units import Units

__all__ = [
    "aggregate_units",
    "unit_sums",
    "finish_units",
    "write_h5ad_atomic",
    "PREDICTION_NOTE",
]

log = logging.getLogger(__name__)

PREDICTION_NOTE = (
    "X holds predictions in the normalised space of training: log1p(scale * gene / total) per "
    "unit, where scale and method are in uns['hexpress']['normalization']."
)


def _block_cells(n_channels: int, halo: int, memory_mb: float) -> int:
    # float64 values + table + cumsum temporary, plus the float32 read: ~ (3*8 + 4) B per value
    per_cell = (n_channels + 1) * 28
    side = int(math.sqrt(memory_mb * 2**20 / per_cell)) - 2 * halo
    return max(32, side)


def _interp(S: np.ndarray, width: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear read of a flattened table ``S`` ((H+1)*(W+1), C) at cell coords ``(y, x)``."""
    iy = np.floor(y).astype(np.int64)
    ix = np.floor(x).astype(np.int64)
    fy, fx = y - iy, x - ix
    W1 = width + 1
    if not fy.any() and not fx.any():  # aligned: one read per corner
        return S[iy * W1 + ix]
    H1 = S.shape[0] // W1
    iy1 = np.minimum(iy + 1, H1 - 1)
    ix1 = np.minimum(ix + 1, W1 - 1)
    fy, fx = fy[:, None], fx[:, None]
    return (
        S[iy * W1 + ix] * ((1 - fy) * (1 - fx))
        + S[iy * W1 + ix1] * ((1 - fy) * fx)
        + S[iy1 * W1 + ix] * (fy * (1 - fx))
        + S[iy1 * W1 + ix1] * (fy * fx)
    )


def _square_pixel_bounds(c: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-open input-pixel index range ``[p0, p1)`` whose centres lie in ``[c - a/2, c + a/2)``."""
    p0 = np.ceil(c - side / 2 - 0.5)
    p1 = np.ceil(c + side / 2 - 0.5)
    return p0, p1


def _read_window(dm: DenseMap, y0: int, y1: int, x0: int, x1: int, dtype=np.float64) -> np.ndarray:
    """``(h, w, C+1)``: map values with NaN -> 0, and the coverage channel last."""
    vals, cov = dm.read(y0, y1, x0, x1)
    out = np.empty(vals.shape[:2] + (vals.shape[2] + 1,), dtype=dtype)
    out[..., :-1] = vals
    out[..., -1] = cov
    out[~cov] = 0.0  # uncovered cells are NaN in the map
    return out


def _grid_bins(y0, y1, x0, x1, s):
    """``(k, off_y, off_x)`` when the bins are whole cells of one size ``k`` on a ``k``-grid."""
    if not (len(y0) and all(np.all(v % s == 0) for v in (y0, y1, x0, x1))):
        return None
    cy0, cx0 = (y0 // s).astype(np.int64), (x0 // s).astype(np.int64)
    ky, kx = (y1 - y0) // s, (x1 - x0) // s
    k = int(ky[0])
    if k < 1 or np.any(ky != k) or np.any(kx != k):
        return None
    off_y, off_x = int(cy0[0] % k), int(cx0[0] % k)
    if np.any(cy0 % k != off_y) or np.any(cx0 % k != off_x):
        return None
    return k, off_y, off_x


def _pooled_sums(dm, wy0, wx0, wy1, wx1, y0, x0, grid):
    """Sums of bins that are whole cells on a regular grid: pool the window, one read per bin."""
    k, off_y, off_x = grid
    s = dm.stride
    iy = ((y0 // s).astype(np.int64) - off_y) // k
    ix = ((x0 // s).astype(np.int64) - off_x) // k
    if k == 1:  # one cell per bin: read the cells themselves
        vals, cov = dm.read(wy0, wy1, wx0, wx1)
        out = np.empty((len(iy), vals.shape[2] + 1), dtype=np.float32)
        out[:, :-1] = vals[iy, ix]
        out[:, -1] = cov[iy, ix]
        out[out[:, -1] == 0] = 0.0
        return out
    A = _read_window(dm, wy0, wy1, wx0, wx1, dtype=np.float32)
    h, w = A.shape[:2]
    hh, ww = (h - off_y) // k, (w - off_x) // k
    A = A[off_y : off_y + hh * k, off_x : off_x + ww * k].reshape(hh, k, ww, k, A.shape[2])
    return A.sum(axis=(1, 3))[iy, ix]


def _square_sums(dm, centers_in, side_in, groups, block, halo, bar):
    s = dm.stride
    n = len(centers_in)
    C1 = dm.shape[2] + 1
    # float32 storage: each sum is formed in float64 (tables) or from few cells, then stored
    sums = np.empty((n, C1), dtype=np.float32)
    px0, px1 = _square_pixel_bounds(centers_in[:, 0], side_in)
    py0, py1 = _square_pixel_bounds(centers_in[:, 1], side_in)
    H, W = dm.shape[:2]
    # the footprint's pixels on the map (as the in-memory weights count them)
    full = np.clip(np.minimum(px1, W * s) - np.maximum(px0, 0), 0, None) * np.clip(
        np.minimum(py1, H * s) - np.maximum(py0, 0), 0, None
    )
    for (by, bx), idx in groups:
        wy0, wx0 = by * block - halo, bx * block - halo
        wy1, wx1 = (by + 1) * block + halo, (bx + 1) * block + halo
        oy, ox = wy0 * s, wx0 * s
        y0, y1 = py0[idx] - oy, py1[idx] - oy
        x0, x1 = px0[idx] - ox, px1[idx] - ox
        grid = _grid_bins(y0, y1, x0, x1, s)
        if grid is not None:  # Visium HD-like bins on the map's grid: no table needed
            sums[idx] = _pooled_sums(dm, wy0, wx0, wy1, wx1, y0, x0, grid) * (s * s)
            bar.update(1)
            continue
        A = _read_window(dm, wy0, wy1, wx0, wx1)
        h, w = A.shape[:2]
        S = np.zeros((h + 1, w + 1, C1), dtype=np.float64)
        np.cumsum(A, axis=0, out=A)
        np.cumsum(A, axis=1, out=S[1:, 1:])
        del A
        S = S.reshape(-1, C1)
        # pixel bounds relative to the window, clipped to it, in (fractional) cells
        y0, y1 = np.clip(y0, 0, h * s) / s, np.clip(y1, 0, h * s) / s
        x0, x1 = np.clip(x0, 0, w * s) / s, np.clip(x1, 0, w * s) / s
        sums[idx] = (
            (_interp(S, w, y1, x1) - _interp(S, w, y0, x1) - _interp(S, w, y1, x0))
            + _interp(S, w, y0, x0)
        ) * (s * s)
        bar.update(1)
    return sums, full


def _footprint_sums(dm, units, groups, block, halo, bar):
    from hexpress.models.aggregate import footprint_weights

    s = dm.stride
    C1 = dm.shape[2] + 1
    sums = np.zeros((len(units), C1), dtype=np.float64)
    full = np.zeros(len(units), dtype=np.float64)
    for (by, bx), idx in groups:
        wy0, wx0 = by * block - halo, bx * block - halo
        wy1, wx1 = (by + 1) * block + halo, (bx + 1) * block + halo
        A = _read_window(dm, wy0, wy1, wx0, wx1)
        h, w = A.shape[:2]
        fp = units.footprints(dm.slide_mpp, dm.model_mpp, index=idx)
        W = footprint_weights(fp, (h, w), s, origin_px=(wx0 * s, wy0 * s))
        sums[idx] = W @ A.reshape(-1, C1)
        # only pixels on the map count (as in the in-memory weights over the whole map)
        on_map = np.zeros((h, w), dtype=np.float64)
        H, Wd = dm.shape[:2]
        on_map[max(0, -wy0) : H - wy0, max(0, -wx0) : Wd - wx0] = 1.0
        full[idx] = W @ on_map.ravel()
        bar.update(1)
    return sums, full


def unit_sums(
    dm: DenseMap,
    units: Units,
    *,
    memory_mb: float = 512.0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit sums of every map channel over the unit's footprint, block by block.

    Args:
        dm: a complete dense map.
        units: the units, positions in level-0 px of the map's slide.
        memory_mb: rough bound on the memory of one block.
        progress: progress bar over blocks.

    Returns:
        ``(sums, full)``: ``(n, C + 1)`` float32 (squares) or float64 pixel-weighted sums of the ``C`` channels (NaN
        cells count 0) and, last, of coverage (covered input pixels); ``(n,)`` input pixels in
        each footprint.
    """
    if units.kind not in K.GEOMETRIES:
        raise ConfigError(f"unit kind must be one of {K.GEOMETRIES}, got {units.kind!r}.")
    s = dm.stride
    centers_in = units.centers_model_px(dm.slide_mpp, dm.model_mpp)
    if units.kind == K.POLYGON:
        ext = max((float(np.ptp(p, axis=0).max()) for p in units.polygons), default=0.0)
        # any vertex is within the polygon's extent of its centroid
        reach = ext * model_px_per_level0_px(dm.slide_mpp, dm.model_mpp)
    else:
        reach = float(np.max(units.size_um, initial=0.0)) / dm.model_mpp / 2
    halo = int(math.ceil(reach / s)) + 1
    block = _block_cells(dm.shape[2], halo, memory_mb)
    cy = np.floor(centers_in[:, 1] / s).astype(np.int64)
    cx = np.floor(centers_in[:, 0] / s).astype(np.int64)
    by, bx = np.floor_divide(cy, block), np.floor_divide(cx, block)
    n_bx = int(bx.max(initial=0) - bx.min(initial=0)) + 1
    key = (by - by.min(initial=0)) * n_bx + (bx - bx.min(initial=0))
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    groups = [
        ((int(by[order[a]]), int(bx[order[a]])), order[a:b])
        for a, b in zip(starts, ends, strict=True)
    ]
    desc = f"aggregating {units.name}"
    with tqdm(total=len(groups), desc=desc, unit="block", disable=not progress, leave=False) as bar:
        if units.kind == K.SQUARE:
            return _square_sums(
                dm, centers_in, units.size_um / dm.model_mpp, groups, block, halo, bar
            )
        return _footprint_sums(dm, units, groups, block, halo, bar)


def finish_units(sums: np.ndarray, mode: str, n_genes: int, *, scale: float = 1.0) -> np.ndarray:
    """Predictions ``(n, n_genes)`` float32 from :func:`unit_sums` (NaN where nothing covered).

    Field: mean of each gene channel over the covered pixels. Density: ``log1p(scale *
    gene / total)`` of the summed gene and total channels.
    """
    covered = sums[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        if mode == "field":
            out = sums[:, :n_genes] / covered[:, None]
        elif mode == "density":
            # as in training (models.aggregate.predict_units): a covered unit whose predicted
            # total underflows to 0 (a 2 µm bin on a float16 map) predicts 0, not NaN
            out = normalize_counts(sums[:, :n_genes], sums[:, n_genes], scale)
        else:
            raise ConfigError(f"map mode must be 'field' or 'density', got {mode!r}.")
    out[covered <= 0] = np.nan
    return out.astype(np.float32)


def _uns_from_map(dm: DenseMap, units: Units) -> dict:
    attrs = dm.attrs
    return {
        "genes": list(dm.genes),
        "normalization": dm.normalization,
        "values": PREDICTION_NOTE
        if dm.mode == "density"
        else PREDICTION_NOTE.replace(
            "log1p(scale * gene / total) per unit",
            "the mean over each unit of a map trained in the normalised space",
        ),
        "mode": dm.mode,
        "model": attrs.get("model", {}),
        "checkpoint": attrs.get("checkpoint", {}),
        "model_mpp": dm.model_mpp,
        "map_mpp": dm.map_mpp,
        "mpp": dm.slide_mpp,
        "image_path": attrs["slide"].get("path") or "",
        "image_size": [attrs["slide"]["width"], attrs["slide"]["height"]],
        "geometry_name": units.name,
        "predicted": True,
    }


def aggregate_units(
    dm: DenseMap,
    units: Units,
    *,
    memory_mb: float = 512.0,
    drop_uncovered: bool = False,
    progress: bool = True,
) -> ad.AnnData:
    """Predict every unit of ``units`` from a complete on-disk map.

    Args:
        dm: the map (:func:`hexpress.infer.open_dense_map`).
        units: bins, discs, spots or cells in level-0 px of the map's slide.
        memory_mb: rough bound on one block's memory.
        drop_uncovered: drop units with no predicted map cell (generated grids); otherwise they
            are kept with NaN predictions and a warning.
        progress: progress bar over blocks.

    Returns:
        AnnData: ``X`` (n, genes) float32 predictions (see :data:`PREDICTION_NOTE`),
        ``obsm["spatial"]`` level-0 px, ``obs`` geometry / size_um / map_coverage,
        ``uns["hexpress"]`` genes, normalisation, model, model_mpp, slide mpp.
    """
    sums, full = unit_sums(dm, units, memory_mb=memory_mb, progress=progress)
    n_genes = len(dm.genes)
    X = finish_units(sums, dm.mode, n_genes, scale=float(dm.normalization.get("scale", 1.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
        coverage = np.where(full > 0, sums[:, -1] / full, 0.0).astype(np.float32)
    none = coverage <= 0
    if none.any():
        if drop_uncovered:
            keep = ~none
            units, X, coverage = units.subset(keep), X[keep], coverage[keep]
        else:
            log.warning(
                "%d of %d %s have no predicted map cell under them (no tissue there); "
                "their predictions are NaN",
                int(none.sum()),
                len(none),
                units.name,
            )
    return units.to_anndata(
        X,
        genes=list(dm.genes),
        uns=_uns_from_map(dm, units),
        obs={"map_coverage": coverage},
    )


def write_h5ad_atomic(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
