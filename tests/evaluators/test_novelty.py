from __future__ import annotations

import time

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from matloop.evaluators.novelty import NoveltyIndex, NoveltyResult, novelty_and_uniqueness


def _rocksalt(a: float = 5.64, species=("Na", "Cl")) -> Structure:
    """Primitive rock-salt cell (2 atoms; faster to build than ``from_spacegroup``)."""
    lattice = Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Structure(lattice, list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def _cscl(a: float = 3.3, species=("Na", "Cl")) -> Structure:
    return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_strained_rocksalt_matches_cscl_type_does_not():
    index = NoveltyIndex(entries=[("nacl", _rocksalt())])
    strained = _rocksalt().copy()
    strained.apply_strain([0.03, -0.02, 0.01])
    strained.perturb(0.05, min_distance=0.0)  # type: ignore[call-arg]
    assert index.match(strained) == "nacl"
    # Same formula, different arrangement: compared, but no match.
    assert index.match(_cscl()) is None
    assert len(index) == 1
    assert _cscl() not in index


def test_tolerances_are_configurable():
    sheared = Structure(Lattice.from_parameters(5.64, 5.64, 5.64, 90, 90, 80), ["Na"], [[0, 0, 0]])
    cubic = Structure(Lattice.cubic(5.64), ["Na"], [[0, 0, 0]])
    assert NoveltyIndex(entries=[("c", cubic)]).match(sheared) is None  # 10° > angle_tol 5°
    loose = NoveltyIndex(angle_tol=15.0, entries=[("c", cubic)])
    assert loose.match(sheared) == "c"


def test_novelty_and_uniqueness_batch():
    known = NoveltyIndex(entries=[("mp-nacl", _rocksalt())])
    batch = [
        ("a", _rocksalt(5.7)),  # known -> not novel, but first of its kind in the batch
        ("b", _cscl()),  # novel and unique
        ("c", _cscl(3.4)),  # novel, duplicate of b
        ("d", _rocksalt(5.5, ("K", "Br"))),  # novel and unique (other formula)
        ("b", _cscl()),  # repeated id: skipped
    ]
    result = novelty_and_uniqueness(batch, known)
    assert result == {
        "a": NoveltyResult(False, True, "mp-nacl"),
        "b": NoveltyResult(True, True, None),
        "c": NoveltyResult(True, False, "b"),
        "d": NoveltyResult(True, True, None),
    }
    assert len(known) == 1  # the known index is not modified


def test_different_formulas_never_compared(monkeypatch):
    cations = [
        "Li",
        "Na",
        "K",
        "Rb",
        "Cs",
        "Mg",
        "Ca",
        "Sr",
        "Ba",
        "Zn",
        "Cd",
        "Ni",
        "Co",
        "Fe",
        "Mn",
        "Cu",
        "Ag",
        "Pb",
        "Sn",
        "Eu",
        "Sm",
        "Y",
        "La",
        "Ce",
        "Tl",
    ]
    anions = ["F", "Cl", "Br", "I", "O", "S", "Se", "Te", "N", "P"]
    items = []
    for c in cations:
        for a in anions:
            items.append((f"rs-{c}{a}", _rocksalt(5.0, (c, a))))
            items.append((f"cs-{c}{a}", _cscl(3.0, (c, a))))
    assert len(items) == 500
    known = NoveltyIndex(entries=items[:200:2])  # rock salts of the first 100 formulas

    compared: list[tuple[str, str]] = []
    real_fit = StructureMatcher.fit

    def counting_fit(self, s1, s2, *args, **kwargs):
        compared.append((s1.composition.reduced_formula, s2.composition.reduced_formula))
        return real_fit(self, s1, s2, *args, **kwargs)

    monkeypatch.setattr(StructureMatcher, "fit", counting_fit)
    start = time.perf_counter()
    result = novelty_and_uniqueness(items, known)
    elapsed = time.perf_counter() - start

    assert all(f1 == f2 for f1, f2 in compared)
    # Against the known index: 100 rock salts + 100 CsCl-types of the known formulas.
    assert known.n_comparisons == 200
    # Within the batch: each CsCl-type meets the rock salt of its formula once.
    assert len(compared) == 200 + 250
    assert sum(not r.is_novel for r in result.values()) == 100
    assert all(r.is_unique for r in result.values())
    assert elapsed < 20, f"500 structures took {elapsed:.1f} s"


def test_oxidation_states_ignored_in_bucket_key():
    plain = _rocksalt()
    decorated = _rocksalt()
    decorated.add_oxidation_state_by_element({"Na": 1, "Cl": -1})
    assert NoveltyIndex.key(plain) == NoveltyIndex.key(decorated) == "NaCl"


@pytest.mark.parametrize("n", [0, 3])
def test_len_and_bucket_size(n):
    index = NoveltyIndex()
    for i in range(n):
        index.add(i, _rocksalt(5.0 + i))
    assert len(index) == n
    assert index.bucket_size(_cscl()) == n


# -- novelty judged against a reference, or unjudged ----------------------------------------
def test_novelty_is_unjudged_only_when_the_reference_lacks_the_chemical_system():
    from matloop.evaluators.novelty import Novelty, ReferenceCoverage, judge_novelty

    coverage = ReferenceCoverage.from_crystals(
        [("file:mp.csv", "Ti-O"), ("file:mp.csv", "O-Ti"), ("optimade:odbx", "O")]
    )
    # Ca-O holds nothing: not found means nothing
    novelty, reference = judge_novelty(None, "Ca-O", coverage)
    assert novelty is Novelty.unjudged
    assert reference == {"sets": ["file:mp.csv", "optimade:odbx"], "chemsys": "Ca-O",
                         "n_chemsys": 0, "n_subsystems": {"Ca": 0, "O": 1}}
    # Ti-O holds two crystals (element order does not matter): a miss is novel
    novelty, reference = judge_novelty(None, "Ti-O", coverage)
    assert novelty is Novelty.novel and reference["n_chemsys"] == 2
    # a match is known, whether or not the system was covered
    assert judge_novelty("element:Ca", "Ca", coverage)[0] is Novelty.known
    assert judge_novelty("mp-2", "O-Ti", coverage)[0] is Novelty.known
    # an empty reference judges nothing
    assert judge_novelty(None, "Ti-O", ReferenceCoverage())[0] is Novelty.unjudged


def test_the_matcher_has_pymatgens_default_settings_and_spawn_keeps_them():
    assert NoveltyIndex().matcher.as_dict() == StructureMatcher().as_dict()
    loose = NoveltyIndex(ltol=0.3, stol=0.4, angle_tol=15.0, primitive_cell=False, scale=False,
                         attempt_supercell=True, entries=[("c", _rocksalt())])  # fmt: skip
    child = loose.spawn()
    assert len(child) == 0 and child.matcher.as_dict() == loose.matcher.as_dict()
    assert child.matcher.as_dict() != StructureMatcher().as_dict()


def test_match_counts_its_comparisons_within_one_formula():
    index = NoveltyIndex(entries=[("rs", _rocksalt()), ("rs2", _rocksalt(5.0)),
                                  ("kbr", _rocksalt(6.6, ("K", "Br")))])  # fmt: skip
    assert index.n_comparisons == 0 and len(index) == 3
    assert index.match(_cscl()) is None and index.n_comparisons == 2  # both NaCl, not KBr
    assert index.match(_rocksalt(5.7)) == "rs" and index.n_comparisons == 3  # stops at a match
    assert index.match(_cscl(3.0, ("Li", "F"))) is None and index.n_comparisons == 3


def test_a_comparison_that_fails_is_skipped_not_fatal(monkeypatch):
    index = NoveltyIndex(entries=[("odd", _rocksalt(5.0)), ("rs", _rocksalt())])
    real_fit = StructureMatcher.fit

    def fails_on_the_odd_one(self, s1, s2, *args, **kwargs):
        odd = _rocksalt(5.0)  # known by its volume per atom (fit may see its reduced cell)
        if abs(s2.volume / len(s2) - odd.volume / len(odd)) < 1e-6:
            raise ValueError("cannot reduce this cell")
        return real_fit(self, s1, s2, *args, **kwargs)

    monkeypatch.setattr(StructureMatcher, "fit", fails_on_the_odd_one)
    assert index.match(_rocksalt(5.7)) == "rs" and index.n_comparisons == 2


def test_a_batch_duplicate_of_a_known_crystal_names_the_known_one():
    known = NoveltyIndex(entries=[("mp-nacl", _rocksalt())])
    result = novelty_and_uniqueness([("a", _rocksalt(5.6)), ("b", _rocksalt(5.7))], known)
    assert result["b"] == NoveltyResult(False, False, "mp-nacl")
    assert known.n_comparisons == 2 and len(known) == 1
    assert novelty_and_uniqueness([], known) == {}


def test_coverage_counts_systems_whatever_the_element_order():
    from matloop.evaluators.novelty import ReferenceCoverage, subsystems

    coverage = ReferenceCoverage.from_crystals([("a", "O-Ti"), ("b", "Ti-O"), ("a", "Ti")])
    assert coverage.sets == ["a", "b"] and coverage.count("Ti-O") == 2
    assert coverage.describe("O-Ti-Ca") == {
        "sets": ["a", "b"], "chemsys": "Ca-O-Ti", "n_chemsys": 0,
        "n_subsystems": {"Ca": 0, "O": 0, "Ti": 1, "Ca-O": 0, "Ca-Ti": 0, "O-Ti": 2}}  # fmt: skip
    assert subsystems("Na") == [] and subsystems("Cl-Na") == ["Cl", "Na"]


def test_a_repeated_id_is_skipped_and_the_batch_goes_on(caplog):
    known = NoveltyIndex()
    batch = [("a", _rocksalt()), ("a", _cscl()), ("b", _cscl()), ("c", _cscl(3.4))]
    with caplog.at_level("DEBUG", logger="matloop.evaluators.novelty"):
        result = novelty_and_uniqueness(batch, known)
    assert result == {"a": NoveltyResult(True, True, None), "b": NoveltyResult(True, True, None),
                      "c": NoveltyResult(True, False, "b")}  # fmt: skip
    assert "candidate id a repeated in the batch; keeping the first" in caplog.messages


def test_a_failed_comparison_is_logged_with_the_known_id_and_reason(monkeypatch, caplog):
    index = NoveltyIndex(entries=[("odd", _rocksalt())])

    def fails(self, s1, s2, *args, **kwargs):
        raise ValueError("cannot reduce this cell")

    monkeypatch.setattr(StructureMatcher, "fit", fails)
    with caplog.at_level("DEBUG", logger="matloop.evaluators.novelty"):
        assert index.match(_rocksalt(5.7)) is None
    assert caplog.messages == ["StructureMatcher failed on odd: cannot reduce this cell"]


def test_matching_reduced_cells_decides_as_pymatgens_fit(shared_data):
    """The index reduces each cell once and fits with ``skip_structure_reduction``: on known
    crystals, their supercells, strained and rattled copies, every same-formula pair is
    decided as pymatgen's own ``StructureMatcher().fit`` decides it."""
    import numpy as np

    from matloop.data import RowFilter, read_structures

    wanted = RowFilter(frozenset({"Li", "Co", "Mn", "O", "Ti", "Fe", "Ni"}), 10)
    rows = read_structures(shared_data / "known_crystals_mp.csv.gz", row_filter=wanted)
    rng = np.random.default_rng(0)
    structures = []
    for crystal in rows.crystals[:24]:
        s = crystal.structure
        rattled = s.copy()
        rattled.perturb(0.1, min_distance=0.05, seed=int(rng.integers(1000)))  # type: ignore[call-arg]
        strained = s.copy()
        strained.apply_strain([0.03, -0.02, 0.01])
        distorted = s.copy()  # beyond the matcher's tolerances: no match
        distorted.apply_strain([0.35, -0.2, 0.0])
        structures += [s, s.make_supercell([2, 1, 1], in_place=False), rattled, strained,
                       distorted]
    plain = StructureMatcher()
    decided, matches = 0, 0
    for i, a in enumerate(structures):
        index = NoveltyIndex()
        for j, b in enumerate(structures[:i]):
            if NoveltyIndex.key(a) != NoveltyIndex.key(b):
                continue
            index._buckets.clear()
            index.add(j, b)
            expected = plain.fit(a, b)
            assert (index.match(a) == j) == expected, (i, j)
            decided, matches = decided + 1, matches + expected
    assert decided > 40 and 0 < matches < decided
