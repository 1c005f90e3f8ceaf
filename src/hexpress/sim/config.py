"""Every parameter of the synthetic tissue simulator, in one validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from hexpress.errors import ConfigError

__all__ = ["SimConfig", "DOMAINS", "CELL_TYPES", "GENE_KINDS"]

DOMAINS = ("glass", "stroma", "tumour", "immune", "fat", "vessel")
"""Tissue domains; ``glass`` is background without tissue. Index = value in the domain map."""

CELL_TYPES = (
    "tumour",
    "fibroblast",
    "lymphocyte",
    "macrophage",
    "plasma",
    "endothelial",
    "adipocyte",
)
"""Cell types. Index = value of ``cells["type_id"]``."""

GENE_KINDS = ("program", "gradient", "domain", "hidden_field", "housekeeping", "noise")
"""What drives each simulated gene (``gene_info["kind"]``):

* ``program``: high in one cell type (visible in morphology);
* ``gradient``: follows distance to the nearest vessel (partly visible: tissue context);
* ``domain``: follows the tissue domain the cell sits in, whatever its type;
* ``hidden_field``: follows a smooth random field unrelated to morphology (spatially coherent but
  not predictable from the image);
* ``housekeeping``: scales with cell size only;
* ``noise``: no structure at all beyond Gamma-Poisson noise.
"""

_DEFAULT_DOMAIN_FRACTIONS = {
    "tumour": 0.34,
    "stroma": 0.38,
    "immune": 0.1,
    "fat": 0.14,
    "vessel": 0.04,
}
_DEFAULT_DENSITY = {"tumour": 7500.0, "stroma": 1500.0, "immune": 13000.0, "vessel": 1500.0}
_DEFAULT_GENE_FRACTIONS = {
    "program": 0.40,
    "gradient": 0.10,
    "domain": 0.10,
    "hidden_field": 0.12,
    "housekeeping": 0.08,
    "noise": 0.20,
}


@dataclass
class SimConfig:
    """Parameters of one simulated slide. Defaults give a realistic breast-tumour-like section.

    Attributes:
        size_mm: slide size in mm, ``(width, height)`` or one value for a square.
        mpp: µm per pixel of the rendered image.
        seed: random seed; the same config and seed give identical outputs.
        n_genes: size of the gene panel.
        panel_seed: seed of the gene panel (what drives each gene, its effect sizes and its
            baseline share of the library). Slides with the same ``panel_seed`` and ``n_genes``
            measure the same genes, like sections of one assay, so a model trained on one slide
            applies to another; ``seed`` changes the tissue, cells and counts.
        tissue_fraction: fraction of the slide covered by tissue (the rest is glass).
        domain_fractions: share of the tissue area of each domain (``stroma``, ``tumour``,
            ``immune``, ``fat``, ``vessel``); normalised to sum to 1.
        domain_scale_um: correlation length of the random fields that shape the domains.
        cell_density_per_mm2: nuclei per mm² in each domain (fat holds adipocytes, whose number
            follows ``adipocyte_diameter_um``).
        adipocyte_diameter_um: mean diameter of fat cells.
        gene_fractions: share of the panel of each gene kind (see :data:`GENE_KINDS`).
        mean_counts_per_cell: mean transcripts per cell of average size.
        dispersion: Gamma-Poisson overdispersion ``phi`` (variance = mu + phi * mu²).
        program_log_fold: mean natural-log fold change of a program gene in its cell type.
        vessel_decay_um: length scale of the distance-to-vessel gradient genes.
        hidden_field_scale_um: correlation length of the morphology-free field.
        stain_variation: size of the per-slide random change of the stain vectors and amounts.
        blur_um: Gaussian blur sigma of the optics, in µm.
        noise_std: per-pixel camera noise, in 8-bit intensity units.
        xenium_pixel_size_um: Xenium morphology pixel size (the alignment matrix maps H&E pixels
            to pixels of this size).
    """

    size_mm: float | tuple[float, float] = 1.0
    mpp: float = 0.5
    seed: int = 0
    n_genes: int = 300
    panel_seed: int = 0
    tissue_fraction: float = 0.85
    domain_fractions: dict[str, float] = field(
        default_factory=lambda: dict(_DEFAULT_DOMAIN_FRACTIONS)
    )
    domain_scale_um: float = 450.0
    cell_density_per_mm2: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_DENSITY))
    adipocyte_diameter_um: float = 70.0
    gene_fractions: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_GENE_FRACTIONS))
    mean_counts_per_cell: float = 150.0
    dispersion: float = 0.25
    program_log_fold: float = 3.0
    vessel_decay_um: float = 120.0
    hidden_field_scale_um: float = 500.0
    stain_variation: float = 0.08
    blur_um: float = 0.35
    noise_std: float = 3.0
    xenium_pixel_size_um: float = 0.2125

    def __post_init__(self):
        size = self.size_mm
        if isinstance(size, (int, float)):
            size = (float(size), float(size))
        try:
            size = tuple(float(s) for s in size)
        except TypeError as e:
            raise ConfigError(f"size_mm must be a number or (width, height), got {size!r}.") from e
        if len(size) != 2 or not all(math.isfinite(s) and 0.05 <= s <= 30 for s in size):
            raise ConfigError(
                f"size_mm must be one or two sizes between 0.05 and 30 mm, got {self.size_mm!r}."
            )
        self.size_mm = size
        _positive(self, "mpp", hi=10.0)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.panel_seed, int) or self.panel_seed < 0:
            raise ConfigError(
                f"panel_seed must be a non-negative integer, got {self.panel_seed!r}."
            )
        if not isinstance(self.n_genes, int) or not 12 <= self.n_genes <= 20000:
            raise ConfigError(f"n_genes must be an integer in [12, 20000], got {self.n_genes!r}.")
        if not 0.05 <= self.tissue_fraction <= 1.0:
            raise ConfigError(f"tissue_fraction must be in [0.05, 1], got {self.tissue_fraction}.")
        self.domain_fractions = _fractions(
            self.domain_fractions, [d for d in DOMAINS if d != "glass"], "domain_fractions"
        )
        self.gene_fractions = _fractions(self.gene_fractions, list(GENE_KINDS), "gene_fractions")
        dens = dict(_DEFAULT_DENSITY)
        unknown = set(self.cell_density_per_mm2) - set(dens)
        if unknown:
            raise ConfigError(
                f"cell_density_per_mm2 has unknown domain(s) {sorted(unknown)}; valid: "
                f"{sorted(dens)} (fat follows adipocyte_diameter_um)."
            )
        dens.update({k: float(v) for k, v in self.cell_density_per_mm2.items()})
        if any(not math.isfinite(v) or v < 0 or v > 40000 for v in dens.values()):
            raise ConfigError(f"cell densities must be in [0, 40000] per mm², got {dens}.")
        self.cell_density_per_mm2 = dens
        for name in (
            "domain_scale_um",
            "adipocyte_diameter_um",
            "mean_counts_per_cell",
            "dispersion",
            "program_log_fold",
            "vessel_decay_um",
            "hidden_field_scale_um",
            "xenium_pixel_size_um",
        ):
            _positive(self, name)
        for name in ("stain_variation", "blur_um", "noise_std"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {v!r}.")
        if self.mean_counts_per_cell > 5000:
            raise ConfigError(
                f"mean_counts_per_cell={self.mean_counts_per_cell} is unrealistically large "
                "(and slow); use at most 5000."
            )

    @property
    def size_um(self) -> tuple[float, float]:
        """``(width, height)`` of the slide in µm."""
        return self.size_mm[0] * 1000.0, self.size_mm[1] * 1000.0

    @property
    def shape_px(self) -> tuple[int, int]:
        """``(height, width)`` of the image in pixels."""
        w, h = self.size_um
        return max(1, round(h / self.mpp)), max(1, round(w / self.mpp))

    def to_dict(self) -> dict:
        """Plain-JSON form (written next to every simulated slide)."""
        d = asdict(self)
        d["size_mm"] = list(self.size_mm)
        return d


def _positive(cfg: SimConfig, name: str, hi: float = math.inf) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= hi:
        raise ConfigError(f"{name} must be a positive number (at most {hi:g}), got {v!r}.")


def _fractions(given: dict, keys: list[str], what: str) -> dict[str, float]:
    unknown = set(given) - set(keys)
    if unknown:
        raise ConfigError(f"{what} has unknown key(s) {sorted(unknown)}; valid: {keys}.")
    vals = {k: float(given.get(k, 0.0)) for k in keys}
    if any(not math.isfinite(v) or v < 0 for v in vals.values()) or sum(vals.values()) <= 0:
        raise ConfigError(f"{what} must be non-negative with a positive sum, got {given}.")
    total = sum(vals.values())
    return {k: v / total for k, v in vals.items()}
