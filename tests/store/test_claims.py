"""Claims between two hosts on one store on disk: a claim whose lease expired is taken over,
and a worker that renews its claims while relaxing (longer than the lease) keeps them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from matloop.store import CandidateDoc, CandidateStatus, MatloopStore
from matloop.store.documents import utcnow

LEASE_S = 2.5  # claimed_at has one-second resolution


def two_hosts(tmp_path) -> tuple[MatloopStore, MatloopStore]:
    """Two workers on other hosts (so only the lease, not a pid check, can free a claim)."""
    uri = f"monty://{tmp_path}/db"
    a, b = MatloopStore(uri), MatloopStore(uri)
    a.worker_id = lambda: "host-a:101"
    b.worker_id = lambda: "host-b:202"
    doc = CandidateDoc(campaign="demo", candidate_id="c1", round=1, formula="NaCl",
                       chemsys="Cl-Na", nsites=2, structure={}, generator="test")  # fmt: skip
    a.add_candidates([doc])
    a.set_status("demo", {"c1": (CandidateStatus.selected, None)}, round_=1)
    return a, b


def test_an_expired_claim_is_taken_over_by_another_host(tmp_path):
    a, b = two_hosts(tmp_path)
    assert a.claim_candidate("demo", 1, lease_s=LEASE_S).candidate_id == "c1"
    assert b.claim_candidate("demo", 1, lease_s=LEASE_S) is None  # within the lease
    time.sleep(LEASE_S * 1.5)
    taken = b.claim_candidate("demo", 1, lease_s=LEASE_S)
    assert taken is not None and taken.claimed_by == "host-b:202"
    assert a.renew_claims("demo", ["c1"]) == 0  # a's claim is gone: nothing to renew


def test_a_relaxation_longer_than_the_lease_keeps_its_claim(tmp_path):
    a, b = two_hosts(tmp_path)
    assert a.claim_candidate("demo", 1, lease_s=LEASE_S).candidate_id == "c1"
    taken = []
    with a.keep_claims("demo", ["c1"], lease_s=LEASE_S) as renewal:
        deadline = time.monotonic() + 3 * LEASE_S  # "relaxing" for three leases
        while time.monotonic() < deadline:
            taken.append(b.claim_candidate("demo", 1, lease_s=LEASE_S))
            time.sleep(LEASE_S / 5)
    assert taken and all(t is None for t in taken), "host b took over a renewed claim"
    assert renewal.renewals >= 6
    (doc,) = a.candidates("demo", ids=["c1"])
    assert doc.status == CandidateStatus.relaxing and doc.claimed_by == "host-a:101"
    # once the renewal stops, the lease runs out as usual
    time.sleep(LEASE_S * 1.5)
    assert b.claim_candidate("demo", 1, lease_s=LEASE_S) is not None


@pytest.mark.parametrize("uri", ["memory://"])
def test_renewing_someone_elses_claim_changes_nothing(uri):
    store = MatloopStore(uri)
    store.worker_id = lambda: "host-a:1"
    store.add_candidates([CandidateDoc(campaign="demo", candidate_id="c1", round=1,
                                       formula="NaCl", chemsys="Cl-Na", nsites=2, structure={},
                                       generator="test")])  # fmt: skip
    store.set_status("demo", {"c1": (CandidateStatus.selected, None)}, round_=1)
    store.claim_candidate("demo", 1)
    (before,) = store.candidates("demo", ids=["c1"])
    store.worker_id = lambda: "host-b:2"
    assert store.renew_claims("demo", ["c1"]) == 0
    (after,) = store.candidates("demo", ids=["c1"])
    assert after.claimed_at == before.claimed_at and after.claimed_by == "host-a:1"


# -- who may take a claim over, decided at once (no waiting for a lease) ---------------------
HERE = socket.gethostname()
OLD = "2020-01-01T00:00:00+00:00"


def claimed(store: MatloopStore, by: str | None, at: str | None, cid: str = "c1") -> None:
    """Candidate ``cid`` left ``relaxing``, claimed by ``by`` at ``at`` (either may be absent)."""
    store.add_candidates([CandidateDoc(campaign="demo", candidate_id=cid, round=1,
                                       formula="NaCl", chemsys="Cl-Na", nsites=2, structure={},
                                       generator="test")])  # fmt: skip
    store.set_status("demo", {cid: (CandidateStatus.relaxing, None)}, round_=1,
                     fields={cid: {"claimed_by": by, "claimed_at": at}})  # fmt: skip


def a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def worker(uri: str, name: str) -> MatloopStore:
    store = MatloopStore(uri)
    store.worker_id = lambda: name
    return store


@pytest.mark.parametrize(
    ("owner", "at", "taken"),
    [
        pytest.param("{here}:{me}", "now", False, id="live-local-worker-in-lease"),
        pytest.param("{here}:{dead}", "now", True, id="dead-local-worker"),
        pytest.param("host-a:101", "now", False, id="other-host-in-lease"),
        pytest.param("host-a:101", OLD, True, id="other-host-lease-ran-out"),
        pytest.param("{here}:{me}", OLD, True, id="live-local-worker-stopped-renewing"),
        pytest.param("{here}:not-a-pid", "now", False, id="no-pid-lease-decides"),
        pytest.param(None, "now", True, id="no-owner"),
        pytest.param("host-a:101", None, True, id="no-claim-time"),
    ],
)
def test_who_may_take_a_claim_over(owner, at, taken):
    if owner is not None:
        owner = owner.format(here=HERE, me=os.getpid(), dead=a_dead_pid() if "dead" in owner else 0)
    store = worker("memory://", "host-b:202")
    claimed(store, owner, utcnow() if at == "now" else at)
    got = store.claim_candidate("demo", 2, lease_s=600)
    assert (got is not None) is taken
    (doc,) = store.candidates("demo", ids=["c1"])
    if taken:
        assert got.candidate_id == "c1" and got.status == CandidateStatus.relaxing
        assert doc.claimed_by == "host-b:202" and doc.claimed_at >= utcnow()[:-6]
        last = doc.history[-1]
        assert last.status == CandidateStatus.relaxing and last.round == 2 and last.reason is None
        assert last.at >= utcnow()[:-6]
    else:
        assert doc.claimed_by == owner


def test_a_worker_takes_selected_work_first_and_never_its_own_claim():
    store = worker("memory://", "host-b:202")
    claimed(store, "host-b:202", OLD, cid="mine")
    claimed(store, "host-a:101", OLD, cid="stale")
    store.add_candidates([CandidateDoc(campaign="demo", candidate_id="fresh", round=1,
                                       formula="NaCl", chemsys="Cl-Na", nsites=2, structure={},
                                       generator="test")])  # fmt: skip
    store.set_status("demo", {"fresh": (CandidateStatus.selected, "was rejected")}, round_=1)
    first = store.claim_candidate("demo", 1, lease_s=600)
    assert first.candidate_id == "fresh" and first.reason is None
    assert store.claim_candidate("demo", 1, lease_s=600).candidate_id == "stale"
    assert store.claim_candidate("demo", 1, lease_s=600) is None  # only its own is left
    assert store.claim_candidate("other", 1, lease_s=600) is None


def test_renewing_restarts_only_this_workers_leases():
    store = worker("memory://", "host-b:202")
    claimed(store, "host-b:202", OLD, cid="mine")
    claimed(store, "host-a:101", OLD, cid="theirs")
    claimed(store, "host-b:202", OLD, cid="not-asked")
    assert store.renew_claims("demo", ["mine", "theirs"]) == 1
    docs = {d.candidate_id: d for d in store.candidates("demo")}
    assert docs["mine"].claimed_at > OLD and docs["mine"].claimed_at >= utcnow()[:-6]
    assert docs["theirs"].claimed_at == OLD and docs["not-asked"].claimed_at == OLD
    assert worker("memory://", "x:1").renew_claims("demo", []) == 0


def test_only_relaxing_claims_of_the_campaign_are_taken_over_one_at_a_time():
    store = worker("memory://", "host-b:202")
    claimed(store, "host-a:101", OLD, cid="stale-1")
    claimed(store, "host-a:101", OLD, cid="stale-2")
    claimed(store, None, None, cid="done")
    store.set_status("demo", {"done": (CandidateStatus.evaluated, None)}, round_=1)
    taken = store.claim_candidate("demo", 1, lease_s=600)
    docs = {d.candidate_id: d for d in store.candidates("demo")}
    assert [d.claimed_by for d in docs.values()].count("host-b:202") == 1  # one per call
    assert docs["done"].status == CandidateStatus.evaluated  # never claimed: not relaxing
    assert taken.candidate_id in ("stale-1", "stale-2")
    assert store.claim_candidate("demo", 1, lease_s=600) is not None
    assert store.claim_candidate("demo", 1, lease_s=600) is None
    assert store.candidates("demo", ids=["done"])[0].status == CandidateStatus.evaluated
    assert worker("memory://", "host-c:3").claim_candidate("elsewhere", 1) is None
