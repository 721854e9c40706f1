"""``matloop store migrate``: a campaign, all its collections and the job store, copied
between any two URIs (montydb to the SQLite default, SQLite to memory and to a Mongo
server), idempotently."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matloop.cli import app
from matloop.store import (
    CampaignDoc,
    CandidateDoc,
    CandidateStatus,
    EvaluationDoc,
    MatloopStore,
    ModelDoc,
    ReferenceDoc,
    RelaxationDoc,
    RoundDoc,
)
from matloop.store.migrate import migrate


def _fill(store: MatloopStore, campaign: str = "demo", n: int = 12) -> None:
    store.save_campaign(CampaignDoc(campaign=campaign, config={"name": campaign}))
    store.save_round(RoundDoc(campaign=campaign, round=1, steps_done=["generate"]))
    store.add_candidates([
        CandidateDoc(campaign=campaign, candidate_id=f"{campaign}-{i}", round=1, formula="NaCl",
                     chemsys="Cl-Na", nsites=2, structure={"i": i}, generator="g")
        for i in range(n)
    ])
    store.set_status(campaign, {f"{campaign}-0": (CandidateStatus.selected, None)}, round_=1)
    store.save_relaxations([RelaxationDoc(campaign=campaign, candidate_id=f"{campaign}-0",
                                          ok=True, energy_per_atom=-3.5, job_uuid="u1")])
    store.save_evaluations([EvaluationDoc(
        campaign=campaign, candidate_id=f"{campaign}-0", round=1, formula="NaCl",
        energy_per_atom=-3.5, e_above_hull=0.01, is_stable=True, is_novel=True,
        is_unique=True, hull_scheme="CHGNet", hull_version=1)])
    store.save_references([ReferenceDoc(reference_id="element:Na", potential="CHGNet",
                                        formula="Na", chemsys="Na", energy_per_atom=-1.3,
                                        structure={}, source="elemental")])
    store.save_model(ModelDoc(campaign=campaign, name="vae", version=1, kind="cvae",
                              sha256=""), b"weights-" + campaign.encode())
    jobs = store.job_store()
    jobs.update({"uuid": f"u-{campaign}", "index": 1, "output": {"energy": -7.0},
                 "metadata": {"candidate_id": f"{campaign}-0"}}, key=["uuid", "index"])
    jobs.additional_stores["data"].update(
        {"blob_uuid": f"b-{campaign}", "job_uuid": f"u-{campaign}", "data": [1, 2, 3]})


def _snapshot(store: MatloopStore, campaign: str = "demo") -> dict:
    (model,) = store.models(campaign)
    jobs = store.job_store()
    return {
        "campaign": store.get_campaign(campaign).config,
        "rounds": [r.steps_done for r in store.rounds(campaign)],
        "candidates": [(c.candidate_id, str(c.status), [str(h.status) for h in c.history])
                       for c in store.candidates(campaign)],
        "counts": store.status_counts(campaign),
        "relaxations": [(r.candidate_id, r.energy_per_atom) for r in store.relaxations(campaign)],
        "evaluations": [(e.candidate_id, e.e_above_hull) for e in store.evaluations(campaign)],
        "references": [r.reference_id for r in store.references("CHGNet")],
        "model": store.load_model_bytes(model),
        "job": jobs.query_one({"uuid": f"u-{campaign}"})["output"],
        "blob": jobs.additional_stores["data"].query_one({"blob_uuid": f"b-{campaign}"})["data"],
    }


def test_monty_to_sqlite_to_memory_keeps_everything(tmp_path):
    old = MatloopStore(f"monty://{tmp_path}/old")
    _fill(old)
    _fill(old, "other", n=3)
    expected = _snapshot(old)

    new = MatloopStore(f"sqlite://{tmp_path}/new.db")
    copied = migrate(old, new, "demo")
    assert copied["candidates"] == 12 and copied["campaigns"] == 1 and copied["jobs"] == 2
    assert _snapshot(new) == expected
    assert new.get_campaign("other") is None, "only the campaign asked for is copied"
    again = migrate(old, new, "demo")  # a rerun copies nothing twice
    assert again["candidates"] == 12 and new.count("candidates", {"campaign": "demo"}) == 12

    memory = MatloopStore("memory://")
    migrate(new, memory)
    assert _snapshot(memory) == expected


def test_unknown_campaign_and_same_store_are_refused(tmp_path):
    src = MatloopStore(f"sqlite://{tmp_path}/a.db")
    _fill(src)
    with pytest.raises(KeyError, match="'nope' is not in .* holds: demo"):
        migrate(src, MatloopStore(f"sqlite://{tmp_path}/b.db"), "nope")
    with pytest.raises(ValueError, match="same store"):
        migrate(src, MatloopStore(f"sqlite://{tmp_path}/a.db"))


def test_cli_migrate(tmp_path):
    src = MatloopStore(f"monty://{tmp_path}/old")
    _fill(src)
    src.close()
    runner = CliRunner()
    result = runner.invoke(app, ["store", "migrate", f"monty://{tmp_path}/old",
                                 f"sqlite://{tmp_path}/new.db", "--campaign", "demo"])
    assert result.exit_code == 0, result.output
    assert "copied 12 candidates of 1 campaign(s)" in result.output
    assert len(MatloopStore(f"sqlite://{tmp_path}/new.db").candidates("demo")) == 12
    bad = runner.invoke(app, ["store", "migrate", f"monty://{tmp_path}/old", "postgres://x"])
    assert bad.exit_code == 2 and "not supported" in bad.output


def test_sqlite_to_a_mongo_server(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_mongo_faults import Server

    from matloop.store.backends import Backend

    if not (shutil.which("nx-27017") or (Path(sys.executable).parent / "nx-27017").exists()):
        pytest.skip("nx-27017 is not installed")
    src = MatloopStore(f"sqlite://{tmp_path}/a.db")
    _fill(src)
    expected = _snapshot(src)
    original = Backend.open
    # nx-27017 keeps collections in SQL tables: "references" is a reserved word there
    monkeypatch.setattr(Backend, "open",
                        lambda self, name, key="_id": original(self, f"t_{name}", key))
    server = Server(tmp_path)
    server.start()
    try:
        dst = MatloopStore(server.uri)
        assert migrate(src, dst, "demo")["candidates"] == 12
        assert _snapshot(dst) == expected
    finally:
        server.kill()
