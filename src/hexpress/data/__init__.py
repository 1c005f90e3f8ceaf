"""The sample data model and preprocessing (gene selection, normalisation, splits)."""

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

__all__ = [
    "Sample",
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
