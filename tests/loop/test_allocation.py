"""The bandit over generators: proposals move toward the generator whose candidates hit,
reproducibly, with a floor; ``allocation: fixed`` keeps the configured weights."""

from __future__ import annotations

import numpy as np
import pytest

from matloop.config import ConfigError, parse_config
from matloop.evaluators.bandit import split_budget, thompson_shares
from matloop.loop.context import RunContext
from matloop.loop.diagnostics import generator_allocation, generator_history
from matloop.store import CandidateDoc, EvaluationDoc, MatloopStore, RoundDoc

GENERATORS = [{"name": "prototype_substitution"}, {"name": "random_symmetric"}]


def context(strategy="thompson", floor=0.1, seed=0) -> RunContext:
    config = parse_config({
        "name": "bandit", "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": GENERATORS, "budget": {"candidates_per_round": 40},
        "allocation": {"strategy": strategy, "floor": floor}, "store": "memory://",
        "seed": seed,
    })
    return RunContext(config, MatloopStore("memory://"))


def record(ctx: RunContext, round_: int, generator: str, n: int, hits: int) -> None:
    """``n`` proposals of ``generator`` in ``round_``, the first ``hits`` of them hits."""
    ctx.store.save_round(RoundDoc(campaign=ctx.name, round=round_, status="completed"))
    cands, evals = [], []
    for i in range(n):
        cid = f"{generator}-{round_}-{i}"
        cands.append(CandidateDoc(campaign=ctx.name, candidate_id=cid, round=round_,
                                  formula="NaCl", chemsys="Cl-Na", nsites=2, structure={},
                                  generator=generator))  # fmt: skip
        stable = i < hits
        evals.append(EvaluationDoc(
            campaign=ctx.name, candidate_id=cid, round=round_, formula="NaCl",
            energy_per_atom=-3.0, e_above_hull=0.0 if stable else 0.5,
            e_above_hull_at_round=0.0 if stable else 0.5, is_stable=stable, is_novel=True,
            is_unique=True, hull_scheme="test", hull_version=round_,
        ))
    ctx.store.add_candidates(cands)
    ctx.store.save_evaluations(evals)


def test_thompson_shares_favour_the_arm_that_hits_and_keep_a_floor():
    rng = np.random.default_rng(0)
    shares = thompson_shares([10, 0, 1], [40, 40, 40], floor=0.1, rng=rng)
    assert shares.sum() == pytest.approx(1.0)
    assert shares[0] > 0.75 and shares.min() >= 0.1
    even = thompson_shares([0, 0], [0, 0], floor=0.0, rng=np.random.default_rng(1))
    assert even == pytest.approx([0.5, 0.5], abs=0.05)  # no data: no preference
    with pytest.raises(ValueError, match="exceeds 1"):
        thompson_shares([0, 0, 0], [1, 1, 1], floor=0.5, rng=rng)
    assert split_budget(7, [0.5, 0.25, 0.25]).sum() == 7


def test_allocation_moves_toward_the_generator_that_hits():
    ctx = context()
    first = generator_allocation(ctx, 1, ["prototype_substitution", "random_symmetric"])
    assert first["counts"] == [20, 20]  # round 1: the configured weights
    record(ctx, 1, "prototype_substitution", 20, hits=6)
    record(ctx, 1, "random_symmetric", 20, hits=0)
    assert generator_history(ctx, 2) == {"prototype_substitution": (6, 20),
                                         "random_symmetric": (0, 20)}
    second = generator_allocation(ctx, 2, ["prototype_substitution", "random_symmetric"])
    substitution, random = second["counts"]
    assert substitution + random == 40
    assert substitution >= 32 and random >= 4  # shifted; the floor (0.1 x 40) holds
    # deterministic: the same history and seed give the same allocation
    again = generator_allocation(ctx, 2, ["prototype_substitution", "random_symmetric"])
    assert again == second
    # a round only counts proposals made before it
    record(ctx, 2, "random_symmetric", 20, hits=20)
    assert generator_allocation(ctx, 2, ["prototype_substitution", "random_symmetric"]) == second
    third = generator_allocation(ctx, 3, ["prototype_substitution", "random_symmetric"])
    assert third["counts"][1] > third["counts"][0]  # random_symmetric now hits more


def test_fixed_allocation_keeps_the_weights():
    ctx = context(strategy="fixed")
    record(ctx, 1, "prototype_substitution", 20, hits=20)
    record(ctx, 1, "random_symmetric", 20, hits=0)
    alloc = generator_allocation(ctx, 2, ["prototype_substitution", "random_symmetric"])
    assert alloc["counts"] == [20, 20] and alloc["strategy"] == "fixed"


def test_allocation_config_shorthand_and_floor_check():
    base = {"name": "x", "chemical_space": {"elements": ["Na", "Cl"]}, "generators": GENERATORS}
    assert parse_config({**base, "allocation": "fixed"}).allocation.strategy == "fixed"
    assert parse_config({**base}).allocation.strategy == "fixed"
    with pytest.raises(ConfigError, match="allocation.floor"):
        parse_config({**base, "allocation": {"strategy": "thompson", "floor": 0.6}})


def test_repeat_proposals_count_against_a_generator():
    ctx = context()
    record(ctx, 1, "prototype_substitution", 20, hits=4)
    record(ctx, 1, "random_symmetric", 20, hits=4)
    doc = ctx.store.get_round(ctx.name, 1)
    doc.metrics["repeats_by_generator"] = {"prototype_substitution": 180}  # running dry
    ctx.store.save_round(doc)
    assert generator_history(ctx, 2)["prototype_substitution"] == (4, 200)
    dry, fresh = generator_allocation(ctx, 2, ["prototype_substitution",
                                               "random_symmetric"])["counts"]
    assert fresh > dry


def test_a_generator_that_ran_dry_keeps_only_the_floor():
    """prototype_substitution hit often but delivered 5 of the 20 proposals it was asked:
    its past hit rate no longer buys it a share; the generator that still delivers gets it."""
    names = ["prototype_substitution", "random_symmetric"]
    ctx = context()
    record(ctx, 1, "prototype_substitution", 5, hits=5)
    record(ctx, 1, "random_symmetric", 35, hits=3)
    doc = ctx.store.get_round(ctx.name, 1)
    doc.metrics.update({"allocation": {"asked": {"prototype_substitution": 20,
                                                 "random_symmetric": 20}},
                        "proposed_by": {"prototype_substitution": 5, "random_symmetric": 35}})
    ctx.store.save_round(doc)
    second = generator_allocation(ctx, 2, names)
    assert second["ran_dry"] == ["prototype_substitution"]
    assert second["counts"] == [4, 36]  # the floor, 0.1 x 40, and the rest
    # had it delivered what it was asked, its hit rate would have won the round
    doc.metrics["proposed_by"]["prototype_substitution"] = 20
    ctx.store.save_round(doc)
    again = generator_allocation(ctx, 2, names)
    assert "ran_dry" not in again and again["counts"][0] > again["counts"][1]
