"""The generate step tells the generators what the campaign knows, so a generator that
ranks or enumerates its proposals moves past them instead of handing the screen duplicates."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.evaluators.novelty import NoveltyIndex
from matloop.identity import candidate_id
from matloop.loop.context import RunContext
from matloop.loop.generate import GenerateStep, candidate_doc
from matloop.results.report import diagnostic_table_rows
from matloop.store import MatloopStore
from matloop.store.documents import structure_from_dict


class _Earlier:  # what proposed the stored crystal: only its name is recorded
    name = "random_symmetric"


def test_a_crystal_stored_under_another_id_is_skipped_by_the_next_round():
    config = parse_config({
        "name": "known", "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "prototype_substitution"}],
        "budget": {"candidates_per_round": 40}, "store": "memory://", "seed": 0,
    })
    ctx = RunContext(config, MatloopStore("memory://"))
    # round 1 holds rock-salt NaCl, 4 % too large: its own id, the same crystal
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64 * 1.04), ["Na", "Cl"],
                                          [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    stored = candidate_doc(ctx.name, rock_salt, 1, _Earlier(), candidate_id)
    ctx.store.add_candidates([stored])

    metrics = GenerateStep().run(ctx, 2)

    assert metrics["known_skipped_by_generator"] == {"prototype_substitution": 1}
    # the report's diagnostics table says so beside the repeats
    assert "(1 known skipped)" in diagnostic_table_rows([{"round": 2, **metrics}])[0][4]
    proposed = [structure_from_dict(c.structure) for c in ctx.store.candidates(ctx.name, round_=2)]
    assert proposed and len(proposed) == metrics["proposed"]
    held = NoveltyIndex(entries=[(stored.candidate_id, rock_salt)])
    assert not [s for s in proposed if held.match(s) is not None]
    # and the proposals of one round are distinct among themselves
    seen = NoveltyIndex()
    for i, s in enumerate(proposed):
        assert seen.match(s) is None
        seen.add(i, s)


def test_proposals_a_generator_cannot_make_go_to_the_others():
    config = parse_config({
        "name": "dry", "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "prototype_substitution"}, {"name": "random_symmetric"}],
        "budget": {"candidates_per_round": 60}, "store": "memory://", "seed": 0,
    })
    ctx = RunContext(config, MatloopStore("memory://"))
    metrics = GenerateStep().run(ctx, 1)

    asked = metrics["allocation"]["asked"]
    assert asked == {"prototype_substitution": 30, "random_symmetric": 30}
    made = metrics["proposed_by"]
    # the few Na-Cl decorations of at most 4 atoms run out; random crystals fill the round
    assert made["prototype_substitution"] < 30
    shortfall = 30 - made["prototype_substitution"]
    assert metrics["allocation"]["reassigned"] == {"random_symmetric": shortfall}
    assert made["random_symmetric"] > 30
    assert metrics["proposed"] == sum(made.values())
