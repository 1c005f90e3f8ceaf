"""One precedence for the pixel size of every reader (hexpress.io._pixel_size)."""

import logging
import math

import numpy as np
import pytest

from hexpress.errors import UnitsError
from hexpress.io._pixel_size import Estimate, mpp_from_lattice, resolve_mpp


def test_precedence_given_metadata_pitch_scalefactors():
    meta, pitch, sf = Estimate(0.5, "file"), Estimate(0.6, "pitch"), Estimate(0.7, "sf")
    assert resolve_mpp("x", given=0.4, metadata=meta, pitch=pitch, scalefactors=sf).mpp == 0.4
    assert resolve_mpp("x", metadata=meta, pitch=pitch, scalefactors=sf).source == "file"
    assert resolve_mpp("x", pitch=[None, pitch], scalefactors=sf).source == "pitch"
    assert resolve_mpp("x", scalefactors=sf).source == "sf"
    assert resolve_mpp("x") is None
    with pytest.raises(UnitsError, match="positive"):
        resolve_mpp("x", given=-1.0)


def test_disagreement_over_2_percent_names_both_values(caplog):
    with caplog.at_level(logging.WARNING):
        resolve_mpp("S", metadata=Estimate(0.5, "the TIFF"), pitch=Estimate(0.509, "the pitch"))
    assert not caplog.records  # under 2 % apart: quiet
    with caplog.at_level(logging.WARNING):
        resolve_mpp("S", metadata=Estimate(0.5, "the TIFF"), pitch=Estimate(0.52, "the pitch"))
    (rec,) = caplog.records
    assert "0.5 µm/px from the TIFF" in rec.message and "0.52 µm/px from the pitch" in rec.message


@pytest.mark.parametrize("angle", [0.0, 0.3, math.pi / 2])
def test_hex_lattice_pitch_survives_rotation_and_whole_pixels(angle):
    rows, cols = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = (rows + cols) % 2 == 0
    rc = np.stack([rows[keep], cols[keep]], 1)
    um = np.stack([rc[:, 1] * 50.0, rc[:, 0] * 50 * np.sqrt(3)], 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    px = np.round(um @ rot.T / 0.7268 + 5000)  # Space Ranger 1.x writes whole pixels
    assert mpp_from_lattice(rc, px, lattice="hex", pitch_um=100) == pytest.approx(0.7268, 1e-3)


def test_square_lattice_and_degenerate_points():
    rc = np.array([[0, 0], [0, 1], [1, 0], [3, 4]])
    px = rc[:, ::-1] * 2 / 0.2738
    assert mpp_from_lattice(rc, px, lattice="square", pitch_um=2) == pytest.approx(0.2738)
    line = np.array([[0, 0], [0, 1], [0, 2]])
    assert mpp_from_lattice(line, line * 10.0, lattice="square", pitch_um=2) is None
    assert mpp_from_lattice(rc[:2], px[:2], lattice="square", pitch_um=2) is None
