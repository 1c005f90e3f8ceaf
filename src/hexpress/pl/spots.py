"""Units (spots, bins, cells) drawn at their true size over the H&E thumbnail."""

from __future__ import annotations

import logging

import numpy as np

from hexpress import _keys as K
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
    facecolor: str = "none",
    title: str | None = None,
    colorbar: bool = True,
):
    """Draw every unit over a thumbnail of the sample's image, at its true physical size.

    Discs get a diameter and squares a side of ``size_um / mpp`` level-0 pixels, scaled to the
    thumbnail; polygons without a size are drawn as points. Useful to check alignment by eye.

    Args:
        sample: a :class:`~hexpress.data.Sample` with an image.
        ax: matplotlib axes; default a new figure.
        color: ``None`` (outlines only), a gene name, an ``obs`` column, or ``(n_units,)`` values.
        max_side: longest side of the thumbnail in pixels.
        cmap, alpha, edgecolor, linewidth, facecolor: drawing style.
        title: default ``"<sample_id> (<technology>, n units)"``.
        colorbar: add a colour bar for numeric ``color``.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Rectangle

    if sample.image is None:
        raise UnitsError(f"Sample {sample.sample_id} has no image to draw units on.")
    img, scale = sample.image.thumbnail(max_side)
    if ax is None:
        h, w = img.shape[:2]
        _, ax = plt.subplots(figsize=(8 * w / max(h, w) + 1, 8 * h / max(h, w)))
    ax.imshow(img, extent=(0, img.shape[1], img.shape[0], 0))
    adata = sample.adata
    xy = np.asarray(adata.obsm[K.SPATIAL], dtype=float) * scale
    sizes_px = adata.obs[K.SIZE_UM].to_numpy(dtype=float) / sample.image.mpp * scale
    geometry = adata.obs[K.GEOMETRY].astype(str).to_numpy()
    patches, point_idx, patch_idx = [], [], []
    for i, ((x, y), s, g) in enumerate(zip(xy, sizes_px, geometry, strict=True)):
        if not np.isfinite(s):
            point_idx.append(i)
        elif g == K.SQUARE:
            patches.append(Rectangle((x - s / 2, y - s / 2), s, s))
            patch_idx.append(i)
        else:
            patches.append(Circle((x, y), s / 2))
            patch_idx.append(i)
    values, label = _values(sample, color)
    numeric = values is not None and np.issubdtype(np.asarray(values).dtype, np.number)
    coll = PatchCollection(
        patches,
        alpha=alpha,
        edgecolor=edgecolor,
        linewidth=linewidth,
        facecolor=facecolor if values is None else None,
        cmap=cmap if numeric else None,
    )
    if values is not None:
        if numeric:
            coll.set_array(np.asarray(values, dtype=float)[patch_idx])
        else:
            cats = {c: k for k, c in enumerate(dict.fromkeys(map(str, values)))}
            colors = plt.get_cmap("tab20")(np.array([cats[str(v)] for v in values]) % 20)
            coll.set_facecolor(colors[patch_idx])
    ax.add_collection(coll)
    if point_idx:
        ax.scatter(xy[point_idx, 0], xy[point_idx, 1], s=2, c="black")
    if numeric and colorbar:
        ax.figure.colorbar(coll, ax=ax, fraction=0.04, label=label)
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    ax.set_axis_off()
    ax.set_title(
        title
        if title is not None
        else f"{sample.sample_id} ({sample.technology}, {adata.n_obs} units)"
    )
    return ax
