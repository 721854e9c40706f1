"""The fast path on a cluster: batched relaxation in chunks on Dask workers, one per GPU.

:class:`~matloop.relax.batched.BatchedRelaxer` relaxes many crystals in one torch state, but
only inside the calling process. :class:`DaskBatchedRelaxer` cuts a round's candidates into
chunks and relaxes each chunk with a ``BatchedRelaxer`` on a Dask worker
(``distributed.LocalCluster``, a running scheduler, or ``dask_jobqueue.SLURMCluster`` with
one worker per GPU: see ``infra/dask/`` and ``docs/cluster.md``).

How it keeps the loop's promises
--------------------------------
- **Claims.** The campaign process claims the candidates (as for every relaxer) and is the
  only one that writes to the store; workers need no database access.
- **Warm model.** A worker loads CHGNet once (:func:`matloop.relax.batched.load_chgnet`, a
  per-process cache) and keeps it for every later chunk, on its GPU when it has one (torch
  sees only the devices ``CUDA_VISIBLE_DEVICES`` leaves it, so a SLURM ``--gres=gpu:1``
  worker uses its own GPU).
- **Streaming.** Each crystal's outcome is published the moment it finishes (a Dask event on
  the scheduler, :meth:`distributed.Worker.log_event`); :meth:`DaskBatchedRelaxer.stream`
  yields it at once, so the relax step stores it and advances its progress bar while other
  crystals are still relaxing, across all workers.
- **A worker that dies.** Dask reruns its chunk on another worker; the rerun first reads
  which of its crystals the campaign process already has (it marks each one answered on the
  scheduler before storing it) and skips them, so only the unfinished ones are relaxed
  again. A chunk that fails outright (``KilledWorker`` after Dask's allowed
  failures, an error) has its unfinished crystals resubmitted, up to ``max_attempts`` times,
  then they fail with the reason. An outcome that arrives twice is stored once.

Examples
--------
>>> relaxer = DaskBatchedRelaxer(n_workers=2, batch_size=16)
>>> relaxer.claim_size is None  # the loop hands over every selected candidate at once
True
>>> outcomes = relaxer.relax([("si", si), ("nacl", nacl)])  # doctest: +SKIP
>>> relaxer.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from matloop.relax.checks import exception_reason
from matloop.relax.outcome import RelaxOutcome

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "ChunkedRelaxer",
    "DaskBatchedRelaxer",
    "chunked",
    "guided_chunks",
    "outcome_from_json",
    "relax_chunk",
]

Items = list[tuple[str, "Structure"]]

#: Seconds the stream waits for events between looks at the chunks' futures.
POLL_S = 0.2
#: Seconds to wait, once every crystal is answered, for the last chunks' records.
CHUNK_WAIT_S = 30.0


def chunked(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive chunks of at most ``size``.

    >>> chunked([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    size = max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]


def guided_chunks(items: list, n_workers: int, largest: int) -> list[list]:
    """``items`` cut into chunks that shrink as the work runs out (guided scheduling).

    Each chunk takes a ``1 / (2 n_workers)`` share of the items still left, at most
    ``largest`` and at least ``largest // 4`` (fewer when there are few items, so every
    worker gets some). Chunks run in order, so the workers
    start on large chunks (full batches) and end on small ones: a worker that drew a slow
    chunk early is not left alone at the end with a whole batch, as with equal chunks.

    >>> [len(c) for c in guided_chunks(list(range(64)), 2, 16)]
    [16, 12, 9, 7, 5, 4, 4, 4, 3]
    """
    n_workers, largest = max(1, int(n_workers)), max(1, int(largest))
    smallest = max(1, min(largest // 4, len(items) // (2 * n_workers)))
    chunks, start = [], 0
    while start < len(items):
        left = len(items) - start
        size = min(largest, max(smallest, -(-left // (2 * n_workers))))
        chunks.append(items[start : start + size])
        start += size
    return chunks


def outcome_from_json(data: dict[str, Any]) -> RelaxOutcome:
    """A :class:`RelaxOutcome` from its ``model_dump(mode="json")`` (the structure a dict)."""
    from pymatgen.core import Structure

    data = dict(data)
    if isinstance(data.get("structure"), dict):
        data["structure"] = Structure.from_dict(data["structure"])
    return RelaxOutcome(**data)


def _device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def relax_chunk(
    items: Items,
    settings: dict[str, Any],
    topic: str | None = None,
    relax_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Relax one chunk with the batched relaxer where this runs (a Dask worker, a firework).

    Parameters
    ----------
    items : list of (str, Structure)
        The chunk's candidate ids and structures.
    settings : dict
        :class:`~matloop.relax.batched.BatchedRelaxer` fields (``fmax``, ``steps``,
        ``batch_size``, ``max_atoms``, ``device`` ...), never a model: the worker's warm one
        is used.
    topic : str, optional
        On a Dask worker, each outcome is published as an event on this topic the moment it
        finishes, and crystals the campaign process has marked answered on ``TOPIC/done``
        (finished by an earlier attempt of the chunk, on a worker that died) are skipped.
    relax_kwargs : dict, optional
        Keyword arguments of :meth:`BatchedRelaxer.relax` (``num_threads``, checks).

    Returns
    -------
    dict
        ``outcomes`` (JSON dumps of the outcomes relaxed here), ``skipped`` (ids relaxed
        before), and where and how it ran: ``worker``, ``host``, ``pid``, ``device``,
        ``model_load_s`` (0 when the model was already warm), ``relax_s``, ``relax_cpu_s``,
        ``wall_s``.
    """
    from matloop.relax.batched import BatchedRelaxer, load_chgnet
    from matloop.relax.executors import tune_worker_allocator

    start = time.perf_counter()
    tune_worker_allocator()
    worker = None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker (e.g. a firework)
        pass
    skipped: set[str] = set()
    if worker is not None and topic:
        from distributed import get_client

        ids = {cid for cid, _ in items}
        for _, msg in get_client().get_events(f"{topic}/done"):
            skipped.update(cid for cid in msg.get("ids", ()) if cid in ids)
    label = worker.address if worker is not None else f"{socket.gethostname()}:{os.getpid()}"
    todo = [(cid, s) for cid, s in items if cid not in skipped]

    settings = {k: v for k, v in settings.items() if k != "model"}
    device = _device(settings.pop("device", None))
    loaded = time.perf_counter()
    model = load_chgnet(device) if todo else None
    model_load_s = time.perf_counter() - loaded

    def publish(out: RelaxOutcome) -> None:
        if worker is not None and topic:
            worker.log_event(topic, {"outcome": out.model_copy(update={"worker": label})
                                     .model_dump(mode="json")})  # fmt: skip

    relax_start, cpu_start = time.perf_counter(), time.process_time()
    outcomes = []
    if todo:
        relaxer = BatchedRelaxer(**settings, device=device, model=model)
        outcomes = relaxer.relax(todo, on_outcome=publish, **(relax_kwargs or {}))
    end = time.perf_counter()
    return {
        "outcomes": [
            o.model_copy(update={"worker": label}).model_dump(mode="json") for o in outcomes
        ],  # fmt: skip
        "skipped": sorted(skipped),
        "worker": label,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "n": len(todo),
        "model_load_s": model_load_s,
        "relax_s": end - relax_start,
        "relax_cpu_s": time.process_time() - cpu_start,  # this process's CPU seconds
        "wall_s": end - start,
    }


@dataclass
class ChunkedRelaxer:
    """What the cluster relaxers share: the batched relaxer's settings, sent with every
    chunk, and the loop's view of a relaxer that takes a whole round at once.

    Parameters
    ----------
    fmax, steps, relax_cell, batch_size, max_atoms
        As in :class:`~matloop.relax.batched.BatchedRelaxer`.
    chunk_size : int, optional
        Crystals per chunk (each subclass says its default).
    device : str, optional
        Torch device on the workers; default: CUDA when the worker sees a GPU, else CPU.
    num_threads : int or None
        Torch / BLAS threads in each worker during a chunk (None: leave them alone).
    """

    fmax: float = 0.05
    steps: int = 300
    relax_cell: bool = True
    batch_size: int = 32
    max_atoms: int | None = None
    chunk_size: int | None = None
    device: str | None = None
    num_threads: int | None = 1
    #: one record per finished chunk: where it ran, model-load and relax seconds, ...
    chunks: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)

    @property
    def claim_size(self) -> None:
        """Every selected candidate at once: the chunks spread them over the workers."""
        return None

    @property
    def potential(self) -> str:
        from matloop.relax.potentials import potential_version

        return potential_version("CHGNet")

    def relax(self, items: Items) -> list[RelaxOutcome]:
        """One outcome per item, in order (see ``stream`` for them as they finish)."""
        by_id = {out.candidate_id: out for out in self.stream(items)}
        return [by_id[cid] for cid, _ in items]

    def stream(self, items: Items) -> Iterator[RelaxOutcome]:
        raise NotImplementedError

    def chunk_settings(self) -> dict[str, Any]:
        """The :class:`~matloop.relax.batched.BatchedRelaxer` fields each chunk runs with."""
        return {"fmax": self.fmax, "steps": self.steps, "relax_cell": self.relax_cell,
                "batch_size": self.batch_size, "max_atoms": self.max_atoms,
                "device": self.device}  # fmt: skip

    def failed(self, ids, reason: str) -> Iterator[RelaxOutcome]:
        """A failed outcome for each of ``ids``."""
        for cid in ids:
            yield RelaxOutcome(candidate_id=cid, ok=False, reason=reason,
                               potential=self.potential, wall_s=0.0)  # fmt: skip


@dataclass
class DaskBatchedRelaxer(ChunkedRelaxer):
    """Relax candidates in chunks with the batched CHGNet relaxer on Dask workers.

    ``relaxer: {batched: true, executor: dask, executor_settings: {...}}`` builds one; the
    settings are the fields below from ``address`` on.

    Parameters
    ----------
    fmax, steps, relax_cell, batch_size, max_atoms, device, num_threads
        As in :class:`ChunkedRelaxer`.
    address : str, optional
        Scheduler of a running cluster (``tcp://host:8786``), e.g. one started by
        ``infra/dask/gpu_cluster.py`` on SLURM GPU nodes.
    cluster_class : str, optional
        Import path of a cluster to start, e.g. ``"dask_jobqueue.SLURMCluster"`` (it reads
        ``DASK_CONFIG=infra/dask``); default: ``distributed.LocalCluster`` with worker
        processes of one thread each.
    cluster_kwargs : dict
        Passed to the cluster class.
    n_workers : int
        Workers to start when this relaxer starts the cluster.
    chunk_size : int, optional
        Crystals per chunk; default: chunks that shrink toward the end of the round
        (:func:`guided_chunks`, at most ``batch_size``), so the workers finish together.
        Within a chunk the batched relaxer fits batches to the device's memory.
    max_attempts : int
        Submissions of a crystal before it fails (a chunk rerun by Dask after a worker
        died counts once).
    worker_timeout_s : float
        Longest wait for the first worker of a cluster that is still starting.
    """

    address: str | None = None
    cluster_class: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    n_workers: int = 2
    max_attempts: int = 3
    worker_timeout_s: float = 600.0
    #: outcomes that arrived for a crystal already answered (stored once, counted here)
    duplicates: int = field(default=0, init=False)
    #: crystals sent out again after their chunk failed (a worker died too often, ...)
    resubmitted: int = field(default=0, init=False)
    _client: Any = field(default=None, init=False, repr=False)
    _cluster: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {self.chunk_size}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")

    # -- the cluster ---------------------------------------------------------------------
    def client(self):
        """The Dask client, starting (and keeping) a cluster on first use."""
        if self._client is None:
            from matloop.relax.executors import start_dask

            self._client, self._cluster = start_dask(
                self.address, self.cluster_class, self.cluster_kwargs, self.n_workers
            )
        return self._client

    def close(self) -> None:
        """Close the client and any cluster this relaxer started."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def warm_up(self) -> dict[str, float]:
        """Load the model on every worker now; returns seconds per worker address (0 for a
        worker that already had it)."""
        client = self.client()
        client.wait_for_workers(1, timeout=self.worker_timeout_s)
        device = self.device
        return client.run(_load_model_seconds, device)

    def chunks_for(self, ids: list[str], n_workers: int) -> list[list[str]]:
        """``ids`` cut into chunks for ``n_workers``: ``chunk_size`` each when set, else
        :func:`guided_chunks` of at most ``batch_size``."""
        if self.chunk_size:
            return chunked(ids, self.chunk_size)
        return guided_chunks(ids, n_workers, self.batch_size)

    # -- relaxing ------------------------------------------------------------------------
    def stream(self, items: Items) -> Iterator[RelaxOutcome]:
        """Relax ``items`` on the workers and yield each outcome as soon as it finishes.

        Every item gets exactly one outcome; failures are outcomes with ``ok=False``.
        """
        items = list(items)
        if not items:
            return
        client = self.client()
        client.wait_for_workers(1, timeout=self.worker_timeout_s)
        n_workers = len(client.scheduler_info().get("workers", {})) or self.n_workers
        structures = dict(items)
        pending = set(structures)  # no outcome yielded yet
        heard: set[str] = set()  # outcomes published by a worker
        topic = f"matloop-relax-{uuid.uuid4().hex}"
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        client.subscribe_topic(topic, lambda event: arrived.put(event[1]["outcome"]))
        settings = self.chunk_settings()
        relax_kwargs = {"num_threads": self.num_threads}
        attempts = dict.fromkeys(structures, 0)

        def submit(ids: list[str]) -> dict:
            futures = {}
            for chunk in self.chunks_for(ids, n_workers):
                for cid in chunk:
                    attempts[cid] += 1
                future = client.submit(relax_chunk, [(cid, structures[cid]) for cid in chunk],
                                       settings, topic, relax_kwargs, pure=False)  # fmt: skip
                futures[future] = chunk
            return futures

        def take(data: list[dict], event: bool = True) -> list[RelaxOutcome]:
            """The outcomes of crystals not yet answered, marked answered on the scheduler
            before they are handed over (a rerun chunk skips them). A chunk's record repeats
            its events; an event twice means a crystal was relaxed twice."""
            fresh = []
            for d in data:
                cid = d["candidate_id"]
                if event:
                    self.duplicates += cid in heard
                    heard.add(cid)
                if cid in pending:
                    pending.discard(cid)
                    fresh.append(outcome_from_json(d))
            if fresh:
                client.log_event(f"{topic}/done", {"ids": [o.candidate_id for o in fresh]})
            return fresh

        def resubmit(left: list[str], reason: str) -> Iterator[RelaxOutcome]:
            """Send unfinished crystals out again, or fail those out of attempts."""
            retry = [cid for cid in left if attempts[cid] < self.max_attempts]
            out_of_attempts = [cid for cid in left if cid not in retry]
            pending.difference_update(out_of_attempts)
            yield from self.failed(out_of_attempts, reason)
            if retry:
                self.resubmitted += len(retry)
                running.update(submit(retry))

        running = submit([cid for cid, _ in items])
        try:
            while pending:
                arrivals = []  # outcomes stream in as crystals finish, on any worker
                with contextlib.suppress(queue.Empty):
                    arrivals.append(arrived.get(timeout=POLL_S))
                    while True:
                        arrivals.append(arrived.get_nowait())
                if arrivals:
                    yield from take(arrivals)
                    continue
                for future in [f for f in running if f.done()]:
                    chunk = running.pop(future)
                    reason = "dask chunk finished without this crystal's outcome"
                    try:
                        record = future.result()
                    except Exception as exc:  # its worker died too often, or it raised
                        reason = f"dask chunk failed: {exception_reason(exc)}"
                        record = None
                    if record is not None:
                        self.chunks.append({k: v for k, v in record.items()
                                            if k != "outcomes"})  # fmt: skip
                        # any whose event is still on its way
                        yield from take(record["outcomes"], event=False)
                    yield from resubmit([cid for cid in chunk if cid in pending], reason)
                if not running and pending:  # cannot happen; never wait forever
                    yield from resubmit(sorted(pending), "dask chunks finished without it")
            # every crystal is answered: the chunks still running are finishing (or skip
            # everything); keep their records for the timings
            from distributed import wait

            with contextlib.suppress(TimeoutError):  # cancelled below: every outcome is in
                wait(list(running), timeout=CHUNK_WAIT_S)
            for future in [f for f in running if f.status == "finished"]:
                running.pop(future)
                record = future.result()
                self.chunks.append({k: v for k, v in record.items() if k != "outcomes"})
        finally:
            for future in running:
                future.cancel()
            client.unsubscribe_topic(topic)
            # the scheduler keeps events until told: a long-lived one would hold every
            # outcome of every round
            with contextlib.suppress(Exception):
                client.run_on_scheduler(_forget_topics, [topic, f"{topic}/done"])


def _forget_topics(topics: list[str], dask_scheduler=None) -> None:
    """Dask ``run_on_scheduler`` target: drop the events of ``topics`` (distributed has no
    public call for it: its scheduler's event broker, guarded by the caller)."""
    broker = dask_scheduler._broker
    for topic in topics:
        broker.truncate(topic)
        broker._topics.pop(topic, None)


def _load_model_seconds(device: str | None) -> float:
    """Dask ``client.run`` target: load (or find warm) the model; seconds it took."""
    from matloop.relax.batched import load_chgnet

    start = time.perf_counter()
    load_chgnet(_device(device))
    return time.perf_counter() - start
