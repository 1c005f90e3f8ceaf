from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from eval_helpers import make_section

from hexpress.errors import ConfigError, DataMismatchError
from hexpress.eval.genesets import (
    evaluate_gene_sets,
    heg_genes,
    load_gene_sets,
    training_gene_sets,
)
from hexpress.eval.metrics import count_column, section_metrics, summarize_pcc

DATA = Path(__file__).parent / "data"


def test_load_gmt_and_plain_list():
    sets = load_gene_sets([DATA / "example.gmt", DATA / "tumour_tiny.txt"])
    assert sets == {
        "IMMUNE_TINY": ["G0", "G1", "G2", "NOT_MEASURED"],
        "STROMA_TINY": ["G5", "G6"],
        "tumour_tiny": ["G3", "G4"],
    }
    with pytest.raises(ConfigError, match="defined twice"):
        load_gene_sets([DATA / "example.gmt", DATA / "example.gmt"])


def test_heg_is_top_mean_with_name_ties():
    genes = ["b", "a", "c", "d"]
    assert heg_genes([1.0, 1.0, 3.0, np.nan], genes, 3) == ["c", "a", "b"]
    with pytest.raises(DataMismatchError):
        heg_genes([1.0], genes, 1)


def test_training_gene_sets_use_training_data_only():
    train, _ = make_section(0)
    test, _ = make_section(5)
    # G0 by far the most expressed on the test section: only sets made with it see that
    X = test.X.toarray()
    X[:, 0] = 1e5
    test.X = sp.csr_matrix(X)
    sets = training_gene_sets([train], n_heg=3, n_hvg=2)
    assert "G0" not in sets["HEG-3"]
    assert training_gene_sets([train, test], n_heg=1, n_hvg=0)["HEG-1"] == ["G0"]
    X = train.X.toarray()
    frac = X / X.sum(1, keepdims=True)
    ref = list(np.asarray(train.var_names)[np.argsort(-frac.mean(0), kind="stable")[:3]])
    assert sets["HEG-3"] == ref
    assert len(sets["HVG-2"]) == 2
    only = training_gene_sets([train], genes=["G1", "G2"], n_heg=1, n_hvg=0)
    assert list(only) == ["HEG-1"] and only["HEG-1"][0] in {"G1", "G2"}


def test_evaluate_gene_sets_matches_summaries(rng):
    genes = [f"G{i}" for i in range(8)]
    t = rng.normal(size=(30, 8))
    p = t + rng.normal(size=(30, 8))
    t[:, 1] = 0.0  # undefined in IMMUNE_TINY
    m = section_metrics(t, p, genes)
    sets = load_gene_sets([DATA / "example.gmt"])
    sets["nothing"] = ["X1"]
    table = evaluate_gene_sets(m, sets)
    assert list(table["gene_set"]) == ["all", "IMMUNE_TINY", "STROMA_TINY", "nothing"]
    row = table.set_index("gene_set").loc["IMMUNE_TINY"]
    ref = summarize_pcc(m.pcc[[0, 1, 2]])
    assert row["n_in_set"] == 4 and row["n_evaluated"] == 3 and row["n_undefined"] == 1
    assert row["PCC@M"] == pytest.approx(ref["PCC@M"])
    assert row[count_column()] == ref[count_column()]
    assert np.isnan(table.set_index("gene_set").loc["nothing", "PCC@M"])
    series = evaluate_gene_sets(pd.Series(m.pcc, index=genes), sets, include_all=False)
    assert list(series["gene_set"]) == ["IMMUNE_TINY", "STROMA_TINY", "nothing"]
