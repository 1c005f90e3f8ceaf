"""hexpress.data.units: one Units type, one geometry check, one level-0 px -> model px conversion."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from hexpress import _keys as K
from hexpress.data.units import Units, geometry_kind
from hexpress.errors import DataMismatchError, FormatError, GeometryError, UnitsError


def _adata(kinds, size_um=(55.0, 55.0), polygons=None):
    a = ad.AnnData(np.ones((len(kinds), 1), dtype=np.float32))
    a.obs_names = [f"u{i}" for i in range(len(kinds))]
    a.obsm[K.SPATIAL] = np.array([[100.0, 200.0], [300.0, 50.0]])[: len(kinds)]
    a.obs[K.GEOMETRY] = pd.Categorical(kinds)
    if size_um is not None:
        a.obs[K.SIZE_UM] = np.asarray(size_um)[: len(kinds)]
    if polygons is not None:
        a.uns[K.UNS] = {"polygons": polygons}
    return a


def test_from_anndata_and_footprints_convert_level0_to_model_px():
    u = Units.from_anndata(_adata(["disc", "disc"]), name="spots")
    assert u.kind == "disc" and u.get_ids() == ["u0", "u1"] and len(u) == 2
    np.testing.assert_allclose(u.centers_level0_px, [[100, 200], [300, 50]])
    # slide 0.25 µm/px, model 0.5 µm/px: model px = level-0 px / 2, then minus the crop corner
    fp = u.footprints(0.25, 0.5, origin_px=(10.0, 5.0))
    np.testing.assert_allclose(fp.centers_model_px, [[40.0, 95.0], [140.0, 20.0]])
    np.testing.assert_allclose(fp.size_px, [110.0, 110.0])  # 55 µm at 0.5 µm/px
    one = u.footprints(0.25, 0.5, index=[1])
    np.testing.assert_allclose(one.centers_model_px, [[150.0, 25.0]])
    with pytest.raises(UnitsError, match="model_mpp"):
        u.footprints(0.25, 0.0)


def test_polygons_follow_the_same_conversion():
    square = np.array([[0.0, 0.0], [8.0, 0.0], [8.0, 8.0], [0.0, 8.0]])
    u = Units.from_anndata(_adata(["polygon"], size_um=None, polygons=[square + 100]))
    assert np.isnan(u.size_um).all()
    fp = u.footprints(0.5, 1.0)
    np.testing.assert_allclose(fp.polygons[0], (square + 100) / 2)
    with pytest.raises(GeometryError, match="vertices"):
        Units.from_anndata(_adata(["polygon"], size_um=None))


def test_geometry_kind_is_the_one_check_with_the_callers_error():
    mixed = _adata(["disc", "square"])
    with pytest.raises(GeometryError, match=r"found \['disc', 'square'\]"):
        geometry_kind(mixed)
    with pytest.raises(FormatError, match="do this"):
        geometry_kind(mixed, error=FormatError, hint="do this")
    with pytest.raises(GeometryError, match="one geometry of"):
        geometry_kind(_adata(["polygon"]), allowed=("disc", "square"))
    no_col = _adata(["disc"])
    del no_col.obs[K.GEOMETRY]
    assert geometry_kind(no_col, default="disc") == "disc"
    with pytest.raises(GeometryError, match="no obs"):
        geometry_kind(no_col)


def test_every_reader_of_unit_geometry_uses_the_one_check():
    """Training, prediction at given spots and Footprints.from_adata refuse a mixed set, each
    with its own boundary error, through geometry_kind."""
    from hexpress.infer.units import units_from_anndata
    from hexpress.models.aggregate import Footprints

    mixed = _adata(["disc", "square"])
    with pytest.raises(FormatError, match="--cells"):
        units_from_anndata(mixed, mpp=0.5)
    with pytest.raises(GeometryError, match="one geometry"):
        Footprints.from_adata(mixed, model_mpp=1.0, image_mpp=0.5)
    a = _adata(["disc", "disc"])
    got = Footprints.from_adata(a, model_mpp=1.0, image_mpp=0.5, origin_px=(3, 4))
    want = Units.from_anndata(a).footprints(0.5, 1.0, (3, 4))
    np.testing.assert_allclose(got.centers_model_px, want.centers_model_px)
    np.testing.assert_allclose(got.size_px, want.size_px)


def test_training_refuses_mixed_geometries_through_the_same_check():
    from hexpress.data.sample import Sample
    from hexpress.io.image import ArrayImage
    from hexpress.train.data import _unit_set

    mixed = _adata(["disc", "square"])
    sample = Sample(adata=mixed, image=ArrayImage(np.zeros((400, 400, 3), np.uint8), mpp=0.5),
                    sample_id="S1", patient_id="P1", technology="visium")  # fmt: skip
    with pytest.raises(DataMismatchError, match="data.geometries"):
        _unit_set(sample, ["g"], 1e4, "spots", 1.0)


def test_to_anndata_is_read_back_by_from_anndata():
    u = Units(
        name="bins_008um",
        kind="square",
        centers_level0_px=np.array([[10.0, 20.0], [30.5, 40.0], [7.0, 1.0]]),
        size_um=np.array([8.0, 8.0, 8.0]),
        obs={"array_row": np.array([0, 1, 2])},
        id_format="s_008um_{:05d}_{:05d}",
    )
    u.obs["array_col"] = np.array([4, 5, 6])
    X = np.arange(6, dtype=np.float64).reshape(3, 2)
    uns = {"mode": None, "image_size": (4, 5), "genes": ("A", "B"), "mpp": np.float32(0.5)}
    a = u.to_anndata(X, genes=["A", "B"], uns=uns, obs={"map_coverage": np.array([1, 0.5, 0])})
    assert list(a.obs_names) == [
        "s_008um_00000_00004",
        "s_008um_00001_00005",
        "s_008um_00002_00006",
    ]
    assert a.X.dtype == np.float32 and list(a.var_names) == ["A", "B"]
    np.testing.assert_array_equal(a.X, X.astype(np.float32))
    assert list(a.obs[K.GEOMETRY].cat.categories) == list(K.GEOMETRIES)
    assert list(a.obs.columns) == [K.GEOMETRY, K.SIZE_UM, "array_row", "array_col", "map_coverage"]
    np.testing.assert_allclose(a.obs["map_coverage"], [1, 0.5, 0])
    hx = a.uns[K.UNS]  # made storable: None -> "", tuples -> arrays, numpy scalars -> Python
    assert hx["mode"] == "" and list(hx["image_size"]) == [4, 5] and list(hx["genes"]) == ["A", "B"]
    assert type(hx["mpp"]) is float
    back = Units.from_anndata(a, name="bins_008um")
    assert back.kind == "square" and back.get_ids() == u.get_ids()
    np.testing.assert_allclose(back.centers_level0_px, u.centers_level0_px)
    np.testing.assert_allclose(back.size_um, u.size_um)


def test_to_anndata_survives_an_h5ad_round_trip(tmp_path):
    u = Units.from_anndata(_adata(["disc", "disc"]), name="spots")
    uns = {"model": {"name": "m", "kwargs": {"a": None, "b": [1, 2]}}, "predicted": True}
    u.to_anndata(np.ones((2, 1)), genes=["G"], uns=uns).write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert back.uns[K.UNS]["model"]["kwargs"]["a"] == ""
    again = Units.from_anndata(back, name="spots")
    assert again.kind == "disc" and again.get_ids() == ["u0", "u1"]
    np.testing.assert_allclose(again.footprints(0.5, 1.0).size_px, [55.0, 55.0])


def test_units_from_anndata_takes_the_size_from_obs_the_argument_or_scanpy():
    from hexpress.infer.units import units_from_anndata

    a = _adata(["disc", "disc"], size_um=None)
    del a.obs[K.GEOMETRY]  # discs when the geometry is not recorded
    with pytest.raises(UnitsError, match="--spot-diameter-um"):
        units_from_anndata(a, mpp=0.5)
    np.testing.assert_allclose(units_from_anndata(a, mpp=0.5, diameter_um=20).size_um, [20, 20])
    a.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": 110.0}}}
    u = units_from_anndata(a, mpp=0.5, name="visium")
    assert u.kind == "disc" and u.name == "visium" and u.get_ids() == ["u0", "u1"]
    np.testing.assert_allclose(u.size_um, [55.0, 55.0])  # 110 full-res px at 0.5 µm/px
    b = _adata(["square", "square"], size_um=(8.0, -1.0))
    with pytest.raises(UnitsError, match="positive"):
        units_from_anndata(b, mpp=0.5)
    with pytest.raises(FormatError, match="obsm"):
        units_from_anndata(ad.AnnData(np.ones((1, 1), np.float32)), mpp=0.5)
