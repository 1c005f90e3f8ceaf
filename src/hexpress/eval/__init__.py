"""Evaluation: metrics, gene sets, Moran's I, cross-scale tables, figures and reports."""

from hexpress.eval.ceiling import ceiling_metrics, neighbour_predictions
from hexpress.eval.crossscale import cross_scale_metrics, cross_scale_table, unit_scale
from hexpress.eval.genesets import (
    evaluate_gene_sets,
    heg_genes,
    load_gene_sets,
    training_gene_sets,
)
from hexpress.eval.matching import Aligned, align, evaluate_anndata, prepare_truth
from hexpress.eval.metrics import (
    PCC_THRESHOLD,
    SectionMetrics,
    aggregate,
    count_column,
    pearson_per_gene,
    section_metrics,
    spearman_per_gene,
    summarize_pcc,
)
from hexpress.eval.report import MethodResult, results_table, write_report
from hexpress.eval.spatial import (
    morans_i,
    predictability,
    spatial_autocorrelation,
    spatial_weights,
)

__all__ = [
    "PCC_THRESHOLD",
    "Aligned",
    "MethodResult",
    "SectionMetrics",
    "aggregate",
    "align",
    "ceiling_metrics",
    "count_column",
    "cross_scale_metrics",
    "cross_scale_table",
    "evaluate_anndata",
    "evaluate_gene_sets",
    "heg_genes",
    "load_gene_sets",
    "morans_i",
    "neighbour_predictions",
    "pearson_per_gene",
    "predictability",
    "prepare_truth",
    "results_table",
    "section_metrics",
    "spatial_autocorrelation",
    "spatial_weights",
    "spearman_per_gene",
    "summarize_pcc",
    "training_gene_sets",
    "unit_scale",
    "write_report",
]
