"""Claims between two hosts on one store on disk: a claim whose lease expired is taken over,
and a worker that renews its claims while relaxing (longer than the lease) keeps them."""

from __future__ import annotations

import time

import pytest

from matloop.store import CandidateDoc, CandidateStatus, MatloopStore

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
