"""The one small facade over the campaign database.

Everything a campaign knows lives here: campaigns, rounds, candidates, relaxations,
evaluations, hull references, model checkpoints, and the jobflow ``JobStore`` holding the
atomate2 task documents of the relaxations, all in one database. Writes are upserts by
natural keys, so a rerun updates records in place and nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import socket
import threading
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
CLAIM_LEASE_S = 3600.0  # a relaxing claim older than this, not renewed, may be taken over

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

# collection -> indexes (compound, leading with the campaign) created when it is first opened
INDEXES: dict[str, list[tuple[str, ...]]] = {
    "candidates": [("campaign", "candidate_id"), ("campaign", "status"), ("campaign", "round")],
    "rounds": [("campaign", "round")],
    "campaigns": [("campaign",)],
    "relaxations": [("campaign", "candidate_id")],
    "evaluations": [("campaign", "candidate_id")],
    "dft": [("campaign", "candidate_id")],
    "references": [("potential", "reference_id")],
    "models": [("campaign", "name", "version")],
    "model_blobs": [("sha256",)],
}
JOB_INDEXES = [("uuid", "index"), ("metadata.candidate_id",)]


def _pushed_as_text(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with status changes that a server stored as JSON text read back.

    nx-27017 (MongoDB's wire protocol over SQLite, used in tests and by some laptops)
    keeps a document ``$push``-ed onto an array as its JSON text; MongoDB keeps it as is.
    """
    history = doc.get("history")
    if history and any(isinstance(h, str) for h in history):
        import json

        doc["history"] = [json.loads(h) if isinstance(h, str) else h for h in history]
    return doc


#: Collections of plain dicts (no document type): collection -> key fields.
PLAIN_COLLECTIONS: dict[str, list[str]] = {
    "model_blobs": ["sha256"],
    "leases": ["campaign"],  # one campaign lease per campaign (matloop.store.lease)
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

    def reopen(self) -> MatloopStore:
        """Another connection to the same database (for another thread): the same files as
        this store even if the working directory has changed since it was opened. An
        in-memory store has no other connection: it is returned itself."""
        if self.backend.scheme == "memory":
            return self
        other = copy.copy(self)
        other._stores, other._job_store = {}, None
        return other

    # -- plumbing ---------------------------------------------------------------------------
    def _store(self, name: str) -> Store:
        """The collection ``name``, connected, its indexes created on first use."""
        if name not in self._stores:
            key = COLLECTIONS[name][1] if name in COLLECTIONS else PLAIN_COLLECTIONS[name]
            store = self.backend.open(name, key=key[-1])
            with self._file_lock("connect"):
                store.connect()
            store.ensure_indexes(INDEXES.get(name, [tuple(key)]))
            self._stores[name] = store
        return self._stores[name]

    def collection(self, name: str) -> Store:
        """The maggma store of one collection, connected and indexed (for tools that copy
        raw documents, such as :mod:`matloop.store.migrate`)."""
        return self._store(name)

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
        found = self._store(name).query(criteria or {}, sort=sort)
        return [doc_type(**_pushed_as_text(d)) for d in found]

    def _find_one(self, name: str, criteria: dict[str, Any]) -> Any | None:
        found = self._store(name).query_one(criteria)
        return COLLECTIONS[name][0](**_pushed_as_text(found)) if found else None

    def project(
        self,
        name: str,
        criteria: dict[str, Any],
        fields: Iterable[str],
        sort: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Only the top-level ``fields`` of the documents of ``name`` matching ``criteria``,
        as plain dicts; a field a document lacks holds its document type's default.

        For summaries and exports: one read with a tight projection, so structures and
        histories are neither sent nor decoded (a plain top-level projection, which every
        backend answers alike).
        """
        model_fields = COLLECTIONS[name][0].model_fields
        fields = list(fields)
        optional = [f for f in fields if f in model_fields and not model_fields[f].is_required()]
        # leave out the type's other fields (a plain top-level exclusion: SQLite cuts them
        # out faster than it picks a few); keys the type does not know are dropped below
        unwanted = {f: 0 for f in model_fields if f not in fields}
        rows = []
        for doc in self._store(name).query(criteria, properties=unwanted or None, sort=sort):
            row = _pushed_as_text({f: doc[f] for f in fields if f in doc})
            for f in optional:
                if f not in row:  # a fresh default each time: some are dicts
                    row[f] = model_fields[f].get_default(call_default_factory=True)
            rows.append(row)
        return rows

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

            job_store = JobStore(
                self.backend.open("jobs", key="uuid"),
                additional_stores={"data": self.backend.open("jobs_data", key="uuid")},
            )
            with self._file_lock("connect"):
                job_store.connect()
            job_store.docs_store.ensure_indexes(JOB_INDEXES)
            job_store.additional_stores["data"].ensure_indexes([("job_uuid",)])
            self._job_store = job_store
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
        only its ``times_proposed`` grows. Returns (new ids, ids already present).

        One indexed lookup of the ids, one bulk upsert of the new ones, one bulk increment
        of the repeats (per repeat count), whatever the backend.
        """
        if not docs:
            return [], []
        campaign = docs[0].campaign
        store = self._store("candidates")
        ids = list(dict.fromkeys(d.candidate_id for d in docs))
        found = store.query(
            {"campaign": campaign, "candidate_id": {"$in": ids}}, properties=["candidate_id"]
        )
        existing = {d["candidate_id"] for d in found}
        fresh: dict[str, CandidateDoc] = {}
        repeats: dict[str, int] = {}
        for doc in docs:
            if doc.candidate_id in existing:
                repeats[doc.candidate_id] = repeats.get(doc.candidate_id, 0) + 1
            elif doc.candidate_id not in fresh:
                fresh[doc.candidate_id] = doc
        self._upsert("candidates", fresh.values())
        by_count: dict[int, list[str]] = {}
        for cid, n in repeats.items():
            by_count.setdefault(n, []).append(cid)
        for n, group in by_count.items():
            store.update_many(
                {"campaign": campaign, "candidate_id": {"$in": group}},
                {"$inc": {"times_proposed": n}},
            )
        return list(fresh), list(repeats)

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
        One ``update_many`` per (status, reason) shared by several candidates; the rest (their
        own ``fields``, or a reason of their own such as "duplicate of X") in one bulk write.
        """
        from monty.json import jsanitize  # numpy numbers in fields become plain ones

        store = self._store("candidates")
        fields = jsanitize(fields or {}, enum_values=True)
        groups: dict[tuple[str, str | None], list[str]] = {}
        for cid, (status, reason) in updates.items():
            if not fields.get(cid):
                groups.setdefault((str(CandidateStatus(status)), reason), []).append(cid)
        own: list[tuple[dict, dict]] = []
        for cid, (status, reason) in updates.items():
            change = StatusChange(status=status, reason=reason, round=round_)
            if fields.get(cid) or len(groups[(str(change.status), reason)]) == 1:
                update = {
                    "$set": {**fields.get(cid, {}), "status": str(change.status),
                             "reason": reason},
                    "$push": {"history": change.model_dump(mode="json")},
                }
                own.append(({"campaign": campaign, "candidate_id": cid}, update))
        for (status, reason), ids in groups.items():
            if len(ids) == 1:
                continue  # in the bulk write
            change = StatusChange(status=status, reason=reason, round=round_)
            store.update_many(
                {"campaign": campaign, "candidate_id": {"$in": ids}},
                {"$set": {"status": status, "reason": reason},
                 "$push": {"history": change.model_dump(mode="json")}},
            )
        store.update_each(own)

    def set_fields(self, campaign: str, fields: dict[str, dict[str, Any]]) -> None:
        """Set fields of candidates (id -> {field: value}) without touching their status or
        history: one bulk write."""
        from monty.json import jsanitize

        fields = jsanitize(fields, enum_values=True)
        self._store("candidates").update_each([
            ({"campaign": campaign, "candidate_id": cid}, {"$set": values})
            for cid, values in fields.items() if values
        ])

    def count_candidates(self, campaign: str, status: CandidateStatus | str) -> int:
        """How many of the campaign's candidates have ``status``."""
        return self.count("candidates", {"campaign": campaign, "status": str(status)})

    def status_counts(self, campaign: str) -> dict[str, int]:
        """Candidates per status, counted in the database."""
        counts = self._store("candidates").count_by("status", {"campaign": campaign})
        return {status.value: counts.get(status.value, 0) for status in CandidateStatus}

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
        self, campaign: str, round_: int | None = None, lease_s: float = CLAIM_LEASE_S
    ) -> CandidateDoc | None:
        """Atomically take one ``selected`` candidate for relaxation (status → ``relaxing``).

        A candidate left ``relaxing`` by a worker that died (same host, dead pid) or whose
        lease expired is taken over, so an interrupted round can be finished elsewhere.
        Returns None when no work is left.
        """
        store = self._store("candidates")
        me = self.worker_id()
        now = utcnow()
        change = {"status": "relaxing", "round": round_, "at": now, "reason": None}
        update = {
            "$set": {"status": "relaxing", "claimed_by": me, "claimed_at": now, "reason": None},
            "$push": {"history": change},
        }
        with self._claim_lock():
            found = store.find_one_and_update(
                {"campaign": campaign, "status": "selected"}, update
            )
            if found is None:
                lease = timedelta(seconds=lease_s)
                relaxing = store.query(
                    {"campaign": campaign, "status": "relaxing"},
                    properties=["_id", "claimed_by", "claimed_at"],
                )
                for doc in list(relaxing):
                    if doc.get("claimed_by") != me and self._claim_is_stale(doc, lease):
                        found = store.find_one_and_update(
                            {"_id": doc["_id"], "claimed_by": doc.get("claimed_by")}, update
                        )
                        if found is not None:
                            break
        if found is None:
            return None
        (doc,) = self.candidates(campaign, ids=[found["candidate_id"]])
        return doc

    def renew_claims(self, campaign: str, candidate_ids: Iterable[str]) -> int:
        """Restart the lease of this worker's claims on ``candidate_ids`` (``claimed_at`` =
        now), so that work longer than the lease is not taken over. A claim another worker
        holds is left alone. Returns how many claims were renewed."""
        criteria = {"campaign": campaign, "candidate_id": {"$in": list(candidate_ids)},
                    "status": "relaxing", "claimed_by": self.worker_id()}  # fmt: skip
        with self._claim_lock():
            return self._store("candidates").update_many(
                criteria, {"$set": {"claimed_at": utcnow()}})

    def keep_claims(
        self, campaign: str, candidate_ids: Iterable[str], lease_s: float = CLAIM_LEASE_S
    ) -> ClaimRenewal:
        """Renew the claims every ``lease_s / 3`` in a background thread until the returned
        :class:`ClaimRenewal` is stopped (it is also a context manager)."""
        return ClaimRenewal(self, campaign, list(candidate_ids), lease_s / 3).start()

    # -- generic atomic primitives (the campaign lease builds on these) -------------------
    def insert_new(self, name: str, doc: dict[str, Any], unless: dict[str, Any]) -> bool:
        """Insert ``doc`` unless a document matches ``unless``; False then. Atomic: of two
        processes inserting at once, exactly one gets True (one SQLite write transaction; on
        MongoDB an upsert on the document's ``_id``)."""
        with self._claim_lock():
            return self._store(name).insert_unless(unless, doc)

    def update_where(
        self, name: str, criteria: dict[str, Any], update: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Atomically apply ``update`` to one document matching ``criteria`` (equality
        tests make it a compare-and-swap); returns the document as it was, or None when
        none matched."""
        with self._claim_lock():
            return self._store(name).find_one_and_update(criteria, update)

    def find_raw(self, name: str, criteria: dict[str, Any]) -> dict[str, Any] | None:
        """One plain document of ``name`` matching ``criteria``, or None."""
        return self._store(name).query_one(criteria)

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


class ClaimRenewal:
    """A daemon thread that renews a worker's claims every ``every_s`` seconds until
    :meth:`stop` (see :meth:`MatloopStore.keep_claims`)."""

    def __init__(self, store: MatloopStore, campaign: str, ids: list[str], every_s: float):
        self.store, self.campaign, self.ids, self.every_s = store, campaign, ids, every_s
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="matloop-claims")

    def start(self) -> ClaimRenewal:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.renewals += bool(self.store.renew_claims(self.campaign, self.ids))
            except Exception:  # a store hiccup: try again at the next tick
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> ClaimRenewal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
