"""The generate step tells the generators the campaign's discoveries of earlier rounds
(stable, unique, not known), as relaxed, and ion substitution builds on them."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.loop.context import RunContext
from matloop.loop.generate import GenerateStep, discoveries
from matloop.store import CampaignDoc, EvaluationDoc, MatloopStore, RelaxationDoc
from matloop.store.documents import structure_dict


def rock_salt(a: str, x: str, edge: float = 5.64) -> Structure:
    return Structure(Lattice.cubic(edge), [a, x], [[0, 0, 0], [0.5, 0.5, 0.5]])


def judged(cid: str, round_: int, *, stable=True, unique=True, novelty="novel"):
    return EvaluationDoc(
        campaign="feed", candidate_id=cid, round=round_, formula="LiCl", energy_per_atom=-3.0,
        e_above_hull=0.0 if stable else 0.5, is_stable=stable, is_novel=novelty == "novel",
        is_unique=unique, novelty=novelty, hull_scheme="CHGNet", hull_version=round_,
    )


def test_only_earlier_stable_unique_unknown_crystals_feed_the_generators():
    config = parse_config({
        "name": "feed", "chemical_space": {"elements": ["Li", "K", "Cl"], "max_atoms": 4},
        "generators": [{"name": "ion_substitution", "settings": {"threshold": 1e-6}}],
        "budget": {"candidates_per_round": 4, "relaxations_per_round": 1},
        "store": "memory://", "seed": 0,
    })
    ctx = RunContext(config, MatloopStore("memory://"))
    ctx.store.save_campaign(CampaignDoc(campaign="feed", config={"name": "feed"}))
    relaxed = rock_salt("Li", "Cl", 5.14)
    evaluations = {
        "hit": judged("hit", 1),
        "unjudged": judged("unjudged", 1, novelty="unjudged"),
        "unstable": judged("unstable", 1, stable=False),
        "duplicate": judged("duplicate", 1, unique=False),
        "known": judged("known", 1, novelty="known"),
        "this_round": judged("this_round", 2),
    }
    ctx.store.save_evaluations(list(evaluations.values()))
    ctx.store.save_relaxations([
        RelaxationDoc(campaign="feed", candidate_id=cid, ok=True, energy_per_atom=-3.0,
                      structure=structure_dict(relaxed), round=1)
        for cid in evaluations
    ])
    found = discoveries(ctx, 2)
    assert sorted(found) == ["hit", "unjudged"]
    assert found["hit"].lattice.a == relaxed.lattice.a  # as relaxed, not as proposed

    metrics = GenerateStep().run(ctx, 2)
    proposed = ctx.store.candidates("feed", round_=2)
    assert metrics["proposed"] == len(proposed) >= 1
    assert {c.formula for c in proposed} == {"KCl"}
    assert all(c.generator == "ion_substitution" for c in proposed)
