import numpy as np
import pytest
import torch
from infer_helpers import brute_weights, write_map

from hexpress.infer import Units, aggregate_units, grid_bins, unit_sums

H, W, STRIDE, F_IN = 70, 90, 4, 0.5  # map cells, input px per cell, input px per level-0 px


def _map(rng, mode, n_genes=3):
    c = n_genes + (1 if mode == "density" else 0)
    lo = 0.1 if mode == "density" else -2.0
    return rng.uniform(lo, 3.0, (H, W, c)).astype(np.float16).astype(np.float32)


def _units(rng, kind, n=40):
    # level-0 px; the map spans W * STRIDE / F_IN = 720 x 560 level-0 px
    centers = np.stack([rng.uniform(5, 715, n), rng.uniform(5, 555, n)], 1)
    centers[:5] = np.round(centers[:5] / 8) * 8 + 4  # some aligned on map cells
    size_um = rng.uniform(1.0, 30.0, n)
    size_um[:5] = 2.0
    polys = None
    if kind == "polygon":
        polys = []
        for c in centers:
            k = rng.integers(3, 9)
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = rng.uniform(3, 25, k)
            polys.append(c + np.stack([np.cos(ang) * r, np.sin(ang) * r], 1))
        size_um = np.full(n, np.nan)
    return Units(name=kind, kind=kind, centers_level0_px=centers, size_um=size_um, polygons=polys)


def _reference(units, values, footprints=None):
    """In-memory weights on the whole map (the training path)."""
    centers_in = units.centers_level0_px * F_IN
    size_in = units.size_um / 0.5
    polys = None if units.polygons is None else [p * F_IN for p in units.polygons]
    if footprints is not None:
        fp = footprints.Footprints(
            centers_model_px=centers_in, kind=units.kind, size_px=size_in, polygons=polys
        )
        return footprints.footprint_weights(fp, (H, W), STRIDE)
    return brute_weights(centers_in, units.kind, size_in, polys, (H, W), STRIDE)


@pytest.mark.parametrize("mode", ["field", "density"])
@pytest.mark.parametrize("kind", ["square", "disc", "polygon"])
def test_from_disk_equals_in_memory(tmp_path, rng, footprints, kind, mode):
    values = _map(rng, mode)
    dm = write_map(tmp_path / "m.zarr", values, mode=mode)
    units = _units(rng, kind)
    Wt = _reference(units, values, footprints)
    # blocks of 32 cells: most footprints are read through a halo
    sums, full = unit_sums(dm, units, memory_mb=0.05, progress=False)
    np.testing.assert_allclose(full, np.asarray(Wt.sum(1)).ravel())
    np.testing.assert_allclose(sums[:, :-1], Wt @ values.reshape(-1, values.shape[2]), rtol=1e-6)
    a = aggregate_units(dm, units, memory_mb=0.05, progress=False)
    chw = torch.from_numpy(values.transpose(2, 0, 1).astype(np.float64))
    ref = footprints.predict_units(chw, Wt, mode, 10.0).numpy()
    ok = np.asarray(Wt.sum(1)).ravel() > 0
    np.testing.assert_allclose(a.X[ok], ref[ok], rtol=1e-3, atol=1e-3)
    assert a.obsm["spatial"].shape == (len(units), 2)
    assert set(a.obs["geometry"]) == {kind}
    assert a.uns["hexpress"]["mode"] == mode


def test_squares_on_many_sizes_brute_force(tmp_path, rng):
    values = _map(rng, "field", n_genes=2)
    dm = write_map(tmp_path / "m.zarr", values)
    units = _units(rng, "square", n=60)
    units.centers_level0_px[-5:] = [[0, 0], [719, 559], [2.3, 555.1], [700.7, 3.3], [360, 280]]
    units.size_um[-5:] = [40, 40, 17.3, 9.1, 500]  # partly off the map, and huge
    Wt = brute_weights(
        units.centers_level0_px * F_IN, "square", units.size_um / 0.5, None, (H, W), 4
    )
    sums, _ = unit_sums(dm, units, memory_mb=0.05, progress=False)
    np.testing.assert_allclose(sums[:, :2], Wt @ values.reshape(-1, 2), rtol=1e-6, atol=1e-4)


def test_uncovered_cells_do_not_count(tmp_path, rng):
    values = _map(rng, "field", n_genes=1)
    covered = np.ones((H, W), bool)
    covered[:, 45:] = False
    dm = write_map(tmp_path / "m.zarr", values, covered=covered)
    # a 16 µm bin centred on the coverage edge (x = 45 cells = 360 level-0 px)
    units = Units("b", "square", np.array([[360.0, 200.0], [600.0, 200.0]]), np.array([16, 16.0]))
    a = aggregate_units(dm, units, progress=False)
    left = values[21:29, 41:45, 0].mean()  # 16 µm = 32 input px = 8 x 8 cells, half covered
    np.testing.assert_allclose(a.X[0, 0], left, rtol=1e-5)
    np.testing.assert_allclose(a.obs["map_coverage"].to_numpy(), [0.5, 0.0])
    assert np.isnan(a.X[1, 0])
    dropped = aggregate_units(dm, units, progress=False, drop_uncovered=True)
    assert dropped.n_obs == 1


def test_bins_aligned_with_cells_are_the_map(tmp_path, rng):
    values = _map(rng, "field", n_genes=2)
    dm = write_map(tmp_path / "m.zarr", values)  # map_mpp = 2 µm
    bins = grid_bins(720, 560, 0.25, 2.0)
    assert len(bins) == H * W
    a = aggregate_units(dm, bins, progress=False)
    np.testing.assert_allclose(a.X.reshape(H, W, 2), values, rtol=1e-6)
    assert a.obs_names[W + 3] == "s_002um_00001_00003"
    bins8 = aggregate_units(dm, grid_bins(720, 560, 0.25, 8.0), progress=False)
    np.testing.assert_allclose(bins8.X[0], values[:4, :4].mean((0, 1)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # squares' sums; discs' and cells'
def test_density_total_underflow_predicts_zero_not_nan(dtype, monkeypatch):
    """A covered unit whose summed total is 0 (float16 underflow) gives 0, like training."""
    from hexpress.infer import aggregate_disk, finish_units

    monkeypatch.setattr(aggregate_disk, "_FINISH_ROWS", 2)  # rows in pieces, as for millions
    sums = np.array([[0.0, 0.0, 0.0, 1.0], [2.0, 1.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    out = finish_units(sums, "density", 2, scale=10.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], [0.0, 0.0])
    np.testing.assert_allclose(out[1], np.log1p(10.0 * np.array([2.0, 1.0]) / 4.0), rtol=1e-6)
    assert np.isnan(out[2]).all()  # nothing covered: no prediction
    field = finish_units(sums, "field", 2)  # the mean over covered pixels
    np.testing.assert_allclose(field[:2], [[0.0, 0.0], [1.0, 0.5]], rtol=1e-7)
    assert field.dtype == np.float32 and np.isnan(field[2]).all()


def _same_anndata(a, b):
    np.testing.assert_array_equal(a.X, b.X)
    assert list(a.obs_names) == list(b.obs_names)
    assert a.obs.equals(b.obs)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])


@pytest.mark.parametrize("mode", ["field", "density"])
def test_one_pass_over_several_sets_is_each_set_alone(tmp_path, rng, mode):
    """Every set from one pass is exactly the AnnData of its own call, drop flags per set."""
    from hexpress.infer import aggregate_geometries

    values = _map(rng, mode)
    covered = np.ones((H, W), bool)
    covered[:, 60:] = False  # the bins there have no prediction: dropped or NaN
    dm = write_map(tmp_path / "m.zarr", values, mode=mode, covered=covered)
    sets = [
        grid_bins(720, 560, 0.25, 16.0),
        grid_bins(720, 560, 0.25, 2.0),
        grid_bins(720, 560, 0.25, 6.0),  # 3 cells a side: across the 32-cell blocks
        _units(rng, "square"),
        _units(rng, "disc"),
        _units(rng, "polygon"),
    ]
    drops = [True, False, True, False, False, True]
    together = list(
        aggregate_geometries(dm, sets, memory_mb=0.05, drop_uncovered=drops, progress=False)
    )
    assert len(together) == len(sets)
    for u, drop, a in zip(sets, drops, together, strict=True):
        alone = aggregate_units(dm, u, memory_mb=0.05, drop_uncovered=drop, progress=False)
        _same_anndata(a, alone)
    assert together[0].n_obs < len(sets[0])  # dropped
    assert together[1].n_obs == len(sets[1]) and np.isnan(together[1].X).any()  # kept, NaN


def test_one_pass_flags_must_match_the_sets(tmp_path, rng):
    from hexpress.errors import ConfigError
    from hexpress.infer import aggregate_geometries

    dm = write_map(tmp_path / "m.zarr", _map(rng, "field"))
    sets = [grid_bins(720, 560, 0.25, 16.0)] * 2
    with pytest.raises(ConfigError, match="2 unit sets"):
        aggregate_geometries(dm, sets, drop_uncovered=[True], progress=False)  # before any pass


def test_each_chunk_is_read_once_for_all_sets(tmp_path, rng, monkeypatch):
    """Windows are whole chunks, none read twice, whatever the sets and the block size."""
    from hexpress.infer import DenseMap, aggregate_geometries

    values = _map(rng, "field", n_genes=2)
    dm = write_map(tmp_path / "m.zarr", values, chunk=20)
    reads = []
    real = DenseMap.read

    def spy(self, y0, y1, x0, x1, **kw):
        reads.append((y0, y1, x0, x1))
        return real(self, y0, y1, x0, x1, **kw)

    monkeypatch.setattr(DenseMap, "read", spy)
    sets = [grid_bins(720, 560, 0.25, b) for b in (16.0, 8.0, 2.0)] + [_units(rng, "disc")]
    out = list(aggregate_geometries(dm, sets, memory_mb=0.05, progress=False))
    assert [a.n_obs for a in out] == [len(u) for u in sets]
    hits = np.zeros((H, W), int)
    for y0, y1, x0, x1 in reads:
        assert y0 % 20 == 0 and x0 % 20 == 0  # chunk-aligned
        assert ((y1 - y0) % 20 == 0 or y1 == H) and ((x1 - x0) % 20 == 0 or x1 == W)
        hits[y0:y1, x0:x1] += 1
    assert hits.max() == 1 and hits.min() == 1  # every cell once: no halo re-reads


def test_pooled_bins_across_blocks_brute_force(tmp_path, rng):
    """Grid bins whose side does not divide the blocks: summed in parts, still exact."""
    values = _map(rng, "field", n_genes=2)
    dm = write_map(tmp_path / "m.zarr", values, chunk=64)
    for um in (6.0, 10.0):  # 3 and 5 cells a side; blocks of 32 cells inside 64-cell chunks
        bins = grid_bins(720, 560, 0.25, um)
        Wt = brute_weights(
            bins.centers_level0_px * F_IN, "square", bins.size_um / 0.5, None, (H, W), STRIDE
        )
        small, full = unit_sums(dm, bins, memory_mb=0.05, progress=False)
        np.testing.assert_allclose(small[:, :2], Wt @ values.reshape(-1, 2), rtol=1e-5)
        np.testing.assert_allclose(full, np.asarray(Wt.sum(1)).ravel())
        big, _ = unit_sums(dm, bins, progress=False)  # one block: nothing split
        np.testing.assert_allclose(small, big, rtol=1e-6)


def test_read_as_float16_inside_and_across_the_edge(tmp_path, rng):
    values = _map(rng, "field", n_genes=2)
    dm = write_map(tmp_path / "m.zarr", values)
    v16, cov = dm.read(10, 30, 20, 50, dtype=np.float16)
    assert v16.dtype == np.float16 and cov.all()
    np.testing.assert_array_equal(v16, values[10:30, 20:50].astype(np.float16))
    v, cov = dm.read(H - 5, H + 5, -3, 4, dtype=np.float16)
    assert v.dtype == np.float16 and cov[:5, 3:].all() and not cov[5:].any()
    assert not cov[:, :3].any() and np.isnan(v[5:]).all()
    v32, _ = dm.read(H - 5, H + 5, -3, 4)
    np.testing.assert_array_equal(v32, v.astype(np.float32))


@pytest.mark.parametrize("units_mb", [1024.0, 0.02])
def test_written_files_equal_the_in_memory_sets(tmp_path, rng, units_mb):
    """write_geometries gives, file by file, the AnnData of aggregate_geometries, in one pass
    (sets that fit) or in many groups of units (a budget of 20 kB), rows in the units' order."""
    import anndata as ad

    from hexpress.infer import aggregate_geometries, write_geometries

    values = _map(rng, "density")
    covered = np.ones((H, W), bool)
    covered[:, 60:] = False
    covered[30:40, :] = False  # a band across every group: dropped or NaN rows in the middle
    dm = write_map(tmp_path / "m.zarr", values, mode="density", covered=covered, chunk=20)
    shuffled = _units(rng, "disc", n=60)
    shuffled = shuffled.subset(rng.permutation(60))  # rows not in reading order
    sets = [
        grid_bins(720, 560, 0.25, 2.0),
        grid_bins(720, 560, 0.25, 6.0),
        _units(rng, "square"),
        shuffled,
        _units(rng, "polygon"),
    ]
    drops = [True, False, True, False, True]
    paths = [tmp_path / f"{i}.h5ad" for i in range(len(sets))]

    def decorate(a):
        a.uns["note"] = "added"

    counts = write_geometries(
        dm, sets, paths, units_mb=units_mb, memory_mb=0.05, drop_uncovered=drops,
        decorate=decorate, progress=False,
    )  # fmt: skip
    expect = list(
        aggregate_geometries(dm, sets, memory_mb=0.05, drop_uncovered=drops, progress=False)
    )
    for path, e, n in zip(paths, expect, counts, strict=True):
        a = ad.read_h5ad(path)
        assert a.n_obs == n == e.n_obs
        _same_anndata(a, e)
        assert a.uns["note"] == "added"
        assert a.uns["hexpress"]["geometry_name"] == e.uns["hexpress"]["geometry_name"]
    assert expect[0].n_obs < len(sets[0])  # some rows dropped
    assert np.isnan(expect[1].X).any()  # some rows kept as NaN
    assert not list(tmp_path.glob("*.h5ad.*"))  # no temporary file left


def test_written_files_keep_the_genes_asked_for(tmp_path, rng):
    import anndata as ad

    from hexpress.errors import DataMismatchError
    from hexpress.infer import aggregate_units, write_geometries

    dm = write_map(tmp_path / "m.zarr", _map(rng, "field", n_genes=3))
    bins = grid_bins(720, 560, 0.25, 16.0)
    genes = [dm.genes[2], dm.genes[0]]
    write_geometries(dm, [bins], [tmp_path / "b.h5ad"], genes=genes, units_mb=0.01, progress=False)
    a = ad.read_h5ad(tmp_path / "b.h5ad")
    e = aggregate_units(dm, bins, progress=False)[:, genes]
    assert list(a.var_names) == genes
    np.testing.assert_array_equal(a.X, e.X)
    with pytest.raises(DataMismatchError, match="not predicted by this map"):
        write_geometries(dm, [bins], [tmp_path / "c.h5ad"], genes=["nope"], progress=False)
    assert not (tmp_path / "c.h5ad").exists()


def test_a_failed_write_leaves_no_file(tmp_path, rng, monkeypatch):
    from hexpress.infer import aggregate_disk, write_geometries

    dm = write_map(tmp_path / "m.zarr", _map(rng, "field"))
    sets = [grid_bins(720, 560, 0.25, b) for b in (16.0, 8.0)]
    paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    calls = []
    real = aggregate_disk._sums_pass

    def fail_second(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(aggregate_disk, "_sums_pass", fail_second)
    with pytest.raises(RuntimeError, match="killed"):
        write_geometries(dm, sets, paths, units_mb=0.002, progress=False)
    assert len(calls) == 3
    assert not list(tmp_path.glob("*.h5ad*"))


def test_written_files_need_one_path_and_one_flag_per_set(tmp_path, rng):
    from hexpress.errors import ConfigError
    from hexpress.infer import write_geometries

    dm = write_map(tmp_path / "m.zarr", _map(rng, "field"))
    sets = [grid_bins(720, 560, 0.25, 16.0)] * 2
    with pytest.raises(ConfigError, match="1 paths for 2 unit sets"):
        write_geometries(dm, sets, [tmp_path / "a.h5ad"], progress=False)
    with pytest.raises(ConfigError, match="2 unit sets"):
        paths = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
        write_geometries(dm, sets, paths, drop_uncovered=[True], progress=False)
    assert not list(tmp_path.glob("*.h5ad*"))
