"""Per-round loop diagnostics reach the round's metrics, rounds.csv, the report and the
Prefect artifact rows (a replay campaign: the whole loop in seconds)."""

from __future__ import annotations

import csv

import pytest

from matloop.config import parse_config
from matloop.loop import CampaignRun
from matloop.store import MatloopStore


@pytest.fixture(scope="module")
def run(perov5_head):
    table = perov5_head(120)
    config = parse_config({
        "name": "diag-test",
        "chemical_space": {"elements": table.elements, "max_atoms": 5},
        "generators": [{"name": "table_rows", "settings": {"path": str(table.path)}},
                       {"name": "prototype_substitution",
                        "settings": {"prototypes": ["rock_salt", "perovskite"]}}],
        "relaxer": {"potential": "replay",
                    "replay": {"path": str(table.path), "energy_column": "heat_ref"}},
        "budget": {"candidates_per_round": 16, "relaxations_per_round": 6},
        "acquisition": {"strategy": "ucb", "ensemble_size": 2},
        "allocation": {"strategy": "thompson", "floor": 0.2},
        "store": "memory://",
    })
    campaign = CampaignRun(config, store=MatloopStore("memory://"))
    campaign.prepare_references()
    for _ in range(2):
        campaign.run_round()
    return campaign


def test_round_metrics_hold_the_diagnostics(run):
    for doc in run.store.rounds(run.name):
        m = doc.metrics
        assert m["allocation"]["strategy"] == "thompson"
        assert sum(m["allocation"]["asked"].values()) == 16
        assert sum(m["relaxed_by_generator"].values()) == m["relaxed"] + m["failed"]
        assert set(m["hit_rate_by_generator"]) == set(m["relaxed_by_generator"])
        assert 0.0 <= m["duplicate_share"] <= 1.0
    second = run.store.get_round(run.name, 2).metrics
    assert set(second["allocation"]["prior_proposals"]) == {"table_rows",
                                                            "prototype_substitution"}
    assert "surrogate_mae" in second and "surrogate_bias" in second


def test_rounds_csv_report_and_artifacts_show_them(run, tmp_path):
    from matloop.flows.artifacts import round_rows
    from matloop.results.export import export_campaign

    out = export_campaign(run.store, run.name, tmp_path / "out")
    rows = list(csv.DictReader((out / "rounds.csv").open()))
    assert len(rows) == 2
    for row in rows:
        assert row["allocation_strategy"] == "thompson"
        assert "table_rows=" in row["allocation"] and "table_rows=" in row[
            "hit_rate_by_generator"]
        assert row["duplicate_share"] != ""
    assert rows[1]["surrogate_mae"] != "" and rows[1]["surrogate_within_1sigma"] != ""
    report = (out / "report.md").read_text()
    assert "## Loop diagnostics" in report and "thompson" in report
    assert "Loop diagnostics" in (out / "report.html").read_text()
    artifact = round_rows(run)
    assert artifact[0]["allocation"].startswith("table_rows=")
    assert "hit_rate_by_generator" in artifact[1]
