"""Gene expression over the H&E: units (spots, bins, cells) and dense maps.

One unit plotter, :func:`draw_units`, draws every geometry at its true footprint: discs of
diameter ``size_um``, square bins **rasterised** into an image on their own grid (no dots, no
gaps, empty where nothing was measured or predicted), cells without a size as points. Panels are
in level-0 pixel coordinates of the slide, so the H&E, units and dense maps overlay exactly and a
scale bar in µm is ``um / mpp`` long.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from hexpress import _keys as K
from hexpress.errors import ConfigError

__all__ = [
    "add_scale_bar",
    "draw_units",
    "gene_values",
    "normalization_label",
    "plot_dense_map",
    "plot_gene_map",
    "plot_truth_vs_prediction",
]

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


def normalization_label(normalization: Mapping | None) -> str:
    """What an expression value means, for colour bars: ``log1p(counts / total × 10000)``."""
    norm = dict(normalization or {})
    scale = norm.get("scale")
    if norm.get("method", "log1p_total") == "log1p_total" and scale:
        return f"log1p(counts / total × {float(scale):g})"
    return "normalised expression"


def _nice_length(um: float) -> float:
    exp = 10 ** math.floor(math.log10(um))
    for m in (5, 2, 1):
        if m * exp <= um:
            return m * exp
    return exp


def add_scale_bar(ax, mpp: float, *, fraction: float = 0.25, color: str = "black") -> float:
    """A scale bar in the lower left of a panel drawn in level-0 pixels of a slide of ``mpp``.

    Its length is a round number of µm near ``fraction`` of the panel width. Returns it (µm).
    """
    x0, x1 = sorted(ax.get_xlim())
    y_top, y_bottom = sorted(ax.get_ylim())  # image axes: y grows downwards
    width_um = (x1 - x0) * mpp
    bar_um = _nice_length(max(width_um * fraction, 1e-9))
    bar_px = bar_um / mpp
    bx, by = x0 + 0.05 * (x1 - x0), y_bottom - 0.06 * (y_bottom - y_top)
    ax.plot([bx, bx + bar_px], [by, by], color=color, lw=3, solid_capstyle="butt", zorder=5)
    ax.plot([bx, bx + bar_px], [by, by], color="white", lw=1, alpha=0.6, zorder=5)
    label = f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} µm"
    ax.text(bx, by - 0.02 * (y_bottom - y_top), label, color=color, fontsize=8, va="bottom",
            zorder=5, bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})  # fmt: skip
    return bar_um


def _unit_mpp(adata, image) -> float | None:
    if image is not None:
        return float(image.mpp)
    mpp = adata.uns.get(K.UNS, {}).get("mpp")
    return float(mpp) if mpp is not None else None


def _square_raster(xy: np.ndarray, side: float, values: np.ndarray):
    """Square bins of one side on their grid -> ``(image, extent)``, NaN where no bin."""
    origin = xy.min(0) - side / 2
    ij = np.rint((xy - origin) / side - 0.5).astype(np.int64)
    w, h = ij.max(0) + 1
    img = np.full((int(h), int(w)), np.nan)
    img[ij[:, 1], ij[:, 0]] = values
    x0, y0 = origin
    return img, (x0, x0 + w * side, y0 + h * side, y0)


def draw_units(
    ax,
    adata,
    values: np.ndarray | None = None,
    *,
    mpp: float | None,
    cmap="viridis",
    norm=None,
    colors: np.ndarray | None = None,
    alpha: float = 0.85,
    edgecolor: str | None = None,
    linewidth: float = 0.0,
):
    """Draw units at their footprint, in level-0 pixels; the one unit plotter of hexpress.

    Args:
        ax: matplotlib axes (image orientation: y down).
        adata: units with ``obsm["spatial"]`` (level-0 px) and, for their footprint,
            ``obs["geometry"]`` and ``obs["size_um"]``; units without a size are points.
        values: ``(n_units,)`` numbers to colour by (``cmap``, ``norm``); ``None``: ``colors``
            or outlines only.
        mpp: µm per level-0 pixel (footprints need it; without it every unit is a point).
        colors: ``(n_units, 4)`` RGBA colours (e.g. categories) instead of ``values``.
        alpha, edgecolor, linewidth: style; outlines only when both ``values`` and ``colors``
            are ``None``.

    Returns:
        The last mappable drawn (for a colour bar), or ``None``.
    """
    from matplotlib.collections import EllipseCollection, PolyCollection

    if K.SPATIAL not in adata.obsm:
        raise ConfigError("adata.obsm['spatial'] is missing: no unit positions to draw.")
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2]
    n = adata.n_obs
    size = (
        adata.obs[K.SIZE_UM].to_numpy(dtype=np.float64)
        if K.SIZE_UM in adata.obs
        else np.full(n, np.nan)
    )
    size_px = size / mpp if mpp else np.full(n, np.nan)
    geometry = (
        adata.obs[K.GEOMETRY].astype(str).to_numpy() if K.GEOMETRY in adata.obs else np.full(n, "")
    )
    outline = values is None and colors is None
    style = {"alpha": alpha, "linewidths": linewidth, "edgecolors": edgecolor or "face"}
    if outline:
        style.update(facecolors="none", edgecolors=edgecolor or "black",
                     linewidths=linewidth or 0.5)  # fmt: skip

    def paint(coll, sel):
        if values is not None:
            coll.set_array(np.asarray(values, dtype=np.float64)[sel])
            coll.set_cmap(cmap)
            if norm is not None:
                coll.set_norm(norm)
        elif colors is not None:
            coll.set_facecolor(np.asarray(colors)[sel])
        ax.add_collection(coll)
        return coll

    mappable = None
    disc = np.isfinite(size_px) & (geometry != K.SQUARE)
    if disc.any():
        d = size_px[disc]
        coll = EllipseCollection(d, d, np.zeros(d.size), units="xy", offsets=xy[disc],
                                 offset_transform=ax.transData, **style)  # fmt: skip
        mappable = paint(coll, disc)
    square = np.isfinite(size_px) & (geometry == K.SQUARE)
    if square.any():
        sides = np.unique(np.round(size_px[square], 6))
        for side in sides:
            sel = square & np.isclose(size_px, side)
            if values is not None and not outline:
                img, extent = _square_raster(xy[sel], float(side), np.asarray(values, float)[sel])
                mappable = ax.imshow(img, extent=extent, cmap=cmap, norm=norm, alpha=alpha,
                                     interpolation="nearest", zorder=2)  # fmt: skip
                continue
            h = side / 2
            c = xy[sel]
            verts = np.stack([c + [-h, -h], c + [h, -h], c + [h, h], c + [-h, h]], axis=1)
            coll = PolyCollection(verts, **style)
            coll.set_rasterized(True)
            mappable = paint(coll, sel)
    point = ~np.isfinite(size_px)
    if point.any():
        kw = {"s": 4, "alpha": alpha, "linewidths": 0}
        if values is not None:
            kw.update(c=np.asarray(values, float)[point], cmap=cmap, norm=norm)
        elif colors is not None:
            kw.update(c=np.asarray(colors)[point])
        else:
            kw.update(c="black", s=2)
        mappable = ax.scatter(xy[point, 0], xy[point, 1], **kw)
    return mappable


def _units_box(adata, mpp: float | None) -> tuple[float, float, float, float]:
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2]
    pad = 0.0
    if K.SIZE_UM in adata.obs and mpp:
        s = adata.obs[K.SIZE_UM].to_numpy(dtype=np.float64)
        pad = float(np.nanmax(s)) / mpp if np.isfinite(s).any() else 0.0
    return xy[:, 0].min() - pad, xy[:, 0].max() + pad, xy[:, 1].min() - pad, xy[:, 1].max() + pad


def _draw_image(ax, image, thumbnail, box=None) -> None:
    """The slide thumbnail in level-0 px coordinates (cropped to ``box`` when given)."""
    img, scale = thumbnail if thumbnail is not None else image.thumbnail(1024)
    h, w = img.shape[:2]
    if box is not None:
        x0, x1, y0, y1 = (max(0, int(v * scale)) for v in box)
        img = img[y0 : min(h, y1 + 2), x0 : min(w, x1 + 2)]
        ax.imshow(img, extent=(x0 / scale, (x0 + img.shape[1]) / scale,
                               (y0 + img.shape[0]) / scale, y0 / scale))  # fmt: skip
    else:
        ax.imshow(img, extent=(0, w / scale, h / scale, 0))


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
    colorbar_label: str | None = None,
    crop: bool = True,
    scale_bar: bool = True,
):
    """Colour each unit by one gene's value over the slide, cropped to the units.

    Args:
        adata: units with ``obsm["spatial"]`` (level-0 px), ``obs["geometry"]``, ``obs["size_um"]``.
        gene: gene to show.
        image: the slide (:class:`~hexpress.io.image.SlideImage`); drawn underneath when given.
        thumbnail: a precomputed ``image.thumbnail(max_side)`` result, to draw many panels fast.
        ax: matplotlib axes; default a new figure.
        layer: a layer instead of ``X``.
        vmin, vmax: colour scale limits (default the 1st and 99th percentiles).
        cmap, alpha: colour map and opacity.
        max_side: thumbnail size in pixels.
        title: panel title (default the gene name).
        colorbar: add a colour bar, labelled ``colorbar_label`` (default: the normalisation in
            ``uns["hexpress"]["normalization"]``).
        crop: show only the units' bounding box (else the whole slide).
        scale_bar: draw a µm scale bar (needs ``mpp``).

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    values = gene_values(adata, gene, layer)
    if K.SPATIAL not in adata.obsm:
        raise ConfigError("adata.obsm['spatial'] is missing: no unit positions to draw.")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    mpp = _unit_mpp(adata, image)
    box = _units_box(adata, mpp) if crop or image is None else None
    if image is not None:
        if thumbnail is None:
            thumbnail = image.thumbnail(max_side)
        _draw_image(ax, image, thumbnail, box)
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    if hi <= lo:
        hi = lo + 1e-6
    mappable = draw_units(ax, adata, values, mpp=mpp, cmap=cmap, norm=Normalize(lo, hi),
                          alpha=alpha)  # fmt: skip
    if box is not None:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[3], box[2])
    else:
        img, scale = thumbnail
        ax.set_xlim(0, img.shape[1] / scale)
        ax.set_ylim(img.shape[0] / scale, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(gene if title is None else title, fontsize=9)
    if scale_bar and mpp:
        add_scale_bar(ax, mpp)
    if colorbar and mappable is not None:
        label = colorbar_label or normalization_label(adata.uns.get(K.UNS, {}).get(K.NORMALIZATION))
        cb = ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label(label, fontsize=7)
        cb.ax.tick_params(labelsize=7)
    return ax


def _truth_pred_scatter(ax, t: np.ndarray, p: np.ndarray, label: str) -> None:
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    ax.scatter(t, p, s=4, alpha=0.4, linewidths=0)
    if t.size:
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(t, p)[0, 1] if t.size > 1 and t.std() > 0 and p.std() > 0 else np.nan
    ax.set_title(f"PCC = {r:.2f} (n = {t.size})" if np.isfinite(r) else "PCC undefined",
                 fontsize=8)  # fmt: skip
    ax.set_xlabel(f"measured, {label}", fontsize=7)
    ax.set_ylabel("predicted", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_box_aspect(1)


def plot_truth_vs_prediction(
    truth,
    pred,
    genes: Sequence[str],
    *,
    image=None,
    method: str = "prediction",
    max_side: int = 800,
    cmap: str = "viridis",
    panel_in: float = 2.9,
    percentiles: tuple[float, float] = (1.0, 99.0),
    fig=None,
):
    """One row per gene: measured, predicted on the same scale, predicted on its own scale, and
    a measured-vs-predicted scatter.

    The shared scale (the ``percentiles`` of measured and predicted values together) shows
    whether the levels agree; the prediction's own percentile scale shows its pattern even when
    its range is narrower than the truth's (a typical regression to the mean).

    Args:
        truth: measured units (normalised, same space as the prediction), with positions.
        pred: predicted units (any subset of the truth's, matched by ``obs_names``).
        genes: genes to show (each in both).
        image: the slide, drawn underneath.
        method: the prediction's name, in the titles.
        max_side: thumbnail size in pixels (before cropping to the units).
        cmap: colour map.
        panel_in: panel size in inches.
        percentiles: colour scale limits as percentiles of the values shown.
        fig: a figure to draw into (e.g. ``matplotlib.figure.Figure()``, no pyplot).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if isinstance(pred, Mapping):  # the former {method: AnnData} form, one method
        if len(pred) != 1:
            raise ConfigError("plot_truth_vs_prediction draws one prediction; call it per method.")
        method, pred = next(iter(pred.items()))
    genes = list(genes)
    if not genes:
        raise ConfigError("plot_truth_vs_prediction needs at least one gene.")
    common = pred.obs_names.intersection(truth.obs_names)
    if len(common) == 0:
        raise ConfigError("the truth and the prediction share no unit (obs_names).")
    truth, pred = truth[common], pred[common]
    # long method names wrap, so that the titles of neighbouring panels never overlap
    method = textwrap.fill(str(method), width=max(12, int(panel_in * 9)))
    thumb = image.thumbnail(max_side) if image is not None else None
    label = normalization_label(truth.uns.get(K.UNS, {}).get(K.NORMALIZATION))
    if fig is None:
        fig = plt.figure()
    fig.set_size_inches(panel_in * 4 + 1.2, panel_in * len(genes) + 0.3)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(len(genes), 4, squeeze=False)
    for r, gene in enumerate(genes):
        t, p = gene_values(truth, gene), gene_values(pred, gene)
        both = np.concatenate([t, p])
        both = both[np.isfinite(both)]
        lo, hi = np.percentile(both, percentiles) if both.size else (0.0, 1.0)
        own = p[np.isfinite(p)]
        plo, phi = np.percentile(own, percentiles) if own.size else (0.0, 1.0)
        common_kw = {"image": image, "thumbnail": thumb, "cmap": cmap, "colorbar_label": label}
        plot_gene_map(truth, gene, ax=axes[r, 0], vmin=lo, vmax=hi, colorbar=False,
                      title=f"{gene}: measured", **common_kw)  # fmt: skip
        plot_gene_map(pred, gene, ax=axes[r, 1], vmin=lo, vmax=hi, scale_bar=False,
                      title=f"{gene}: {method}\n(scale shared with measured)",
                      **common_kw)  # fmt: skip
        plot_gene_map(pred, gene, ax=axes[r, 2], vmin=plo, vmax=phi, scale_bar=False,
                      title=f"{gene}: {method}\n(own {percentiles[0]:g}–{percentiles[1]:g}th "
                      "percentile scale)", **common_kw)  # fmt: skip
        _truth_pred_scatter(axes[r, 3], t, p, label)
    return fig


def plot_dense_map(
    dm,
    genes: Sequence[str],
    *,
    image=None,
    max_side: int = 800,
    cmap: str = "magma",
    alpha: float = 0.7,
    panel_in: float = 3.6,
    percentiles: tuple[float, float] = (1.0, 99.0),
    pad_um: float = 50.0,
    block_um: float = 16.0,
    title: str | None = None,
    fig=None,
):
    """The predicted dense map of each gene as a heat map over the H&E, cropped to the tissue.

    Args:
        dm: a complete :class:`~hexpress.infer.dense_map.DenseMap` (``map.zarr``).
        genes: genes to draw (each predicted by the map).
        image: the slide the map was predicted on, drawn underneath.
        max_side: the map is averaged down so that its longer side is at most this many cells
            (:func:`~hexpress.infer.preview.map_thumbnail`); glass outside the tissue mask is
            left transparent.
        cmap, alpha: heat map colour map and opacity.
        panel_in: panel size in inches.
        percentiles: colour limits per gene, as percentiles of its map.
        pad_um: margin around the tissue's bounding box.
        block_um: display resolution: the map is averaged over blocks at least this wide (the
            expression a square unit of that side would get), so that it reads at a scale where
            expression is measured rather than at single map cells.
        title: prefix of each panel title (e.g. the method).
        fig: a figure to draw into.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    from hexpress.infer.preview import map_thumbnail

    genes = list(genes)
    if not genes:
        raise ConfigError("plot_dense_map needs at least one gene.")
    values, k = map_thumbnail(dm, genes, max_side=max_side, block_um=block_um)
    cell_px = k * dm.map_mpp / dm.slide_mpp  # level-0 px per thumbnail cell
    mh, mw = values.shape[:2]
    seen = np.isfinite(values).any(axis=2)
    if seen.any():
        rows, cols = np.nonzero(seen)
        pad = pad_um / dm.slide_mpp
        box = (cols.min() * cell_px - pad, (cols.max() + 1) * cell_px + pad,
               rows.min() * cell_px - pad, (rows.max() + 1) * cell_px + pad)  # fmt: skip
    else:
        box = (0.0, mw * cell_px, 0.0, mh * cell_px)
    label = "predicted " + normalization_label(dm.normalization)
    if fig is None:
        fig = plt.figure()
    n = len(genes)
    cols_n = min(n, 3)
    rows_n = math.ceil(n / cols_n)
    bw, bh = box[1] - box[0], box[3] - box[2]
    aspect = bh / max(bw, 1e-9)
    fig.set_size_inches(panel_in * cols_n + 0.9 * cols_n, panel_in * aspect * rows_n + 0.5)
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(rows_n, cols_n, squeeze=False).ravel())
    thumb = image.thumbnail(max_side) if image is not None else None
    for gi, (ax, gene) in enumerate(zip(axes, genes, strict=False)):
        if thumb is not None:
            _draw_image(ax, image, thumb, box)
        v = values[..., gi]
        ok = v[np.isfinite(v)]
        lo, hi = np.percentile(ok, percentiles) if ok.size else (0.0, 1.0)
        im = ax.imshow(np.ma.masked_invalid(v), extent=(0, mw * cell_px, mh * cell_px, 0),
                       cmap=cmap, alpha=alpha, vmin=lo, vmax=max(hi, lo + 1e-6),
                       interpolation="nearest", zorder=2)  # fmt: skip
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[3], box[2])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title}: {gene}" if title else gene, fontsize=9)
        add_scale_bar(ax, dm.slide_mpp)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label(label, fontsize=7)
        cb.ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig
