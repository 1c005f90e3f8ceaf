import logging
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from hexpress.errors import ConfigError, DataMismatchError, FormatError
from hexpress.eval.metrics import (
    SUMMARY_COLUMNS,
    aggregate,
    count_column,
    pearson_per_gene,
    section_metrics,
    spearman_per_gene,
    summarize_pcc,
)


def _pair(rng, n=40, g=12, noise=1.0):
    t = rng.normal(size=(n, g))
    p = t * rng.uniform(-1, 2, size=g) + rng.normal(scale=noise, size=(n, g))
    return t, p


def _scipy_pcc(t, p):
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN
        for j in range(t.shape[1]):
            out.append(stats.pearsonr(t[:, j], p[:, j]).statistic)
    return np.asarray(out, dtype=float)


def test_pearson_matches_scipy_per_gene(rng):
    t, p = _pair(rng)
    np.testing.assert_allclose(pearson_per_gene(t, p), _scipy_pcc(t, p), atol=1e-12)


def test_spearman_matches_scipy_with_ties(rng):
    t, p = _pair(rng)
    t = np.round(t)  # ties: average ranks, as scipy
    ref = [stats.spearmanr(t[:, j], p[:, j]).statistic for j in range(t.shape[1])]
    np.testing.assert_allclose(spearman_per_gene(t, p), ref, atol=1e-12)


def test_constant_genes_are_undefined_like_scipy_and_counted(rng, caplog):
    t, p = _pair(rng, g=10)
    t[:, 2] = 0.1  # constant in the truth (a float whose mean is not exactly itself)
    p[:, 5] = 3.0  # constant in the prediction
    t[:, 7] = 0.0
    p[:, 7] = 0.0  # both
    pcc = pearson_per_gene(t, p)
    ref = _scipy_pcc(t, p)
    assert np.array_equal(np.isnan(pcc), np.isnan(ref))
    assert np.isnan(pcc[[2, 5, 7]]).all()
    genes = [f"g{j}" for j in range(10)]
    with caplog.at_level(logging.WARNING, logger="hexpress.eval.metrics"):
        m = section_metrics(t, p, genes, section="A1")
    assert "3 of 10 gene(s)" in caplog.text and "g2" in caplog.text and "A1" in caplog.text
    s = m.summary()
    assert s["n_undefined"] == 3
    assert m.undefined_genes == ["g2", "g5", "g7"]
    ok = ref[np.isfinite(ref)]
    # excluded, not zero: the summaries are those of the 7 defined genes only
    assert s["PCC@M"] == pytest.approx(ok.mean(), abs=1e-12)
    assert s["PCC@F"] == pytest.approx(np.quantile(ok, 0.25), abs=1e-12)
    assert s["PCC@S"] == pytest.approx(np.median(ok), abs=1e-12)
    assert s[count_column()] == int((ok >= 0.30).sum())
    assert all(np.isfinite(v) for k, v in s.items() if k.startswith("PCC"))


def test_section_metrics_against_numpy(rng):
    t, p = _pair(rng, n=30, g=7)
    m = section_metrics(sp.csr_matrix(t), p, list("abcdefg"), spearman=True)
    s = m.summary()
    assert s["MSE"] == pytest.approx(np.mean((t - p) ** 2))
    assert s["MAE"] == pytest.approx(np.mean(np.abs(t - p)))
    np.testing.assert_allclose(m.mse_gene, ((t - p) ** 2).mean(0))
    np.testing.assert_allclose(m.mean_truth, t.mean(0))
    assert s["n_units"] == 30 and s["n_genes"] == 7
    assert s["SCC@M"] == pytest.approx(np.mean(spearman_per_gene(t, p)))
    assert list(SUMMARY_COLUMNS) == [c for c in s if c in SUMMARY_COLUMNS]


def test_threshold_is_inclusive():
    s = summarize_pcc(np.array([0.30, 0.2999, 0.5, np.nan]))
    assert s[count_column(0.30)] == 2
    assert s["n_undefined"] == 1 and s["n_defined"] == 3
    assert count_column(0.5) == "n_genes_PCC>=0.50"


def test_all_undefined_gives_nan_summaries_not_zero():
    s = summarize_pcc(np.array([np.nan, np.nan]))
    assert np.isnan(s["PCC@M"]) and s["n_undefined"] == 2 and s[count_column()] == 0


def test_pooled_equals_concatenation_and_means(rng):
    genes = [f"g{j}" for j in range(6)]
    parts = [_pair(rng, n=n, g=6) for n in (25, 40, 13)]
    parts[1][0][:, 3] = 2.0  # constant in one section only: defined when pooled
    ms = [section_metrics(t, p, genes, section=f"s{i}") for i, (t, p) in enumerate(parts)]
    pooled = aggregate(ms, "pooled")
    T = np.vstack([t for t, _ in parts])
    P = np.vstack([p for _, p in parts])
    ref = section_metrics(T, P, genes).summary()
    for key in ("MSE", "MAE", "PCC@F", "PCC@S", "PCC@M", count_column(), "n_undefined"):
        assert pooled[key] == pytest.approx(ref[key], abs=1e-10), key
    assert pooled["n_units"] == 78 and pooled["n_sections"] == 3

    mean = aggregate(ms, "mean")
    rows = [m.summary() for m in ms]
    assert mean["PCC@M"] == pytest.approx(np.mean([r["PCC@M"] for r in rows]))
    assert mean["n_undefined"] == pytest.approx(1 / 3)
    assert mean["MSE"] == pytest.approx(np.mean([r["MSE"] for r in rows]))

    gm = aggregate(ms, "gene_mean")
    stack = np.vstack([m.pcc for m in ms])
    gene_mean = np.nanmean(stack, axis=0)  # gene 3 averaged over the 2 sections it is defined in
    assert gm["PCC@M"] == pytest.approx(gene_mean.mean())
    assert gm["n_undefined"] == 0


def test_mean_aggregation_skips_sections_without_defined_genes(rng, caplog):
    genes = ["a", "b"]
    t, p = _pair(rng, g=2)
    good = section_metrics(t, p, genes, section="good")
    bad = section_metrics(np.ones((5, 2)), np.ones((5, 2)), genes, section="flat")
    with caplog.at_level(logging.WARNING):
        out = aggregate([good, bad])
    assert out["PCC@M"] == pytest.approx(good.summary()["PCC@M"])
    assert "flat" in caplog.text


def test_errors():
    with pytest.raises(DataMismatchError, match="same shape|one shape"):
        section_metrics(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(DataMismatchError, match="2 gene names for 3"):
        section_metrics(np.zeros((3, 3)), np.zeros((3, 3)), ["a", "b"])
    bad = np.zeros((3, 2))
    bad[1, 1] = np.nan
    with pytest.raises(FormatError, match="prediction holds 1 non-finite"):
        section_metrics(np.zeros((3, 2)), bad, ["a", "b"])
    m1 = section_metrics(np.eye(3), np.eye(3), ["a", "b", "c"])
    m2 = section_metrics(np.eye(3), np.eye(3), ["a", "b", "x"])
    with pytest.raises(DataMismatchError, match="different genes"):
        aggregate([m1, m2])
    with pytest.raises(ConfigError, match="unknown aggregation"):
        aggregate([m1], "median")


def test_per_gene_json_has_null_for_undefined():
    m = section_metrics(
        np.array([[1.0, 0], [2, 0], [3, 0]]), np.array([[1.0, 1], [3, 2], [2, 3]]), ["a", "b"]
    )
    d = m.per_gene()
    assert d["pcc"][1] is None and d["pcc"][0] == pytest.approx(0.5)
