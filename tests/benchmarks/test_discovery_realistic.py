"""The realistic-scale discovery benchmark: its campaign file and the strategies derived
from it are valid campaigns, and the summary computes what the issue's targets read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import discovery_realistic as bench  # noqa: E402

from matloop.config import parse_config  # noqa: E402

SCALE = {"rounds": 2, "candidates_per_round": 24, "relaxations_per_round": 8}


def test_the_campaign_file_is_realistic_and_names_no_machine():
    text = bench.CAMPAIGN.read_text()
    assert "../shared" not in text and "/work/" not in text
    config = parse_config(bench.base_config())
    assert len(config.chemical_space.elements) >= 4 and config.chemical_space.max_atoms == 20
    assert config.budget.rounds >= 6 and config.budget.relaxations_per_round >= 64
    assert config.relaxer.batched and config.allocation.strategy == "thompson"
    names = {g.name for g in config.generators}
    assert {"ion_substitution", "random_symmetric", "crystal_vae"} <= names
    assert any(g.update == "finetune" for g in config.generators)


@pytest.mark.parametrize("strategy", bench.STRATEGIES)
def test_each_strategy_is_a_valid_campaign(strategy):
    config = parse_config(bench.strategy_config(strategy, 1, SCALE))
    names = [g.name for g in config.generators]
    assert config.budget.relaxations_per_round == 8 and config.seed == 1
    assert config.store == "memory://"
    if strategy == "full_loop":
        assert config.allocation.strategy == "thompson" and "crystal_vae" in names
    else:
        assert config.allocation.strategy == "fixed"
    if strategy == "random_symmetric":
        assert names == ["random_symmetric"]
    if strategy == "substitution":
        assert names == ["ion_substitution", "prototype_substitution"]
    if strategy == "no_learning":
        assert {g.update for g in config.generators} == {"none"} and len(names) == 4


def test_summary_and_targets():
    def rounds(hits):
        return [{"hits": h, "discoveries_per_100": 100 * h / 8, "duplicate_share": 0.1,
                 "seconds": 1.0} for h in hits]

    runs = {"full_loop": [{"rounds": rounds([1, 3]), "final_discoveries": 4},
                          {"rounds": rounds([1, 1]), "final_discoveries": 2}],
            "random_symmetric": [{"rounds": rounds([1, 0]), "final_discoveries": 1}] * 2}
    summary = bench.summarise(runs)
    full = summary["full_loop"]
    assert full["cumulative_discoveries"]["mean"] == [1.0, 3.0]
    assert full["discoveries_per_100_relaxations"]["std"][1] == pytest.approx(12.5)
    assert full["last_over_first_round"] == pytest.approx(2.0)
    goals = bench.targets(summary)
    assert goals["rising"] is True and goals["vs_random_symmetric"] == pytest.approx(3.0)
    assert goals["vs_substitution"] is None
