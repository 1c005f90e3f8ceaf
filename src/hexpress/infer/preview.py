"""Preview PNGs: a gene's predicted map over the H&E thumbnail.

The map is read band by band and averaged down to thumbnail resolution (NaN cells, where no
tissue was predicted, stay transparent), so a preview never loads the whole map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hexpress._files import write_figure
from hexpress.data.preprocess import normalize_counts
from hexpress.infer.aggregate_disk import gene_columns
from hexpress.infer.dense_map import DenseMap
from hexpress.io.image import SlideImage

__all__ = ["map_thumbnail", "write_previews"]


def _gene_values(vals: np.ndarray, idx: list[int], mode: str, scale: float) -> np.ndarray:
    if mode == "density":
        return normalize_counts(vals[..., idx], vals[..., -1], scale)
    return vals[..., idx]


def map_thumbnail(
    dm: DenseMap,
    genes: Sequence[str],
    *,
    max_side: int = 1024,
    tissue_only: bool = True,
    block_um: float | None = None,
) -> tuple[np.ndarray, int]:
    """Per-gene map averaged down so its longer side is at most ``max_side``.

    A density map (``mode="density"``) is averaged as densities, gene and total channels
    alike, and normalised afterwards, so that each value is the expression of its block as a
    unit of that size would measure it; a per-cell ratio of tiny densities would be noise.

    Args:
        dm: a complete map.
        genes: genes to read.
        max_side: longest side of the result, in cells.
        tissue_only: NaN where the map's tissue mask has no tissue. Tiles are predicted whole, so
            the glass around tissue inside a tile has values too; a preview hides them.
        block_um: average at least this many µm along each side (e.g. 16, a Visium HD bin).

    Returns:
        ``(values, factor)``: ``(h, w, len(genes))`` float32 (NaN where nothing was predicted)
        and the number of map cells averaged along each side.
    """
    idx = gene_columns(genes, dm.genes, "this map", hint="ask for genes it holds") if genes else []
    H, W, _ = dm.shape
    k = max(1, math.ceil(max(H, W) / max_side))
    if block_um:
        k = max(k, round(block_um / dm.map_mpp))
    density = dm.mode == "density"
    sel = [*idx, dm.shape[2] - 1] if density else idx  # densities: the total channel too
    h, w = math.ceil(H / k), math.ceil(W / k)
    out = np.full((h, w, len(idx)), np.nan, dtype=np.float32)
    band = max(k, (dm.chunks[0] // k) * k)
    scale = float(dm.normalization.get("scale", 1.0) or 1.0)
    for y0 in range(0, H, band):
        vals, _ = dm.read(y0, y0 + band, 0, w * k)
        g = vals[..., sel].reshape(band // k, k, w, k, len(sel))
        with np.errstate(invalid="ignore"), _quiet():
            mean = np.nanmean(g, axis=(1, 3))
        mean = _gene_values(mean, list(range(len(idx))), dm.mode, scale)
        r0 = y0 // k
        out[r0 : r0 + mean.shape[0]] = mean[: h - r0]
    if tissue_only:
        cell_px = k * dm.map_mpp / dm.slide_mpp  # level-0 px per thumbnail cell
        yy, xx = np.mgrid[0:h, 0:w]
        centres = np.stack([(xx.ravel() + 0.5) * cell_px, (yy.ravel() + 0.5) * cell_px], axis=1)
        out[~dm.tissue_mask.contains(centres).reshape(h, w)] = np.nan
    return out, k


class _quiet:
    """Silence numpy's 'mean of empty slice' warning (all-NaN blocks are expected)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def write_previews(
    dm: DenseMap,
    slide: SlideImage,
    genes: Sequence[str],
    out_dir: str | Path,
    *,
    max_side: int = 1024,
    alpha: float = 0.6,
    cmap: str = "viridis",
) -> list[Path]:
    """Write ``preview_<gene>.png`` for each gene: the map over the slide thumbnail.

    Each figure has the gene name, a colour bar (predicted value, normalised space) and a µm
    scale bar.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from hexpress.pl.maps import add_scale_bar, normalization_label

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values, k = map_thumbnail(dm, genes, max_side=max_side)
    thumb, _ = slide.thumbnail(max_side)
    w_um, h_um = slide.width * slide.mpp, slide.height * slide.mpp
    mh, mw = values.shape[:2]
    map_extent = (0, mw * k * dm.map_mpp, mh * k * dm.map_mpp, 0)
    paths = []
    for gi, gene in enumerate(genes):
        fig, ax = plt.subplots(figsize=(7, 7 * h_um / max(w_um, 1e-9) + 0.5), dpi=120)
        ax.imshow(thumb, extent=(0, w_um, h_um, 0))
        v = np.ma.masked_invalid(values[..., gi])
        lo, hi = np.nanpercentile(values[..., gi], [1, 99]) if v.count() else (0.0, 1.0)
        im = ax.imshow(v, extent=map_extent, cmap=cmap, alpha=alpha, vmin=lo, vmax=hi,
                       interpolation="nearest")  # fmt: skip
        ax.set_xlim(0, w_um)
        ax.set_ylim(h_um, 0)
        add_scale_bar(ax, 1.0, fraction=0.2)  # the axes are in µm: 1 µm per unit
        ax.set_title(gene)
        ax.set_axis_off()
        label = "predicted " + normalization_label(dm.normalization)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=label)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in gene)
        path = out_dir / f"preview_{safe}.png"
        write_figure(path, fig, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
