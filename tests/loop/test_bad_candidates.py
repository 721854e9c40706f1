"""Bad proposals and failing relaxations inside a round: each becomes a rejected or failed
record with its reason, the round completes, and nothing already stored changes.

No CHGNet: the campaign is the hand-built Na–Cl one (two evaluated rounds), round 3 gets
a generator of broken crystals and a relaxer whose jobs raise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from jobflow import Maker, job

from matloop.config import GeneratorConfig
from matloop.loop import STEPS, CampaignRun
from matloop.store import CandidateStatus

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crash_driver import BadGenerator  # noqa: E402
from handmade_campaign import NAME, build_campaign  # noqa: E402


class BrokenGenerator(BadGenerator):
    """A model that fails every time it is asked."""

    name = "broken"

    def sample(self, n, conditions=None, rng=None):
        raise RuntimeError("CUDA error: device-side assert triggered")


@job
def _blow_up(structure):
    raise FloatingPointError("relaxation diverged: energy is NaN at step 3")


class ExplodingMaker(Maker):
    name: str = "exploding"

    def make(self, structure):
        return _blow_up(structure)


@pytest.fixture
def bad_round(monkeypatch):
    from matloop.generators import registry

    monkeypatch.setitem(registry.GENERATOR_PATHS, "bad_mix", "crash_driver:BadGenerator")
    monkeypatch.setitem(registry.GENERATOR_PATHS, "broken", f"{__name__}:BrokenGenerator")
    base = build_campaign(evaluate_round_2=True)
    config = base.config.model_copy(update={
        "generators": [
            GeneratorConfig(name="bad_mix", weight=1.0),
            GeneratorConfig(name="broken", weight=1.0),
            GeneratorConfig(name="prototype_substitution", weight=1.0),
        ],
        "budget": base.config.budget.model_copy(
            update={"candidates_per_round": 15, "relaxations_per_round": 2}
        ),
    })
    messages: list[str] = []
    run = CampaignRun(config, store=base.store)
    run.progress.message = messages.append
    run.maker = ExplodingMaker()
    return run, messages


def test_a_round_survives_bad_proposals_and_failed_relaxations(bad_round, caplog):
    run, messages = bad_round
    before = {c.candidate_id: c.model_dump() for c in run.store.candidates(NAME)}
    relaxed_before = {r.candidate_id: r.model_dump() for r in run.store.relaxations(NAME)}

    doc = run.start_round()
    assert doc.round == 3
    for step in STEPS:
        getattr(run, step)(3)
    round3 = run.store.get_round(NAME, 3)
    assert round3.status == "completed"

    # the generator that raises is reported, the others still proposed their share
    assert any("generator broken failed: CUDA error" in m for m in messages)
    assert "broken" in caplog.text
    cands = {c.candidate_id: c for c in run.store.candidates(NAME, round_=3)}
    bad = {c.candidate_id: c for c in cands.values() if c.generator == "bad_mix"}
    reasons = sorted(c.reason for c in bad.values())
    assert all(c.status == CandidateStatus.rejected for c in bad.values()), reasons
    expected = [
        "min interatomic distance",                                 # overlapping atoms
        "unanalysable proposal: absurd cell",                       # a 1000 Å cell
        "64 atoms > max_atoms 4",                                   # too many atoms
        "unanalysable proposal: degenerate cell",                   # zero-volume cell
        "unanalysable proposal: non-finite lattice or coordinates", # NaN lattice
    ]
    for text in expected:
        assert any(text in r for r in reasons), (text, reasons)
    # every rejection is counted in the round's metrics
    assert round3.metrics["rejected"] >= len(bad)

    # relaxations that blow up are failed records with the reason; nothing is evaluated
    selected = [c for c in cands.values() if c.selected_round == 3]
    assert len(selected) == 2
    for cand in selected:
        assert cand.status == CandidateStatus.failed
        assert cand.reason == "FloatingPointError: relaxation diverged: energy is NaN at step 3"
    assert round3.metrics["failed"] == 2 and round3.metrics["evaluated"] == 0

    # what was stored before the round is untouched
    after = {c.candidate_id: c.model_dump() for c in run.store.candidates(NAME)}
    for cid, old in before.items():
        assert after[cid]["status"] == old["status"]
        assert after[cid]["structure"] == old["structure"]
    relaxed_after = {r.candidate_id: r.model_dump() for r in run.store.relaxations(NAME)}
    for cid, old in relaxed_before.items():
        assert relaxed_after[cid] == old


def test_bad_proposal_rejected_before_it_can_hang_the_fingerprint():
    """A zero-volume cell used to hang candidate_id's neighbour search forever."""
    import time

    from pymatgen.core import Lattice, Structure

    from matloop.loop.generate import unanalysable

    flat = Structure(Lattice([[4, 0, 0], [4, 1e-6, 0], [0, 0, 4]]), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])
    start = time.perf_counter()
    assert unanalysable(flat).startswith("degenerate cell")
    assert time.perf_counter() - start < 1.0
    skewed = Structure(Lattice([[4, 0, 0], [400, 4, 0], [0, 0, 4]]), ["Na", "Cl"],
                       [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert unanalysable(skewed) is None  # a skewed setting of a sound cell is fine
