from __future__ import annotations

import pytest

from matloop.store import (
    CampaignDoc,
    CandidateDoc,
    CandidateStatus,
    MatloopStore,
    ModelDoc,
    StoreURIError,
    redact_uri,
)


def _candidate(cid: str, round_: int = 1) -> CandidateDoc:
    return CandidateDoc(
        campaign="demo", candidate_id=cid, round=round_, formula="NaCl", chemsys="Cl-Na",
        nsites=2, structure={"placeholder": True}, generator="prototype_substitution",
    )


@pytest.fixture(params=["memory", "monty"])
def store(request, tmp_path) -> MatloopStore:
    uri = "memory://" if request.param == "memory" else f"monty://{tmp_path}/db"
    db = MatloopStore(uri)
    yield db
    db.close()


def test_candidate_upsert_keeps_one_record_per_crystal(store):
    new, old = store.add_candidates([_candidate("a"), _candidate("b"), _candidate("a")])
    assert sorted(new) == ["a", "b"] and old == []
    new, old = store.add_candidates([_candidate("a", round_=2)])
    assert new == [] and old == ["a"]
    (a,) = store.candidates("demo", ids=["a"])
    assert a.round == 1, "a repeat proposal must not move the candidate to a later round"
    assert a.times_proposed == 2
    assert store.count("candidates", {"campaign": "demo"}) == 2


def test_status_changes_are_recorded_with_reasons(store):
    store.add_candidates([_candidate("a"), _candidate("b")])
    store.set_status(
        "demo",
        {"a": (CandidateStatus.rejected, "min distance 0.2 Å < 0.5 Å"),
         "b": (CandidateStatus.selected, None)},
        round_=1,
        fields={"b": {"predicted_e_above_hull": 0.05}},
    )
    store.set_status("demo", {"b": (CandidateStatus.failed, "energy is NaN")}, round_=1)
    a, b = store.candidates("demo")
    assert (a.status, a.reason) == ("rejected", "min distance 0.2 Å < 0.5 Å")
    assert [h.status for h in b.history] == ["selected", "failed"]
    assert b.reason == "energy is NaN" and b.predicted_e_above_hull == 0.05
    counts = store.status_counts("demo")
    assert counts["rejected"] == 1 and counts["failed"] == 1 and counts["proposed"] == 0


def test_monty_store_persists_across_processes_worth_of_instances(tmp_path):
    uri = f"monty://{tmp_path}/db"
    first = MatloopStore(uri)
    first.save_campaign(CampaignDoc(campaign="demo", config={"chemical_space": {}}))
    first.add_candidates([_candidate("a")])
    first.close()
    second = MatloopStore(uri)
    assert second.get_campaign("demo") is not None
    assert [c.candidate_id for c in second.candidates("demo")] == ["a"]


def test_model_checkpoints_are_checked_against_their_hash(store):
    doc = store.save_model(
        ModelDoc(campaign="demo", name="vae", version=1, kind="crystal_cvae", sha256=""),
        b"weights",
    )
    assert store.load_model_bytes(doc) == b"weights"
    doc.sha256 = "0" * 64
    with pytest.raises(KeyError, match="missing"):
        store.load_model_bytes(doc)


def test_job_store_lives_in_the_same_database(store):
    job_store = store.job_store()
    job_store.update({"uuid": "u1", "index": 1, "output": {"energy": -1.0}}, key=["uuid", "index"])
    assert job_store.query_one({"uuid": "u1"})["output"]["energy"] == -1.0


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sqlite:///x.db", "not supported"),
        ("./folder", "no scheme"),
        ("monty://", "needs a folder"),
    ],
)
def test_bad_store_uris_are_named(uri, message):
    with pytest.raises(StoreURIError, match=message):
        MatloopStore(uri)


def test_credentials_never_appear_in_repr():
    uri = "mongodb://alice:s3cret-pw@db.example:27017/matloop"
    assert "s3cret-pw" not in redact_uri(uri)
    assert "s3cret-pw" not in repr(MatloopStore(uri))


def test_named_queries_and_documents_built_from_outcomes(store):
    from pymatgen.core import Lattice, Structure

    from matloop.relax.outcome import RelaxOutcome
    from matloop.store import RelaxationDoc

    store.add_candidates([_candidate("a"), _candidate("b")])
    store.set_status("demo", {"a": (CandidateStatus.selected, None)})
    assert store.count_candidates("demo", CandidateStatus.selected) == 1
    assert store.count_candidates("demo", "proposed") == 1
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    out = RelaxOutcome(candidate_id="a", ok=True, converged=True, structure=nacl,
                       energy_per_atom=-3.2, n_steps=7, max_force=0.02, potential="CHGNet x",
                       wall_s=1.5, job_uuid="u1", properties={"gap": 1.0})
    doc = RelaxationDoc.from_outcome(out, "demo", 2, "CHGNet 0.3.0")
    assert (doc.candidate_id, doc.round, doc.potential, doc.energy_per_atom) == (
        "a", 2, "CHGNet 0.3.0", -3.2)
    assert doc.structure["lattice"]["a"] == pytest.approx(5.64) and doc.properties == {"gap": 1.0}
