"""Stain-vector rotation in the HED jitter: hues turn by the drawn angle, nothing else moves."""

from __future__ import annotations

import numpy as np
import pytest

from hexpress.errors import ConfigError
from hexpress.train.augment import AugmentParams, colour_jitter, sample_params
from hexpress.train.config import AugmentConfig

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def _angle(a, b):
    return np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))


@pytest.mark.parametrize("row, deg", [(0, 4.0), (0, -6.0), (1, 7.0)])
def test_a_pure_stain_turns_by_the_drawn_angle(row, deg):
    od = 0.6 * RGB_FROM_HED[row]  # a pure haematoxylin (or eosin) pixel
    img = np.broadcast_to(np.exp(-od), (4, 4, 3)).astype(np.float32)
    angles = (np.radians(deg), 0.0) if row == 0 else (0.0, np.radians(deg))
    out = colour_jitter(img, AugmentParams(stain_angles=angles))
    od_out = -np.log(out[0, 0].astype(np.float64))
    assert _angle(od_out, od) == pytest.approx(abs(deg), abs=0.05)
    # turned towards (or away from) DAB, in the plane of the two: no other direction
    normal = np.cross(RGB_FROM_HED[row], RGB_FROM_HED[2])
    assert abs(od_out @ normal) / np.linalg.norm(od_out) / np.linalg.norm(normal) < 1e-4
    assert np.linalg.norm(od_out) == pytest.approx(np.linalg.norm(od), rel=1e-4)
    # the other stain is untouched
    other = 0.6 * RGB_FROM_HED[1 - row]
    img2 = np.broadcast_to(np.exp(-other), (2, 2, 3)).astype(np.float32)
    out2 = colour_jitter(img2, AugmentParams(stain_angles=angles))
    np.testing.assert_allclose(-np.log(out2[0, 0]), other, rtol=1e-4)


def test_rotation_draws_keep_the_other_draws_and_validate():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    plain = sample_params(AugmentConfig(), rng_a)
    turned = sample_params(AugmentConfig(stain_rotation_deg=5.0), rng_b)
    assert plain.stain_angles == (0.0, 0.0)
    assert (plain.k, plain.flip, plain.hed_alpha) == (turned.k, turned.flip, turned.hed_alpha)
    assert 0 < max(abs(a) for a in turned.stain_angles) <= np.radians(5.0)
    with pytest.raises(ConfigError, match="stain_rotation_deg"):
        AugmentConfig(stain_rotation_deg=45.0)
