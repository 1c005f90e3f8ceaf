import logging

import numpy as np
import pytest
from eval_helpers import make_section, noisy_prediction

from hexpress.data.preprocess import normalize
from hexpress.errors import DataMismatchError
from hexpress.eval.crossscale import cross_scale_metrics, cross_scale_table
from hexpress.eval.matching import align, evaluate_anndata, prepare_truth
from hexpress.eval.metrics import section_metrics


def test_raw_truth_is_normalised_like_the_prediction(caplog):
    truth, _ = make_section(0)
    norm = normalize(truth, scale=100.0)
    pred = noisy_prediction(norm, 0.0)
    with caplog.at_level(logging.INFO):
        prepared, note = prepare_truth(truth, pred, genes=["G3", "G1"])
    assert "raw counts normalised" in note and "100" in note
    np.testing.assert_allclose(prepared.X, norm[:, ["G3", "G1"]].X, rtol=1e-6)
    # a perfect prediction scores perfectly against the raw truth
    m = evaluate_anndata(truth, pred)
    assert m.summary()["PCC@F"] == pytest.approx(1.0) and m.summary()["MSE"] < 1e-10


def test_normalised_truth_with_other_scale_is_refused():
    truth, _ = make_section(0)
    pred = noisy_prediction(normalize(truth, scale=100.0), 0.1)
    with pytest.raises(DataMismatchError, match="scale 10000.0 but the prediction with scale 100"):
        prepare_truth(normalize(truth), pred)


def test_units_and_genes_matched_by_name_not_position():
    truth, _ = make_section(0)
    norm = normalize(truth)
    pred = noisy_prediction(norm, 0.2)
    shuffled = pred[np.random.default_rng(0).permutation(pred.n_obs)][:, ::-1].copy()
    a = evaluate_anndata(norm, pred).summary()
    b = evaluate_anndata(norm, shuffled).summary()
    for k in ("MSE", "PCC@M", "PCC@F"):
        assert a[k] == pytest.approx(b[k])


def test_mismatches_say_how_many():
    truth, _ = make_section(0)
    norm = normalize(truth)
    pred = noisy_prediction(norm, 0.2)
    part = pred[:50].copy()
    with pytest.raises(DataMismatchError, match="0 predicted unit.*14 truth unit.*50 match"):
        align(norm, part, strict=True, name="bin_8um")
    a = align(norm, part, strict=False)
    assert len(a.unit_ids) == 50 and "50 units matched" in a.describe()
    other = pred.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    with pytest.raises(DataMismatchError, match="no unit id"):
        align(norm, other, strict=False)
    renamed = pred.copy()
    renamed.var_names = [f"Z{i}" for i in range(renamed.n_vars)]
    with pytest.raises(DataMismatchError, match="no predicted gene"):
        align(norm, renamed, strict=False)


def test_cross_scale_table():
    preds, truths = {}, {}
    for label, size, geometry, noise in (
        ("spot_100um", 100.0, "disc", 0.05),
        ("spot_55um", 55.0, "disc", 0.2),
        ("bin_8um", 8.0, "square", 0.8),
    ):
        truth, _ = make_section(1, size_um=size, geometry=geometry, prefix=label)
        truths[label] = truth
        preds[label] = noisy_prediction(normalize(truth), noise)
    metrics = cross_scale_metrics(preds, truths)
    table = cross_scale_table(metrics, truths, method="dense")
    assert list(table["scale_um"]) == [100.0, 55.0, 8.0]
    assert list(table["geometry"]) == ["disc", "disc", "square"]
    assert (table["method"] == "dense").all()
    assert table["PCC@M"].is_monotonic_decreasing  # more noise at the finer scales here
    ref = section_metrics(
        normalize(truths["bin_8um"]).X, preds["bin_8um"].X, list(preds["bin_8um"].var_names)
    ).summary()
    assert table.iloc[2]["PCC@M"] == pytest.approx(ref["PCC@M"], abs=1e-6)
    with pytest.raises(DataMismatchError, match="no truth for scale"):
        cross_scale_metrics({"bin_2um": preds["bin_8um"]}, truths)
    bad = dict(preds)
    bad["spot_55um"] = preds["spot_55um"][:-3].copy()
    with pytest.raises(DataMismatchError, match="spot_55um: unit ids differ: 0 predicted.*3 truth"):
        cross_scale_metrics(bad, truths)
