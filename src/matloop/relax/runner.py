"""The per-structure atomate2 path: relaxations run in-process through jobflow.

Every structure becomes one jobflow job made by a relaxation maker (see
:mod:`matloop.relax.makers`); the job runs locally and writes its atomate2 task document into
the caller's ``JobStore``. :func:`relax_structures` turns each task document into a small
:class:`~matloop.relax.outcome.RelaxOutcome` the loop can act on. One failing structure never
stops the others. What counts as a failure is decided by :mod:`matloop.relax.checks`.

Whenever the job produced them, ``structure``, ``energy_per_atom``, ``max_force`` and
``job_uuid`` are filled even for failures; only ``ok=True`` outcomes should enter hulls.
"""

from __future__ import annotations

import tempfile
import time
from typing import TYPE_CHECKING, Any

from pymatgen.core import Structure

from matloop.relax.checks import (
    exception_reason,
    judge,
    quiet,
    read_task_doc,
    reject_reason,
    store_unreachable,
    thread_limits,
)
from matloop.relax.outcome import OutcomeStructure, RelaxOutcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from jobflow import JobStore, Maker

__all__ = ["OutcomeStructure", "RelaxOutcome", "recorded_outcome", "relax_structures"]


def relax_structures(
    items: list[tuple[str, Structure]],
    maker: Maker,
    job_store: JobStore,
    *,
    max_atoms: int | None = None,
    max_volume_ratio: float = 3.0,
    progress: Callable[[int, int], None] | None = None,
    min_distance: float = 0.5,
    max_volume_per_atom: float | None = 200.0,
    num_threads: int | None = 1,
    log: bool = False,
) -> list[RelaxOutcome]:
    """Relax structures one by one as jobflow jobs and summarise each result.

    Parameters
    ----------
    items : list of (str, Structure)
        Candidate ids and their structures.
    maker : jobflow.Maker
        A relaxation maker whose ``make(structure)`` returns a job (or flow) with an
        atomate2 force-field task document as output, e.g. from
        :func:`matloop.relax.makers.make_relax_maker`.
    job_store : jobflow.JobStore
        Where task documents go. Force-field jobs also write to an additional store
        named ``"data"``.
    max_atoms : int, optional
        Structures with more sites fail before running.
    max_volume_ratio : float
        A relaxed volume more than this many times larger, or smaller, than the input
        volume marks the relaxation as failed.
    progress : callable, optional
        Called as ``progress(done, total)`` after each structure.
    min_distance : float
        Structures with two atoms closer than this (Å, periodic images included) fail
        before running; ML potentials happily "relax" such overlaps into nonsense.
    max_volume_per_atom : float or None
        Structures sparser than this (Å³/atom) fail before running: their atoms see no
        neighbours within the potential's cutoff. None disables the check.
    num_threads : int or None
        Torch intra-op threads and BLAS / OpenMP threads (through threadpoolctl) during the
        call, restored afterwards; None leaves them alone. One thread is the default because
        small cells gain nothing from more, and on a busy machine idle-spinning worker
        threads slow a relaxation down ten- to a hundred-fold (measured here on 2 shared
        cores). These settings are process-wide: do not run relaxations in several threads
        of one process with different values.
    log : bool
        Let jobflow log and atomate2 / the potentials warn; quiet by default.

    Returns
    -------
    list of RelaxOutcome
        One per item, in order. Failures have ``ok=False`` and a ``reason``.

    Examples
    --------
    >>> from jobflow import JobStore
    >>> from maggma.stores import MemoryStore
    >>> store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    >>> outs = relax_structures([("si", si)], make_relax_maker(), store)  # doctest: +SKIP
    >>> outs[0].ok, round(outs[0].energy_per_atom, 2)  # doctest: +SKIP
    (True, -5.42)
    """
    from matloop.relax.makers import maker_potential  # atomate2 is slow to import

    potential = maker_potential(maker)
    outcomes: list[RelaxOutcome] = []
    total = len(items)
    with (
        tempfile.TemporaryDirectory(prefix="matloop-relax-") as root,
        quiet(not log),
        thread_limits(num_threads),
    ):
        for done, (candidate_id, structure) in enumerate(items, start=1):
            start = time.perf_counter()
            reason = reject_reason(structure, max_atoms, min_distance, max_volume_per_atom)
            if reason is not None:
                fields: dict[str, Any] = {"ok": False, "reason": reason}
            else:
                fields = _relax_one(
                    candidate_id, structure, maker, job_store, root, max_volume_ratio, log
                )
            outcomes.append(
                RelaxOutcome(
                    candidate_id=candidate_id,
                    potential=potential,
                    wall_s=time.perf_counter() - start,
                    **fields,
                )
            )
            if progress is not None:
                progress(done, total)
    return outcomes


def _relax_one(
    candidate_id: str,
    structure: Structure,
    maker: Maker,
    job_store: JobStore,
    root_dir: str,
    max_volume_ratio: float,
    log: bool,
) -> dict[str, Any]:
    """Run one relaxation and return the outcome's fields (never raises for bad input)."""
    from jobflow import Flow, run_locally

    job_uuid = None
    try:
        job = maker.make(structure)
        job.update_metadata({"candidate_id": candidate_id})
        job_uuid = job.output.uuid if isinstance(job, Flow) else job.uuid
        responses = run_locally(
            job,
            store=job_store,
            log=log,
            create_folders=False,
            root_dir=root_dir,
            raise_immediately=True,
        )
        response = responses.get(job_uuid, {})
        if isinstance(job, Flow) or not response:
            doc = job.output.resolve(job_store)
        else:
            doc = response[max(response)].output
        result = read_task_doc(doc)
    except Exception as exc:  # one bad structure must not stop the others
        if store_unreachable(exc):
            raise  # not the structure's fault: the caller stops (and is retried)
        return {"ok": False, "reason": exception_reason(exc), "job_uuid": job_uuid}
    return judge(result, structure, job_uuid, max_volume_ratio)


def recorded_outcome(
    candidate_id: str,
    structure: Structure,
    job_store: JobStore,
    potential: str,
    *,
    max_volume_ratio: float = 3.0,
) -> RelaxOutcome | None:
    """The outcome of a relaxation of ``candidate_id`` already in the job store, if any.

    A process killed after atomate2 stored its task document but before the caller saved
    the outcome leaves exactly this behind; reading it back avoids relaxing twice.
    """
    found = job_store.query_one(
        {"metadata.candidate_id": candidate_id}, properties=["uuid", "output"],
        load=True,
    )
    if not found or not found.get("output"):
        return None
    try:
        result = read_task_doc(found["output"])
    except Exception:  # an unreadable leftover: relax again rather than guess
        return None
    fields = judge(result, structure, found["uuid"], max_volume_ratio)
    return RelaxOutcome(candidate_id=candidate_id, potential=potential, wall_s=0.0, **fields)
