"""A run whose campaign lease another run takes over stops before its next step and leaves
the campaign to the new holder, which resumes the round (real Prefect flows, real CHGNet,
SQLite store on disk)."""

from __future__ import annotations

import pytest

from matloop.config import parse_config
from matloop.loop import CampaignRun
from matloop.store.lease import CampaignLease

pytestmark = pytest.mark.slow


def _config(tmp_path):
    return parse_config({
        "name": "lease-lost-na-cl",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "budget": {"rounds": 2, "candidates_per_round": 6, "relaxations_per_round": 2},
        "relaxer": {"steps": 150},
        "store": f"sqlite://{tmp_path}/store.db",
        "output": str(tmp_path / "out"),
        "seed": 3,
    })


def test_a_run_that_loses_its_lease_stops_and_the_new_holder_resumes(prefect_harness, tmp_path):
    from matloop.flows.campaign import LEASE_LOST, campaign_flow

    config = _config(tmp_path)
    run = CampaignRun(config)
    run.lease = CampaignLease(run.store, config.name).acquire()
    run.ensure_campaign()
    say = run.context.progress.message

    def message(text: str) -> None:  # what the heartbeat thread does when another run took over
        say(text)
        if "generated" in text:
            run.lease.lost = True

    run.context.progress.message = message
    result = campaign_flow(config.model_dump(mode="json"), run=run)

    assert result["stop_reason"] == LEASE_LOST and result["rounds_run"] == [1]
    (round_1,) = run.store.rounds(config.name)
    assert round_1.status != "completed" and round_1.steps_done == ["generate"]
    assert not run.store.relaxations(config.name)  # it stopped before screening
    assert run.store.get_campaign(config.name).stop_reason is None  # record left alone

    # the run that took over finishes round 1 from where it stood, then round 2
    other = CampaignRun(parse_config(config.model_dump(mode="json")))
    other.lease = CampaignLease(other.store, config.name).acquire(take_over=True)
    result = campaign_flow(config.model_dump(mode="json"), rounds=2, run=other)
    assert result["rounds_run"] == [1, 2]
    rounds = other.store.rounds(config.name)
    assert [r.status for r in rounds] == ["completed", "completed"]
    assert len(other.store.relaxations(config.name)) == 4
