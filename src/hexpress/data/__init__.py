"""The sample data model, unit geometry and lattices, and preprocessing (gene selection,
normalisation, splits)."""

from hexpress.data.preprocess import (
    Split,
    normalize,
    normalize_counts,
    patient_splits,
    read_gene_list,
    read_gmt,
    read_split_file,
    select_genes,
    total_counts,
)
from hexpress.data.sample import Sample, make_units
from hexpress.data.units import Units, geometry_kind

__all__ = [
    "Sample",
    "Units",
    "geometry_kind",
    "make_units",
    "Split",
    "normalize",
    "normalize_counts",
    "patient_splits",
    "read_gene_list",
    "read_gmt",
    "read_split_file",
    "select_genes",
    "total_counts",
]
