"""Ion substitution into known crystals, ranked by pymatgen's substitution probabilities."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Species, Structure

from matloop.data import expand_path
from matloop.generators.base import ChemicalSpace
from matloop.generators.ion_substitution import IonSubstitution, rank_substitutions
from matloop.generators.registry import build_generator


def rock_salt(a: str = "Na", x: str = "Cl") -> Structure:
    return Structure(Lattice.cubic(5.64), [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])


def test_substitutes_seed_crystals_into_the_space():
    space = ChemicalSpace(["Ca", "Zr", "Mg", "O"], max_atoms=10)
    gen = build_generator("ion_substitution", space, threshold=1e-5)
    seeds = [rock_salt(), perovskite()]
    gen.fit(seeds)
    out = gen.sample(20)
    assert out, "no substitution proposed"
    for s in out:
        assert {el.symbol for el in s.composition.elements} <= set(space.elements)
        template = s.properties["template"]
        source = seeds[0] if template.startswith("NaCl") else seeds[1]
        assert len(s) == len(source)  # the template's cell, its sites relabelled
        assert s.properties["prototype"].startswith(template)
    formulas = {s.composition.reduced_formula for s in out}
    assert "CaZrO3" in formulas  # SrTiO3 with Sr2+ -> Ca2+, Ti4+ -> Zr4+
    assert formulas & {"MgO", "CaO"}  # NaCl with Na+ Cl- -> M2+ O2-


def test_higher_probability_substitution_ranks_first():
    from pymatgen.analysis.structure_prediction.substitution_probability import (
        SubstitutionProbability,
    )

    p = SubstitutionProbability()
    p_k = p.cond_prob(Species("K", 1), Species("Na", 1)) * p.cond_prob(Species("Cl", -1),
                                                                        Species("Cl", -1))
    p_li = p.cond_prob(Species("Li", 1), Species("Na", 1)) * p.cond_prob(Species("Cl", -1),
                                                                         Species("Cl", -1))
    assert p_k != p_li
    ranked = rank_substitutions([rock_salt()], ["Li", "K", "Cl"], threshold=1e-6)
    probabilities = [r.probability for r in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert ranked[0].probability == pytest.approx(max(p_k, p_li))
    gen = IonSubstitution(ChemicalSpace(["Li", "K", "Cl"], max_atoms=4), threshold=1e-6)
    gen.fit([rock_salt()])
    first, second = gen.sample(2)
    better = "KCl" if p_k > p_li else "LiCl"
    assert first.composition.reduced_formula == better
    assert first.properties["substitution_probability"] >= second.properties[
        "substitution_probability"]


def test_proposed_labels_are_not_proposed_again():
    gen = IonSubstitution(ChemicalSpace(["Li", "K", "Cl"], max_atoms=4), threshold=1e-6)
    gen.fit([rock_salt()])
    first = gen.sample(1)[0]
    again = IonSubstitution(ChemicalSpace(["Li", "K", "Cl"], max_atoms=4), threshold=1e-6)
    again.fit([rock_salt()])
    again.exclude_proposed({first.properties["prototype"]})
    assert all(s.properties["prototype"] != first.properties["prototype"]
               for s in again.sample(5))


def test_template_file_path_names_the_unset_variable(monkeypatch):
    monkeypatch.delenv("MATLOOP_NO_SUCH_VAR", raising=False)
    with pytest.raises(ValueError, match="MATLOOP_NO_SUCH_VAR"):
        expand_path("${MATLOOP_NO_SUCH_VAR}/x.csv")
    monkeypatch.setenv("MATLOOP_NO_SUCH_VAR", "/data")
    assert str(expand_path("${MATLOOP_NO_SUCH_VAR}/x.csv")) == "/data/x.csv"


def _rank_template_by_template(templates, elements, threshold):
    """The ranking as first written: every template's substitutions worked out anew."""
    import itertools
    import math

    from matloop.generators.ion_substitution import (
        Substitution,
        _oxidation_states,
        _probability_model,
        _target_species,
    )

    model = _probability_model()
    targets = _target_species(tuple(elements))
    known = {str(s) for s in model.species}
    out = []
    for index, structure in enumerate(templates):
        comp = structure.composition
        if len(comp.elements) > len(set(elements)):
            continue
        states = _oxidation_states(comp.reduced_formula)
        if states is None or any(str(Species(el, ox)) not in known for el, ox in states):
            continue
        counts = [comp[el] for el, _ in states]
        options = [[(t, p) for t in targets
                    if (p := model.cond_prob(Species(*t), Species(el, ox))) >= threshold]
                   for el, ox in states]  # fmt: skip
        for combo in itertools.product(*options):
            new = tuple(t for t, _ in combo)
            if len({el for el, _ in new}) < len(new) or new == states:
                continue
            if abs(sum(c * ox for c, (_, ox) in zip(counts, new, strict=True))) > 1e-6:
                continue
            if {el for el, _ in new} == {el for el, _ in states} and all(
                dict(new)[el] == ox for el, ox in states
            ):
                continue
            p = math.prod(p for _, p in combo)
            if p >= threshold:
                out.append(Substitution(index, f"t{index}", states, new, p))
    out.sort(key=lambda s: (-s.probability, s.template, s.new))
    return out


def test_ranking_worked_out_per_formula_is_the_ranking_per_template(shared_data):
    """Substitutions are cached per reduced formula; on known crystals (supercells of one
    formula included) the ranking equals the one worked out template by template."""
    from matloop.data import RowFilter, read_structures

    rows = read_structures(shared_data / "known_crystals_mp.csv.gz",
                           row_filter=RowFilter(max_atoms=6, max_elements=3)).crystals[:150]
    templates = [c.structure for c in rows]
    templates += [t.make_supercell([1, 1, 2], in_place=False) for t in templates[:10]]
    elements = ["Li", "Co", "Mn", "O"]
    expected = _rank_template_by_template(templates, elements, 1e-5)
    ranked = rank_substitutions(templates, elements, threshold=1e-5)
    assert len(expected) > 20 and len({s.template for s in expected}) > 5
    assert ranked == expected


def test_substitutions_giving_a_known_crystal_are_skipped_for_the_next():
    from matloop.evaluators.novelty import NoveltyIndex

    def generator():
        gen = IonSubstitution(ChemicalSpace(["Li", "K", "Cl"], max_atoms=4), threshold=1e-6)
        gen.fit([rock_salt()])
        return gen

    first = generator().sample(1)[0]
    # the campaign holds that crystal, strained 3 %: another id, the same structure
    strained = first.copy()
    strained.scale_lattice(first.volume * 1.03**3)
    gen = generator()
    gen.exclude_known(NoveltyIndex(entries=[("stored", strained)]))
    out = gen.sample(1)
    assert gen.skipped_known == 1
    assert out and not NoveltyIndex(entries=[("first", first)]).match(out[0])


def test_the_campaigns_discoveries_become_templates():
    space = ChemicalSpace(["Li", "K", "Cl"], max_atoms=4)
    gen = IonSubstitution(space, threshold=1e-6)
    assert gen.sample(5) == []  # no template yet: nothing to substitute into
    found = rock_salt("Li", "Cl")
    gen.use_discoveries({"LiCl-0123": found})
    out = gen.sample(5)
    assert [s.composition.reduced_formula for s in out] == ["KCl"]
    assert out[0].properties["template"] == "LiCl[LiCl-0123]"
    assert gen.describe()["n_discovery_templates"] == 1
    # switched off, a discovery is no template
    off = IonSubstitution(space, threshold=1e-6, discoveries=False)
    assert gen.wants_discoveries and not off.wants_discoveries  # the loop gathers them or not
    off.use_discoveries({"LiCl-0123": found})
    assert off.sample(5) == []
