"""The screen keeps unselected candidates in the pool for later rounds. Those were matched
against every stored crystal when they were first screened, so later rounds match only the
new proposals against them: a pool of thousands must not cost pool x bucket matches a round."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from matloop.config import parse_config
from matloop.identity import candidate_id
from matloop.loop.context import RunContext
from matloop.loop.generate import candidate_doc
from matloop.loop.screen import WAITING, ScreenStep
from matloop.store import CampaignDoc, CandidateStatus, MatloopStore


class _Proposer:  # only its name is recorded
    name = "random_symmetric"


def nacl_polymorphs() -> dict[str, Structure]:
    """Four NaCl crystals: one formula bucket, no two alike."""
    def build(group, lattice, coords):
        return Structure.from_spacegroup(group, lattice, ["Na", "Cl"],
                                         coords).get_primitive_structure()  # fmt: skip

    return {
        "rock_salt": build("Fm-3m", Lattice.cubic(5.64), [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "cesium_chloride": build("Pm-3m", Lattice.cubic(3.4), [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "zinc_blende": build("F-43m", Lattice.cubic(6.0), [[0, 0, 0], [0.25, 0.25, 0.25]]),
        "nickel_arsenide": build("P6_3/mmc", Lattice.hexagonal(4.0, 5.4),
                                 [[0, 0, 0], [1 / 3, 2 / 3, 0.25]]),
    }


def test_waiting_candidates_are_not_matched_again_and_still_catch_new_duplicates():
    config = parse_config({
        "name": "pool", "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "generators": [{"name": "random_symmetric"}],
        "budget": {"candidates_per_round": 4, "relaxations_per_round": 1},
        "store": "memory://", "seed": 0,
    })
    ctx = RunContext(config, MatloopStore("memory://"))
    ctx.store.save_campaign(CampaignDoc(campaign=ctx.name, config={"name": ctx.name}))
    crystals = nacl_polymorphs()
    docs = {name: candidate_doc(ctx.name, s, 1, _Proposer(), candidate_id)
            for name, s in crystals.items()}  # fmt: skip
    ctx.store.add_candidates(list(docs.values()))

    first = ScreenStep().run(ctx, 1)
    assert (first["selected"], first["pool"], first["rejected"]) == (1, 3, 0)
    assert first["duplicate_checks"] == 0 + 1 + 2 + 3  # each against those before it
    waiting = ctx.store.candidates(ctx.name, status=CandidateStatus.proposed)
    assert len(waiting) == 3 and all(c.reason == WAITING for c in waiting)

    # round 2 brings a 3 % larger copy of one waiting crystal
    twin_of = next(name for name, d in docs.items() if d.candidate_id == waiting[0].candidate_id)
    copy = crystals[twin_of].copy()
    copy.scale_lattice(crystals[twin_of].volume * 1.03)
    new = candidate_doc(ctx.name, copy, 2, _Proposer(), candidate_id)
    assert new.candidate_id not in {d.candidate_id for d in docs.values()}
    ctx.store.add_candidates([new])

    second = ScreenStep().run(ctx, 2)
    # the new proposal alone was matched: against at most the 4 stored crystals
    assert 1 <= second["duplicate_checks"] <= 4
    rejected = ctx.store.candidates(ctx.name, status=CandidateStatus.rejected)
    assert [c.candidate_id for c in rejected] == [new.candidate_id]
    assert docs[twin_of].candidate_id in rejected[0].reason
    # the waiting crystals stay valid: one more selected, two still waiting
    assert (second["selected"], second["pool"]) == (1, 2)
