"""Expression of any units, aggregated from an on-disk dense map block by block.

The map is read in windows of whole chunks, each chunk read and decoded once (for every unit set
of :func:`aggregate_geometries` together), and cut into blocks, so memory is bounded by the
block, not the slide. A unit is summed over the part of its footprint in each block it touches
and the parts are added up: no block needs a halo. Within a block:

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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from tqdm.auto import tqdm

from hexpress import _keys as K
from hexpress._files import atomic_path
from hexpress.data.preprocess import normalize_counts
from hexpress.data.units import model_px_per_level0_px
from hexpress.errors import ConfigError, DataMismatchError
from hexpress.infer.dense_map import DenseMap
from hexpress.infer.units import Units

__all__ = [
    "aggregate_geometries",
    "write_geometries",
    "gene_columns",
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


def _block_cells(n_channels: int, memory_mb: float) -> int:
    # float64 values + table + cumsum temporary, plus the float32 window: ~ (3*8 + 4) B per value
    per_cell = (n_channels + 1) * 28
    return max(32, int(math.sqrt(memory_mb * 2**20 / per_cell)))


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


class _Scratch:
    """Reused flat buffers: big windows are not mapped and faulted in afresh for every block."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = self._bufs[name] = np.empty(n, dtype=dtype)
        return buf[:n].reshape(shape)


class _Window:
    """One block of map cells ``[y0, y1) x [x0, x1)`` (inside the map), in the forms its units need.

    ``raw`` and ``cov`` are the float16 values and coverage of the block (views of the read
    window). ``f32`` and ``f64`` are ``(h, w, C + 1)``: the values with uncovered (NaN) cells 0
    and the coverage channel last; ``table`` is the float64 summed-area table of ``f64``, flat
    ``((h + 1) * (w + 1), C + 1)``. Each is made once, on first use.
    """

    def __init__(self, raw, cov, y0, x0, scratch: _Scratch):
        self.raw, self.cov, self.y0, self.x0 = raw, cov, y0, x0
        self.h, self.w = cov.shape
        self.c1 = raw.shape[2] + 1
        self._scratch = scratch
        self._f32 = self._f64 = self._table = None

    def _fill(self, name, dtype):
        out = self._scratch.get(name, (self.h, self.w, self.c1), dtype)
        # torch casts float16 (exactly) a few times faster than numpy, on every core
        torch.from_numpy(out)[..., :-1].copy_(torch.from_numpy(self.raw))
        out[..., -1] = self.cov
        if not self.cov.all():
            out[~self.cov] = 0.0  # uncovered cells are NaN in the map
        return out

    @property
    def f32(self) -> np.ndarray:
        if self._f32 is None:
            self._f32 = self._fill("f32", np.float32)
        return self._f32

    @property
    def f64(self) -> np.ndarray:
        if self._f64 is None:
            self._f64 = self._fill("f64", np.float64)
        return self._f64

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            h, w, c1 = self.h, self.w, self.c1
            A = self._scratch.get("cumsum", (h, w, c1), np.float64)
            np.cumsum(self.f64, axis=0, out=A)
            S = self._scratch.get("table", (h + 1, w + 1, c1), np.float64)
            S[0] = 0.0
            S[:, 0] = 0.0
            np.cumsum(A, axis=1, out=S[1:, 1:])
            self._table = S.reshape(-1, c1)
        return self._table


class _Squares:
    """Per-unit sums of squares: pooled cells for bins on the map's grid, else a table read."""

    def __init__(self, dm: DenseMap, units: Units):
        s = dm.stride
        H, W = dm.shape[:2]
        c = units.centers_model_px(dm.slide_mpp, dm.model_mpp)
        side = units.size_um / dm.model_mpp
        self.px0, self.px1 = _square_pixel_bounds(c[:, 0], side)
        self.py0, self.py1 = _square_pixel_bounds(c[:, 1], side)
        # the footprint's pixels on the map (as the in-memory weights count them)
        self.full = np.clip(
            np.minimum(self.px1, W * s) - np.maximum(self.px0, 0), 0, None
        ) * np.clip(np.minimum(self.py1, H * s) - np.maximum(self.py0, 0), 0, None)
        self.grid = _grid_bins(self.py0, self.py1, self.px0, self.px1, s)
        self.stride = s
        self.split = True  # set by the pass: whether any footprint spans several blocks
        # float32 storage: each sum is formed in float64 (tables) or from few cells, then stored
        self.sums = np.zeros((len(units), dm.shape[2] + 1), dtype=np.float32)

    def cells(self) -> tuple[np.ndarray, ...]:
        """Cells ``[y0, y1) x [x0, x1)`` each footprint touches."""
        s = self.stride
        return (
            np.floor(self.py0 / s), np.ceil(self.py1 / s),
            np.floor(self.px0 / s), np.ceil(self.px1 / s),
        )  # fmt: skip

    def add(self, win: _Window, idx: np.ndarray) -> None:
        s = self.stride
        if self.grid is not None:  # Visium HD-like bins on the map's grid: no table needed
            part = self._pooled(win, idx)
            part *= s * s
            self._store(idx, part)
            return
        h, w = win.h, win.w
        oy, ox = win.y0 * s, win.x0 * s
        # pixel bounds relative to the window, clipped to it, in (fractional) cells: the part of
        # each footprint in this window (the rest is summed in the windows it also touches)
        y0 = np.clip(self.py0[idx] - oy, 0, h * s) / s
        y1 = np.clip(self.py1[idx] - oy, 0, h * s) / s
        x0 = np.clip(self.px0[idx] - ox, 0, w * s) / s
        x1 = np.clip(self.px1[idx] - ox, 0, w * s) / s
        S = win.table
        part = (
            (_interp(S, w, y1, x1) - _interp(S, w, y0, x1) - _interp(S, w, y1, x0))
            + _interp(S, w, y0, x0)
        ) * (s * s)
        self._store(idx, part)

    def _store(self, idx: np.ndarray, part: np.ndarray) -> None:
        if self.split:  # some footprints are summed in parts over several blocks
            self.sums[idx] += part
        else:
            self.sums[idx] = part

    def _pooled(self, win: _Window, idx: np.ndarray) -> np.ndarray:
        """Sums of the bins' cells in this window: the window pooled ``k x k``, one read per bin."""
        k, off_y, off_x = self.grid
        s = self.stride
        # each bin's index on the bin grid, relative to the first bin the window touches
        j0 = (win.y0 - off_y) // k
        i0 = (win.x0 - off_x) // k
        jy = ((self.py0[idx] // s).astype(np.int64) - off_y) // k - j0
        jx = ((self.px0[idx] // s).astype(np.int64) - off_x) // k - i0
        A = win.f32
        if k == 1:  # one cell per bin: read the cells themselves
            return A[jy, jx]
        # the bins the window touches, whole: the window zero-padded to the bin grid
        top, left = win.y0 - (off_y + j0 * k), win.x0 - (off_x + i0 * k)
        hh, ww = -(-(top + win.h) // k), -(-(left + win.w) // k)
        if top or left or hh * k != win.h or ww * k != win.w:
            P = np.zeros((hh * k, ww * k, A.shape[2]), dtype=A.dtype)
            P[top : top + win.h, left : left + win.w] = A
            A = P
        return A.reshape(hh, k, ww, k, A.shape[2]).sum(axis=(1, 3))[jy, jx]


class _Footprints:
    """Per-unit sums of discs and polygons: exact footprint weights on each window."""

    def __init__(self, dm: DenseMap, units: Units):
        self.units, self.dm = units, dm
        self.stride = dm.stride
        f = model_px_per_level0_px(dm.slide_mpp, dm.model_mpp)
        c = units.centers_model_px(dm.slide_mpp, dm.model_mpp)
        if units.kind == K.POLYGON:
            lo = np.array([p.min(axis=0) for p in units.polygons]).reshape(-1, 2) * f
            hi = np.array([p.max(axis=0) for p in units.polygons]).reshape(-1, 2) * f
        else:
            r = (units.size_um / dm.model_mpp / 2)[:, None]
            lo, hi = c - r, c + r
        # input pixels whose centres may lie inside, with a pixel to spare on each side
        self._px = (np.floor(lo) - 1, np.ceil(hi) + 1)
        self.sums = np.zeros((len(units), dm.shape[2] + 1), dtype=np.float64)
        self.full = np.zeros(len(units), dtype=np.float64)
        self.split = True  # set by the pass; the parts are always added

    def cells(self) -> tuple[np.ndarray, ...]:
        s = self.stride
        (x0, y0), (x1, y1) = self._px[0].T, self._px[1].T
        return np.floor(y0 / s), np.ceil(y1 / s), np.floor(x0 / s), np.ceil(x1 / s)

    def add(self, win: _Window, idx: np.ndarray) -> None:
        from hexpress.models.aggregate import footprint_weights

        s, dm = self.stride, self.dm
        fp = self.units.footprints(dm.slide_mpp, dm.model_mpp, index=idx)
        W = footprint_weights(fp, (win.h, win.w), s, origin_px=(win.x0 * s, win.y0 * s))
        self.sums[idx] += W @ win.f64.reshape(-1, win.c1)
        # every cell of a window is on the map: its pixels count (as in the in-memory weights)
        self.full[idx] += np.asarray(W.sum(axis=1)).ravel()


def _edges(n: int, read: int, block: int) -> np.ndarray:
    """Block edges along one axis of ``n`` cells: read windows of ``read`` cells (whole chunks),
    each cut into equal blocks of at most ``block`` cells."""
    pieces = -(-read // block)
    e = [min(n, r + (i * read) // pieces) for r in range(0, n, read) for i in range(pieces)]
    return np.unique(np.array(e + [n], dtype=np.int64))


def _blocks_of(cells, ey: np.ndarray, ex: np.ndarray, H: int, W: int):
    """``(block keys, unit indices, split)``: every block each unit's cells touch, once; split
    is whether any unit touches more than one block."""
    y0, y1, x0, x1 = (np.asarray(v, dtype=np.int64) for v in cells)
    y0, x0 = np.maximum(y0, 0), np.maximum(x0, 0)
    y1, x1 = np.minimum(y1, H), np.minimum(x1, W)
    on = (y1 > y0) & (x1 > x0)  # units off the map touch no block
    u = np.flatnonzero(on)
    by0 = np.searchsorted(ey, y0[u], side="right") - 1
    by1 = np.searchsorted(ey, y1[u] - 1, side="right") - 1
    bx0 = np.searchsorted(ex, x0[u], side="right") - 1
    bx1 = np.searchsorted(ex, x1[u] - 1, side="right") - 1
    nx = bx1 - bx0 + 1
    count = (by1 - by0 + 1) * nx
    split = not np.all(count == 1)
    if not split:
        by, bx = by0, bx0
    else:  # units across block edges: one entry per block they touch
        rep = np.repeat(np.arange(len(u)), count)
        k = np.arange(len(rep)) - np.repeat(np.cumsum(count) - count, count)
        by, bx = by0[rep] + k // nx[rep], bx0[rep] + k % nx[rep]
        u = u[rep]
    return by * (len(ex) - 1) + bx, u, split


def _sums_pass(dm: DenseMap, unit_sets, memory_mb: float, progress: bool) -> list:
    """Sums of every unit set in one pass over the map (each chunk read and decoded once).

    The map is read in windows of whole chunks and cut into blocks bounded by ``memory_mb``; a
    unit is summed over the part of its footprint in each block it touches, and those parts are
    added up (a footprint's sum over its pixels is the sum of its parts), so no block needs a
    halo and no chunk is decoded twice.
    """
    H, W, C = dm.shape
    block = _block_cells(C, memory_mb)
    ch_y, ch_x = dm.chunks[:2]
    read_y, read_x = ch_y * max(1, block // ch_y), ch_x * max(1, block // ch_x)
    ey, ex = _edges(H, read_y, block), _edges(W, read_x, block)
    sets, per_set = [], []
    for units in unit_sets:
        if units.kind not in K.GEOMETRIES:
            raise ConfigError(f"unit kind must be one of {K.GEOMETRIES}, got {units.kind!r}.")
        agg = _Squares(dm, units) if units.kind == K.SQUARE else _Footprints(dm, units)
        keys, idx, agg.split = _blocks_of(agg.cells(), ey, ex, H, W)
        order = np.argsort(keys, kind="stable")
        keys, idx = keys[order], idx[order]
        uniq, starts = np.unique(keys, return_index=True)
        ends = np.append(starts[1:], len(keys))
        sets.append(agg)
        per_set.append({int(b): idx[a:e] for b, a, e in zip(uniq, starts, ends, strict=True)})
    n_bx = len(ex) - 1
    # the blocks of each read window, windows in reading order
    windows: dict[tuple[int, int], list[int]] = {}
    for b in sorted(set().union(*per_set)) if per_set else []:
        key = (int(ey[b // n_bx]) // read_y, int(ex[b % n_bx]) // read_x)
        windows.setdefault(key, []).append(b)
    order = sorted(windows)

    def read(key):
        ry, rx = key[0] * read_y, key[1] * read_x
        return dm.read(ry, min(H, ry + read_y), rx, min(W, rx + read_x), dtype=np.float16)

    scratch = _Scratch()
    desc = "aggregating " + ", ".join(u.name for u in unit_sets)
    bar = tqdm(
        total=sum(map(len, windows.values())), desc=desc, unit="block", disable=not progress,
        leave=False,
    )  # fmt: skip
    # the next window is read and decoded in a thread while this one is summed
    with bar, ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(read, order[0]) if order else None
        for i, key in enumerate(order):
            raw, cov = ahead.result()
            ahead = pool.submit(read, order[i + 1]) if i + 1 < len(order) else None
            ry, rx = key[0] * read_y, key[1] * read_x
            for b in windows[key]:
                y0, y1 = int(ey[b // n_bx]) - ry, int(ey[b // n_bx + 1]) - ry
                x0, x1 = int(ex[b % n_bx]) - rx, int(ex[b % n_bx + 1]) - rx
                win = _Window(raw[y0:y1, x0:x1], cov[y0:y1, x0:x1], y0 + ry, x0 + rx, scratch)
                for agg, groups in zip(sets, per_set, strict=True):
                    idx = groups.get(b)
                    if idx is not None:
                        agg.add(win, idx)
                bar.update(1)
            del raw, cov, win
    return [(agg.sums, agg.full) for agg in sets]


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
        ``(sums, full)``: ``(n, C + 1)`` float32 (squares) or float64 pixel-weighted sums of the
        ``C`` channels (NaN cells count 0) and, last, of coverage (covered input pixels);
        ``(n,)`` input pixels of each footprint on the map.
    """
    return _sums_pass(dm, [units], memory_mb, progress)[0]


#: rows of :func:`finish_units` at a time: its temporaries stay tens of MB instead of gigabytes
#: for millions of bins (the result is the same row by row)
_FINISH_ROWS = 32768


def finish_units(sums: np.ndarray, mode: str, n_genes: int, *, scale: float = 1.0) -> np.ndarray:
    """Predictions ``(n, n_genes)`` float32 from :func:`unit_sums` (NaN where nothing covered).

    Field: mean of each gene channel over the covered pixels. Density: ``log1p(scale *
    gene / total)`` of the summed gene and total channels.
    """
    if mode not in ("field", "density"):
        raise ConfigError(f"map mode must be 'field' or 'density', got {mode!r}.")
    sums = np.asarray(sums)
    if sums.dtype not in (np.float32, np.float64):
        sums = sums.astype(np.float64)
    out = np.empty((len(sums), n_genes), dtype=np.float32)
    for a in range(0, len(sums), _FINISH_ROWS):
        part = sums[a : a + _FINISH_ROWS]
        covered = part[:, -1]
        rows = out[a : a + _FINISH_ROWS]
        with np.errstate(invalid="ignore", divide="ignore"):
            if mode == "field":
                np.divide(part[:, :n_genes], covered[:, None], out=rows, casting="unsafe")
            else:
                # as in training (models.aggregate.predict_units): a covered unit whose predicted
                # total underflows to 0 (a 2 µm bin on a float16 map) predicts 0, not NaN. In
                # the sums' precision (float32 for squares, float64 for discs and polygons),
                # through torch: its vectorised float32 log1p is ~3x numpy's float64 one;
                # float32 sums go straight into ``out`` (no temporaries of the block's size)
                gene, total = (
                    torch.from_numpy(part[:, :n_genes]),
                    torch.from_numpy(part[:, n_genes]),
                )
                if gene.dtype == torch.float32:
                    normalize_counts(gene, total, scale, out=torch.from_numpy(rows))
                else:
                    rows[:] = normalize_counts(gene, total, scale).numpy()
        none = covered <= 0
        if none.any():
            rows[none] = np.nan
    return out


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


def _coverage(sums: np.ndarray, full: np.ndarray) -> np.ndarray:
    """``(n,)`` float32: the covered share of each unit's footprint (0 where it has none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(full > 0, sums[:, -1] / full, 0.0).astype(np.float32)


def _warn_uncovered(none: np.ndarray, name: str) -> None:
    if none.any():
        log.warning(
            "%d of %d %s have no predicted map cell under them (no tissue there); "
            "their predictions are NaN",
            int(none.sum()),
            len(none),
            name,
        )


def _to_anndata(dm: DenseMap, units: Units, sums, full, drop_uncovered: bool) -> ad.AnnData:
    n_genes = len(dm.genes)
    X = finish_units(sums, dm.mode, n_genes, scale=float(dm.normalization.get("scale", 1.0)))
    coverage = _coverage(sums, full)
    none = coverage <= 0
    if drop_uncovered and none.any():
        keep = ~none
        units, X, coverage = units.subset(keep), X[keep], coverage[keep]
    elif not drop_uncovered:
        _warn_uncovered(none, units.name)
    return units.to_anndata(
        X,
        genes=list(dm.genes),
        uns=_uns_from_map(dm, units),
        obs={"map_coverage": coverage},
    )


def _drops(drop_uncovered: bool | Sequence[bool], n: int) -> list[bool]:
    drops = (
        [bool(drop_uncovered)] * n
        if isinstance(drop_uncovered, bool)
        else [bool(d) for d in drop_uncovered]
    )
    if len(drops) != n:
        raise ConfigError(
            f"drop_uncovered has {len(drops)} values for {n} unit sets; give one for all or one "
            "per set."
        )
    return drops


def aggregate_geometries(
    dm: DenseMap,
    unit_sets: Sequence[Units],
    *,
    memory_mb: float = 512.0,
    drop_uncovered: bool | Sequence[bool] = False,
    progress: bool = True,
) -> Iterator[ad.AnnData]:
    """Predict several unit sets (e.g. 2, 8 and 16 µm bins and cells) in one pass over the map.

    Each chunk of the map is read and decoded once for all the sets, instead of once per set;
    each set's AnnData is the one :func:`aggregate_units` gives for it alone.

    Args:
        dm: the map (:func:`hexpress.infer.open_dense_map`).
        unit_sets: the unit sets, each as :func:`aggregate_units` takes it.
        memory_mb: rough bound on one block's memory (the sums of all the sets are held until
            the pass ends: ``(n, C + 1)`` float32 per set of squares, float64 otherwise).
        drop_uncovered: as in :func:`aggregate_units`, one for all sets or one per set.
        progress: progress bar over blocks.

    Returns:
        An iterator of one AnnData per set, in order; the pass runs when the first is asked for,
        and each set's sums are freed once its AnnData is made.
    """
    unit_sets = list(unit_sets)
    drops = _drops(drop_uncovered, len(unit_sets))

    def each():
        results = _sums_pass(dm, unit_sets, memory_mb, progress)
        for i, (units, drop) in enumerate(zip(unit_sets, drops, strict=True)):
            sums, full = results[i]
            results[i] = None  # its sums go once its AnnData is made
            yield _to_anndata(dm, units, sums, full, drop)
            del sums, full

    return each()


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
    return _to_anndata(dm, units, sums, full, drop_uncovered)


UNITS_MB = 512.0
"""Default bound on the sums and predictions :func:`write_geometries` holds at once."""


def gene_columns(
    genes: Sequence[str] | None,
    available: Sequence[str],
    source: str,
    *,
    hint: str = "check --genes",
) -> list[int]:
    """Indices of ``genes`` among ``available``, in the order given (all when ``genes`` is empty).
    ``hint`` ends the error message (what to change).

    Raises:
        DataMismatchError: a gene that is not predicted (the message names some that are).
    """
    available = [str(g) for g in available]
    if not genes:
        return list(range(len(available)))
    where = {g: i for i, g in enumerate(available)}
    missing = [g for g in genes if g not in where]
    if missing:
        raise DataMismatchError(
            f"gene(s) {missing[:5]} are not predicted by {source} ({len(available)} genes, e.g. "
            f"{available[:5]}); {hint}."
        )
    return [where[g] for g in genes]


class _CoverageOnly:
    """A map's coverage read as a map without channels: a pass over it sums covered pixels
    alone (which units have a predicted cell under them), reading no values."""

    def __init__(self, dm: DenseMap):
        self._dm = dm
        self.shape = (*dm.shape[:2], 0)
        self.chunks = dm.chunks
        self.stride, self.slide_mpp, self.model_mpp = dm.stride, dm.slide_mpp, dm.model_mpp

    def read(self, y0: int, y1: int, x0: int, x1: int, *, dtype=np.float16):
        cov = self._dm.read_coverage(y0, y1, x0, x1)
        return np.zeros((*cov.shape, 0), dtype=dtype), cov


def _unit_groups(dm: DenseMap, unit_sets: Sequence[Units], budget_bytes: float):
    """Units grouped by the map chunk their centre falls in, chunks in reading order, cut into
    groups whose sums and predictions stay within ``budget_bytes``.

    Returns:
        ``groups[s][g]``: the sorted indices of set ``s`` in group ``g`` (every set has the same
        number of groups, some of them empty).
    """
    H, W, C = dm.shape
    ch_y, ch_x = dm.chunks[:2]
    ny, nx = -(-H // ch_y), -(-W // ch_x)
    cost = np.zeros(ny * nx)
    keys = []
    for units in unit_sets:
        c = units.centers_model_px(dm.slide_mpp, dm.model_mpp) / dm.stride  # map cells, (x, y)
        c = np.nan_to_num(c)
        ky = np.clip(np.floor(c[:, 1] / ch_y), 0, ny - 1).astype(np.int64)
        kx = np.clip(np.floor(c[:, 0] / ch_x), 0, nx - 1).astype(np.int64)
        key = ky * nx + kx
        # sums (float32 for squares, float64 otherwise), then float32 predictions
        per_unit = (C + 1) * (4 if units.kind == K.SQUARE else 8) + 4 * C
        cost += np.bincount(key, minlength=ny * nx) * per_unit
        keys.append(key)
    group = np.zeros(ny * nx, dtype=np.int64)
    g, run = 0, 0.0
    for i, c in enumerate(cost.tolist()):
        if run and run + c > budget_bytes:
            g, run = g + 1, 0.0
        group[i] = g
        run += c
    n_groups = g + 1
    out = []
    for key in keys:
        ug = group[key]
        order = np.argsort(ug, kind="stable")
        bounds = np.searchsorted(ug[order], np.arange(n_groups + 1))
        out.append([order[bounds[i] : bounds[i + 1]] for i in range(n_groups)])
    return out


class _H5adRows:
    """An ``.h5ad`` file whose ``X`` is written a block of rows at a time, the rest at the end.

    ``X`` is a contiguous float32 dataset as anndata writes one (``encoding-type`` ``array``),
    so that any rows can be written where they belong; obs, var, obsm, uns and the empty
    groups follow anndata's on-disk layout (written by ``anndata.io.write_elem``).
    """

    def __init__(self, path: Path, n_rows: int, n_cols: int):
        import h5py

        self.f = h5py.File(path, "w")
        self.X = self.f.create_dataset("X", shape=(n_rows, n_cols), dtype="float32")
        self.X.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Write ``values[k]`` to row ``rows[k]`` (increasing), one write per run of rows."""
        if not len(rows):
            return
        cut = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(rows)].tolist(), strict=True):
            r = int(rows[a])
            self.X[r : r + (b - a)] = values[a:b]

    def finish(self, adata: ad.AnnData) -> None:
        """Write everything of ``adata`` but ``X`` (which must be ``None``) and close."""
        from anndata.io import write_elem

        f = self.f
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        write_elem(f, "obs", adata.obs)
        write_elem(f, "var", adata.var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, dict(getattr(adata, key)))
        f.close()

    def close(self) -> None:
        self.f.close()


def write_geometries(
    dm: DenseMap,
    unit_sets: Sequence[Units],
    paths: Sequence[str | Path],
    *,
    genes: Sequence[str] | None = None,
    memory_mb: float = 512.0,
    units_mb: float = UNITS_MB,
    drop_uncovered: bool | Sequence[bool] = False,
    decorate: Callable[[ad.AnnData], None] | None = None,
    progress: bool = True,
) -> list[int]:
    """Predict several unit sets into one ``.h5ad`` each, in memory bounded by ``units_mb``
    whatever their number (10 million 2 µm bins of a Visium HD capture area hold 21 GB of sums
    and predictions at 250 genes).

    The units are grouped by the map chunk their centres fall in, chunks in reading order,
    into groups whose sums and predictions fit ``units_mb``; each group is one pass over the
    map windows its units touch (:func:`aggregate_geometries` for that group), and its
    predictions go straight into the files' ``X`` at their rows. The files hold what
    :func:`aggregate_geometries` gives (rows in the units' order), each written through a
    temporary name and renamed when complete. With one group (the sets fit) there is one pass,
    as in :func:`aggregate_geometries`. With several, the sets that drop uncovered units get a
    first pass over the map's coverage alone, which tells their rows before any is written.

    Args:
        dm: the map.
        unit_sets, drop_uncovered: as in :func:`aggregate_geometries`.
        paths: one ``.h5ad`` per set.
        genes: keep only these genes, in this order (default all).
        memory_mb: rough bound on one map block's memory (as in :func:`unit_sums`).
        units_mb: rough bound on the sums and predictions of the units of one group.
        decorate: called on each set's AnnData (``X`` left out) before it is written, e.g. to
            add ``uns`` entries.
        progress: progress bar over blocks (one pass) or groups (several).

    Returns:
        the number of units written per set.

    Raises:
        DataMismatchError: a gene in ``genes`` that the map does not predict.
    """
    unit_sets, paths = list(unit_sets), [Path(p) for p in paths]
    if len(paths) != len(unit_sets):
        raise ConfigError(f"{len(paths)} paths for {len(unit_sets)} unit sets; give one per set.")
    drops = _drops(drop_uncovered, len(unit_sets))
    cols = gene_columns(genes, dm.genes, "this map")
    every = cols == list(range(len(dm.genes)))
    groups = _unit_groups(dm, unit_sets, float(units_mb) * 2**20)
    n_groups = len(groups[0]) if groups else 0
    scale = float(dm.normalization.get("scale", 1.0))
    keeps: list[np.ndarray | None] = [None] * len(unit_sets)
    if n_groups > 1 and any(drops):
        kept = [u for u, d in zip(unit_sets, drops, strict=True) if d]
        res = iter(_sums_pass(_CoverageOnly(dm), kept, memory_mb, progress=False))
        for i, d in enumerate(drops):
            if d:
                sums, full = next(res)
                keeps[i] = _coverage(sums, full) > 0
    coverage = [np.zeros(len(u), dtype=np.float32) for u in unit_sets]
    counts = []
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        writers: list[_H5adRows | None] = [None] * len(unit_sets)
        rank: list[np.ndarray | None] = [None] * len(unit_sets)

        def writer(i: int) -> _H5adRows:
            if writers[i] is None:
                n = len(unit_sets[i]) if keeps[i] is None else int(keeps[i].sum())
                writers[i] = _H5adRows(tmps[i], n, len(cols))
                stack.callback(writers[i].close)  # closed if anything fails
                if keeps[i] is not None:
                    rank[i] = np.cumsum(keeps[i]) - 1
            return writers[i]

        bar = tqdm(
            total=n_groups, desc="aggregating in groups", unit="group",
            disable=not progress or n_groups < 2, leave=False,
        )  # fmt: skip
        with bar:
            for g in range(n_groups):
                part = [(i, grp[g]) for i, grp in enumerate(groups) if len(grp[g])]
                # a group holding a whole set (one group: every set) sums the set itself
                subsets = [
                    unit_sets[i] if len(idx) == len(unit_sets[i]) else unit_sets[i].subset(idx)
                    for i, idx in part
                ]
                res = _sums_pass(dm, subsets, memory_mb, progress and n_groups == 1) if part else []
                del subsets
                for (i, idx), (sums, full) in zip(part, res, strict=True):
                    X = finish_units(sums, dm.mode, len(dm.genes), scale=scale)
                    X = X if every else X[:, cols]
                    cov = coverage[i][idx] = _coverage(sums, full)
                    del sums, full
                    if drops[i] and keeps[i] is None:  # one group: this pass tells
                        keeps[i] = coverage[i] > 0
                    w = writer(i)
                    if keeps[i] is None:
                        w.put(idx, X)
                    else:
                        k = cov > 0
                        w.put(rank[i][idx[k]], X[k])
                    del X
                del res
                bar.update(1)
        for i, units in enumerate(unit_sets):
            cov = coverage[i]
            if drops[i]:
                keep = keeps[i] if keeps[i] is not None else cov > 0
                units, cov = (units.subset(keep), cov[keep]) if not keep.all() else (units, cov)
            else:
                _warn_uncovered(cov <= 0, units.name)
            w = writer(i)
            a = units.to_anndata(
                None,
                genes=[dm.genes[c] for c in cols],
                uns=_uns_from_map(dm, units),
                obs={"map_coverage": cov},
            )
            if decorate is not None:
                decorate(a)
            w.finish(a)
            counts.append(len(units))
    return counts


def write_h5ad_atomic(adata: ad.AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
