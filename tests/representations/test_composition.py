from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition

from matloop.representations.composition import CompositionEncoder, elements_of

ELEMENTS = ["Li", "O", "Ti", "Sr", "Ba", "Mn"]


@pytest.mark.parametrize("formula", ["SrTiO3", "Li2MnO3", "BaO", "Li4Ti5O12", "Mn"])
def test_counts_round_trip(formula):
    enc = CompositionEncoder(ELEMENTS, max_count=12)
    comp = Composition(formula)
    assert enc.decode(enc.encode(comp)) == comp


@pytest.mark.parametrize("formula", ["SrTiO3", "Li2MnO3", "BaO", "Li4Ti5O12"])
def test_fractional_round_trip(formula):
    enc = CompositionEncoder(ELEMENTS, max_atoms=24)
    comp = Composition(formula)
    vec = enc.encode(comp, kind="fractional")
    assert np.isclose(vec.sum(), 1.0)
    assert enc.decode(vec, kind="fractional").reduced_formula == comp.reduced_formula
    assert enc.decode(vec, kind="fractional", n_atoms=int(comp.num_atoms)) == comp


def test_onehot_round_trip_and_noise():
    enc = CompositionEncoder(ELEMENTS, max_count=4)
    comp = Composition("SrTiO3")
    mat = enc.encode_onehot(comp)
    assert mat.shape == (6, 5)
    assert np.all(mat.sum(axis=1) == 1)
    noisy = mat + 0.1 * np.random.default_rng(0).random(mat.shape)
    assert enc.decode_onehot(noisy) == comp


def test_unknown_element_and_too_many():
    enc = CompositionEncoder(["O", "Ti"], max_count=2)
    with pytest.raises(ValueError, match="Sr"):
        enc.encode("SrTiO3")
    with pytest.raises(ValueError, match="max_count"):
        enc.encode_onehot("TiO3")


def test_elements_of_sorted_by_z():
    assert elements_of([Composition("SrTiO3"), Composition("LiF")]) == ["Li", "O", "F", "Ti", "Sr"]
