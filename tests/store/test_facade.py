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


URIS = {"sqlite": "sqlite://{tmp}/matloop.db", "memory": "memory://", "monty": "monty://{tmp}/db"}


@pytest.fixture(params=list(URIS))
def store(request, tmp_path) -> MatloopStore:
    db = MatloopStore(URIS[request.param].format(tmp=tmp_path))
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


@pytest.mark.parametrize("kind", ["sqlite", "monty"])
def test_embedded_store_persists_across_instances(tmp_path, kind):
    uri = URIS[kind].format(tmp=tmp_path)
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
        ("postgres://h/db", "not supported"),
        ("./folder", "no scheme"),
        ("monty://", "needs a folder"),
        ("sqlite://", "needs a database file"),
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


def test_repeats_grow_by_how_often_they_were_proposed(store):
    store.add_candidates([_candidate("a"), _candidate("b")])
    new, old = store.add_candidates(
        [_candidate("a", 2), _candidate("a", 2), _candidate("b", 2), _candidate("c", 2)]
    )
    assert new == ["c"] and sorted(old) == ["a", "b"]
    times = {c.candidate_id: c.times_proposed for c in store.candidates("demo")}
    assert times == {"a": 3, "b": 2, "c": 1}


def test_set_status_fields_take_numpy_values_and_keep_history(store):
    import numpy as np

    store.add_candidates([_candidate(x) for x in "abc"])
    store.set_status(
        "demo",
        {"a": (CandidateStatus.selected, None), "b": (CandidateStatus.selected, None),
         "c": (CandidateStatus.rejected, "too close")},
        round_=1,
        fields={"a": {"acquisition_score": np.float64(0.5), "selected_round": 1}},
    )
    a, b, c = store.candidates("demo")
    assert (a.status, a.acquisition_score, a.selected_round) == ("selected", 0.5, 1)
    assert b.status == "selected" and b.acquisition_score is None
    assert [(h.status, h.round) for h in c.history] == [("rejected", 1)]
    assert store.status_counts("demo") == {
        "proposed": 0, "selected": 2, "rejected": 1, "relaxing": 0, "relaxed": 0,
        "failed": 0, "evaluated": 0,
    }


def test_claims_take_each_candidate_once_and_take_over_dead_workers(store):
    store.add_candidates([_candidate("a"), _candidate("b")])
    store.set_status("demo", {"a": (CandidateStatus.selected, None),
                              "b": (CandidateStatus.selected, None)})
    first, second = store.claim_candidate("demo", 1), store.claim_candidate("demo", 1)
    assert {first.candidate_id, second.candidate_id} == {"a", "b"}
    assert first.status == "relaxing" and first.claimed_by == store.worker_id()
    assert store.claim_candidate("demo", 1) is None  # my own live claims are not stale
    import socket

    dead = f"{socket.gethostname()}:999999999"  # a pid that cannot exist
    store.set_status("demo", {"a": (CandidateStatus.relaxing, None)},
                     fields={"a": {"claimed_by": dead}})
    taken = store.claim_candidate("demo", 1)
    assert taken.candidate_id == "a" and taken.claimed_by == store.worker_id()
    assert [h.status for h in taken.history][-1] == "relaxing"


def test_projections_read_only_the_fields_asked_with_defaults_for_missing_ones(store):
    store.add_candidates([_candidate(x) for x in "ba"])
    store.set_status("demo", {"a": (CandidateStatus.selected, None)}, round_=1,
                     fields={"a": {"acquisition_score": 0.5}})
    # a document stored before a field existed: the field reads as the type's default
    store.collection("candidates").update_many({"candidate_id": "b"},
                                               {"$unset": {"times_proposed": ""}})
    rows = store.project("candidates", {"campaign": "demo"},
                         ["candidate_id", "status", "acquisition_score", "times_proposed",
                          "conditions"], sort={"candidate_id": 1})
    assert rows == [
        {"candidate_id": "a", "status": "selected", "acquisition_score": 0.5,
         "times_proposed": 1, "conditions": {}},
        {"candidate_id": "b", "status": "proposed", "acquisition_score": None,
         "times_proposed": 1, "conditions": {}},
    ]
    assert rows[0]["conditions"] is not rows[1]["conditions"]  # defaults are not shared


def test_set_fields_leaves_status_and_history_alone(store):
    import numpy as np

    store.add_candidates([_candidate(x) for x in "ab"])
    store.set_status("demo", {"a": (CandidateStatus.proposed, "waiting in the pool")},
                     round_=1)
    store.set_fields("demo", {"a": {"acquisition_score": np.float64(-0.25)}, "b": {}})
    a, b = store.candidates("demo")
    assert (a.status, a.reason, a.acquisition_score) == ("proposed", "waiting in the pool",
                                                         -0.25)
    assert [h.reason for h in a.history] == ["waiting in the pool"]
    assert b.acquisition_score is None and b.history == []
