from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from matloop.evaluators.stability import make_entry
from matloop.relax.makers import needs_mp2020_correction


def test_each_potential_states_its_energy_scale():
    assert needs_mp2020_correction("CHGNet") is False  # trained on MP2020-corrected energies
    assert needs_mp2020_correction("SevenNet") is True  # raw GGA / GGA+U energies
    with pytest.raises(ValueError, match="Unknown potential"):
        needs_mp2020_correction("MACE")


def test_the_oxide_correction_is_applied_once_or_not_at_all():
    half = 2.4
    cao = Structure(Lattice([[0, half, half], [half, 0, half], [half, half, 0]]),
                    ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    raw = make_entry(cao, -6.43, "cao", correct=True)
    as_is = make_entry(cao, -6.74, "cao", correct=False)
    assert raw.correction == pytest.approx(-0.687, abs=0.01)  # one O in the cell
    assert as_is.correction == 0 and as_is.energy_per_atom == pytest.approx(-6.74)
