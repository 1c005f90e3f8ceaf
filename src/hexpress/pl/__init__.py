"""Plots: units and dense maps over the H&E image (matplotlib; functions take ``ax=`` or
``fig=`` and return it)."""

from hexpress.pl.maps import (
    add_scale_bar,
    draw_units,
    normalization_label,
    plot_dense_map,
    plot_gene_map,
    plot_truth_vs_prediction,
)
from hexpress.pl.spots import plot_spots

__all__ = [
    "add_scale_bar",
    "draw_units",
    "normalization_label",
    "plot_dense_map",
    "plot_gene_map",
    "plot_spots",
    "plot_truth_vs_prediction",
]
