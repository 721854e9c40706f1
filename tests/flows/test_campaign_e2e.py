"""A real campaign end to end: Prefect flows on a temporary server, real CHGNet
relaxations, a real SQLite store on disk (the embedded default); then a resume from the store."""

from __future__ import annotations

import csv
import json

import pytest

from matloop.config import parse_config
from matloop.loop import CampaignRun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign")
    return parse_config({
        "name": "e2e-na-cl",
        "chemical_space": {"elements": ["Na", "Cl"], "max_atoms": 4},
        "budget": {"rounds": 2, "candidates_per_round": 6, "relaxations_per_round": 2},
        "relaxer": {"steps": 150},
        "store": f"sqlite://{root}/store.db",
        "output": str(root / "out"),
        "seed": 3,
    })


@pytest.fixture(scope="module")
def first_run(prefect_harness, campaign_config):
    from matloop.flows.campaign import campaign_flow

    result = campaign_flow(campaign_config.model_dump(mode="json"))
    return result


def _fresh_run(config) -> CampaignRun:
    """What a new process sees: a new store connection, no cached generators."""
    return CampaignRun(config)


def test_two_rounds_run_through_all_steps(first_run, campaign_config):
    assert first_run["rounds_run"] == [1, 2]
    run = _fresh_run(campaign_config)
    rounds = run.store.rounds(campaign_config.name)
    assert [r.round for r in rounds] == [1, 2]
    for doc in rounds:
        assert doc.status == "completed"
        assert doc.steps_done == ["generate", "screen", "relax", "evaluate", "verify", "learn"]
        assert doc.metrics["relaxed"] + doc.metrics["failed"] == doc.metrics["selected"] > 0
        assert doc.metrics["evaluated"] == doc.metrics["relaxed"]
    evaluations = run.store.evaluations(campaign_config.name)
    assert evaluations, "nothing was evaluated"
    for ev in evaluations:
        assert ev.e_above_hull >= -1e-6
        assert ev.hull_scheme.startswith("CHGNet")
    # every relaxed candidate has its atomate2 task document in the job store
    job_store = run.store.job_store()
    for relax in run.store.relaxations(campaign_config.name):
        if relax.ok:
            assert job_store.query_one({"uuid": relax.job_uuid}) is not None


def test_round_artifacts_are_published(first_run, campaign_config):
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            latest = {}
            for artifact in sorted(await client.read_artifacts(), key=lambda a: a.created):
                if artifact.key:
                    latest[artifact.key] = artifact  # each round publishes a new version
            return latest

    artifacts = asyncio.run(read())
    assert {"e2e-na-cl-rounds", "e2e-na-cl-best", "e2e-na-cl-summary"} <= set(artifacts)
    rows = artifacts["e2e-na-cl-rounds"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [row["round"] for row in rows] == [1, 2]
    assert "round 2" in artifacts["e2e-na-cl-summary"].data
    # the campaign flow run shows the report's key numbers and links to the report
    assert "discoveries" in artifacts["e2e-na-cl-report"].data
    assert "/report.html)" in artifacts["e2e-na-cl-report-link"].data  # [text](file://…)
    assert (campaign_config.output_dir / "report.html").is_file()
    assert first_run["output"] == str(campaign_config.output_dir)


def test_resume_continues_rounds_and_never_relaxes_twice(first_run, campaign_config):
    from matloop.flows.campaign import campaign_flow

    run = _fresh_run(campaign_config)
    name = campaign_config.name
    before = {c.candidate_id: c for c in run.store.candidates(name)}
    relaxed_before = {r.candidate_id: r.job_uuid for r in run.store.relaxations(name)}

    # interrupt round 3 after two steps, as a killed process would leave it
    doc = run.start_round()
    assert doc.round == 3
    run.generate(3)
    run.screen(3)

    run = _fresh_run(campaign_config)
    result = campaign_flow(campaign_config.model_dump(mode="json"), rounds=1)
    assert result["rounds_run"] == [3]
    round3 = run.store.get_round(name, 3)
    assert round3.status == "completed" and round3.metrics["selected"] > 0

    after = {c.candidate_id: c for c in run.store.candidates(name)}
    assert set(before) <= set(after), "a stored candidate was lost"
    relaxations = run.store.relaxations(name)
    for relax in relaxations:
        if relax.candidate_id in relaxed_before:
            assert relax.job_uuid == relaxed_before[relax.candidate_id], "relaxed twice"
    ids = [r.candidate_id for r in relaxations]
    jobs = run.store.job_store().count({"metadata.candidate_id": {"$in": ids}})
    assert jobs == len(relaxations), "more relaxation jobs than relaxed candidates"


def test_export_and_status(first_run, campaign_config, tmp_path):
    from typer.testing import CliRunner

    from matloop.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["status", campaign_config.name, "--store", campaign_config.store, "--json"]
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["rounds"][0]["relaxed"] > 0
    assert sum(r["evaluated"] for r in status["rounds"]) > 0

    out = tmp_path / "export"
    result = runner.invoke(
        app, ["export", campaign_config.name, "--store", campaign_config.store,
              "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    for name in ("candidates.csv", "rounds.csv", "references.csv", "report.md",
                 "plots/hit_rate.png"):
        assert (out / name).is_file(), name
    with (out / "candidates.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    required = {"candidate_id", "round", "formula", "generator", "status", "energy_per_atom",
                "e_above_hull", "is_novel", "is_unique"}
    assert required <= set(rows[0])
    near = [r for r in rows if r["e_above_hull"] and float(r["e_above_hull"]) <= 0.1]
    assert len(list((out / "cifs").glob("*.cif"))) == len(near)

    result = runner.invoke(app, ["status", "no-such-campaign", "--store", campaign_config.store])
    assert result.exit_code == 2 and "no campaign named 'no-such-campaign'" in result.output
