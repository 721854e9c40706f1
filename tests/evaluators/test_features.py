from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.evaluators.features import ELEMENT_PROPERTIES, feature_names, featurize


def _rocksalt(a: float = 5.64, species=("Na", "Cl")) -> Structure:
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def _col(name: str) -> int:
    return feature_names().index(name)


def test_shape_names_and_determinism():
    structures = [
        _rocksalt(),
        _rocksalt(4.2, ("Mg", "O")),
        Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]),
    ]
    X = featurize(structures)
    names = feature_names()
    assert X.shape == (3, len(names)) == (3, 4 * len(ELEMENT_PROPERTIES) + 7)
    assert len(set(names)) == len(names)
    assert np.isfinite(X).all()
    np.testing.assert_array_equal(X, featurize(structures))
    assert featurize([]).shape == (0, len(names))


def test_values_for_rocksalt():
    x = featurize([_rocksalt()])[0]
    assert x[_col("mean_Z")] == pytest.approx((11 + 17) / 2)
    assert x[_col("std_Z")] == pytest.approx(3.0)
    assert x[_col("min_Z")] == 11 and x[_col("max_Z")] == 17
    assert x[_col("max_X")] == pytest.approx(3.16)
    assert x[_col("n_sites")] == 2 and x[_col("n_elements")] == 2
    assert x[_col("spacegroup_number")] == 225
    assert x[_col("volume_per_atom")] == pytest.approx(5.64**3 / 8)
    assert x[_col("min_nn_distance")] == pytest.approx(2.82)
    assert x[_col("mean_nn_distance")] == pytest.approx(2.82)
    assert x[_col("density")] == pytest.approx(2.165, abs=0.01)


def test_fraction_weighting():
    li2o = Structure(
        Lattice.cubic(4.61),
        ["Li", "Li", "O"],
        [[0.25, 0.25, 0.25], [0.75, 0.75, 0.75], [0, 0, 0]],
    )
    x = featurize([li2o])[0]
    assert x[_col("mean_Z")] == pytest.approx((2 * 3 + 8) / 3)


def test_missing_element_data_and_odd_structures_stay_finite():
    # He has no electronegativity in pymatgen; a random triclinic cell gives space group 1.
    rng = np.random.default_rng(0)
    odd = Structure(
        Lattice.from_parameters(4.1, 5.3, 6.7, 71, 83, 101),
        ["He", "Xe", "Fr"],
        rng.random((3, 3)),
    )
    x = featurize([odd])[0]
    assert np.isfinite(x).all()
    assert x[_col("spacegroup_number")] == 1


def test_fast():
    # Guards against regressions (e.g. per-call table rebuilds), not a benchmark: spglib alone
    # takes ~5-25 ms on these high-symmetry cells, more on a loaded machine.
    structures = [_rocksalt(5.0 + 0.01 * i) for i in range(50)]
    featurize(structures[:1])  # warm the element table
    start = time.perf_counter()
    featurize(structures)
    assert (time.perf_counter() - start) / 50 < 0.1
