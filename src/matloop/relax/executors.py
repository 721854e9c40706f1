"""Executors: where relaxation jobs run. One small interface, four backends.

Every executor has ``run(items, maker, job_store) -> list[RelaxOutcome]``: it relaxes each
``(candidate_id, structure)`` with the maker, leaves the atomate2 task documents in
``job_store`` and judges each result exactly as :func:`matloop.relax.runner.relax_structures`
does (same pre-checks, same failure reasons), so the loop cannot tell them apart.

========================  ===================================================================
``local`` (default)       in this process, one job after another (``relax_structures``)
``dask``                  chunks of structures fanned out to Dask workers (a local
                          ``distributed`` cluster, an existing scheduler, or any cluster class
                          such as ``dask_jobqueue.SLURMCluster``); each worker relaxes its
                          chunk with ``relax_structures`` and sends back the outcomes and task
                          documents, which this process writes into ``job_store``
``fireworks``             ``jobflow.managers.fireworks.flow_to_workflow`` onto a FireWorks
                          ``LaunchPad``; ``rlaunch`` workers run the jobs (started here with
                          ``launch="rapidfire"``, or by your queue with ``launch="none"``) and
                          write task documents straight into ``job_store``, which must
                          therefore be a database the workers reach (MongoDB, montydb)
``jobflow-remote``        submits the flow to a jobflow-remote project (template:
                          ``infra/jobflow-remote/matloop.yaml``) and waits for the task documents
                          in ``job_store`` (the project's job store)
========================  ===================================================================

Examples
--------
>>> executor = make_executor("local")
>>> executor.name
'local'
>>> outs = executor.run([("si", si)], make_relax_maker(), job_store)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from matloop.relax.checks import RelaxChecks, exception_reason, judge, read_task_doc
from matloop.relax.outcome import RelaxOutcome
from matloop.relax.runner import relax_structures

if TYPE_CHECKING:
    from jobflow import Flow, JobStore, Maker
    from pymatgen.core import Structure

__all__ = [
    "EXECUTORS",
    "DaskExecutor",
    "Executor",
    "FireWorksExecutor",
    "JobflowRemoteExecutor",
    "LocalExecutor",
    "build_relax_flow",
    "dask_workers",
    "make_executor",
]

log = logging.getLogger("matloop")

Items = list[tuple[str, "Structure"]]


class Executor(Protocol):
    """Runs relaxation makers somewhere and returns one outcome per item, in order."""

    name: str

    def run(self, items: Items, maker: Maker, job_store: JobStore) -> list[RelaxOutcome]:
        """Relax every item; failures are outcomes with ``ok=False``, never exceptions."""
        ...


def _potential(maker: Maker) -> str:
    from matloop.relax.makers import maker_potential

    return maker_potential(maker)


# -- local ---------------------------------------------------------------------------------
@dataclass
class LocalExecutor(RelaxChecks):
    """In this process, one job after another: :func:`relax_structures`."""

    name: ClassVar[str] = "local"
    num_threads: int | None = 1

    def run(self, items: Items, maker: Maker, job_store: JobStore) -> list[RelaxOutcome]:
        return relax_structures(
            items, maker, job_store, num_threads=self.num_threads, **self.relax_kwargs()
        )


# -- dask ----------------------------------------------------------------------------------
#: Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off
#: glibc's adaptive mmap threshold: every tensor above 128 KiB is then mmapped and unmapped
#: afresh, and CHGNet on CPU spends 2.4x the CPU seconds (measured: 34.5 s against 14.1 s for
#: the same 24 crystals). Workers matloop starts go without it.
_NO_MALLOC_TRIM = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def dask_workers(client) -> list[str]:
    """The addresses of the Dask cluster's workers now, asked of the scheduler.

    Not ``Client.scheduler_info()``: the client's periodic refresh overwrites what it returns
    with a summary that lists no workers, so a cluster can look empty for a moment.
    """
    return client.run_on_scheduler(_worker_addresses)


def _worker_addresses(dask_scheduler=None) -> list[str]:
    """Dask ``run_on_scheduler`` target behind :func:`dask_workers`."""
    return list(dask_scheduler.workers)


def start_dask(
    address: str | None,
    cluster_class: str | None,
    cluster_kwargs: dict[str, Any],
    n_workers: int,
) -> tuple[Any, Any]:
    """A Dask client and the cluster it started (None when it joined ``address``).

    Without an address it starts ``cluster_class`` (an import path such as
    ``"dask_jobqueue.SLURMCluster"``) scaled to ``n_workers``, or by default a
    ``distributed.LocalCluster`` of ``n_workers`` single-threaded worker processes.
    """
    import dask
    from distributed import Client

    if address:
        return Client(address), None
    with dask.config.set(_NO_MALLOC_TRIM):
        if cluster_class:
            module, _, name = cluster_class.rpartition(".")
            cluster = getattr(importlib.import_module(module), name)(**cluster_kwargs)
            cluster.scale(n_workers)
        else:
            from distributed import LocalCluster

            kwargs = {"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                      "dashboard_address": None}  # fmt: skip
            cluster = LocalCluster(**{**kwargs, **cluster_kwargs})
        return Client(cluster), cluster


_allocator_tuned = False


def tune_worker_allocator() -> bool:
    """Undo a ``MALLOC_TRIM_THRESHOLD_`` this worker process was started with (a cluster
    that matloop did not start: a scheduler at ``address``, SLURM jobs) by setting glibc's
    mmap and trim thresholds high, as its adaptive defaults would reach. Once per process;
    True when it changed them."""
    global _allocator_tuned
    if _allocator_tuned or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    _allocator_tuned = True
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the variable meant nothing here
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)
                and libc.mallopt(m_trim_threshold, 64 * 2**20))


def _relax_chunk(
    items: Items, maker: Maker, checks: dict[str, Any], num_threads: int | None
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Dask task: relax a chunk into a private in-memory job store; return the outcomes
    (as dicts) and every stored document, so the caller can write them where it wants."""
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    tune_worker_allocator()
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    store.connect()
    outs = relax_structures(items, maker, store, num_threads=num_threads, **checks)
    from distributed import get_worker

    worker = get_worker().address  # recorded, so a caller can tell where it ran
    outs = [o.model_copy(update={"worker": worker}) for o in outs]
    docs = {"docs": [_strip_id(d) for d in store.docs_store.query({})]}
    for name, extra in store.additional_stores.items():
        docs[name] = [_strip_id(d) for d in extra.query({})]
    return [o.model_dump() for o in outs], docs


def _strip_id(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("_id", None)
    return doc


@dataclass
class DaskExecutor(RelaxChecks):
    """Fan chunks of structures out to Dask workers.

    Parameters
    ----------
    address : str, optional
        Scheduler of a running cluster (``tcp://host:8786``).
    cluster_class : str, optional
        Import path of a cluster to start, e.g. ``"dask_jobqueue.SLURMCluster"``; default:
        ``distributed.LocalCluster`` (worker processes, one thread each).
    cluster_kwargs : dict
        Passed to the cluster class. ``dask_jobqueue.SLURMCluster`` also reads Dask's
        configuration: ``DASK_CONFIG=infra/dask`` picks up ``infra/dask/jobqueue.yaml``.
    n_workers : int
        Workers to start (``cluster.scale``) when this executor starts the cluster.
    chunk_size : int, optional
        Structures per task; default: spread evenly over the workers, each worker loading
        the model once.
    num_threads : int or None
        Torch / BLAS threads inside each worker (1: see ``relax_structures``).

    Notes
    -----
    Each worker process builds the potential once and relaxes its chunks with
    ``relax_structures``; task documents come back with the outcomes and this process
    writes them into ``job_store`` (workers need no database access).
    """

    name: ClassVar[str] = "dask"
    address: str | None = None
    cluster_class: str | None = None
    cluster_kwargs: dict[str, Any] = field(default_factory=dict)
    n_workers: int = 2
    chunk_size: int | None = None
    num_threads: int | None = 1
    _client: Any = field(default=None, init=False, repr=False)
    _cluster: Any = field(default=None, init=False, repr=False)

    def client(self):
        """The Dask client, starting (and keeping) a cluster on first use."""
        if self._client is None:
            self._client, self._cluster = start_dask(
                self.address, self.cluster_class, self.cluster_kwargs, self.n_workers
            )
        return self._client

    def close(self) -> None:
        """Close the client and any cluster this executor started."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def run(self, items: Items, maker: Maker, job_store: JobStore) -> list[RelaxOutcome]:
        if not items:
            return []
        client = self.client()
        n_workers = max(1, len(dask_workers(client)) or self.n_workers)
        size = self.chunk_size or max(1, -(-len(items) // n_workers))
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        futures = client.map(
            _relax_chunk, chunks, maker=maker, checks=self.relax_kwargs(),
            num_threads=self.num_threads, pure=False,
        )
        outcomes: list[RelaxOutcome] = []
        potential = _potential(maker)
        for chunk, future in zip(chunks, futures, strict=True):
            try:
                dumped, docs = future.result()
            except Exception as exc:  # a worker died: only its chunk fails
                reason = f"dask worker failed: {exception_reason(exc)}"
                outcomes += [RelaxOutcome(candidate_id=cid, ok=False, reason=reason,
                                          potential=potential, wall_s=0.0) for cid, _ in chunk]
                continue
            _write_docs(job_store, docs)
            outcomes += [RelaxOutcome(**d) for d in dumped]
        return outcomes


def _write_docs(job_store: JobStore, docs: dict[str, list[dict]]) -> None:
    """Copy documents returned by a worker into the caller's job store."""
    job_store.connect()  # a no-op when connected (run_locally connects the same way)
    if docs.get("docs"):
        job_store.docs_store.update(docs["docs"], key=["uuid", "index"])
    for name, extra in job_store.additional_stores.items():
        if docs.get(name):
            extra.update(docs[name], key="blob_uuid")


# -- flows for remote managers ----------------------------------------------------------------
def build_relax_flow(
    items: Items, maker: Maker, checks: RelaxChecks | None = None, name: str = "matloop relax"
) -> tuple[Flow, dict[str, str], dict[str, str]]:
    """One jobflow ``Flow`` with a relaxation job per structure that passes the pre-checks.

    Returns
    -------
    (Flow, dict, dict)
        The flow, ``{candidate_id: job uuid}`` of the submitted jobs and
        ``{candidate_id: reason}`` of the structures refused before submission.
    """
    from jobflow import Flow

    checks = checks or RelaxChecks()
    jobs, uuids, refused = [], {}, {}
    for candidate_id, structure in items:
        if (reason := checks.precheck(structure)) is not None:
            refused[candidate_id] = reason
            continue
        job = maker.make(structure)
        job.update_metadata({"candidate_id": candidate_id})
        jobs.append(job)
        uuids[candidate_id] = job.uuid
    return Flow(jobs, name=name), uuids, refused


def _collect(
    items: Items,
    uuids: dict[str, str],
    refused: dict[str, str],
    job_store: JobStore,
    potential: str,
    max_volume_ratio: float,
    failures: dict[str, str] | None = None,
    wall_s: float = 0.0,
) -> list[RelaxOutcome]:
    """Outcomes of remotely run jobs, read back from the job store and judged."""
    job_store.connect()
    failures = failures or {}
    outcomes = []
    per_item = wall_s / max(1, len(uuids))
    for candidate_id, structure in items:
        base = {"candidate_id": candidate_id, "potential": potential}
        if candidate_id in refused:
            outcomes.append(RelaxOutcome(ok=False, reason=refused[candidate_id], wall_s=0.0,
                                         **base))
            continue
        uuid = uuids[candidate_id]
        found = job_store.query_one({"uuid": uuid}, properties=["uuid", "output"], load=True)
        if not found or not found.get("output"):
            reason = failures.get(candidate_id) or "no task document: the job did not finish"
            outcomes.append(RelaxOutcome(ok=False, reason=reason, job_uuid=uuid,
                                         wall_s=per_item, **base))
            continue
        try:
            fields = judge(read_task_doc(found["output"]), structure, uuid, max_volume_ratio)
        except Exception as exc:
            fields = {"ok": False, "reason": exception_reason(exc), "job_uuid": uuid}
        outcomes.append(RelaxOutcome(wall_s=per_item, **base, **fields))
    return outcomes


# -- fireworks -------------------------------------------------------------------------------
@dataclass
class FireWorksExecutor(RelaxChecks):
    """Run the relaxations as a FireWorks workflow.

    Parameters
    ----------
    launchpad : str, dict or LaunchPad, optional
        A ``my_launchpad.yaml`` path, its contents, or a LaunchPad; default: FireWorks'
        own configuration (``LaunchPad.auto_load()``).
    launch : {"rapidfire", "none"}
        ``"rapidfire"``: start ``n_workers`` ``rlaunch rapidfire`` processes here and wait
        for them; ``"none"``: only add the workflow (your queue runs ``rlaunch``) and wait
        up to ``timeout_s`` for the task documents.
    n_workers : int
        ``rlaunch`` processes started with ``launch="rapidfire"``.
    worker_dir : str, optional
        Where launch folders go (default: a temporary folder, removed afterwards).
    worker_env : dict
        Extra environment for the ``rlaunch`` processes (e.g. ``MONGOMOCK_SERVERSTORE_FILE``
        for a file-backed mongomock LaunchPad, or thread limits).
    timeout_s : float
        Longest wait for the workers.

    Notes
    -----
    Workers write task documents straight into ``job_store``, which is serialised into
    every Firework: it must be a database they can reach (MongoDB, or montydb on a shared
    disk), not an in-memory store.
    """

    name: ClassVar[str] = "fireworks"
    launchpad: Any = None
    launch: str = "rapidfire"
    n_workers: int = 1
    worker_dir: str | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 24 * 3600.0
    poll_s: float = 5.0

    def _launchpad(self):
        from fireworks import LaunchPad

        if self.launchpad is None:
            return LaunchPad.auto_load()
        if isinstance(self.launchpad, LaunchPad):
            return self.launchpad
        if isinstance(self.launchpad, dict):
            return LaunchPad.from_dict(self.launchpad)
        return LaunchPad.from_file(str(self.launchpad))

    def run(self, items: Items, maker: Maker, job_store: JobStore) -> list[RelaxOutcome]:
        from jobflow.managers.fireworks import flow_to_workflow

        _require_shared_store(job_store, "FireWorks workers")
        potential = _potential(maker)
        flow, uuids, refused = build_relax_flow(items, maker, self)
        start = time.perf_counter()
        failures: dict[str, str] = {}
        if uuids:
            lpad = self._launchpad()
            wf = flow_to_workflow(flow, store=job_store)
            fw_ids = lpad.add_wf(wf)
            if self.launch == "rapidfire":
                lpad = self.rapidfire(lpad, len(uuids))
            else:
                self._wait(lpad, list(fw_ids.values()))
            failures = self._failures(lpad, uuids)
        return _collect(items, uuids, refused, job_store, potential, self.max_volume_ratio,
                        failures, time.perf_counter() - start)

    def rapidfire(self, lpad, n_jobs: int):
        """Start ``n_workers`` ``rlaunch rapidfire`` workers and wait; returns the LaunchPad
        to read states from (a fresh one for a file-backed mongomock LaunchPad)."""
        mock_file = _mongomock_file(lpad)
        with tempfile.TemporaryDirectory(prefix="matloop-fw-") as tmp:
            root = Path(self.worker_dir or tmp)
            root.mkdir(parents=True, exist_ok=True)
            lpad_file = root / "my_launchpad.yaml"
            lpad.to_file(str(lpad_file))
            env = {**os.environ, **{k: str(v) for k, v in self.worker_env.items()}}
            env.setdefault("OMP_NUM_THREADS", "1")
            rlaunch = shutil.which("rlaunch") or str(Path(sys.executable).with_name("rlaunch"))
            command = [rlaunch, "-l", str(lpad_file), "-s", "rapidfire"]
            if mock_file:
                # mongomock keeps the LaunchPad in memory and writes its file when a process
                # ends: write ours now, let workers take turns (each its share of the jobs),
                # then read the file back. A test set-up; real LaunchPads are MongoDB.
                store = lpad.connection._store
                store._to_file()
                store._finalizer.detach()  # never overwrite the workers' file on exit
                env["MONGOMOCK_SERVERSTORE_FILE"] = mock_file
                share = -(-n_jobs // max(1, self.n_workers))
                command += ["--nlaunches", str(share)]
            deadline = time.monotonic() + self.timeout_s
            procs = []
            for index in range(self.n_workers):
                folder = root / f"worker-{index}"
                folder.mkdir(exist_ok=True)
                procs.append(subprocess.Popen(
                    command, cwd=folder, env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                ))
                if mock_file:
                    self._finish(procs[-1], deadline)
            for proc in procs:
                if proc.returncode is None:
                    self._finish(proc, deadline)
        if mock_file:
            from fireworks import LaunchPad

            return LaunchPad.from_dict(lpad.to_dict())
        return lpad

    def _finish(self, proc: subprocess.Popen, deadline: float) -> None:
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            log.warning("rlaunch worker %s timed out after %.0f s", proc.pid, self.timeout_s)
            return
        if proc.returncode:
            log.warning("rlaunch exited with %s: %s", proc.returncode,
                        err.decode(errors="replace")[-2000:])

    def _wait(self, lpad, fw_ids: list[int]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            states = [lpad.get_fw_dict_by_id(i)["state"] for i in fw_ids]
            if all(s in {"COMPLETED", "FIZZLED", "DEFUSED"} for s in states):
                return
            time.sleep(self.poll_s)

    @staticmethod
    def _failures(lpad, uuids: dict[str, str]) -> dict[str, str]:
        """Reasons of fizzled Fireworks, from their launches' stored exception."""
        reasons = {}
        for candidate_id, uuid in uuids.items():
            fw = lpad.fireworks.find_one({"spec._tasks.0.job.uuid": uuid},
                                         {"fw_id": 1, "state": 1})
            if not fw or fw.get("state") == "COMPLETED":
                continue
            text = f"firework {fw['fw_id']} {fw['state'].lower()}"
            launch = lpad.launches.find_one({"fw_id": fw["fw_id"]}, sort=[("launch_id", -1)])
            stored = ((launch or {}).get("action") or {}).get("stored_data") or {}
            trace = (stored.get("_exception") or {}).get("_stacktrace")
            if trace:
                text += ": " + trace.strip().splitlines()[-1][:300]
            reasons[candidate_id] = text
        return reasons


def _mongomock_file(lpad) -> str | None:
    """The file of a file-backed mongomock LaunchPad (``MONGOMOCK_SERVERSTORE_FILE``)."""
    store = getattr(lpad.connection, "_store", None)
    if store is None or not hasattr(store, "_to_file"):
        return None
    return getattr(store, "_filename", None)


def _require_shared_store(job_store: JobStore, who: str) -> None:
    from maggma.stores import MemoryStore, MontyStore

    if isinstance(job_store.docs_store, MemoryStore) and not isinstance(
        job_store.docs_store, MontyStore
    ):  # MontyStore subclasses MemoryStore: allowed
        raise ValueError(
            f"{who} cannot write into an in-memory job store; use the campaign's MongoDB or "
            "SQLite store (sqlite://PATH)"
        )


# -- jobflow-remote ----------------------------------------------------------------------------
@dataclass
class JobflowRemoteExecutor(RelaxChecks):
    """Submit the relaxations to a jobflow-remote project and wait for the results.

    Parameters
    ----------
    project : str, optional
        jobflow-remote project name (``~/.jfremote/<project>.yaml``; template in
        ``infra/jobflow-remote/matloop.yaml``); default: jobflow-remote's default.
    worker : str, optional
        The project's worker to run on (e.g. a SLURM cluster).
    resources : dict, optional
        Queue resources for every job (``{"nodes": 1, "time": "01:00:00"}``).
    exec_config : str, optional
        Name of an ``exec_config`` of the project (module loads, environment).
    wait : bool
        Wait for the jobs (the loop does); False returns after submission, every outcome
        ``ok=False`` with reason ``"submitted"``.
    timeout_s, poll_s : float
        How long and how often to look for the task documents.

    Notes
    -----
    The project's ``jobstore`` must be the campaign's database, so finished jobs' task
    documents land in ``job_store``. Requires ``pip install jobflow-remote``.
    """

    name: ClassVar[str] = "jobflow-remote"
    project: str | None = None
    worker: str | None = None
    resources: dict[str, Any] | None = None
    exec_config: str | None = None
    wait: bool = True
    timeout_s: float = 24 * 3600.0
    poll_s: float = 30.0

    def submit(self, items: Items, maker: Maker) -> tuple[list[str], dict[str, str],
                                                          dict[str, str]]:
        """Build the flow and submit it; returns (db ids, {candidate: uuid}, refused)."""
        try:
            from jobflow_remote import submit_flow
        except ImportError as err:
            raise ImportError(
                "the jobflow-remote executor needs jobflow-remote: pip install jobflow-remote "
                "(then configure a project, see infra/jobflow-remote/matloop.yaml)"
            ) from err
        flow, uuids, refused = build_relax_flow(items, maker, self)
        if not uuids:
            return [], uuids, refused
        db_ids = submit_flow(
            flow, worker=self.worker, project=self.project, resources=self.resources,
            exec_config=self.exec_config,
        )
        return list(db_ids or []), uuids, refused

    def run(self, items: Items, maker: Maker, job_store: JobStore) -> list[RelaxOutcome]:
        start = time.perf_counter()
        _, uuids, refused = self.submit(items, maker)
        potential = _potential(maker)
        if not self.wait:
            return [
                RelaxOutcome(candidate_id=cid, ok=False, potential=potential, wall_s=0.0,
                             reason=refused.get(cid, "submitted"), job_uuid=uuids.get(cid))
                for cid, _ in items
            ]
        deadline = time.monotonic() + self.timeout_s
        pending = set(uuids.values())
        while pending and time.monotonic() < deadline:
            done = {
                d["uuid"] for d in job_store.query(
                    {"uuid": {"$in": sorted(pending)}}, properties=["uuid"]
                )
            }
            pending -= done
            if pending:
                time.sleep(self.poll_s)
        return _collect(items, uuids, refused, job_store, potential, self.max_volume_ratio,
                        wall_s=time.perf_counter() - start)


# -- factory ---------------------------------------------------------------------------------
EXECUTORS: dict[str, type] = {
    "local": LocalExecutor,
    "dask": DaskExecutor,
    "fireworks": FireWorksExecutor,
    "jobflow-remote": JobflowRemoteExecutor,
}


def make_executor(name: str = "local", **settings: Any) -> Executor:
    """Build an executor by its config name (``relaxer.executor``) and settings.

    Raises
    ------
    ValueError
        For an unknown name or setting; the message lists what is known.

    Examples
    --------
    >>> make_executor("dask", n_workers=2).n_workers
    2
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; known executors: {', '.join(EXECUTORS)}")
    try:
        return EXECUTORS[name](**settings)
    except TypeError as err:
        raise ValueError(f"bad settings for the {name} executor: {err}") from None
