from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from matloop.representations.voxel import VoxelEncoder


def perovskite() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def off_grid() -> Structure:
    return Structure(
        Lattice.from_parameters(4.2, 4.4, 5.0, 90, 90, 90),
        ["Na", "Cl", "O"],
        [[0.013, 0.027, 0.031], [0.47, 0.53, 0.49], [0.21, 0.77, 0.62]],
    )


@pytest.mark.parametrize("make", [perovskite, off_grid])
def test_round_trip(make):
    s = make()
    enc = VoxelEncoder(["O", "Na", "Cl", "Ti", "Sr"], grid=24)
    image, params = enc.encode(s)
    assert image.shape == (5, 24, 24, 24)
    assert image.max() <= 1.01
    back = enc.decode(image, params)
    assert back.composition == s.composition
    matcher = StructureMatcher(stol=0.05, ltol=0.01, angle_tol=1, primitive_cell=False)
    assert matcher.fit(back, s)
    assert matcher.get_rms_dist(back, s)[0] < 0.02


def test_empty_image_raises():
    enc = VoxelEncoder(["O"], grid=8)
    with pytest.raises(ValueError, match="no peak"):
        enc.decode(np.zeros((1, 8, 8, 8)), np.array([4, 4, 4, 90, 90, 90.0]))
