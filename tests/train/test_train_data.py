import numpy as np
import pytest
import torch
from conftest import synthetic_slide

from hexpress.errors import ConfigError, DataMismatchError
from hexpress.train import (
    AugmentConfig,
    AugmentParams,
    DenseCropDataset,
    PatchDataset,
    colour_jitter,
    crop_units,
    d4_image,
    d4_points,
    load_config,
    load_training_data,
)


def _data(samples, *extra):
    cfg = load_config(None, ["data.train=[S1]", "data.val=[S2]", "data.genes.n=6", *extra])
    return load_training_data(cfg.data, seed=0, samples=samples)


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_d4_points_follow_pixels(k, flip):
    img = np.zeros((5, 7), np.uint8)
    img[1, 5] = 1
    out = d4_image(img, k, flip)
    ((i, j),) = np.argwhere(out)
    np.testing.assert_allclose(d4_points([[5.5, 1.5]], 7, 5, k, flip)[0], [j + 0.5, i + 0.5])
    # torch's rot90 (used by test-time augmentation) turns the same way
    t = torch.rot90(torch.from_numpy(img[:, ::-1].copy() if flip else img), k, dims=(0, 1))
    np.testing.assert_array_equal(t.numpy(), out)


def test_colour_jitter_identity_and_range(rng):
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(colour_jitter(img, AugmentParams()), img / 255.0, atol=1e-6)
    p = AugmentParams(hed_alpha=(1.0, 1.0, 1.0), hed_beta=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(colour_jitter(img, p), img / 255.0, atol=1e-6)
    out = colour_jitter(img, AugmentParams(hed_alpha=(1.1, 0.9, 1.0), hed_beta=(0.02, 0, 0)))
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1 and not np.allclose(out, img / 255.0, atol=1e-3)


def test_targets_and_genes_from_training_samples_only(samples):
    data = _data(samples)
    assert len(data.genes) == 6
    from hexpress.data import select_genes

    assert data.genes == select_genes([samples["S1"]], n=6)  # S2 (validation) plays no part
    us = data.train[0].units[0]
    assert us.targets.shape == (samples["S1"].n_units, 6)
    # targets are log1p(counts / total(all genes) * scale)
    X = samples["S1"].adata.X.toarray()
    col = list(samples["S1"].adata.var_names).index(data.genes[0])
    expect = np.log1p(X[:, col] / X.sum(1) * 1e4)
    np.testing.assert_allclose(us.targets[:, 0].toarray().ravel(), expect, rtol=1e-5)
    assert data.normalization["scale"] == 1e4


def test_crop_units_coverage_rule(samples):
    data = _data(samples)
    us = data.train[0].units[0]  # 24 µm discs on a 30 µm grid at 1 µm/px, first at 15 px
    allowed = np.ones(len(us), bool)
    # a crop from x=10: the first column's discs (3..27 px) are cut at 10, about 30% outside
    idx_strict, w = crop_units(us, allowed, 10, 0, 64, model_mpp=1.0, stride=4, min_coverage=0.9)
    idx_loose, w2 = crop_units(us, allowed, 10, 0, 64, model_mpp=1.0, stride=4, min_coverage=0.5)
    first_col = np.flatnonzero(np.isclose(us.centers_um[:, 0], 15.0))
    assert not set(first_col) & set(idx_strict)
    assert set(first_col) & set(idx_loose)
    assert w.shape == (len(idx_strict), 16 * 16)
    # the weights of a fully inside disc count its pixels: pi r^2 px
    full = np.asarray(w.sum(1)).ravel()
    assert np.all(np.abs(full - np.pi * 12**2) < 0.1 * np.pi * 12**2)
    # units not allowed are never returned
    idx_none, _ = crop_units(
        us, np.zeros(len(us), bool), 10, 0, 64, model_mpp=1.0, stride=4, min_coverage=0.5
    )
    assert len(idx_none) == 0


@pytest.mark.parametrize("geometry", ["disc", "square"])
def test_crop_weights_are_those_of_units_footprints(geometry):
    """Training places units on a crop with Units.footprints, the conversion prediction uses:
    level-0 px of a 0.5 µm/px slide -> px of the 1 µm/px crop, minus the crop's corner."""
    from hexpress.data import Units
    from hexpress.models import footprint_weights

    kw = dict(size_px=320, mpp=0.5, spot_um=20.0, pitch_um=25.0, geometry=geometry)
    s1, s2 = (synthetic_slide(i, sample_id=f"S{i}", **kw)[1] for i in (1, 2))
    us = _data({"S1": s1, "S2": s2}).train[0].units[0]
    units = Units.from_anndata(s1.adata)
    x0, y0 = 6, 7  # crop corner, px of the slide at model_mpp = 1 µm/px
    allowed = np.ones(len(us), bool)
    idx, w = crop_units(us, allowed, x0, y0, 64, model_mpp=1.0, stride=4, min_coverage=0.9)
    c = units.centers_level0_px * 0.5  # model px = level-0 px * 0.5 / 1.0
    inside = (c[:, 0] >= x0) & (c[:, 0] < x0 + 64) & (c[:, 1] >= y0) & (c[:, 1] < y0 + 64)
    fp = units.footprints(0.5, 1.0, (x0, y0), index=inside)
    want, coverage = footprint_weights(fp, (16, 16), 4, return_coverage=True)
    keep = coverage >= 0.9
    assert 2 < keep.sum() < inside.sum()  # some units cut by the crop edge are dropped
    np.testing.assert_array_equal(idx, np.flatnonzero(inside)[keep])
    np.testing.assert_array_equal(w.toarray(), want[keep].toarray())
    # the footprints follow a D4 augmentation of the crop: its weights are the turned maps
    k, flip = 1, True
    idx_aug, w_aug = crop_units(us, allowed, x0, y0, 64, model_mpp=1.0, stride=4,
                                min_coverage=0.9, params=AugmentParams(k=k, flip=flip))  # fmt: skip
    np.testing.assert_array_equal(idx_aug, idx)
    turned = [d4_image(row.reshape(16, 16), k, flip).ravel() for row in want[keep].toarray()]
    np.testing.assert_allclose(w_aug.toarray(), np.stack(turned))


def _dense(data, **kw):
    args = dict(crop_px=64, model_mpp=1.0, stride=4, batch_size=3, seed=0, augment=AugmentConfig())
    args.update(kw)
    return DenseCropDataset(data.train, **args)


def test_dense_batches_shapes_and_determinism(samples):
    data = _data(samples)
    ds = _dense(data)
    b = ds[5]
    assert b.images.shape == (3, 3, 64, 64) and b.images.dtype == torch.float32
    assert 0 <= float(b.images.min()) and float(b.images.max()) <= 1
    (ws,) = b.weights
    assert len(ws) == 3 and all(w.shape[1] == 16 * 16 for w in ws)
    assert b.targets[0].shape == (sum(b.counts[0]), 6) and sum(b.counts[0]) >= 3
    again = _dense(_data(samples))[5]  # a new dataset, same seed: the same batch
    torch.testing.assert_close(again.images, b.images, rtol=0, atol=0)
    torch.testing.assert_close(again.targets[0], b.targets[0], rtol=0, atol=0)
    other = ds[6]
    assert not torch.equal(other.images, b.images)
    with pytest.raises(ConfigError, match="multiple of the model's stride"):
        _dense(data, crop_px=66)


def test_augmented_geometry_stays_on_its_pixels(samples):
    """The colour averaged over each unit's footprint is the same with and without flips and
    rotations: footprints move with the pixels."""
    data = _data(samples)
    plain = _dense(data, stride=1, augment=None)
    aug = _dense(data, stride=1, augment=AugmentConfig(hed_sigma=0.0, hed_bias=0.0))

    def unit_colours(batch):
        out = {}
        for c, w in enumerate(batch.weights[0]):
            img = batch.images[c].reshape(3, -1).numpy().T  # (S*S, 3)
            n = np.asarray(w.sum(1)).ravel()
            means = (w @ img) / n[:, None]
            start = sum(batch.counts[0][:c])
            for r, m in enumerate(means):
                out[(c, tuple(batch.unit_index[0][start + r]))] = m
        return out

    turned = 0
    for step in range(4):
        a, b = unit_colours(plain[step]), unit_colours(aug[step])
        assert a.keys() == b.keys() and a
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=2e-3)
        turned += not torch.equal(plain[step].images, aug[step].images)
    assert turned  # some crop really was flipped or rotated


def test_ranks_get_disjoint_anchors(samples):
    data = _data(samples)
    r0 = _dense(data, rank=0, world_size=2)
    r1 = _dense(data, rank=1, world_size=2)
    n = len(r0.stream)
    per = r0.batch_size * 2
    a0 = [tuple(r0.stream.take((s * 2 + 0) * 3, 3)[i]) for s in range(n // per) for i in range(3)]
    a1 = [tuple(r1.stream.take((s * 2 + 1) * 3, 3)[i]) for s in range(n // per) for i in range(3)]
    assert not set(a0) & set(a1)
    assert not torch.equal(r0[0].images, r1[0].images)


def test_val_blocks_are_never_supervised(samples):
    data = _data(samples, "data.val=[]", "data.val_fraction=0.3", "data.val_block_um=50")
    us = data.train[0].units[0]
    assert 0 < us.val.sum() < len(us)
    ds = _dense(data)
    for step in range(6):
        idx = ds[step].unit_index[0][:, 1]
        assert not us.val[idx].any()


def test_center_sections_removes_per_section_offsets_only(samples):
    cfg = ["data.train=[S1,S2]", "data.val=[]", "data.val_fraction=0.3", "data.val_block_um=50"]
    plain = _data(samples, *cfg)
    centred = _data(samples, *cfg, "data.center_sections=true")
    assert centred.normalization["centered"] and "centered" not in plain.normalization
    sup = [s.units[0].train_mask for s in plain.train]
    before = [s.units[0].targets.toarray() for s in plain.train]
    after = [s.units[0].targets.toarray() for s in centred.train]
    overall = np.concatenate([b[m] for b, m in zip(before, sup, strict=True)]).mean(0)
    assert np.abs(before[0][sup[0]].mean(0) - before[1][sup[1]].mean(0)).max() > 0.05
    for b, a, m, s in zip(before, after, sup, plain.train, strict=True):
        # each section's supervised mean is now the overall mean, gene by gene
        np.testing.assert_allclose(a[m].mean(0), overall, atol=1e-5)
        # one shift per gene for every measured unit (validation blocks included)
        meas = s.units[0].measured
        shift = a[meas] - b[meas]
        np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-5)
        assert s.units[0].val[meas].any()


def test_several_geometries_on_one_slide():
    _, discs = synthetic_slide(0)
    _, squares = synthetic_slide(0, spot_um=8, pitch_um=10, geometry="square")
    cfg = load_config(
        None,
        [
            "data.train=[S1]",
            "data.genes.n=5",
            "data.geometries=[{name: spots, weight: 1}, {name: bins, weight: 0.5}]",
        ],
    )
    data = load_training_data(cfg.data, samples={"S1": [discs, squares]})
    assert data.geometries == ["spots", "bins"]
    b = _dense(data)[0]
    assert len(b.targets) == 2
    assert b.targets[1].shape[0] > b.targets[0].shape[0]  # many more small bins per crop
    with pytest.raises(DataMismatchError, match="2 geometries"):
        load_training_data(cfg.data, samples={"S1": discs})


def test_patch_batches(samples):
    data = _data(samples)
    ds = PatchDataset(
        data.train, patch_um=32.0, input_px=16, batch_size=4, seed=0, augment=AugmentConfig()
    )
    b = ds[0]
    assert b.images.shape == (4, 3, 16, 16) and b.targets.shape == (4, 6)
    us = data.train[0].units[0]
    np.testing.assert_array_equal(b.targets.numpy(), us.targets[b.unit_index[:, 1]].toarray())
    torch.testing.assert_close(ds[0].images, b.images, rtol=0, atol=0)
