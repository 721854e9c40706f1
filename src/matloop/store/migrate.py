"""Copy a campaign between two stores: ``matloop store migrate SRC DST``.

The way off montydb (``monty://`` is read, never needed again) and the way to move a
laptop campaign onto a cluster's MongoDB. Documents are copied as stored, unknown fields
included, and upserted by their natural keys: running it again copies nothing twice, and
an interrupted copy is finished by rerunning it. The source is only read.

What a campaign owns is copied: its campaign, rounds, candidates, relaxations,
evaluations, DFT results, model records and checkpoint bytes. Documents shared between
campaigns are copied whole: the hull references (keyed by potential) and the jobflow job
store (task documents are keyed by job, not by campaign).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matloop.store.facade import COLLECTIONS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from maggma.core import Store

    from matloop.store.facade import MatloopStore

#: collections owned by a campaign (filtered by its name)
OWNED = ("campaigns", "rounds", "candidates", "relaxations", "evaluations", "dft", "models")
BATCH = 5000


def _batches(docs: Iterable[dict], size: int = BATCH) -> Iterable[list[dict]]:
    batch: list[dict] = []
    for doc in docs:
        batch.append({k: v for k, v in doc.items() if k != "_id"})
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy(source: Store, target: Store, criteria: dict[str, Any], key: list[str] | str) -> int:
    count = 0
    for batch in _batches(source.query(criteria)):
        target.update(batch, key=key)
        count += len(batch)
    return count


def migrate(src: MatloopStore, dst: MatloopStore, campaign: str | None = None) -> dict[str, int]:
    """Copy ``campaign`` (every campaign when None) from ``src`` into ``dst``.

    Returns the number of documents copied per collection.
    """
    if src.backend.uri == dst.backend.uri and src.backend.scheme != "memory":
        raise ValueError("source and destination are the same store")
    names = [c.campaign for c in src.campaigns()]
    if campaign is not None:
        if campaign not in names:
            raise KeyError(
                f"campaign {campaign!r} is not in {src!r}; it holds: {', '.join(names) or 'none'}"
            )
        names = [campaign]
    copied: dict[str, int] = {}
    for name in OWNED:
        key = COLLECTIONS[name][1]
        copied[name] = sum(
            _copy(src.collection(name), dst.collection(name), {"campaign": c}, key)
            for c in names
        )
    # checkpoint bytes of the copied model records
    hashes = [m.sha256 for c in names for m in src.models(c)]
    copied["model_blobs"] = _copy(
        src.collection("model_blobs"), dst.collection("model_blobs"),
        {"sha256": {"$in": hashes}}, "sha256",
    ) if hashes else 0
    copied["references"] = _copy(
        src.collection("references"), dst.collection("references"), {},
        COLLECTIONS["references"][1],
    )
    source_jobs, target_jobs = src.job_store(), dst.job_store()
    copied["jobs"] = _copy(source_jobs.docs_store, target_jobs.docs_store, {}, ["uuid", "index"])
    copied["jobs_data"] = sum(
        _copy(store, target_jobs.additional_stores[name], {}, "blob_uuid")
        for name, store in source_jobs.additional_stores.items()
    )
    return copied
