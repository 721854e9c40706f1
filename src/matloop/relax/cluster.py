"""The fast path on a cluster: batched relaxation on Dask workers, one per GPU.

:class:`~matloop.relax.batched.BatchedRelaxer` relaxes many crystals in one torch state, but
only inside the calling process. :class:`DaskBatchedRelaxer` puts a round's candidates in a
queue on the Dask scheduler and runs one batched relaxer per worker
(``distributed.LocalCluster``, a running scheduler, or ``dask_jobqueue.SLURMCluster`` with
one worker per GPU: see ``infra/dask/`` and ``docs/cluster.md``). Each worker takes a crystal
from the queue whenever a slot of its batch opens, so the workers share the round crystal by
crystal and finish together (:func:`relax_pulled`). With ``chunk_size`` set, fixed chunks go
out as Dask tasks instead (:func:`relax_chunk`), as they do to FireWorks
(:mod:`matloop.relax.fireworks_chunks`).

How it keeps the loop's promises
--------------------------------
- **Claims.** The campaign process claims the candidates (as for every relaxer) and is the
  only one that writes to the store; workers need no database access.
- **Warm model.** A worker loads CHGNet once (:func:`matloop.relax.batched.load_chgnet`, a
  per-process cache) and keeps it for every later round, on its GPU when it has one (torch
  sees only the devices ``CUDA_VISIBLE_DEVICES`` leaves it, so a SLURM ``--gres=gpu:1``
  worker uses its own GPU).
- **Streaming.** Each crystal's outcome is published the moment it finishes (a Dask event on
  the scheduler, :meth:`distributed.Worker.log_event`); :meth:`DaskBatchedRelaxer.stream`
  yields it at once, so the relax step stores it and advances its progress bar while other
  crystals are still relaxing, across all workers.
- **A worker that dies.** A worker names the crystals it takes from the queue before it
  relaxes them; those it had not finished when it left the cluster go back into the queue,
  for the others (or for its restarted self: Dask reruns its task) to take. With chunks,
  Dask reruns the chunk, which first reads which of its crystals the campaign process
  already has (it marks each one answered on the scheduler before storing it) and skips
  them. Either way a crystal is sent out at most ``max_attempts`` times, then fails with the
  reason, and an outcome that arrives twice is stored once.

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
from collections import Counter
from collections.abc import Callable, Iterator
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
    "outcome_from_json",
    "relax_chunk",
    "relax_pulled",
]

Items = list[tuple[str, "Structure"]]

#: Seconds the stream waits for events between looks at the chunks' futures.
POLL_S = 0.2
#: Seconds to wait, once every crystal is answered, for the last chunks' records.
CHUNK_WAIT_S = 30.0
#: Seconds between looks at which workers are alive, while outcomes keep arriving.
LIVENESS_S = 1.0


def chunked(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive chunks of at most ``size``.

    >>> chunked([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    size = max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]


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

    relaxer, device, model_load_s = _worker_relaxer(settings, load=bool(todo))

    def publish(out: RelaxOutcome) -> None:
        if worker is not None and topic:
            worker.log_event(topic, {"outcome": out.model_copy(update={"worker": label})
                                     .model_dump(mode="json")})  # fmt: skip

    relax_start, cpu_start = time.perf_counter(), time.process_time()
    outcomes = []
    if relaxer is not None:
        outcomes = relaxer.relax(todo, on_outcome=publish, **(relax_kwargs or {}))
    outcomes = [o.model_copy(update={"worker": label}) for o in outcomes]
    return _task_record(outcomes, label, device, len(todo), model_load_s,
                        (start, relax_start, cpu_start), skipped=sorted(skipped))  # fmt: skip


def _worker_relaxer(settings: dict[str, Any], load: bool = True) -> tuple[Any, str, float]:
    """The batched relaxer of a task here, on this process's warm model (loaded the first
    time), its device, and the seconds the model took to load (0 when warm). No relaxer
    and no model when ``load`` is false (nothing to relax)."""
    from matloop.relax.batched import BatchedRelaxer, load_chgnet

    settings = {k: v for k, v in settings.items() if k != "model"}
    device = _device(settings.pop("device", None))
    if not load:
        return None, device, 0.0
    loaded = time.perf_counter()
    model = load_chgnet(device)
    model_load_s = time.perf_counter() - loaded
    return BatchedRelaxer(**settings, device=device, model=model), device, model_load_s


def _task_record(outcomes: list[RelaxOutcome], label: str, device: str, n: int,
                 model_load_s: float, clocks: tuple[float, float, float],
                 **extra: Any) -> dict[str, Any]:  # fmt: skip
    """What a worker task returns: its outcomes (JSON), where and how it ran. ``clocks``:
    the task's start, the relaxation's start, and this process's CPU time then."""
    start, relax_start, cpu_start = clocks
    end = time.perf_counter()
    return {
        "outcomes": [o.model_dump(mode="json") for o in outcomes],
        "worker": label,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "n": n,
        **extra,
        "model_load_s": model_load_s,
        "relax_s": end - relax_start,
        "relax_cpu_s": time.process_time() - cpu_start,  # this process's CPU seconds
        "wall_s": end - start,
    }



def relax_pulled(
    queue_name: str,
    settings: dict[str, Any],
    topic: str,
    relax_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Relax crystals from the round's shared Dask queue on this worker until it is empty.

    The batched relaxer takes a crystal from the queue each time one of its batch's slots
    opens, so a worker that happens to draw fast crystals simply takes more, and the workers
    finish within one crystal of each other (fixed chunks leave one worker relaxing its last
    chunk alone). Before relaxing what it took, the worker names it on ``TOPIC/took``; each
    outcome is published on ``topic`` the moment it finishes (see :func:`relax_chunk`).

    Returns
    -------
    dict
        As :func:`relax_chunk`: where and how it ran, ``n`` crystals relaxed, the outcomes,
        plus ``takes`` (round trips to the queue that returned crystals).
    """
    from distributed import get_client, get_worker
    from pymatgen.core import Structure

    from matloop.relax.executors import tune_worker_allocator

    start = time.perf_counter()
    tune_worker_allocator()
    worker = get_worker()
    label = worker.address
    client = get_client()
    relaxer, device, model_load_s = _worker_relaxer(settings)
    takes = 0

    def take(n: int) -> Items:
        nonlocal takes
        got = client.run_on_scheduler(_queue_take, queue_name, n)
        if got:
            takes += 1
            worker.log_event(f"{topic}/took", {"ids": [cid for cid, _ in got], "worker": label})
        return [(cid, Structure.from_dict(data)) for cid, data in got]

    outcomes: list[RelaxOutcome] = []

    def publish(_: int, out: RelaxOutcome) -> None:
        out = out.model_copy(update={"worker": label})
        outcomes.append(out)
        worker.log_event(topic, {"outcome": out.model_dump(mode="json")})

    relax_start, cpu_start = time.perf_counter(), time.process_time()
    n = relaxer.relax_from(take, publish, **(relax_kwargs or {}))
    return _task_record(outcomes, label, device, n, model_load_s,
                        (start, relax_start, cpu_start), skipped=[], takes=takes)  # fmt: skip

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
    #: one record per finished task (a chunk, or a worker's share of a pulled round): where
    #: it ran, crystals, model-load and relax seconds, ...
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
    """Relax candidates with the batched CHGNet relaxer on Dask workers.

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
        Send fixed chunks of this many crystals as Dask tasks; default: none, each worker
        takes crystals from the round's queue as its batch has room (the workers finish
        together). Either way the batched relaxer fits batches to the device's memory.
    max_attempts : int
        Times a crystal is sent out before it fails (put in the queue, or in a chunk; a
        chunk rerun by Dask after a worker died counts once).
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
    #: crystals sent out again: taken by a worker that died, or in a chunk that failed
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

    # -- relaxing ------------------------------------------------------------------------
    def stream(self, items: Items) -> Iterator[RelaxOutcome]:
        """Relax ``items`` on the workers and yield each outcome as soon as it finishes.

        Every item gets exactly one outcome; failures are outcomes with ``ok=False``.
        Without ``chunk_size`` the workers pull crystals from a shared queue
        (:func:`relax_pulled`); with it, each chunk is one Dask task (:func:`relax_chunk`).
        """
        items = list(items)
        if not items:
            return
        client = self.client()
        client.wait_for_workers(1, timeout=self.worker_timeout_s)
        answers = _Answers(client, f"matloop-relax-{uuid.uuid4().hex}", {cid for cid, _ in items})
        arrived: queue.SimpleQueue = queue.SimpleQueue()  # (kind, data) from the workers
        client.subscribe_topic(answers.topic,
                               lambda event: arrived.put(("outcome", event[1]["outcome"])))
        client.subscribe_topic(f"{answers.topic}/took",
                               lambda event: arrived.put(("took", event[1])))  # fmt: skip
        running: dict[Any, list[str]] = {}  # Dask futures -> their chunk ([] when pulling)
        try:
            if self.chunk_size:
                yield from self._stream_chunks(client, dict(items), answers, arrived, running)
            else:
                yield from self._stream_pulled(client, dict(items), answers, arrived, running)
            # every crystal is answered: tasks still running are finishing (or skip
            # everything); keep their records for the timings
            from distributed import wait

            with contextlib.suppress(TimeoutError):  # cancelled below: every outcome is in
                wait(list(running), timeout=CHUNK_WAIT_S)
            for future in [f for f in running if f.status == "finished"]:
                running.pop(future)
                self._keep_record(future.result())
        finally:
            self.duplicates += answers.duplicates
            for future in running:
                future.cancel()
            topics = [answers.topic, f"{answers.topic}/done", f"{answers.topic}/took"]
            for topic in topics[::2]:
                client.unsubscribe_topic(topic)
            # the scheduler keeps events until told: a long-lived one would hold every
            # outcome of every round
            with contextlib.suppress(Exception):
                client.run_on_scheduler(_forget_topics, topics)

    def _send_again(self, answers: _Answers, ids: list[str], reason: str,
                    send: Callable[[list[str]], None]) -> Iterator[RelaxOutcome]:
        """Send unfinished crystals out again with ``send`` (into the queue, or in new
        chunks), or fail those already sent ``max_attempts`` times, with ``reason``."""
        retry = [cid for cid in ids if answers.attempts[cid] < self.max_attempts]
        out_of_attempts = [cid for cid in ids if cid not in retry]
        answers.pending.difference_update(out_of_attempts)
        yield from self.failed(out_of_attempts, reason)
        if retry:
            self.resubmitted += len(retry)
            send(retry)

    def _keep_record(self, record: dict[str, Any]) -> None:
        self.chunks.append({k: v for k, v in record.items() if k != "outcomes"})

    def _stream_pulled(self, client, structures: dict, answers: _Answers,
                       arrived: queue.SimpleQueue, running: dict) -> Iterator[RelaxOutcome]:
        """One :func:`relax_pulled` task per worker, all drawing from one queue.

        Crystals taken by a worker that has left the cluster (died, killed, lost) go back
        into the queue, up to ``max_attempts`` times; a restarted worker's task (Dask reruns
        it) or the others take them.
        """
        from distributed import Queue

        from matloop.relax.executors import dask_workers

        shared = Queue(f"{answers.topic}/queue", client=client)
        settings, relax_kwargs = self.chunk_settings(), {"num_threads": self.num_threads}
        taken: dict[str, str] = {}  # crystal id -> address of the worker that took it

        def put(ids: list[str]) -> None:
            answers.attempts.update(ids)
            for cid in ids:
                taken.pop(cid, None)
                shared.put((cid, structures[cid].as_dict()))
            workers = len(dask_workers(client)) or self.n_workers
            for _ in range(workers - len(running)):
                future = client.submit(relax_pulled, shared.name, settings, answers.topic,
                                       relax_kwargs, pure=False)  # fmt: skip
                running[future] = []

        try:
            put(list(structures))
            failure = "dask worker tasks finished without this crystal's outcome"
            checked = time.monotonic()
            while answers.pending:
                outcomes, quiet_poll = [], True
                with contextlib.suppress(queue.Empty):
                    kind, data = arrived.get(timeout=POLL_S)
                    quiet_poll = False
                    while True:
                        if kind == "took":
                            taken.update((cid, data["worker"]) for cid in data["ids"])
                        else:
                            outcomes.append(data)
                        kind, data = arrived.get_nowait()
                if outcomes:
                    yield from answers.take(outcomes)
                if not quiet_poll and time.monotonic() - checked < LIVENESS_S:
                    continue
                checked = time.monotonic()
                live = set(dask_workers(client))
                lost = sorted(cid for cid in answers.pending
                              if cid in taken and taken[cid] not in live)  # fmt: skip
                if lost:
                    yield from self._send_again(answers, lost, "the dask workers that took it died",
                                                put)
                for future in [f for f in running if f.done()]:
                    running.pop(future)
                    try:
                        record = future.result()
                    except Exception as exc:  # it raised, or its workers died too often
                        failure = f"dask worker task failed: {exception_reason(exc)}"
                        continue
                    self._keep_record(record)
                    yield from answers.take(record["outcomes"], event=False)
                if not running and answers.pending:
                    # every task has stopped: what is left was taken by one that failed, or its
                    # note of what it took never arrived
                    with contextlib.suppress(Exception):
                        shared.get(batch=True)
                    yield from self._send_again(answers, sorted(answers.pending), failure, put)
        finally:
            with contextlib.suppress(Exception):
                shared.close()  # the scheduler forgets the queue

    def _stream_chunks(self, client, structures: dict, answers: _Answers,
                       arrived: queue.SimpleQueue, running: dict) -> Iterator[RelaxOutcome]:
        """One :func:`relax_chunk` task per ``chunk_size`` crystals."""
        settings, relax_kwargs = self.chunk_settings(), {"num_threads": self.num_threads}

        def submit(ids: list[str]) -> None:
            answers.attempts.update(ids)
            for chunk in chunked(ids, self.chunk_size):
                chunk_items = [(cid, structures[cid]) for cid in chunk]
                future = client.submit(relax_chunk, chunk_items, settings, answers.topic,
                                       relax_kwargs, pure=False)  # fmt: skip
                running[future] = chunk

        submit(list(structures))
        while answers.pending:
            outcomes = []  # outcomes stream in as crystals finish, on any worker
            with contextlib.suppress(queue.Empty):
                outcomes.append(arrived.get(timeout=POLL_S)[1])
                while True:
                    outcomes.append(arrived.get_nowait()[1])
            if outcomes:
                yield from answers.take(outcomes)
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
                    self._keep_record(record)
                    # any whose event is still on its way
                    yield from answers.take(record["outcomes"], event=False)
                left = [cid for cid in chunk if cid in answers.pending]
                yield from self._send_again(answers, left, reason, submit)
            if not running and answers.pending:  # cannot happen; never wait forever
                yield from self._send_again(answers, sorted(answers.pending),
                                            "dask chunks finished without it", submit)


@dataclass
class _Answers:
    """The crystals of one round on Dask that still wait for their outcome."""

    client: Any
    topic: str
    pending: set[str]
    heard: set[str] = field(default_factory=set)  # outcomes published by a worker
    attempts: Counter[str] = field(default_factory=Counter)  # times each was sent out
    duplicates: int = 0  # outcomes published twice (a crystal relaxed twice)

    def take(self, data: list[dict], event: bool = True) -> list[RelaxOutcome]:
        """The outcomes of crystals not yet answered, marked answered on the scheduler
        before they are handed over (a rerun chunk skips them). A task's record repeats its
        events; an event twice means a crystal was relaxed twice."""
        fresh = []
        for d in data:
            cid = d["candidate_id"]
            if event:
                self.duplicates += cid in self.heard
                self.heard.add(cid)
            if cid in self.pending:
                self.pending.discard(cid)
                fresh.append(outcome_from_json(d))
        if fresh:
            self.client.log_event(f"{self.topic}/done", {"ids": [o.candidate_id for o in fresh]})
        return fresh


def _queue_take(name: str, n: int, dask_scheduler=None) -> list:
    """Dask ``run_on_scheduler`` target: up to ``n`` items of the Dask queue ``name``, without
    waiting. It runs in one step of the scheduler's event loop, so two workers never take
    the same item; ``distributed.Queue.get`` can only wait for items, and logs an error on
    the scheduler when its wait times out (its queue extension, guarded by the caller)."""
    waiting = dask_scheduler.extensions["queues"].queues.get(name)
    if waiting is None:  # the round is over (a late task of a past round)
        return []
    return [waiting.get_nowait()["value"] for _ in range(min(n, waiting.qsize()))]


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
