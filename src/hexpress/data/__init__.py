"""The sample data model and preprocessing (gene selection, normalisation, splits)."""

from hexpress.data.sample import Sample, make_units

__all__ = ["Sample", "make_units"]
