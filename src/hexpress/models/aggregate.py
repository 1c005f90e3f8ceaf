"""Exact aggregation of a dense map over unit footprints (spots, bins, cells).

A dense model's map has one cell per ``stride`` x ``stride`` block of input pixels: cell
``(i, j)`` covers input pixels ``[i*stride, (i+1)*stride) x [j*stride, (j+1)*stride)`` (shifted by
``origin_px`` for a map chunk). The paper's spot prediction upsamples the map to the input
resolution and sums it over the pixels inside the spot. That is a linear operator on the
low-resolution map; :func:`footprint_weights` computes it exactly as a sparse matrix whose entry
``(unit, cell)`` is the number of input pixels of that cell whose *centre* ``(x + 0.5, y + 0.5)``
lies inside the unit's footprint, without ever building the full-resolution map:

* discs (diameter ``size_px``): closed, ``(x + 0.5 - cx)^2 + (y + 0.5 - cy)^2 <= r^2``;
* squares (side ``size_px``): half-open, ``cx - s/2 <= x + 0.5 < cx + s/2`` (same in y), so bins
  that tile the plane share no pixel;
* polygons: pixel centres inside the polygon (``matplotlib.path.Path.contains_points``).

For discs and squares each pixel row's inside interval is computed analytically and split across
the map's column blocks (vectorised with numpy); the interval ends are then checked with the very
inequality above, so the weights equal the brute-force mask bit for bit.

:func:`aggregate` applies the weights to a torch map differentiably; :func:`predict_units` turns a
model's output map into unit predictions for both output modes (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from hexpress import _keys as K
from hexpress.data.preprocess import normalize_counts
from hexpress.errors import ConfigError, GeometryError, UnitsError

__all__ = [
    "Footprints",
    "footprint_weights",
    "footprint_area_px",
    "weights_to_torch",
    "aggregate",
    "aggregate_batch",
    "predict_units",
    "MODES",
]

MODES = ("field", "density")

# Bound on the (row, block) pieces handled at once, to keep memory flat for many large spots.
_MAX_PIECES = 2_000_000


@dataclass
class Footprints:
    """Unit footprints in pixels of the model input image.

    Attributes:
        centers_model_px: ``(n, 2)`` centres, x then y, in input px (at ``model_mpp``, origin at the
            image or crop top-left corner).
        kind: ``"disc"``, ``"square"`` or ``"polygon"``.
        size_px: ``(n,)`` disc diameter or square side in input px (ignored for polygons).
        polygons: for ``"polygon"``, one ``(k, 2)`` array of x, y vertices in input px per unit.
    """

    centers_model_px: np.ndarray
    kind: str
    size_px: np.ndarray | None = None
    polygons: list[np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.centers_model_px = np.asarray(self.centers_model_px, dtype=np.float64).reshape(-1, 2)
        n = len(self.centers_model_px)
        if self.kind not in K.GEOMETRIES:
            raise GeometryError(f"footprint kind must be one of {K.GEOMETRIES}, got {self.kind!r}.")
        if self.kind == K.POLYGON:
            if self.polygons is None or len(self.polygons) != n:
                raise GeometryError(
                    f"polygon footprints need one vertex array per unit: {n} centres, "
                    f"{0 if self.polygons is None else len(self.polygons)} polygons."
                )
            self.polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in self.polygons]
            if self.size_px is None:
                self.size_px = np.full(n, np.nan)
        if self.size_px is None:
            raise UnitsError(f"{self.kind} footprints need size_px (diameter or side in px).")
        self.size_px = np.broadcast_to(np.asarray(self.size_px, dtype=np.float64), (n,)).copy()
        if self.kind != K.POLYGON and (
            not np.all(np.isfinite(self.size_px)) or np.any(self.size_px <= 0)
        ):
            raise UnitsError(f"footprint sizes must be positive px, got {self.size_px[:5]}.")
        if not np.all(np.isfinite(self.centers_model_px)):
            raise GeometryError("footprint centres must be finite.")

    def __len__(self) -> int:
        return len(self.centers_model_px)

    def translate(self, dx_px: float, dy_px: float) -> Footprints:
        """The same footprints shifted by ``(dx_px, dy_px)``; e.g. ``(-x0, -y0)`` for a crop."""
        shift = np.array([dx_px, dy_px], dtype=np.float64)
        polys = None if self.polygons is None else [p + shift for p in self.polygons]
        return Footprints(self.centers_model_px + shift, self.kind, self.size_px.copy(), polys)

    def subset(self, index) -> Footprints:
        """The footprints selected by a boolean mask or integer index."""
        idx = np.arange(len(self))[index]
        polys = None if self.polygons is None else [self.polygons[i] for i in idx]
        return Footprints(self.centers_model_px[idx], self.kind, self.size_px[idx], polys)

    @classmethod
    def from_adata(
        cls,
        adata,
        *,
        model_mpp: float,
        image_mpp: float | None = None,
        origin_px: tuple[float, float] = (0.0, 0.0),
    ) -> Footprints:
        """Footprints of an AnnData of units, in px of the image resampled to ``model_mpp``.

        Args:
            adata: units with ``obsm["spatial"]`` (level-0 px), ``obs["geometry"]`` and
                ``obs["size_um"]``; polygons from ``uns["hexpress"]["polygons"]`` (level-0 px).
            model_mpp: µm per input pixel of the model.
            image_mpp: µm per level-0 pixel; default ``uns["hexpress"]["mpp"]``.
            origin_px: input-px position (x, y) that becomes ``(0, 0)`` (a crop's corner).
        """
        from hexpress.data.units import Units

        if image_mpp is None:
            image_mpp = adata.uns.get(K.UNS, {}).get("mpp")
        if image_mpp is None or not np.isfinite(image_mpp) or image_mpp <= 0:
            raise UnitsError(
                "the units' image pixel size is unknown: pass image_mpp=... or set "
                f"uns['{K.UNS}']['mpp'] (got {image_mpp!r})."
            )
        units = Units.from_anndata(adata, source="units")
        return units.footprints(image_mpp, model_mpp, origin_px)


# -- weights --------------------------------------------------------------------------------------


def _fix_interval(lo, hi, inside):
    """Move integer interval ends by one pixel where rounding put them on the wrong side."""
    lo = np.where(inside(lo - 1), lo - 1, lo)
    lo = np.where(~inside(lo) & (lo <= hi), lo + 1, lo)
    hi = np.where(inside(hi + 1), hi + 1, hi)
    hi = np.where(~inside(hi) & (hi >= lo), hi - 1, hi)
    return lo, hi


def _row_intervals(fp: Footprints, units: np.ndarray):
    """Per pixel row of each unit: (unit, y, x_first, x_last), inclusive, unclipped."""
    cx, cy = fp.centers_model_px[units, 0], fp.centers_model_px[units, 1]
    size = fp.size_px[units]
    half = size / 2.0
    if fp.kind == K.DISC:
        y0 = np.floor(cy - half - 0.5).astype(np.int64)
        y1 = np.ceil(cy + half - 0.5).astype(np.int64)
    else:  # square, half-open: cy - h <= y + 0.5 < cy + h

        def inside_y(y, cy=cy, half=half):
            return (y + 0.5 >= cy - half) & (y + 0.5 < cy + half)

        y0 = np.ceil(cy - half - 0.5).astype(np.int64)
        y1 = np.ceil(cy + half - 0.5).astype(np.int64) - 1
        y0, y1 = _fix_interval(y0, y1, inside_y)
    nrows = np.maximum(y1 - y0 + 1, 0)
    rep = np.repeat(np.arange(len(units)), nrows)
    starts = np.cumsum(nrows) - nrows
    y = y0[rep] + (np.arange(len(rep)) - starts[rep])
    cxr, hr = cx[rep], half[rep]
    if fp.kind == K.DISC:
        r2 = hr * hr
        dy = y + 0.5 - cy[rep]
        h2 = r2 - dy * dy
        ok = h2 >= 0
        w = np.sqrt(np.where(ok, h2, 0.0))
        xa = np.ceil(cxr - w - 0.5).astype(np.int64)
        xb = np.floor(cxr + w - 0.5).astype(np.int64)

        # The brute-force definition itself, so the interval ends agree exactly.
        def inside_x(x):
            return (x + 0.5 - cxr) ** 2 + (y + 0.5 - cy[rep]) ** 2 <= r2

        xa, xb = _fix_interval(xa, xb, inside_x)
        ok &= xb >= xa
    else:

        def inside_x(x):
            return (x + 0.5 >= cxr - hr) & (x + 0.5 < cxr + hr)

        xa = np.ceil(cxr - hr - 0.5).astype(np.int64)
        xb = np.ceil(cxr + hr - 0.5).astype(np.int64) - 1
        xa, xb = _fix_interval(xa, xb, inside_x)
        ok = xb >= xa
    return units[rep][ok], y[ok], xa[ok], xb[ok]


def _disc_square_weights(fp, h, w, stride, ox, oy):
    n = len(fp)
    area = np.zeros(n, dtype=np.float64)
    mats = []
    # Chunk units so that the (row, block) pieces stay bounded in memory.
    est = (np.ceil(fp.size_px) + 2) * (np.ceil(fp.size_px / stride) + 2)
    bounds = np.searchsorted(np.cumsum(est), np.arange(0, est.sum() + _MAX_PIECES, _MAX_PIECES))
    bounds = np.unique(np.concatenate([[0], bounds, [n]]))
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if b <= a:
            continue
        unit, y, xa, xb = _row_intervals(fp, np.arange(a, b))
        np.add.at(area, unit, xb - xa + 1)
        # Clip to the map's extent in input px.
        xl = np.maximum(xa - ox, 0)
        xr = np.minimum(xb - ox, w * stride - 1)
        yl = y - oy
        keep = (xr >= xl) & (yl >= 0) & (yl < h * stride)
        unit, yl, xl, xr = unit[keep], yl[keep], xl[keep], xr[keep]
        j0, j1 = xl // stride, xr // stride
        nb = j1 - j0 + 1
        rep = np.repeat(np.arange(len(unit)), nb)
        starts = np.cumsum(nb) - nb
        j = j0[rep] + (np.arange(len(rep)) - starts[rep])
        cnt = np.minimum(xr[rep], (j + 1) * stride - 1) - np.maximum(xl[rep], j * stride) + 1
        col = (yl[rep] // stride) * w + j
        mats.append(
            sp.coo_matrix((cnt.astype(np.float64), (unit[rep], col)), shape=(n, h * w)).tocsr()
        )
    weights = sum(mats[1:], mats[0]) if mats else sp.csr_matrix((n, h * w), dtype=np.float64)
    return weights, area


def _polygon_weights(fp, h, w, stride, ox, oy):
    from matplotlib.path import Path as MplPath

    n = len(fp)
    area = np.zeros(n, dtype=np.float64)
    rows, cols, vals = [], [], []
    for u, poly in enumerate(fp.polygons):
        if len(poly) < 3:
            continue
        x0 = int(np.floor(poly[:, 0].min() - 0.5))
        x1 = int(np.ceil(poly[:, 0].max() - 0.5))
        y0 = int(np.floor(poly[:, 1].min() - 0.5))
        y1 = int(np.ceil(poly[:, 1].max() - 0.5))
        xs = np.arange(x0, x1 + 1)
        ys = np.arange(y0, y1 + 1)
        gx, gy = np.meshgrid(xs, ys)
        pts = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5], axis=1)
        inside = MplPath(poly).contains_points(pts)
        area[u] = inside.sum()
        px, py = gx.ravel()[inside] - ox, gy.ravel()[inside] - oy
        keep = (px >= 0) & (px < w * stride) & (py >= 0) & (py < h * stride)
        cell = (py[keep] // stride) * w + px[keep] // stride
        if len(cell):
            c, k = np.unique(cell, return_counts=True)
            rows.append(np.full(len(c), u))
            cols.append(c)
            vals.append(k.astype(np.float64))
    if rows:
        weights = sp.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n, h * w),
        ).tocsr()
    else:
        weights = sp.csr_matrix((n, h * w), dtype=np.float64)
    return weights, area


def footprint_weights(
    fp: Footprints,
    map_shape: tuple[int, int],
    stride: int,
    *,
    origin_px: tuple[int, int] = (0, 0),
    normalize: bool = False,
    return_coverage: bool = False,
):
    """Exact aggregation weights of units over a dense map, on the map's own grid.

    Entry ``(u, i*w + j)`` is the number of input pixels in cell ``(i, j)``'s
    ``stride x stride`` block whose centre lies inside footprint ``u``: exactly what summing the
    nearest-upsampled map (``repeat_interleave(stride)`` along both axes) over the pixel-centre
    mask gives. Units partly outside the map keep only their inside part.

    Args:
        fp: the footprints, in input px.
        map_shape: ``(h, w)`` of the map in cells.
        stride: input px per map cell.
        origin_px: input pixel ``(x, y)`` where cell ``(0, 0)`` starts (a map chunk or crop).
        normalize: divide each row by its sum (the mean form); rows with no pixel stay zero.
        return_coverage: also return ``(n,)`` fraction of each footprint's pixels on the map
            (0 for a footprint holding no pixel centre at all).

    Returns:
        ``scipy.sparse.csr_matrix`` ``(n, h*w)`` float64, or ``(weights, coverage)``.
    """
    h, w = (int(v) for v in map_shape)
    stride = int(stride)
    if stride < 1 or h < 0 or w < 0:
        raise ConfigError(f"need stride >= 1 and a map shape >= 0, got {stride}, {map_shape}.")
    ox, oy = (int(round(v)) for v in origin_px)
    if len(fp) == 0:
        weights, area = sp.csr_matrix((0, h * w), dtype=np.float64), np.zeros(0)
    elif fp.kind == K.POLYGON:
        weights, area = _polygon_weights(fp, h, w, stride, ox, oy)
    else:
        weights, area = _disc_square_weights(fp, h, w, stride, ox, oy)
    weights.sum_duplicates()
    row_sums = np.asarray(weights.sum(axis=1)).ravel()
    if normalize:
        inv = np.divide(1.0, row_sums, out=np.zeros_like(row_sums), where=row_sums > 0)
        weights = sp.diags(inv) @ weights
        weights = weights.tocsr()
    if return_coverage:
        coverage = np.divide(row_sums, area, out=np.zeros_like(row_sums), where=area > 0)
        return weights, coverage
    return weights


def footprint_area_px(fp: Footprints) -> np.ndarray:
    """``(n,)`` number of input pixel centres inside each footprint (no map clipping)."""
    if len(fp) == 0:
        return np.zeros(0)
    if fp.kind == K.POLYGON:
        return _polygon_weights(fp, 0, 0, 1, 0, 0)[1]
    return _disc_square_weights(fp, 0, 0, 1, 0, 0)[1]


# -- applying weights to torch maps --------------------------------------------------------------


def weights_to_torch(weights, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """A scipy sparse matrix as a coalesced torch sparse COO tensor (a torch one passes through)."""
    if isinstance(weights, torch.Tensor):
        return weights.to(device=device, dtype=dtype)
    coo = sp.coo_matrix(weights)
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    vals = torch.from_numpy(coo.data).to(dtype)
    return torch.sparse_coo_tensor(
        idx, vals, coo.shape, device=device, check_invariants=False
    ).coalesce()


def aggregate(map_: torch.Tensor, weights) -> torch.Tensor:
    """Apply aggregation weights to one map, differentiably.

    Args:
        map_: ``(C, h, w)`` map.
        weights: ``(n, h*w)`` scipy sparse or torch sparse weights from :func:`footprint_weights`.

    Returns:
        ``(n, C)``: ``weights @ map`` per channel.
    """
    if map_.ndim != 3:
        raise ConfigError(f"aggregate takes one (C, h, w) map, got shape {tuple(map_.shape)}.")
    c, h, w = map_.shape
    W = weights_to_torch(weights, device=map_.device, dtype=map_.dtype)
    if W.shape[1] != h * w:
        raise ConfigError(f"weights have {W.shape[1]} columns but the map has {h}x{w} cells.")
    return torch.sparse.mm(W, map_.reshape(c, h * w).t())


def aggregate_batch(maps: torch.Tensor, weights: Sequence) -> torch.Tensor:
    """Aggregate a batch of maps with one weight matrix per map, in one sparse product.

    Args:
        maps: ``(B, C, h, w)``.
        weights: ``B`` matrices ``(n_b, h*w)``.

    Returns:
        ``(sum n_b, C)``, the units of map 0 first, then map 1, ...
    """
    if maps.ndim != 4 or len(weights) != maps.shape[0]:
        raise ConfigError(
            f"aggregate_batch needs (B, C, h, w) maps and B weight matrices, got "
            f"{tuple(maps.shape)} and {len(weights)}."
        )
    b, c, h, w = maps.shape
    blocks = [sp.coo_matrix(x) if not isinstance(x, torch.Tensor) else x for x in weights]
    if any(isinstance(x, torch.Tensor) for x in blocks):
        return torch.cat([aggregate(maps[i], weights[i]) for i in range(b)])
    W = sp.block_diag(blocks, format="coo") if b else sp.coo_matrix((0, 0))
    W = weights_to_torch(W, device=maps.device, dtype=maps.dtype)
    flat = maps.reshape(b, c, h * w).permute(0, 2, 1).reshape(b * h * w, c)
    return torch.sparse.mm(W, flat)


def _row_sums(weights, like: torch.Tensor) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        dense = torch.sparse.sum(weights, dim=1).to_dense() if weights.is_sparse else weights.sum(1)
        return dense.to(device=like.device, dtype=like.dtype)
    row = np.asarray(sp.csr_matrix(weights).sum(axis=1)).ravel()
    return torch.from_numpy(row).to(device=like.device, dtype=like.dtype)


def predict_units(map_: torch.Tensor, weights, mode: str, scale: float | None = None):
    """Unit predictions from a model's output map, for training and inference alike.

    * ``"field"``: the map is normalised log-expression; a unit's prediction is the map's MEAN
      over its footprint (rows are normalised here, so sum or mean weights both work).
    * ``"density"``: channels ``0..G-1`` are per-pixel count densities of the genes and channel
      ``G`` the total (all genes) count density; a unit's prediction is
      ``log1p(scale * sum(gene) / sum(total))`` over its footprint: aggregated in count space,
      then normalised exactly like the targets (``log1p(counts / total * scale)``).

    A unit with no pixel on the map predicts 0; drop such units with the coverage from
    :func:`footprint_weights`.

    Args:
        map_: ``(C, h, w)`` or ``(B, C, h, w)`` model output.
        weights: one ``(n, h*w)`` matrix, or a list of ``B`` for a batch (units concatenated).
        mode: ``"field"`` or ``"density"``.
        scale: the targets' normalisation scale (density mode only).

    Returns:
        ``(n, G)`` predictions.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}.")
    if map_.ndim == 4:
        sums = aggregate_batch(map_, weights)
        if mode == "field":
            row = torch.cat([_row_sums(x, sums) for x in weights])
    else:
        sums = aggregate(map_, weights)
        if mode == "field":
            row = _row_sums(weights, sums)
    if mode == "field":
        return sums / torch.where(row > 0, row, torch.ones_like(row))[:, None]
    if scale is None or not scale > 0:
        raise ConfigError(
            f"density mode needs the targets' positive normalisation scale, got {scale!r}."
        )
    genes, total = sums[:, :-1], sums[:, -1]
    return normalize_counts(genes, total, float(scale))
