"""Random symmetric structures: validity, symmetry, determinism, bounded effort."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matloop.chemistry import smact_valid
from matloop.generators.base import ChemicalSpace
from matloop.generators.random_symmetric import RandomSymmetric

SPACE = ChemicalSpace(["Ca", "Ti", "O"], max_atoms=10)


@pytest.fixture(scope="module")
def samples() -> list[Structure]:
    return RandomSymmetric(SPACE, seed=2).sample(4)


def test_samples_are_valid(samples):
    assert len(samples) == 4
    for s in samples:
        assert isinstance(s, Structure)
        assert SPACE.allows(s)
        assert len(s.composition.elements) >= 2
        assert smact_valid(s.composition)
        assert min(s.get_neighbor_list(6.0)[3]) > 0.5


def test_samples_have_the_requested_symmetry(samples):
    from pyxtal.symmetry import Group

    for s in samples:
        number = s.properties["spacegroup_requested"]
        assert 2 <= number <= 230
        # The structure has at least the requested symmetry (possibly a supergroup).
        operations = SpacegroupAnalyzer(s, symprec=1e-3).get_symmetry_operations()
        assert len(operations) >= Group(number)[0].multiplicity


def test_sampling_is_deterministic_for_a_seed(samples):
    again = RandomSymmetric(SPACE, seed=2).sample(2)
    for a, b in zip(samples[:2], again, strict=True):
        assert a.composition == b.composition
        assert a.properties == b.properties
        assert np.allclose(a.lattice.matrix, b.lattice.matrix)
        assert np.allclose(a.frac_coords, b.frac_coords)


def test_explicit_rng(rng):
    (a,) = RandomSymmetric(SPACE, seed=0).sample(1, rng=np.random.default_rng(5))
    (b,) = RandomSymmetric(SPACE, seed=1).sample(1, rng=np.random.default_rng(5))
    assert np.allclose(a.lattice.matrix, b.lattice.matrix)
    assert len(RandomSymmetric(SPACE).sample(1, rng=rng)) == 1


def test_settings_restrict_what_is_made():
    space = ChemicalSpace(["Li", "Mn", "O"], max_atoms=6)
    gen = RandomSymmetric(space, seed=4, spacegroups=[221, 225, 229], alloys=False)
    assert gen.compositions
    assert all(not set(c) <= {"Li", "Mn"} for c in gen.compositions)
    for s in gen.sample(2):
        assert s.properties["spacegroup_requested"] in {221, 225, 229}
        assert len(s) <= 6
        assert {"Li", "Mn"} != {el.symbol for el in s.composition.elements}


def test_effort_is_bounded():
    assert RandomSymmetric(SPACE).sample(0) == []
    # No charge-balanced composition fits in one atom: nothing to make, and no loop.
    assert RandomSymmetric(ChemicalSpace(["Na", "Cl"], max_atoms=1)).sample(3) == []
    # One attempt per structure and a single high-symmetry group: fewer than asked, quickly.
    gen = RandomSymmetric(SPACE, seed=0, spacegroups=[229], max_attempts=1)
    start = time.perf_counter()
    made = gen.sample(5)
    assert len(made) < 5
    assert time.perf_counter() - start < 10


def test_successive_calls_do_not_repeat():
    gen = RandomSymmetric(ChemicalSpace(["Na", "Cl"], max_atoms=2), seed=0)
    first = gen.sample(1)
    assert len(first) == 1  # rock salt, CsCl, ... but never the same crystal twice
    second = gen.sample(3)
    from matloop.generators.prototypes import DistinctStructures

    seen = DistinctStructures()
    seen.add(first[0])
    assert not any(s in seen for s in second)


def test_bad_settings():
    with pytest.raises(ValueError, match="spacegroups"):
        RandomSymmetric(SPACE, spacegroups=[0])
    with pytest.raises(ValueError, match="max_elements"):
        RandomSymmetric(SPACE, max_elements=1)


def test_describe():
    info = RandomSymmetric(SPACE, seed=9).describe()
    assert info["generator"] == "random_symmetric"
    assert info["seed"] == 9


def test_wyckoff_merge_builds_no_tolerance_matrix(monkeypatch):
    """pyxtal's merge passes a fixed ``tol``; the wrapped ``check_images`` must not build the
    ~5 ms ``Tol_matrix`` it would never read (half of ``from_random`` at 20 atoms)."""
    import pyxtal.operations
    import pyxtal.symmetry

    from matloop.generators.random_symmetric import _skip_unused_tolerance_matrix

    _skip_unused_tolerance_matrix()

    def no_matrix(*args, **kwargs):
        raise AssertionError("Tol_matrix built")

    monkeypatch.setattr(pyxtal.operations, "Tol_matrix", no_matrix)
    lattice = np.eye(3) * 4.0
    assert pyxtal.symmetry.check_images([[0.1, 0.2, 0.3]], [6], lattice, tol=1.0)
    assert not pyxtal.symmetry.check_images([[0.0, 0.0, 0.0]], [6], np.eye(3) * 0.5, tol=1.0)
    with pytest.raises(AssertionError, match="Tol_matrix built"):  # pyxtal's own would build it
        pyxtal.symmetry.check_images.__wrapped__([[0.1, 0.2, 0.3]], [6], lattice, tol=1.0)


def test_skipping_the_tolerance_matrix_draws_the_same_crystals(monkeypatch):
    import pyxtal.symmetry

    from matloop.generators.random_symmetric import _skip_unused_tolerance_matrix

    _skip_unused_tolerance_matrix()
    fast = RandomSymmetric(SPACE, seed=5).sample(3)
    monkeypatch.setattr(pyxtal.symmetry, "check_images", pyxtal.symmetry.check_images.__wrapped__)
    slow = RandomSymmetric(SPACE, seed=5).sample(3)
    assert len(fast) == len(slow) == 3
    assert fast == slow
