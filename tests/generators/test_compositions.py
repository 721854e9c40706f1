"""Charge-balanced compositions and role-aware oxidation states."""

from __future__ import annotations

from pymatgen.core import Composition

from matloop.chemistry import smact_valid
from matloop.generators.compositions import (
    ANION,
    CATION,
    charge_balanced_compositions,
    role_oxidation_states,
)


def test_binary_compositions():
    assert charge_balanced_compositions(["Na", "Cl"], max_atoms=4) == [
        {"Na": 1, "Cl": 1},
        {"Na": 2, "Cl": 2},
    ]


def test_ternary_compositions_are_valid_and_bounded():
    comps = charge_balanced_compositions(["Ca", "Ti", "O"], max_atoms=10)
    assert {"Ca": 1, "Ti": 1, "O": 3} in comps
    assert {"Ca": 2, "Ti": 2, "O": 6} in comps
    assert {"Ti": 1, "O": 2} in comps
    assert {"Ca": 1, "Ti": 1} in comps  # all-metal: valid by definition
    for comp in comps:
        assert 2 <= len(comp) <= 3
        assert sum(comp.values()) <= 10
        assert smact_valid(Composition(comp))
    assert {"Ca": 1, "O": 3} not in comps


def test_composition_options():
    no_alloys = charge_balanced_compositions(["Ca", "Ti", "O"], max_atoms=10, alloys=False)
    assert all("O" in comp for comp in no_alloys)
    binaries = charge_balanced_compositions(["Ca", "Ti", "O"], max_atoms=10, max_elements=2)
    assert all(len(comp) == 2 for comp in binaries)
    assert charge_balanced_compositions(["Na", "Cl"], max_atoms=6, min_atoms=5) == [
        {"Na": 3, "Cl": 3}
    ]


def test_role_oxidation_states():
    perovskite = (1, 1, 3), (CATION, CATION, ANION)
    assert role_oxidation_states(("Sr", "Ti", "O"), *perovskite) == (2, 4, -2)
    assert role_oxidation_states(("O", "Ti", "Sr"), *perovskite) is None
    # Anion sites take the common anion state only: no peroxide in a rock salt.
    assert role_oxidation_states(("Li", "O"), (1, 1), (CATION, ANION)) is None
    assert role_oxidation_states(("Mn", "O"), (1, 1), (CATION, ANION)) == (2, -2)
    # Metals are never anions.
    assert role_oxidation_states(("Li", "Mn"), (1, 1), (CATION, ANION)) is None
