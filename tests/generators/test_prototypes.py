"""Prototype substitution: the library's geometry, charge balance, determinism, ``fit``."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from matloop.chemistry import smact_valid
from matloop.generators.base import ChemicalSpace
from matloop.generators.prototypes import (
    PROTOTYPES,
    DistinctStructures,
    PrototypeSubstitution,
    build_prototype,
)

# name -> (reduced formula of the example compound, space group, atoms in the primitive cell),
# written from the crystallographic literature, independently of PROTOTYPES.
EXPECTED = {
    "rock_salt": ("NaCl", 225, 2),
    "cesium_chloride": ("CsCl", 221, 2),
    "zinc_blende": ("ZnS", 216, 2),
    "wurtzite": ("ZnO", 186, 4),
    "fluorite": ("CaF2", 225, 3),
    "antifluorite": ("Li2O", 225, 3),
    "rutile": ("TiO2", 136, 6),
    "nickel_arsenide": ("NiAs", 194, 4),
    "cadmium_iodide": ("CdI2", 164, 3),
    "alpha_nafeo2": ("LiCoO2", 166, 4),
    "perovskite": ("SrTiO3", 221, 5),
    "spinel": ("MgAl2O4", 227, 14),
    "corundum": ("Al2O3", 167, 10),
    "cu3au_l12": ("Cu3Au", 221, 4),
    "full_heusler_l21": ("Cu2MnAl", 225, 4),
    "a15": ("Nb3Sn", 223, 8),
}


def min_distance(structure: Structure) -> float:
    """Shortest interatomic distance, periodic images included."""
    return float(min(structure.get_neighbor_list(6.0)[3]))


def test_library_is_the_documented_one():
    assert set(PROTOTYPES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prototype_has_its_space_group(name):
    formula, spacegroup, n_atoms = EXPECTED[name]
    structure = build_prototype(name, PROTOTYPES[name].example)
    assert structure.composition.reduced_composition == Composition(formula)
    assert len(structure) == n_atoms
    assert SpacegroupAnalyzer(structure, symprec=0.01).get_space_group_number() == spacegroup
    assert structure.properties["prototype"] == name


@pytest.mark.parametrize(
    ("name", "elements", "lattice_a"),
    [
        # Lattice constants of the real compounds (Å, conventional cells); the radius-based
        # starting guess should be within 10 %.
        ("rock_salt", {"A": "Na", "X": "Cl"}, 5.64),
        ("perovskite", {"A": "Sr", "B": "Ti", "X": "O"}, 3.905),
        ("cu3au_l12", {"A": "Cu", "B": "Au"}, 3.75),
    ],
)
def test_starting_cell_size_is_sensible(name, elements, lattice_a):
    structure = build_prototype(name, elements)
    conventional = SpacegroupAnalyzer(structure).get_conventional_standard_structure()
    assert conventional.lattice.a == pytest.approx(lattice_a, rel=0.1)


def test_no_atoms_start_too_close():
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    for name, proto in PROTOTYPES.items():
        structure = build_prototype(name, proto.example)
        centers, points, _, distances = structure.get_neighbor_list(4.0)
        for i, j, d in zip(centers, points, distances, strict=True):
            a, b = structure[i].specie.symbol, structure[j].specie.symbol
            assert d >= 0.7 * (CovalentRadius.radius[a] + CovalentRadius.radius[b]), name


def test_build_prototype_rejects_bad_decorations():
    with pytest.raises(ValueError, match="not a charge-balanced"):
        build_prototype("perovskite", {"A": "O", "B": "Ti", "X": "Sr"})
    with pytest.raises(ValueError, match="unknown prototype"):
        build_prototype("diamond", {"A": "C"})
    with pytest.raises(ValueError, match="roles"):
        build_prototype("rock_salt", {"A": "Na"})


@pytest.fixture(scope="module")
def catio_samples() -> list[Structure]:
    gen = PrototypeSubstitution(ChemicalSpace(["Ca", "Ti", "O"], max_atoms=10), seed=3)
    return gen.sample(1000)


def test_samples_are_valid(catio_samples):
    space = ChemicalSpace(["Ca", "Ti", "O"], max_atoms=10)
    assert len(catio_samples) > 10
    for s in catio_samples:
        assert isinstance(s, Structure)
        assert space.allows(s)
        assert len(s.composition.elements) >= 2
        assert smact_valid(s.composition)
        assert min_distance(s) > 0.5
        assert s.properties["prototype"] in PROTOTYPES
        assert s.properties["template"] == "library"


def test_ionic_decorations_put_anions_on_anion_sites(catio_samples):
    ionic = [s for s in catio_samples if s.properties["oxidation_states"] is not None]
    assert ionic
    for s in ionic:
        states = s.properties["oxidation_states"]
        assert sum(states[site.specie.symbol] for site in s) == 0
        cations = [Element(e).X for e, ox in states.items() if ox > 0]
        anions = [Element(e).X for e, ox in states.items() if ox < 0]
        assert max(cations) < min(anions)
    # Perovskite: Ca (large) on the A site, Ti on the B site, O on the anion site.
    (perovskite,) = [s for s in catio_samples if s.properties["prototype"] == "perovskite"]
    assert perovskite.properties["substitution"] == {"A": "Ca", "B": "Ti", "X": "O"}


def test_samples_are_distinct(catio_samples):
    seen = DistinctStructures()
    for s in catio_samples:
        assert s not in seen
        seen.add(s)


def test_max_atoms_is_respected():
    gen = PrototypeSubstitution(ChemicalSpace(["Ca", "Ti", "O"], max_atoms=4))
    samples = gen.sample(100)
    assert samples
    assert all(len(s) <= 4 for s in samples)
    assert "corundum" not in {s.properties["prototype"] for s in samples}


def test_n_is_respected_and_sampling_is_deterministic():
    space = ChemicalSpace(["Li", "Mn", "O"], max_atoms=12)
    first = PrototypeSubstitution(space, seed=5).sample(4)
    second = PrototypeSubstitution(space, seed=5).sample(4)
    assert len(first) == 4
    assert [s.properties for s in first] == [s.properties for s in second]
    for a, b in zip(first, second, strict=True):
        assert np.allclose(a.lattice.matrix, b.lattice.matrix)
    assert PrototypeSubstitution(space).sample(0) == []


def test_explicit_rng_is_used(rng):
    space = ChemicalSpace(["Li", "Mn", "O"], max_atoms=12)
    a = PrototypeSubstitution(space).sample(6, rng=np.random.default_rng(11))
    b = PrototypeSubstitution(space, seed=99).sample(6, rng=np.random.default_rng(11))
    assert [s.properties for s in a] == [s.properties for s in b]
    assert len(PrototypeSubstitution(space).sample(3, rng=rng)) == 3


def test_successive_calls_propose_new_structures_first():
    gen = PrototypeSubstitution(ChemicalSpace(["Li", "Mn", "O"], max_atoms=12))
    first, second = gen.sample(5), gen.sample(5)
    seen = DistinctStructures()
    for s in first:
        seen.add(s)
    assert not any(s in seen for s in second)
    rest = gen.sample(1000)
    assert 0 < len(rest) < 1000
    # Once every candidate has been proposed, none comes back: a repeat only costs a
    # round a proposal (the loop would count it as a repeat of a stored crystal)
    assert gen.sample(3) == []


def test_fit_substitutes_known_crystals_into_the_space():
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    gen = PrototypeSubstitution(ChemicalSpace(["K", "Br"], max_atoms=8), prototypes=[])
    assert gen.sample(5) == []
    gen.fit([nacl])
    assert gen.version == 1
    (kbr,) = gen.sample(5)
    assert kbr.composition.reduced_formula == "KBr"
    assert kbr.properties["substitution"] == {"Cl": "Br", "Na": "K"}
    assert kbr.properties["template"] == "fit:0"
    assert kbr.properties["prototype"] == "NaCl_Fm-3m"
    assert SpacegroupAnalyzer(kbr).get_space_group_number() == 225
    assert kbr.lattice.a == pytest.approx(6.60, rel=0.1)  # KBr: a = 6.60 Å


def test_fit_skips_the_crystal_itself_and_unusable_ones():
    nacl = build_prototype("rock_salt", {"A": "Na", "X": "Cl"})
    big = nacl * (2, 2, 2)
    gen = PrototypeSubstitution(ChemicalSpace(["Na", "Cl"], max_atoms=8), prototypes=[])
    gen.fit([nacl, big])
    assert gen.sample(5) == []  # the identity substitution is the known crystal itself


def test_fit_keeps_sign_and_kind_of_each_ion():
    spinel = build_prototype("spinel", {"A": "Mg", "B": "Al", "X": "O"})
    space = ChemicalSpace(["Zn", "Ga", "O", "S"], max_atoms=14)
    gen = PrototypeSubstitution(space, prototypes=[])
    gen.fit([spinel])
    samples = gen.sample(100)
    assert {s.composition.reduced_formula for s in samples} >= {"Zn(GaO2)2", "Zn(GaS2)2"}
    for s in samples:
        states = s.properties["oxidation_states"]
        assert states[s.properties["substitution"]["O"]] < 0
        assert smact_valid(s.composition)
        assert space.allows(s)


def test_unknown_prototype_setting():
    with pytest.raises(ValueError, match="unknown prototypes"):
        PrototypeSubstitution(ChemicalSpace(["Na", "Cl"]), prototypes=["diamond"])


def test_describe():
    gen = PrototypeSubstitution(ChemicalSpace(["Na", "Cl"]), seed=4)
    info = gen.describe()
    assert info["generator"] == "prototype_substitution"
    assert info["seed"] == 4


def test_distinct_structures_decide_as_pymatgens_fit(shared_data):
    """Cells are reduced once when remembered; membership is still what
    ``StructureMatcher().fit`` against each remembered crystal of the formula says."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from matloop.data import RowFilter, read_structures
    from matloop.generators.prototypes import DistinctStructures

    rows = read_structures(shared_data / "known_crystals_mp.csv.gz",
                           row_filter=RowFilter(frozenset({"Li", "Mn", "O", "Ti", "Fe"}), 10))
    structures = []
    for crystal in rows.crystals[:16]:
        s = crystal.structure
        strained, distorted = s.copy(), s.copy()
        strained.apply_strain([0.03, -0.02, 0.01])
        distorted.apply_strain([0.35, -0.2, 0.0])
        structures += [s, s.make_supercell([1, 2, 1], in_place=False), strained, distorted]
    plain = StructureMatcher()
    seen, inside = DistinctStructures(), 0
    for i, s in enumerate(structures):
        formula = s.composition.reduced_formula
        same = [o for o in structures[:i] if o.composition.reduced_formula == formula]
        expected = any(plain.fit(s, o) for o in same)
        assert (s in seen) == expected, i
        inside += expected
        seen.add(s)
    assert len(seen) == len(structures) and 0 < inside < len(structures)


def test_proposals_of_earlier_rounds_are_skipped_not_repeated():
    space = ChemicalSpace(elements=["Ca", "Ti", "O"], max_atoms=5)
    first = PrototypeSubstitution(space, seed=0)
    earlier = first.sample(5, rng=np.random.default_rng(0))
    labels = {s.properties["proposal"] for s in earlier}
    assert len(labels) == 5  # each proposal names its own template and decoration

    # a later round builds the generator afresh: told what was proposed, it moves on
    later = PrototypeSubstitution(space, seed=0)
    later.exclude_proposed(labels)
    again = later.sample(later.n_candidates, rng=np.random.default_rng(0))
    assert not labels & {s.properties["proposal"] for s in again}
    # once every candidate was proposed in some earlier round, none is offered again
    seen = labels | {s.properties["proposal"] for s in again}
    for round_ in range(5):
        fresh = PrototypeSubstitution(space, seed=0)
        fresh.exclude_proposed(seen)
        out = fresh.sample(fresh.n_candidates, rng=np.random.default_rng(round_))
        assert not seen & {s.properties["proposal"] for s in out}
        if not out:
            break
        seen |= {s.properties["proposal"] for s in out}
    assert out == []


def test_crystals_the_campaign_holds_are_skipped_whatever_their_label():
    from matloop.identity import candidate_id

    space = ChemicalSpace(elements=["Ca", "Ti", "O"], max_atoms=5)
    everything = PrototypeSubstitution(space, seed=0).sample(1000, rng=np.random.default_rng(0))
    stored = {candidate_id(s) for s in everything[::2]}  # half of them, from any generator
    later = PrototypeSubstitution(space, seed=0)
    later.exclude_stored(stored)
    out = later.sample(1000, rng=np.random.default_rng(1))
    assert out and not stored & {candidate_id(s) for s in out}


def test_decorations_matching_a_known_crystal_are_skipped_and_counted():
    from matloop.evaluators.novelty import NoveltyIndex

    space = ChemicalSpace(elements=["Ca", "Ti", "O"], max_atoms=5)
    everything = PrototypeSubstitution(space, seed=0).sample(1000, rng=np.random.default_rng(0))
    known = NoveltyIndex()
    for i, s in enumerate(everything[::2]):  # half of them, held under other ids: strained
        strained = s.copy()
        strained.scale_lattice(s.volume * 1.05)
        known.add(i, strained)
    later = PrototypeSubstitution(space, seed=0)
    later.exclude_known(known)
    out = later.sample(1000, rng=np.random.default_rng(1))
    assert later.skipped_known == len(everything[::2])
    assert len(out) == len(everything) - len(everything[::2])
    assert not any(known.match(s) is not None for s in out)
