"""Units matched by position when a prediction and its truth name them differently."""

import anndata as ad
import numpy as np
import pytest

from hexpress.errors import DataMismatchError
from hexpress.eval.matching import match_by_position


def _units(xy_px, ids, mpp, size_um=55.0):
    a = ad.AnnData(X=np.ones((len(ids), 2), np.float32))
    a.obs_names = ids
    a.obsm["spatial"] = np.asarray(xy_px, float)
    a.obs["size_um"] = size_um
    a.uns["hexpress"] = {"mpp": mpp}
    return a


def test_within_half_a_unit_in_um_across_resolutions():
    truth = _units([[100, 100], [200, 100], [300, 100]], ["A", "B", "C"], mpp=1.0)
    # the prediction on a 2x finer image (0.5 µm/px), ids of its own, one unit far away
    pred = _units([[205, 198], [390, 200], [598, 202], [2000, 2000]], list("wxyz"), mpp=0.5)
    out = match_by_position(truth, pred)
    assert list(out.obs_names) == ["A", "B", "C", "z"]
    assert list(out.obs["matched_by"]) == ["position"] * 3 + ["none"]
    assert list(out.obs["pred_id"]) == list("wxyz")


def test_shared_ids_are_kept_and_no_match_is_an_error():
    truth = _units([[100, 100]], ["A"], mpp=1.0)
    same = _units([[900, 900]], ["A"], mpp=1.0)
    assert match_by_position(truth, same) is same
    far = _units([[130, 100]], ["q"], mpp=1.0)  # 30 µm > 27.5 µm
    with pytest.raises(DataMismatchError, match="within half"):
        match_by_position(truth, far)
    two = _units([[101, 100], [110, 100]], ["p", "q"], mpp=1.0)  # both near A: nearest wins
    assert list(match_by_position(truth, two).obs_names) == ["A", "q"]
