"""The soundness rule every generator's output passes (covalent radii, cell size, CIF)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from matloop.soundness import (
    SoundnessTally,
    covalent_radius,
    min_distance_ratio,
    reads_back,
    unsound_reason,
)


def nacl() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_real_crystal_is_sound():
    assert unsound_reason(nacl()) is None
    assert min_distance_ratio(nacl()) == pytest.approx(5.64 / (2 * 1.66), rel=1e-3)  # Na to its image


def test_radius_scaled_rule_is_stricter_than_a_flat_half_angstrom():
    # Two carbons 1.0 Å apart pass a flat 0.5 Å rule but not 0.8 x (0.76 + 0.76) = 1.22 Å.
    s = Structure(Lattice.cubic(6.0), ["C", "C"], [[0, 0, 0], [1.0 / 6.0, 0, 0]])
    reason = unsound_reason(s)
    assert reason is not None and reason.startswith("C-C 1.00 Å")
    assert unsound_reason(s, factor=0.6) is None
    assert covalent_radius(6) == pytest.approx(0.76)


def test_an_atom_too_close_to_its_own_image_is_unsound():
    s = Structure(Lattice.tetragonal(1.0, 6.0), ["C"], [[0, 0, 0]])
    assert "C-C 1.00" in unsound_reason(s)


def test_pairs_across_the_cell_boundary_count():
    s = Structure(Lattice.cubic(6.0), ["C", "C"], [[0.01, 0, 0], [0.97, 0, 0]])
    assert unsound_reason(s).startswith("C-C 0.24 Å")


def test_cell_size_not_seen_in_training_is_unsound():
    assert "2 atoms" in unsound_reason(nacl(), atom_counts={5, 10})
    assert unsound_reason(nacl(), atom_counts={2}) is None


def test_atoms_on_one_site_do_not_read_back():
    # The "Occupancy 2.0" CIFs: two atoms written onto one site.
    s = Structure(Lattice.cubic(4.0), ["O", "O"], [[0, 0, 0], [1e-6, 0, 0]])
    assert not reads_back(s)
    assert unsound_reason(s, factor=0.0) == "its CIF does not read back (sites merged or unreadable)"
    assert reads_back(nacl())


def test_tally_counts_reasons():
    tally = SoundnessTally()
    squeezed = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.3, 0, 0]])
    assert tally.add(unsound_reason(nacl()))
    assert not tally.add(unsound_reason(squeezed))
    assert not tally.add(unsound_reason(nacl(), atom_counts={5}))
    assert tally.to_dict() == {
        "drawn": 3,
        "kept": 1,
        "rejected": {"distance": 1, "atom_count": 1},
        "sound_rate": pytest.approx(1 / 3),
    }


def test_random_cells_are_checked_like_pymatgen_distances():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lat = Lattice.from_parameters(*rng.uniform(3, 6, 3), *rng.uniform(70, 110, 3))
        s = Structure(lat, ["C"] * 4, rng.random((4, 3)))
        dist = s.distance_matrix + np.eye(4) * 100
        expected = min(dist.min(), min(lat.abc)) / 1.52
        assert min_distance_ratio(s) == pytest.approx(expected, rel=1e-6)
