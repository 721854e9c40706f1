"""The batched fast path on FireWorks: one firework per chunk of candidates.

``relaxer: {batched: true, executor: fireworks}`` builds a :class:`FireWorksBatchedRelaxer`.
It cuts the candidates into chunks of ``batch_size`` (or ``chunk_size``) and adds one
workflow with a firework per chunk; each firework runs :class:`BatchedChunkTask`, which
relaxes its chunk with the batched CHGNet relaxer (:func:`matloop.relax.cluster.relax_chunk`,
on the worker's GPU when it has one) and stores the outcomes in its launch
(``FWAction.stored_data``), so workers need no access to the campaign's store. With
``launch="none"`` (your queue runs ``rlaunch``) outcomes are handed to the loop as each
firework completes; with ``launch="rapidfire"`` this process starts ``rlaunch`` workers
itself and reads them when the workers are done.

A worker that dies leaves its firework RUNNING: FireWorks' own
``lpad detect_lostruns --rerun`` sends it out again (the whole chunk; there is no
per-crystal record inside a firework).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fireworks import FiretaskBase, Firework, FWAction, Workflow, explicit_serialize

from matloop.relax.cluster import ChunkedRelaxer, chunked, outcome_from_json, relax_chunk
from matloop.relax.outcome import RelaxOutcome, structure_as_dict

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["BatchedChunkTask", "FireWorksBatchedRelaxer"]

Items = list[tuple[str, "Structure"]]


@explicit_serialize
class BatchedChunkTask(FiretaskBase):
    """Relax a chunk with the batched relaxer; the outcomes go to the launch's stored data.

    ``items`` are ``[candidate_id, structure dict]`` pairs, ``settings`` the
    :class:`~matloop.relax.batched.BatchedRelaxer` fields, ``relax_kwargs`` those of its
    ``relax`` (e.g. ``num_threads``).
    """

    required_params = ["items", "settings"]
    optional_params = ["relax_kwargs"]

    def run_task(self, fw_spec: dict) -> FWAction:
        from pymatgen.core import Structure

        # FireWorks may already have turned the structure dicts back into Structures
        items = [(cid, s if isinstance(s, Structure) else Structure.from_dict(s))
                 for cid, s in self["items"]]  # fmt: skip
        record = relax_chunk(items, dict(self["settings"]), None, self.get("relax_kwargs"))
        return FWAction(stored_data={"chunk": record})


@dataclass
class FireWorksBatchedRelaxer(ChunkedRelaxer):
    """Relax candidates in chunks, one firework each, with the batched CHGNet relaxer.

    Parameters
    ----------
    fmax, steps, relax_cell, batch_size, max_atoms, device, num_threads
        As in :class:`~matloop.relax.cluster.ChunkedRelaxer`.
    launchpad, launch, n_workers, worker_dir, worker_env, timeout_s, poll_s
        As in :class:`~matloop.relax.executors.FireWorksExecutor`.
    chunk_size : int, optional
        Crystals per firework; default ``batch_size``.
    """

    launchpad: Any = None
    launch: str = "rapidfire"
    n_workers: int = 1
    worker_dir: str | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 24 * 3600.0
    poll_s: float = 5.0

    def __post_init__(self) -> None:
        if self.launch not in {"rapidfire", "none"}:
            raise ValueError(f"launch must be 'rapidfire' or 'none', not {self.launch!r}")

    def _executor(self):
        from matloop.relax.executors import FireWorksExecutor

        return FireWorksExecutor(launchpad=self.launchpad, launch=self.launch,
                                 n_workers=self.n_workers, worker_dir=self.worker_dir,
                                 worker_env=self.worker_env, timeout_s=self.timeout_s,
                                 poll_s=self.poll_s)  # fmt: skip

    def stream(self, items: Items) -> Iterator[RelaxOutcome]:
        """Add a firework per chunk and yield each chunk's outcomes as it completes."""
        items = list(items)
        if not items:
            return
        settings = self.chunk_settings()
        chunks = chunked(items, self.chunk_size or self.batch_size)
        fireworks = [
            Firework([BatchedChunkTask(
                items=[[cid, structure_as_dict(s)] for cid, s in chunk], settings=settings,
                relax_kwargs={"num_threads": self.num_threads})],
                name=f"matloop batched chunk {i}")
            for i, chunk in enumerate(chunks)
        ]  # fmt: skip
        executor = self._executor()
        lpad = _launchpad(self.launchpad)
        temporary = [fw.fw_id for fw in fireworks]  # add_wf renumbers the fireworks
        fw_ids = lpad.add_wf(Workflow(fireworks, name="matloop batched relax"))
        ids = [fw_ids[i] for i in temporary]
        if self.launch == "rapidfire":
            lpad = executor.rapidfire(lpad, len(ids))
        waiting = dict(zip(ids, chunks, strict=True))
        deadline = time.monotonic() + self.timeout_s
        while waiting:
            for fw_id in list(waiting):
                state = lpad.get_fw_dict_by_id(fw_id)["state"]
                if state not in {"COMPLETED", "FIZZLED", "DEFUSED"}:
                    continue
                chunk = waiting.pop(fw_id)
                yield from self._chunk_outcomes(lpad, fw_id, state, chunk)
            if waiting and (self.launch == "rapidfire" or time.monotonic() > deadline):
                for fw_id, chunk in waiting.items():  # the workers are gone, or time is up
                    yield from self.failed(_ids(chunk), f"firework {fw_id} did not finish")
                return
            if waiting:
                time.sleep(self.poll_s)

    def _chunk_outcomes(self, lpad, fw_id: int, state: str, chunk: Items
                        ) -> Iterator[RelaxOutcome]:  # fmt: skip
        launch = lpad.launches.find_one({"fw_id": fw_id}, sort=[("launch_id", -1)])
        stored = ((launch or {}).get("action") or {}).get("stored_data") or {}
        record = stored.get("chunk")
        if state != "COMPLETED" or not record:
            trace = (stored.get("_exception") or {}).get("_stacktrace") or ""
            reason = f"firework {fw_id} {state.lower()}"
            if trace.strip():
                reason += ": " + trace.strip().splitlines()[-1][:300]
            yield from self.failed(_ids(chunk), reason)
            return
        self.chunks.append({k: v for k, v in record.items() if k != "outcomes"})
        found = {d["candidate_id"]: d for d in record["outcomes"]}
        for cid, _ in chunk:
            if cid in found:
                yield outcome_from_json(found[cid])
            else:
                yield from self.failed([cid], f"firework {fw_id} returned no outcome")


def _ids(chunk: Items) -> list[str]:
    return [cid for cid, _ in chunk]


def _launchpad(launchpad: Any):
    """A LaunchPad from a LaunchPad, its dict, a file path, or FireWorks' own configuration."""
    from fireworks import LaunchPad

    if launchpad is None:
        return LaunchPad.auto_load()
    if isinstance(launchpad, LaunchPad):
        return launchpad
    if isinstance(launchpad, dict):
        return LaunchPad.from_dict(launchpad)
    return LaunchPad.from_file(str(launchpad))
