"""Units (spots, bins, cells) drawn at their true size over the H&E thumbnail."""

from __future__ import annotations

import logging

import numpy as np

from hexpress.errors import ConfigError, UnitsError

__all__ = ["plot_spots"]

log = logging.getLogger(__name__)


def _values(sample, color):
    adata = sample.adata
    if color is None:
        return None, None
    if isinstance(color, str):
        if color in adata.obs:
            return adata.obs[color].to_numpy(), color
        if color in adata.var_names:
            col = adata[:, color].X
            col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
            return np.asarray(col, dtype=float).ravel(), color
        raise ConfigError(
            f"color={color!r} is neither a gene (var_names) nor an obs column of "
            f"{sample.sample_id}."
        )
    values = np.asarray(color)
    if values.shape[0] != adata.n_obs:
        raise ConfigError(f"color has {values.shape[0]} values for {adata.n_obs} units.")
    return values, None


def plot_spots(
    sample,
    ax=None,
    color=None,
    *,
    max_side: int = 1024,
    cmap: str = "viridis",
    alpha: float = 0.6,
    edgecolor: str | None = "black",
    linewidth: float = 0.3,
    title: str | None = None,
    colorbar: bool = True,
):
    """Draw every unit over a thumbnail of the sample's image, at its true physical size.

    Discs get a diameter and squares a side of ``size_um / mpp`` level-0 pixels (coloured
    square bins are rasterised on their grid); polygons without a size are drawn as points.
    Useful to check alignment by eye. Drawn by :func:`hexpress.pl.maps.draw_units`, in level-0
    pixel coordinates.

    Args:
        sample: a :class:`~hexpress.data.Sample` with an image.
        ax: matplotlib axes; default a new figure.
        color: ``None`` (outlines only), a gene name, an ``obs`` column, or ``(n_units,)`` values.
        max_side: longest side of the thumbnail in pixels.
        cmap, alpha, edgecolor, linewidth: drawing style.
        title: default ``"<sample_id> (<technology>, n units)"``.
        colorbar: add a colour bar for numeric ``color``.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from hexpress.pl.maps import add_scale_bar, draw_units

    if sample.image is None:
        raise UnitsError(f"Sample {sample.sample_id} has no image to draw units on.")
    img, scale = sample.image.thumbnail(max_side)
    h, w = img.shape[:2]
    if ax is None:
        _, ax = plt.subplots(figsize=(8 * w / max(h, w) + 1, 8 * h / max(h, w)))
    ax.imshow(img, extent=(0, w / scale, h / scale, 0))
    values, label = _values(sample, color)
    numeric = values is not None and np.issubdtype(np.asarray(values).dtype, np.number)
    colors = None
    if values is not None and not numeric:
        cats = {c: k for k, c in enumerate(dict.fromkeys(map(str, values)))}
        colors = plt.get_cmap("tab20")(np.array([cats[str(v)] for v in values]) % 20)
    mappable = draw_units(
        ax,
        sample.adata,
        np.asarray(values, dtype=float) if numeric else None,
        mpp=sample.image.mpp,
        cmap=cmap,
        norm=Normalize(*np.nanpercentile(values, [0, 100])) if numeric else None,
        colors=colors,
        alpha=alpha,
        edgecolor=edgecolor,
        linewidth=linewidth,
    )
    if numeric and colorbar and mappable is not None:
        ax.figure.colorbar(mappable, ax=ax, fraction=0.04, label=label)
    ax.set_xlim(0, w / scale)
    ax.set_ylim(h / scale, 0)
    ax.set_axis_off()
    add_scale_bar(ax, sample.image.mpp)
    ax.set_title(
        title
        if title is not None
        else f"{sample.sample_id} ({sample.technology}, {sample.adata.n_obs} units)"
    )
    return ax
