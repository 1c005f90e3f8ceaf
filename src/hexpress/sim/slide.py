"""``simulate(config) -> SimulatedSlide``: one synthetic H&E slide with single-cell truth."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hexpress.io.image import ArrayImage
from hexpress.sim.cells import make_cells
from hexpress.sim.config import SimConfig
from hexpress.sim.expression import cell_means, make_gene_panel, place_transcripts, sample_counts
from hexpress.sim.render import render_he
from hexpress.sim.tissue import Tissue, make_tissue

__all__ = ["SimulatedSlide", "simulate"]

log = logging.getLogger(__name__)


@dataclass
class SimulatedSlide:
    """A simulated slide and its truth. Positions in level-0 pixels are µm / ``mpp``.

    Attributes:
        config: the parameters it was made with.
        image: ``(H, W, 3)`` uint8 RGB at ``mpp`` µm per pixel.
        mpp: µm per pixel of ``image``.
        cells: one row per cell: ``cell_id``, ``x_px``, ``y_px`` (footprint centre, level-0 px),
            ``x_um``, ``y_um``, ``type`` / ``type_id`` (:data:`~hexpress.sim.CELL_TYPES`),
            ``domain`` / ``domain_id`` (:data:`~hexpress.sim.DOMAINS`), nucleus centre
            ``nucleus_x_um``/``nucleus_y_um``, semi-axes ``nucleus_a_um``/``nucleus_b_um``,
            footprint semi-axes ``cell_a_um``/``cell_b_um``, ``angle`` (rad, shared by nucleus and
            footprint), ``nucleus_area_um2``, ``cell_area_um2``, ``dist_vessel_um``,
            ``hidden_field``, ``darkness``, ``n_transcripts``.
        gene_info: one row per gene (index = name): ``kind``, ``cell_type``, ``secondary_type``,
            ``domain``, ``effect``, ``weight``.
        cell_counts: ``(n_cells, n_genes)`` int32 CSR counts (Gamma-Poisson).
        transcripts: one row per count: ``x_px``, ``y_px``, ``x_um``, ``y_um`` (float64),
            ``gene`` (column index), ``cell`` (row index into ``cells``), ``in_nucleus``; ordered
            by cell, then gene. Every transcript lies strictly inside its cell's footprint.
        tissue: the domain layout (:class:`~hexpress.sim.tissue.Tissue`).
        stain: the slide's stain vectors.
        timings: seconds spent in each step.
    """

    config: SimConfig
    image: np.ndarray
    mpp: float
    cells: pd.DataFrame
    gene_info: pd.DataFrame
    cell_counts: sp.csr_matrix
    transcripts: pd.DataFrame
    tissue: Tissue
    stain: dict
    timings: dict = field(default_factory=dict)

    @property
    def genes(self) -> list[str]:
        return list(self.gene_info.index)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def slide_image(self) -> ArrayImage:
        """The image as a :class:`~hexpress.io.image.SlideImage` (in memory)."""
        return ArrayImage(self.image, self.mpp)

    def tissue_mask_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Whether points (µm) lie on tissue (not glass)."""
        return self.tissue.sample(self.tissue.domain, x_um, y_um) != 0

    def __repr__(self) -> str:
        return (
            f"SimulatedSlide({self.width} x {self.height} px at {self.mpp:g} µm/px, "
            f"{len(self.cells)} cells, {len(self.gene_info)} genes, "
            f"{len(self.transcripts)} transcripts, seed={self.config.seed})"
        )


def simulate(config: SimConfig | None = None) -> SimulatedSlide:
    """Simulate one slide: layout, cells, expression, transcripts, then the H&E image.

    Deterministic: the same ``config`` (seed included) gives identical arrays.

    Args:
        config: parameters; default :class:`SimConfig()` (1 mm x 1 mm at 0.5 µm/px).
    """
    config = SimConfig() if config is None else config
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    rngs = [np.random.default_rng(s) for s in seeds]
    timings = {}
    t0 = time.perf_counter()
    tissue = make_tissue(config, rngs[0])
    timings["layout_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cells = make_cells(tissue, config, rngs[1])
    timings["cells_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the panel is the assay's, not the slide's: the same for every slide of one panel_seed
    genes = make_gene_panel(config, np.random.default_rng(config.panel_seed))
    mu = cell_means(cells, genes, config, rngs[2])
    counts = sample_counts(mu, config.dispersion, rngs[2])
    del mu
    tx = place_transcripts(cells, counts, rngs[2])
    mpp = config.mpp
    transcripts = pd.DataFrame(
        {
            "x_px": tx["x_um"] / mpp,
            "y_px": tx["y_um"] / mpp,
            "x_um": tx["x_um"],
            "y_um": tx["y_um"],
            "gene": tx["gene"],
            "cell": tx["cell"],
            "in_nucleus": tx["in_nucleus"],
        }
    )
    cells.insert(1, "x_px", cells["x_um"] / mpp)
    cells.insert(2, "y_px", cells["y_um"] / mpp)
    cells["n_transcripts"] = np.asarray(counts.sum(1)).ravel().astype(np.int64)
    timings["expression_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image, stain = render_he(tissue, cells, config, rngs[3])
    timings["render_s"] = time.perf_counter() - t0
    slide = SimulatedSlide(
        config=config,
        image=image,
        mpp=mpp,
        cells=cells,
        gene_info=genes,
        cell_counts=counts,
        transcripts=transcripts,
        tissue=tissue,
        stain=stain,
        timings=timings,
    )
    log.info("simulated %r in %.1f s", slide, sum(timings.values()))
    return slide
