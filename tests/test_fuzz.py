"""Property-based tests (hypothesis): representations round-trip, the config loader fails
only with ``ConfigError``, the structure validators never crash and always say why."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from matloop.config import ConfigError, load_config, parse_config
from matloop.evaluators.validity import (
    ValidityResult,
    screen_structure,
    structural_validity,
)
from matloop.representations.composition import CompositionEncoder
from matloop.representations.crystal_matrix import CrystalMatrixEncoder

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ELEMENTS = ["O", "Na", "Cl", "Ti", "Sr"]


# -- representations ----------------------------------------------------------------------
@st.composite
def small_crystals(draw) -> Structure:
    """Ordered crystals of 1-4 atoms in sensible cells, atoms at least 1 Å apart."""
    lengths = draw(st.lists(st.floats(3.0, 7.0), min_size=3, max_size=3))
    angles = draw(st.lists(st.floats(75.0, 105.0), min_size=3, max_size=3))
    lattice = Lattice.from_parameters(*lengths, *angles)
    assume(lattice.volume > 10.0)
    n = draw(st.integers(1, 4))
    species = draw(st.lists(st.sampled_from(ELEMENTS), min_size=n, max_size=n))
    coords = draw(st.lists(st.lists(st.floats(0.0, 0.999), min_size=3, max_size=3),
                           min_size=n, max_size=n))
    structure = Structure(lattice, species, coords)
    assume(structural_validity(structure, min_distance=1.0).valid)
    return structure


@FUZZ
@given(small_crystals())
def test_crystal_matrix_round_trip(structure):
    enc = CrystalMatrixEncoder(ELEMENTS, max_atoms=4)
    matrix = enc.encode(structure)
    assert matrix.shape == enc.shape and np.all(np.isfinite(matrix))
    back = enc.decode(matrix)
    assert back.composition == structure.composition
    assert StructureMatcher(primitive_cell=False, scale=False).fit(back, structure)


@FUZZ
@given(st.dictionaries(st.sampled_from(ELEMENTS), st.integers(1, 8), min_size=1))
def test_composition_round_trips(counts):
    enc = CompositionEncoder(ELEMENTS, max_count=8, max_atoms=40)
    comp = Composition(counts)
    assert enc.decode(enc.encode(comp)) == comp
    assert enc.decode_onehot(enc.encode_onehot(comp)) == comp
    fractional = enc.decode(enc.encode(comp, kind="fractional"), kind="fractional")
    assert fractional.reduced_formula == comp.reduced_formula


@FUZZ
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=5, max_size=5))
def test_composition_decode_never_crashes_on_noise(vector):
    enc = CompositionEncoder(ELEMENTS)
    try:
        comp = enc.decode(np.array(vector))
    except ValueError:  # e.g. NaN or infinite counts: a clear refusal is fine
        return
    assert set(map(str, comp.elements)) <= set(ELEMENTS)


# -- config loader ----------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
VALID = {
    "name": "fuzz",
    "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
    "budget": {"rounds": 1, "candidates_per_round": 4, "relaxations_per_round": 2},
    "relaxer": {"potential": "CHGNet", "steps": 10},
    "acquisition": {"strategy": "ucb"},
    "generators": [{"name": "prototype_substitution", "weight": 1.0}],
    "seed_data": {"files": [{"path": "x.csv"}]},
    "objective": {"stability_threshold": 0.1},
    "store": "memory://",
    "seed": 0,
}
PATHS = [
    (), ("name",), ("chemical_space",), ("chemical_space", "elements"),
    ("chemical_space", "max_atoms"), ("budget",), ("budget", "rounds"),
    ("budget", "relaxations_per_round"), ("relaxer", "potential"), ("relaxer", "steps"),
    ("acquisition", "strategy"), ("generators",), ("generators", 0, "name"),
    ("generators", 0, "checkpoint"), ("generators", 0, "settings"), ("seed_data", "files"),
    ("objective", "property"), ("store",), ("seed",), ("unknown_field",),
]


def _mutated(path, value) -> object:
    import copy

    if not path:
        return value
    data = copy.deepcopy(VALID)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _only_config_errors(data) -> None:
    try:
        parse_config(data, source="fuzz.yaml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.yaml:")


@FUZZ
@given(st.sampled_from(PATHS), JSON)
def test_config_mutations_fail_only_with_config_error(path, value):
    _only_config_errors(_mutated(path, value))


@FUZZ
@given(JSON)
def test_arbitrary_documents_fail_only_with_config_error(data):
    _only_config_errors(data)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_yaml_text_fails_only_with_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "campaign.yaml"
        path.write_text(text)
        with contextlib.suppress(ConfigError):  # anything else fails the test
            load_config(path)


# -- structure validators ---------------------------------------------------------------------
ODD = st.sampled_from([0.0, -1.0, 1e-9, 1e9, float("nan"), float("inf"), -float("inf")])
NUMBER = st.floats(-20.0, 20.0) | ODD


@st.composite
def any_structures(draw) -> Structure:
    matrix = np.array(draw(st.lists(NUMBER, min_size=9, max_size=9))).reshape(3, 3)
    if draw(st.booleans()):  # mostly-sane cells too, so the later checks are reached
        matrix = np.diag(draw(st.lists(st.floats(0.5, 12.0), min_size=3, max_size=3)))
    n = draw(st.integers(1, 6))
    species = draw(st.lists(st.sampled_from(ELEMENTS + ["Xe", "U"]), min_size=n, max_size=n))
    coords = draw(st.lists(st.lists(st.floats(-1, 2) | ODD, min_size=3, max_size=3),
                           min_size=n, max_size=n))
    try:
        return Structure(Lattice(matrix), species, coords)
    except Exception:  # pymatgen refuses to build it: nothing for a validator to judge
        assume(False)


@FUZZ
@given(any_structures())
def test_validators_never_crash_and_give_reasons(structure):
    for result in (
        structural_validity(structure),
        screen_structure(structure, allowed_elements=ELEMENTS, max_atoms=5),
    ):
        assert isinstance(result, ValidityResult)
        assert result.valid or (isinstance(result.reason, str) and result.reason)
    if not np.all(np.isfinite(structure.lattice.matrix)):
        assert not structural_validity(structure).valid


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_coordinates_named(bad):
    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, bad, 0.5]])
    assert structural_validity(s).reason == "non-finite lattice/coords"
