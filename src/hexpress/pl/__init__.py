"""Plots: units over the H&E image (matplotlib; functions take ``ax=`` and return it)."""

from hexpress.pl.spots import plot_spots

__all__ = ["plot_spots"]
