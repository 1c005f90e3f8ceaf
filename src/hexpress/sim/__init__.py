"""Synthetic H&E slides with single-cell ground truth, written in every real on-disk format.

``simulate(SimConfig(...))`` draws a tissue layout, cells, per-cell Gamma-Poisson expression
and transcripts placed inside each cell, and renders the H&E image; ``write_all(slide, out)``
bins the same transcripts into legacy ST spots, Visium spots, Visium HD bins and Xenium cells.
"""

from hexpress.sim.config import CELL_TYPES, DOMAINS, GENE_KINDS, SimConfig
from hexpress.sim.slide import SimulatedSlide, simulate
from hexpress.sim.writers import FORMATS, write_all

__all__ = [
    "SimConfig",
    "SimulatedSlide",
    "simulate",
    "write_all",
    "FORMATS",
    "CELL_TYPES",
    "DOMAINS",
    "GENE_KINDS",
]
