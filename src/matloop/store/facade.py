"""The one small facade over the campaign database.

Everything a campaign knows lives here: campaigns, rounds, candidates, relaxations,
evaluations, hull references, model checkpoints, and the jobflow ``JobStore`` holding the
atomate2 task documents of the relaxations, all in one database. Writes are upserts by
natural keys, so a rerun updates records in place and nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from matloop.store.backends import Backend, StoreURIError, redact_uri
from matloop.store.documents import (
    CampaignDoc,
    CandidateDoc,
    CandidateStatus,
    DftDoc,
    EvaluationDoc,
    ModelDoc,
    ReferenceDoc,
    RelaxationDoc,
    RoundDoc,
    StatusChange,
    utcnow,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from jobflow import JobStore
    from maggma.core import Store
    from pydantic import BaseModel

D = TypeVar("D", bound="BaseModel")

# collection -> (document type, natural key)
COLLECTIONS: dict[str, tuple[type, list[str]]] = {
    "campaigns": (CampaignDoc, ["campaign"]),
    "rounds": (RoundDoc, ["campaign", "round"]),
    "candidates": (CandidateDoc, ["campaign", "candidate_id"]),
    "relaxations": (RelaxationDoc, ["campaign", "candidate_id"]),
    "evaluations": (EvaluationDoc, ["campaign", "candidate_id"]),
    "references": (ReferenceDoc, ["potential", "reference_id"]),
    "models": (ModelDoc, ["campaign", "name", "version"]),
    "dft": (DftDoc, ["campaign", "candidate_id"]),
}


class MatloopStore:
    """Campaign database behind one URI (see :mod:`matloop.store.backends`).

    Examples
    --------
    >>> store = MatloopStore("memory://")
    >>> store.save_campaign(CampaignDoc(campaign="demo", config={}))
    >>> store.get_campaign("demo").campaign
    'demo'
    """

    def __init__(self, uri: str) -> None:
        from matloop.secrets import SecretError, resolve

        self.uri = uri  # the reference as configured: placeholders stay unresolved
        try:
            self.backend = Backend.from_uri(resolve(uri))
        except SecretError as err:
            raise StoreURIError(str(err)) from None
        self._stores: dict[str, Store] = {}
        self._job_store: JobStore | None = None

    def __repr__(self) -> str:
        return f"MatloopStore({redact_uri(self.uri)!r})"

    # -- plumbing ---------------------------------------------------------------------------
    def _store(self, name: str) -> Store:
        if name not in self._stores:
            key = COLLECTIONS[name][1] if name in COLLECTIONS else ["sha256"]
            store = self.backend.open(name, key=key[-1])
            with self._file_lock("connect"):
                store.connect()
            for field in key:
                try:
                    store.ensure_index(field)
                except NotImplementedError:  # montydb has no secondary indexes
                    break
            self._stores[name] = store
        return self._stores[name]

    def _upsert(self, name: str, docs: Iterable[BaseModel]) -> None:
        payload = [doc.model_dump(mode="json") for doc in docs]
        if payload:
            self._store(name).update(payload, key=COLLECTIONS[name][1])

    def _find(
        self,
        name: str,
        criteria: dict[str, Any] | None = None,
        sort: dict[str, int] | None = None,
    ) -> list[Any]:
        doc_type = COLLECTIONS[name][0]
        return [doc_type(**d) for d in self._store(name).query(criteria or {}, sort=sort)]

    def _find_one(self, name: str, criteria: dict[str, Any]) -> Any | None:
        found = self._store(name).query_one(criteria)
        return COLLECTIONS[name][0](**found) if found else None

    def count(self, name: str, criteria: dict[str, Any] | None = None) -> int:
        return self._store(name).count(criteria or {})

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        if self._job_store is not None:
            self._job_store.close()
            self._job_store = None

    def job_store(self) -> JobStore:
        """The jobflow store for atomate2 task documents, in the same database.

        atomate2 force-field jobs put trajectories in an additional store named ``data``.
        """
        if self._job_store is None:
            from jobflow import JobStore

            self._job_store = JobStore(
                self.backend.open("jobs", key="uuid"),
                additional_stores={"data": self.backend.open("jobs_data", key="uuid")},
            )
            with self._file_lock("connect"):
                self._job_store.connect()
        return self._job_store

    # -- campaigns and rounds -------------------------------------------------------------
    def get_campaign(self, campaign: str) -> CampaignDoc | None:
        return self._find_one("campaigns", {"campaign": campaign})

    def save_campaign(self, doc: CampaignDoc) -> None:
        self._upsert("campaigns", [doc])

    def campaigns(self) -> list[CampaignDoc]:
        return self._find("campaigns", sort={"campaign": 1})

    def get_round(self, campaign: str, round_: int) -> RoundDoc | None:
        return self._find_one("rounds", {"campaign": campaign, "round": round_})

    def save_round(self, doc: RoundDoc) -> None:
        self._upsert("rounds", [doc])

    def rounds(self, campaign: str) -> list[RoundDoc]:
        return self._find("rounds", {"campaign": campaign}, sort={"round": 1})

    # -- candidates ------------------------------------------------------------------------
    def add_candidates(self, docs: list[CandidateDoc]) -> tuple[list[str], list[str]]:
        """Insert new candidates; a crystal already in the campaign keeps its record and
        only its ``times_proposed`` grows. Returns (new ids, ids already present)."""
        if not docs:
            return [], []
        campaign = docs[0].campaign
        ids = [d.candidate_id for d in docs]
        existing = {
            d.candidate_id: d
            for d in self._find("candidates", {"campaign": campaign, "candidate_id": {"$in": ids}})
        }
        fresh: dict[str, CandidateDoc] = {}
        for doc in docs:
            if doc.candidate_id in existing:
                existing[doc.candidate_id].times_proposed += 1
            elif doc.candidate_id not in fresh:
                fresh[doc.candidate_id] = doc
        self._upsert("candidates", list(fresh.values()) + list(existing.values()))
        return list(fresh), list(existing)

    def candidates(
        self,
        campaign: str,
        *,
        status: CandidateStatus | str | list[str] | None = None,
        round_: int | None = None,
        ids: list[str] | None = None,
    ) -> list[CandidateDoc]:
        criteria: dict[str, Any] = {"campaign": campaign}
        if isinstance(status, list):
            criteria["status"] = {"$in": [str(s) for s in status]}
        elif status is not None:
            criteria["status"] = str(status)
        if round_ is not None:
            criteria["round"] = round_
        if ids is not None:
            criteria["candidate_id"] = {"$in": ids}
        return self._find("candidates", criteria, sort={"round": 1, "candidate_id": 1})

    def set_status(
        self,
        campaign: str,
        updates: dict[str, tuple[CandidateStatus, str | None]],
        *,
        round_: int | None = None,
        fields: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Move candidates along their lifecycle, recording each change in their history.

        ``updates`` maps id -> (new status, reason); ``fields`` optionally sets other fields.
        """
        docs = self.candidates(campaign, ids=list(updates))
        for doc in docs:
            status, reason = updates[doc.candidate_id]
            doc.status = status
            doc.reason = reason
            doc.history.append(StatusChange(status=status, reason=reason, round=round_))
            for name, value in (fields or {}).get(doc.candidate_id, {}).items():
                setattr(doc, name, value)
        self._upsert("candidates", docs)

    def count_candidates(self, campaign: str, status: CandidateStatus | str) -> int:
        """How many of the campaign's candidates have ``status``."""
        return self.count("candidates", {"campaign": campaign, "status": str(status)})

    def status_counts(self, campaign: str) -> dict[str, int]:
        return {
            status.value: self.count("candidates", {"campaign": campaign, "status": status.value})
            for status in CandidateStatus
        }

    # -- claiming work (several workers on one store) ------------------------------------
    @staticmethod
    def worker_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    @contextlib.contextmanager
    def _file_lock(self, name: str):
        """An inter-process lock for the embedded backend (no-op for the others).

        montydb is not safe for concurrent first use (two processes may both write its
        repository config) and its find_one_and_update is not atomic across processes,
        while MongoDB's is atomic on the server.
        """
        if self.backend.scheme != "monty":
            yield
            return
        import fcntl

        assert self.backend.path is not None
        self.backend.path.mkdir(parents=True, exist_ok=True)
        with open(self.backend.path / f".{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _claim_lock(self):
        return self._file_lock("claims")

    def _claim_is_stale(self, doc: dict[str, Any], lease: timedelta) -> bool:
        owner, at = doc.get("claimed_by"), doc.get("claimed_at")
        if not owner or not at:
            return True
        host, _, pid = owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True  # the worker that claimed it is gone
            except PermissionError:
                pass
        return datetime.now(UTC) - datetime.fromisoformat(at) > lease

    def claim_candidate(
        self, campaign: str, round_: int | None = None, lease_s: float = 3600.0
    ) -> CandidateDoc | None:
        """Atomically take one ``selected`` candidate for relaxation (status → ``relaxing``).

        A candidate left ``relaxing`` by a worker that died (same host, dead pid) or whose
        lease expired is taken over, so an interrupted round can be finished elsewhere.
        Returns None when no work is left.
        """
        collection = self._store("candidates")._collection
        me = self.worker_id()
        now = utcnow()
        change = {"status": "relaxing", "round": round_, "at": now, "reason": None}
        update = {
            "$set": {"status": "relaxing", "claimed_by": me, "claimed_at": now, "reason": None},
            "$push": {"history": change},
        }
        with self._claim_lock():
            found = collection.find_one_and_update(
                {"campaign": campaign, "status": "selected"}, update
            )
            if found is None:
                lease = timedelta(seconds=lease_s)
                for doc in collection.find({"campaign": campaign, "status": "relaxing"}):
                    if doc.get("claimed_by") != me and self._claim_is_stale(doc, lease):
                        found = collection.find_one_and_update(
                            {"_id": doc["_id"], "claimed_by": doc.get("claimed_by")}, update
                        )
                        if found is not None:
                            break
        if found is None:
            return None
        (doc,) = self.candidates(campaign, ids=[found["candidate_id"]])
        return doc

    # -- relaxations, evaluations, references -----------------------------------------------
    def save_relaxations(self, docs: list[RelaxationDoc]) -> None:
        self._upsert("relaxations", docs)

    def relaxations(self, campaign: str, ids: list[str] | None = None) -> list[RelaxationDoc]:
        criteria: dict[str, Any] = {"campaign": campaign}
        if ids is not None:
            criteria["candidate_id"] = {"$in": ids}
        return self._find("relaxations", criteria, sort={"candidate_id": 1})

    def save_evaluations(self, docs: list[EvaluationDoc]) -> None:
        self._upsert("evaluations", docs)

    def evaluations(self, campaign: str) -> list[EvaluationDoc]:
        return self._find("evaluations", {"campaign": campaign}, sort={"candidate_id": 1})

    def save_dft(self, docs: list[DftDoc]) -> None:
        self._upsert("dft", docs)

    def dft_results(self, campaign: str, ids: list[str] | None = None) -> list[DftDoc]:
        """DFT verifications of the campaign's candidates (see :class:`DftDoc`)."""
        criteria: dict[str, Any] = {"campaign": campaign}
        if ids is not None:
            criteria["candidate_id"] = {"$in": ids}
        return self._find("dft", criteria, sort={"candidate_id": 1})

    def save_references(self, docs: list[ReferenceDoc]) -> None:
        self._upsert("references", docs)

    def references(self, potential: str, ids: list[str] | None = None) -> list[ReferenceDoc]:
        criteria: dict[str, Any] = {"potential": potential}
        if ids is not None:
            criteria["reference_id"] = {"$in": ids}
        return self._find("references", criteria, sort={"reference_id": 1})

    # -- model checkpoints -----------------------------------------------------------------
    def save_model(self, doc: ModelDoc, checkpoint: bytes) -> ModelDoc:
        """Keep a checkpoint's bytes and its sha256; returns the stored document."""
        doc.sha256 = hashlib.sha256(checkpoint).hexdigest()
        self._upsert("models", [doc])
        blob = {"sha256": doc.sha256, "data": checkpoint}
        self._store("model_blobs").update([blob], key="sha256")
        return doc

    def models(self, campaign: str, name: str | None = None) -> list[ModelDoc]:
        criteria: dict[str, Any] = {"campaign": campaign}
        if name is not None:
            criteria["name"] = name
        return self._find("models", criteria, sort={"version": 1})

    def load_model_bytes(self, doc: ModelDoc) -> bytes:
        """The checkpoint bytes of ``doc``, refused when they do not match its sha256."""
        found = self._store("model_blobs").query_one({"sha256": doc.sha256})
        if found is None:
            raise KeyError(f"checkpoint {doc.name} v{doc.version} is missing from the store")
        data = bytes(found["data"])
        if hashlib.sha256(data).hexdigest() != doc.sha256:
            raise ValueError(
                f"checkpoint {doc.name} v{doc.version} does not match its recorded sha256"
            )
        return data
