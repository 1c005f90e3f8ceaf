import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from hexpress.data import (
    Split,
    normalize,
    normalize_counts,
    patient_splits,
    read_gene_list,
    read_gmt,
    read_split_file,
    select_genes,
)
from hexpress.errors import ConfigError, FormatError


def _adata(counts, genes, sid="s", pid="p"):
    a = ad.AnnData(X=sp.csr_matrix(np.asarray(counts, dtype=np.float32)))
    a.var_names = genes
    a.obs_names = [f"{sid}_{i}" for i in range(a.n_obs)]
    a.uns["hexpress"] = {"sample_id": sid, "patient_id": pid}
    return a


def test_normalize_uses_totals_over_all_genes():
    a = _adata([[1, 3, 6], [0, 0, 0], [5, 5, 0]], ["A", "B", "C"])
    n = normalize(a, ["C", "A"], scale=10)
    np.testing.assert_allclose(n.obs["total_counts"], [10, 0, 10])
    np.testing.assert_allclose(n.X, np.log1p([[6, 1], [0, 0], [0, 5]]), rtol=1e-6)
    np.testing.assert_array_equal(n.layers["counts"].toarray(), [[6, 1], [0, 0], [0, 5]])
    assert n.uns["hexpress"]["normalization"] == {
        "method": "log1p_total",
        "scale": 10.0,
        "total": "all genes",
        "genes": 2,
    }
    # normalising the result again starts from the kept raw counts and totals
    again = normalize(n, scale=10)
    np.testing.assert_allclose(again.X, n.X)
    with pytest.raises(ConfigError, match="not in the data: Z"):
        normalize(a, ["Z"])


def test_normalize_counts_array_sparse_torch_agree():
    import torch

    c = np.array([[1.0, 3.0], [0.0, 0.0]])
    tot = np.array([8.0, 0.0])
    dense = normalize_counts(c, tot, 1e4)
    np.testing.assert_allclose(dense, [[np.log1p(1250), np.log1p(3750)], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalize_counts(sp.csr_matrix(c), tot).toarray(), dense)
    t = normalize_counts(torch.tensor(c, dtype=torch.float32), tot)
    np.testing.assert_allclose(t.numpy(), dense, rtol=1e-5)
    into = torch.full((2, 2), -1.0)  # in place, into a tensor given
    assert normalize_counts(torch.tensor(c, dtype=torch.float32), tot, out=into) is into
    torch.testing.assert_close(into, t, rtol=0, atol=0)
    with pytest.raises(TypeError, match="torch tensors only"):
        normalize_counts(c, tot, out=np.empty((2, 2)))


def test_heg_and_hvg_selection(rng):
    n, g = 300, 200
    means = np.linspace(2, 60, g)
    X = rng.poisson(means, size=(n, g)).astype(float)
    bursty = [
        120,
        160,
        190,
    ]  # where bins hold many genes  # same mean as their neighbours, far larger variance
    for j in bursty:
        X[:, j] = rng.binomial(1, 0.1, size=n) * means[j] * 10
    genes = [f"G{j:03d}" for j in range(g)]
    a, b = _adata(X[:150], genes, "s1"), _adata(X[150:], genes, "s2")
    heg = select_genes([a, b], n=3, method="heg")
    assert set(heg) <= set(genes[-5:])  # normalised means follow the Poisson means
    hvg = select_genes([a, b], n=3, method="hvg")
    assert sorted(hvg) == [genes[j] for j in bursty]
    # only genes measured in all samples are eligible
    c = _adata(X[:10, :5], genes[:5], "s3")
    assert sorted(select_genes([a, c], n=10)) == genes[:5]


def test_gene_lists(tmp_path):
    a = _adata([[1, 2, 3]], ["A", "B", "C"])
    (tmp_path / "g.txt").write_text("# my genes\nC\nA  # comment\n\nC\n")
    assert read_gene_list(tmp_path / "g.txt") == ["C", "A"]
    (tmp_path / "s.gmt").write_text("IMMUNE\tdesc\tA\tB\nTUMOUR\turl\tC\tA\n")
    assert read_gmt(tmp_path / "s.gmt") == {"IMMUNE": ["A", "B"], "TUMOUR": ["C", "A"]}
    assert read_gene_list(tmp_path / "s.gmt") == ["A", "B", "C"]
    assert read_gene_list(tmp_path / "s.gmt", gene_set="TUMOUR") == ["C", "A"]
    assert select_genes(a, genes=["C", "A"]) == ["C", "A"]
    with pytest.raises(ConfigError, match="not measured in every sample: X"):
        select_genes(a, genes=["A", "X"])
    assert select_genes(a, genes=["A", "X"], strict=False) == ["A"]
    (tmp_path / "bad.gmt").write_text("ONLYNAME\n")
    with pytest.raises(FormatError, match="line 1"):
        read_gmt(tmp_path / "bad.gmt")
    with pytest.raises(ConfigError, match="Unknown gene selection method"):
        select_genes(a, method="top")


def test_leave_one_patient_out():
    samples = {"C3": "C", "A1": "A", "C2": "C", "B1": "B"}
    splits = patient_splits(samples)
    assert [s.name for s in splits] == ["patient_A", "patient_B", "patient_C"]
    assert splits[2] == Split("patient_C", train=["A1", "B1"], test=["C2", "C3"])
    assert patient_splits(list(samples.items())) == splits  # pairs work too
    with pytest.raises(ConfigError, match="at least 2 patients"):
        patient_splits({"C2": "C", "C3": "C"})


def test_split_files(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "splits:\n  - name: f0\n    train: [C2, C3]\n    test: [A1]\n    val: [C4]\n"
    )
    (s,) = read_split_file(tmp_path / "s.yaml", sample_ids=["A1", "C2", "C3", "C4"])
    assert (s.name, s.train, s.test, s.val) == ("f0", ["C2", "C3"], ["A1"], ["C4"])
    (tmp_path / "s.tsv").write_text("split\tsample\trole\nf0\tC2\ttrain\nf0\tA1\ttest\n")
    assert read_split_file(tmp_path / "s.tsv") == [Split("f0", ["C2"], ["A1"])]
    with pytest.raises(ConfigError, match="unknown sample"):
        read_split_file(tmp_path / "s.tsv", sample_ids=["C2"])
    (tmp_path / "leak.yaml").write_text("splits:\n  - {name: x, train: [A1], test: [A1]}\n")
    with pytest.raises(ConfigError, match="both trained and tested"):
        read_split_file(tmp_path / "leak.yaml")


def test_normalize_counts_clamps_zero_and_tiny_totals_and_keeps_leading_shape():
    import torch

    counts = np.array([[[2.0, 0.0], [1e-20, 0.0]], [[0.0, 0.0], [3.0, 1.0]]])  # (2, 2, g=2)
    totals = np.array([[4.0, 0.0], [1e-30, np.nan]])
    out = normalize_counts(counts, totals, 10.0)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], np.log1p([5.0, 0.0]), rtol=1e-6)
    assert (out[0, 1] == 0).all()  # a zero total gives 0, not inf or NaN
    assert np.isfinite(out[1, 0]).all()  # a tiny total is floored, not divided by
    assert np.isnan(out[1, 1]).all()  # an unknown total stays unknown
    t = normalize_counts(torch.tensor(counts, requires_grad=True), torch.tensor(totals), 10.0)
    np.testing.assert_allclose(t.detach().numpy(), out, rtol=1e-5)
    t[0].sum().backward()  # differentiable where defined


def test_every_density_prediction_path_uses_the_shared_normalisation():
    """Training (torch), whole-slide aggregation and previews give the same numbers, and a unit
    whose predicted total is 0 predicts 0 everywhere (no inf / NaN)."""
    import torch

    from hexpress.infer.aggregate_disk import finish_units
    from hexpress.infer.preview import _gene_values
    from hexpress.models.aggregate import predict_units

    sums = np.array([[2.0, 1.0, 4.0], [0.5, 0.0, 0.0], [3.0, 3.0, 6.0]])  # genes..., total
    want = normalize_counts(sums[:, :2], sums[:, 2], 100.0)
    assert (want[1] == 0).all()
    # torch: a map whose per-unit sums are ``sums`` (one pixel per unit, identity weights)
    map_ = torch.tensor(sums.T.reshape(3, 1, 3), dtype=torch.float64)
    weights = sp.identity(3, format="csr")
    got = predict_units(map_, weights, "density", 100.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    disk = finish_units(np.concatenate([sums, np.ones((3, 1))], axis=1), "density", 2, scale=100.0)
    np.testing.assert_allclose(disk, want, rtol=1e-6)
    prev = _gene_values(sums.reshape(1, 3, 3), [0, 1], "density", 100.0)
    np.testing.assert_allclose(prev[0], want, rtol=1e-6)
