"""Stopping rules: max_rounds, patience (no new discovery) and target reached."""

from __future__ import annotations

import pytest

from matloop.config import ConfigError, parse_config
from matloop.loop import CampaignRun
from matloop.store import RoundDoc


def make_run(**extra) -> CampaignRun:
    data = {
        "name": "stopping",
        "chemical_space": {"elements": ["Ca", "Ti", "O"], "max_atoms": 5},
        "store": "memory://",
        **extra,
    }
    return CampaignRun(parse_config(data))


def complete_rounds(run: CampaignRun, hits: list[int]) -> None:
    for i, h in enumerate(hits, start=1):
        run.store.save_round(RoundDoc(campaign=run.name, round=i, status="completed",
                                      metrics={"hits": h}))  # fmt: skip


def test_target_reached_counts_hits_over_all_rounds():
    run = make_run(objective={"target_hits": 3})
    complete_rounds(run, [1, 0])
    assert run.stop_reason() is None
    complete_rounds(run, [1, 0, 2])
    assert run.stop_reason() == "target reached: 3 hit(s) (target_hits 3)"


def test_unfinished_rounds_do_not_count():
    run = make_run(objective={"target_hits": 1})
    run.store.save_round(RoundDoc(campaign=run.name, round=1, metrics={"hits": 5}))
    assert run.stop_reason() is None


def test_other_rules_still_apply():
    run = make_run(budget={"max_rounds": 2}, objective={"target_hits": 10})
    complete_rounds(run, [1, 1])
    assert run.stop_reason() == "reached max_rounds (2)"
    run = make_run(budget={"patience": 2}, objective={"target_hits": 10})
    complete_rounds(run, [1, 0, 0])
    assert run.stop_reason() == "no new discovery in the last 2 round(s)"


def test_target_hits_is_validated():
    with pytest.raises(ConfigError, match="objective.target_hits"):
        make_run(objective={"target_hits": 0})


def test_update_mode_is_validated():
    with pytest.raises(ConfigError, match="update: reinforce needs a generator"):
        make_run(generators=[{"name": "random_symmetric", "update": "reinforce"}])
    with pytest.raises(ConfigError, match="unknown update_settings"):
        make_run(generators=[{"name": "random_symmetric", "update_settings": {"lr_": 1}}])
