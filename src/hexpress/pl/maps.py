"""Gene expression maps over the H&E: measured and predicted, side by side.

Units are drawn at their true footprint (disc diameter / square side ``size_um``), vectorised so
that tens of thousands of bins draw quickly; units without a size (cells) are drawn as points.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from hexpress import _keys as K
from hexpress.errors import ConfigError

__all__ = ["gene_values", "plot_gene_map", "plot_truth_vs_prediction"]

log = logging.getLogger(__name__)


def gene_values(adata, gene: str, layer: str | None = None) -> np.ndarray:
    """``(n_units,)`` float64 values of one gene (``X`` or ``layer``)."""
    if gene not in adata.var_names:
        raise ConfigError(
            f"gene {gene!r} is not in the data ({adata.n_vars} genes, e.g. "
            f"{', '.join(map(str, adata.var_names[:5]))})."
        )
    j = adata.var_names.get_loc(gene)
    X = adata.layers[layer] if layer is not None else adata.X
    col = X[:, j]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return np.asarray(col, dtype=np.float64).ravel()


def _mpp(adata, image) -> float | None:
    if image is not None:
        return float(image.mpp)
    mpp = adata.uns.get(K.UNS, {}).get("mpp")
    return float(mpp) if mpp is not None else None


def plot_gene_map(
    adata,
    gene: str,
    *,
    image=None,
    thumbnail: tuple[np.ndarray, float] | None = None,
    ax=None,
    layer: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    alpha: float = 0.85,
    max_side: int = 1024,
    title: str | None = None,
    colorbar: bool = True,
):
    """Colour each unit by one gene's value over a thumbnail of the slide.

    Args:
        adata: units with ``obsm["spatial"]`` (level-0 px), ``obs["geometry"]``, ``obs["size_um"]``.
        gene: gene to show.
        image: the slide (:class:`~hexpress.io.image.SlideImage`); drawn underneath when given.
        thumbnail: a precomputed ``image.thumbnail(max_side)`` result, to draw many panels fast.
        ax: matplotlib axes; default a new figure.
        layer: a layer instead of ``X``.
        vmin, vmax: colour scale limits (share them between truth and prediction panels).
        cmap, alpha: colour map and opacity.
        max_side: thumbnail size in pixels.
        title: panel title (default the gene name).
        colorbar: add a colour bar.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection, PolyCollection
    from matplotlib.colors import Normalize

    values = gene_values(adata, gene, layer)
    if K.SPATIAL not in adata.obsm:
        raise ConfigError("adata.obsm['spatial'] is missing: no unit positions to draw.")
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2]
    if thumbnail is None and image is not None:
        thumbnail = image.thumbnail(max_side)
    scale = thumbnail[1] if thumbnail is not None else 1.0
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    if thumbnail is not None:
        img = thumbnail[0]
        ax.imshow(img, extent=(0, img.shape[1], img.shape[0], 0))
    xy = xy * scale
    mpp = _mpp(adata, image)
    n = adata.n_obs
    sizes = (
        adata.obs[K.SIZE_UM].to_numpy(dtype=np.float64)
        if K.SIZE_UM in adata.obs
        else np.full(n, np.nan)
    )
    sizes = sizes / mpp * scale if mpp else np.full(n, np.nan)
    geometry = (
        adata.obs[K.GEOMETRY].astype(str).to_numpy() if K.GEOMETRY in adata.obs else np.full(n, "")
    )
    finite = np.isfinite(values)
    lo = np.nanmin(values[finite]) if vmin is None and finite.any() else vmin
    hi = np.nanmax(values[finite]) if vmax is None and finite.any() else vmax
    norm = Normalize(vmin=lo, vmax=hi)
    disc = np.isfinite(sizes) & (geometry != K.SQUARE)
    square = np.isfinite(sizes) & (geometry == K.SQUARE)
    point = ~np.isfinite(sizes)
    mappable = None
    if disc.any():
        coll = EllipseCollection(
            sizes[disc],
            sizes[disc],
            np.zeros(int(disc.sum())),
            units="xy",
            offsets=xy[disc],
            offset_transform=ax.transData,
            cmap=cmap,
            norm=norm,
            alpha=alpha,
            linewidths=0,
        )
        coll.set_array(values[disc])
        ax.add_collection(coll)
        mappable = coll
    if square.any():
        h = sizes[square][:, None] / 2
        c = xy[square]
        verts = np.stack(
            [
                c + np.hstack([-h, -h]),
                c + np.hstack([h, -h]),
                c + np.hstack([h, h]),
                c + np.hstack([-h, h]),
            ],
            axis=1,
        )
        coll = PolyCollection(verts, cmap=cmap, norm=norm, alpha=alpha, linewidths=0)
        coll.set_array(values[square])
        coll.set_rasterized(True)
        ax.add_collection(coll)
        mappable = coll
    if point.any():
        mappable = ax.scatter(
            xy[point, 0], xy[point, 1], c=values[point], s=4, cmap=cmap, norm=norm, alpha=alpha
        )
    if thumbnail is not None:
        ax.set_xlim(0, thumbnail[0].shape[1])
        ax.set_ylim(thumbnail[0].shape[0], 0)
    else:
        pad = np.nanmax(sizes) if np.isfinite(sizes).any() else 0.0
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(gene if title is None else title, fontsize=9)
    if colorbar and mappable is not None:
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
    return ax


def plot_truth_vs_prediction(
    truth,
    preds,
    genes: Sequence[str],
    *,
    image=None,
    max_side: int = 800,
    cmap: str = "viridis",
    panel_in: float = 3.2,
    quantiles: tuple[float, float] = (0.005, 0.995),
    fig=None,
):
    """A grid: one row per gene, the truth then each prediction, on one colour scale per gene.

    Args:
        truth: measured units (normalised, same space as the predictions).
        preds: an ``AnnData`` of predictions, or ``{method name: AnnData}``.
        genes: genes to show (each must be in the truth and every prediction).
        image: the slide, drawn underneath.
        max_side: thumbnail size in pixels.
        cmap: colour map.
        panel_in: panel size in inches.
        quantiles: the colour scale of a gene spans these quantiles of all its panels' values
            together, so one outlier does not wash out the map.
        fig: a matplotlib figure to draw into (e.g. ``matplotlib.figure.Figure()``, no pyplot);
            default a new pyplot figure.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not isinstance(preds, Mapping):
        preds = {"prediction": preds}
    genes = list(genes)
    if not genes:
        raise ConfigError("plot_truth_vs_prediction needs at least one gene.")
    thumb = image.thumbnail(max_side) if image is not None else None
    cols = 1 + len(preds)
    if fig is None:
        fig = plt.figure()
    fig.set_size_inches(panel_in * cols + 0.8, panel_in * len(genes))
    fig.set_layout_engine("constrained")  # one colour bar per row, panels of equal size
    axes = fig.subplots(len(genes), cols, squeeze=False)
    for r, gene in enumerate(genes):
        panels = [("truth", truth)] + list(preds.items())
        vals = np.concatenate([gene_values(a, gene) for _, a in panels])
        vals = vals[np.isfinite(vals)]
        lo, hi = np.quantile(vals, quantiles) if vals.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1e-6
        for c, (name, a) in enumerate(panels):
            plot_gene_map(
                a,
                gene,
                image=image,
                thumbnail=thumb,
                ax=axes[r, c],
                vmin=lo,
                vmax=hi,
                cmap=cmap,
                title=f"{gene}: {name}",
                colorbar=False,
            )
        if axes[r, 0].collections:
            fig.colorbar(axes[r, 0].collections[-1], ax=list(axes[r]), shrink=0.85, pad=0.01)
    return fig
