from __future__ import annotations

import time

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from matloop.evaluators.validity import (
    ValidityResult,
    compositional_validity,
    nearest_neighbour_distances,
    screen_structure,
    shortest_lattice_translation,
    structural_validity,
)

FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]


def _rocksalt(a: float = 5.64) -> Structure:
    """Conventional 8-atom rock-salt cell."""
    cl = [[(x + 0.5) % 1, y, z] for x, y, z in FCC]
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4, FCC + cl)


def test_rocksalt_is_valid():
    s = _rocksalt()
    assert structural_validity(s) == ValidityResult(True, None)
    assert screen_structure(s, allowed_elements={"Na", "Cl"}, max_atoms=8).valid
    assert nearest_neighbour_distances(s).min() == pytest.approx(5.64 / 2)


def test_close_atoms_reason_names_distance():
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.062, 0, 0]])
    result = structural_validity(s)
    assert not result
    assert result.reason == "min interatomic distance 0.31 Å < 0.5 Å"


def test_close_periodic_image_detected():
    # 0.98 and 0.02 are 0.2 Å apart across the cell boundary, 9.6 Å apart in the cell.
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.98, 0, 0], [0.02, 0, 0]])
    assert not structural_validity(s)
    assert "0.20 Å" in structural_validity(s).reason


def test_one_atom_cell_uses_shortest_translation():
    # A skewed cell (edges 3.0, 2.63, 3.0 Å) whose shortest translation b - a = (-0.4, 0.4, 0)
    # is 0.57 Å long.
    lattice = Lattice([[3.0, 0, 0], [2.6, 0.4, 0], [0, 0, 3.0]])
    assert min(lattice.abc) > 2.5
    assert shortest_lattice_translation(lattice) == pytest.approx(np.sqrt(0.32), abs=1e-6)
    s = Structure(lattice, ["Cu"], [[0, 0, 0]])
    result = structural_validity(s, min_distance=0.6, min_volume=0.0)
    assert not result and "0.57 Å < 0.6 Å" in result.reason
    assert nearest_neighbour_distances(s) == pytest.approx([np.sqrt(0.32)])
    assert structural_validity(Structure(Lattice.cubic(2.5), ["Cu"], [[0, 0, 0]])).valid


def test_small_volume_and_non_finite():
    s = Structure(Lattice.cubic(0.4), ["Cu"], [[0, 0, 0]])
    result = structural_validity(s, min_distance=0.1)
    assert not result and result.reason.startswith("volume")
    bad = _rocksalt()
    bad.lattice = Lattice(np.array([[np.nan, 0, 0], [0, 5, 0], [0, 0, 5]]))
    assert structural_validity(bad).reason == "non-finite lattice/coords"


def test_partial_occupancy_rejected():
    s = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert structural_validity(s).reason == "partial occupancy"
    assert screen_structure(s, allowed_elements=["Na", "K", "Cl"], max_atoms=8).reason == (
        "partial occupancy"
    )


def test_compositional_validity():
    assert compositional_validity(Composition("NaCl")).valid
    assert compositional_validity(Composition("CuZn")).valid  # all-metal alloy
    bad = compositional_validity(Composition("Na2Cl"))
    assert not bad and "not charge balanced" in bad.reason


def test_screen_structure_reasons():
    s = _rocksalt()
    outside = screen_structure(s, allowed_elements={"Na", "O"}, max_atoms=8)
    assert not outside and "Cl" in outside.reason and "chemical space" in outside.reason
    too_big = screen_structure(s, allowed_elements={"Na", "Cl"}, max_atoms=4)
    assert not too_big and too_big.reason == "8 atoms > max_atoms 4"
    squeezed = screen_structure(_rocksalt(0.8), allowed_elements={"Na", "Cl"}, max_atoms=8)
    assert not squeezed and "min interatomic distance" in squeezed.reason
    na2cl = Structure(
        Lattice.cubic(6.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5]]
    )
    comp = screen_structure(na2cl, allowed_elements={"Na", "Cl"}, max_atoms=8)
    assert not comp and "electronegativity" in comp.reason


def test_fast_for_50_atoms():
    rng = np.random.default_rng(0)
    s = Structure(Lattice.cubic(10.0), ["Cu"] * 50, rng.random((50, 3)))
    start = time.perf_counter()
    for _ in range(50):
        structural_validity(s)
    assert (time.perf_counter() - start) / 50 < 0.02
