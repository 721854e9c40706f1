"""Run relaxations for the loop, in-process, through jobflow.

Every structure becomes one jobflow job made by a relaxation maker (see
:mod:`matloop.relax.makers`); the job runs locally and writes its atomate2 task document into
the caller's ``JobStore``. :func:`relax_structures` turns each task document into a small
:class:`RelaxOutcome` the loop can act on. One failing structure never stops the others.

What counts as a failure (``ok=False``, with ``reason``):

- checked before running: too many atoms, ``"too many atoms (40 > 20)"``; overlapping atoms,
  ``"atoms too close (0.10 Å < 0.5 Å)"``; a nearly empty cell, ``"cell too sparse (5e+08
  Å³/atom > 200)"``;
- the job raised: ``"<ExceptionType>: <message>"``;
- the final energy is not finite: ``"energy is NaN"``;
- the cell volume changed by more than ``max_volume_ratio`` either way:
  ``"cell exploded: volume grew 5.2x"`` or ``"cell collapsed: volume shrank to 0.21x"``;
- the optimiser stopped at its step limit before reaching ``fmax`` (forces and, for cell
  relaxations, stress): ``"not converged after 300 steps: max force 0.31 eV/Å, max stress
  0.52 GPa"``. A non-converged relaxation is a failure, but its structure and energy are
  kept in the outcome for inspection.

Whenever the job produced them, ``structure``, ``energy_per_atom``, ``max_force`` and
``job_uuid`` are filled even for failures; only ``ok=True`` outcomes should enter hulls.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pymatgen.core import Structure

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from jobflow import JobStore, Maker

__all__ = ["RelaxOutcome", "relax_structures"]

_GPA_PER_KBAR = 0.1


def _structure_as_dict(structure: Structure | None) -> dict | None:
    """A structure as a JSON-safe pymatgen dict."""
    from monty.json import jsanitize

    return None if structure is None else jsanitize(structure.as_dict(), strict=True)


#: A structure field of an outcome model: a pymatgen Structure in Python, its pymatgen dict
#: in JSON mode (``model_dump(mode="json")``), shared by RelaxOutcome and DftOutcome.
OutcomeStructure = Annotated[
    Structure | None, PlainSerializer(_structure_as_dict, when_used="json")
]


class RelaxOutcome(BaseModel):
    """What the loop needs to know about one relaxation.

    Examples
    --------
    >>> out = RelaxOutcome(candidate_id="x", ok=False, reason="too many atoms (40 > 20)",
    ...                    potential="CHGNet 0.3.0", wall_s=0.0)
    >>> out.converged
    False
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    candidate_id: str = Field(description="Id of the candidate that was relaxed.")
    ok: bool = Field(
        description="True when the relaxation converged and passed every sanity check."
    )
    structure: OutcomeStructure = Field(
        None, description="Relaxed structure (kept for failed jobs that produced one)."
    )
    energy_per_atom: float | None = Field(
        None,
        description="Final raw (uncorrected) potential energy in eV/atom; None when the job "
        "produced none or it was not finite.",
    )
    n_steps: int | None = Field(
        None,
        description="Ionic steps in the atomate2 task document (optimiser steps plus the "
        "initial and final frames).",
    )
    max_force: float | None = Field(None, description="Largest final atomic force norm in eV/Å.")
    converged: bool = Field(
        False, description="Whether the optimiser reached fmax (forces and stress)."
    )
    reason: str | None = Field(None, description="Why the relaxation failed; None if ok.")
    job_uuid: str | None = Field(
        None, description="uuid of the jobflow job whose task document is in the JobStore."
    )
    potential: str = Field(description="Potential and model version, e.g. 'CHGNet 0.3.0'.")
    wall_s: float = Field(description="Wall-clock seconds spent on this structure.")
    properties: dict[str, float] = Field(
        default_factory=dict,
        description="Other computed labels (a replay table's columns, e.g. dir_gap).",
    )
    worker: str | None = Field(
        None, description="Address of the Dask worker that relaxed it; None: this process."
    )



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
        _quiet(not log),
        _thread_limits(num_threads),
    ):
        for done, (candidate_id, structure) in enumerate(items, start=1):
            start = time.perf_counter()
            reason = _reject_reason(structure, max_atoms, min_distance, max_volume_per_atom)
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
        fields = _read_task_doc(doc)
    except Exception as exc:  # one bad structure must not stop the others
        if _store_unreachable(exc):
            raise  # not the structure's fault: the caller stops (and is retried)
        return {"ok": False, "reason": _exception_reason(exc), "job_uuid": job_uuid}
    return _judge(fields, structure, job_uuid, max_volume_ratio)


def _judge(
    fields: dict[str, Any], structure: Structure, job_uuid: str | None, max_volume_ratio: float
) -> dict[str, Any]:
    """Decide whether a finished relaxation is usable, with the reason when it is not."""
    stress_gpa = fields.pop("_stress_gpa")
    max_steps = fields.pop("_max_steps")
    fields["job_uuid"] = job_uuid
    fields["ok"] = False
    energy = fields["energy_per_atom"]
    final = fields["structure"]
    if energy is None or not math.isfinite(energy):
        fields["energy_per_atom"] = None
        fields["reason"] = "energy is NaN" if energy is not None else "no energy in task document"
    elif final is None:
        fields["reason"] = "no structure in task document"
    elif (ratio := final.volume / structure.volume) > max_volume_ratio:
        fields["reason"] = f"cell exploded: volume grew {ratio:.1f}x"
    elif ratio < 1.0 / max_volume_ratio:
        fields["reason"] = f"cell collapsed: volume shrank to {ratio:.2f}x"
    elif not fields["converged"]:
        fields["reason"] = _not_converged_reason(fields["max_force"], stress_gpa, max_steps)
    else:
        fields["ok"] = True
    return fields


def _reject_reason(
    structure: Structure,
    max_atoms: int | None,
    min_distance: float,
    max_volume_per_atom: float | None,
) -> str | None:
    """Why a structure must not be relaxed (see :func:`_precheck`), never raising.

    Shared with the batched path (:mod:`matloop.relax.batched`), as is :func:`_judge`, so
    both reject and judge with the same rules and the same reason texts.
    """
    try:
        return _precheck(structure, max_atoms, min_distance, max_volume_per_atom)
    except Exception as exc:  # a structure too broken to inspect
        return f"invalid structure: {_exception_reason(exc)}"


def _precheck(
    structure: Structure,
    max_atoms: int | None,
    min_distance: float,
    max_volume_per_atom: float | None,
) -> str | None:
    """Return why a structure should not be relaxed at all, or None if it may be."""
    n_sites = len(structure)
    if n_sites == 0:
        return "empty structure"
    if max_atoms is not None and n_sites > max_atoms:
        return f"too many atoms ({n_sites} > {max_atoms})"
    volume_per_atom = structure.volume / n_sites
    if max_volume_per_atom is not None and volume_per_atom > max_volume_per_atom:
        return f"cell too sparse ({volume_per_atom:.3g} Å³/atom > {max_volume_per_atom:g})"
    if min_distance > 0:
        _, _, _, distances = structure.get_neighbor_list(min_distance)
        if len(distances) > 0:
            return f"atoms too close ({float(np.min(distances)):.2f} Å < {min_distance:g} Å)"
    return None


def _read_task_doc(doc: Any) -> dict[str, Any]:
    """Pull the outcome's fields out of an atomate2 force-field task document.

    Accepts the pydantic document a job returns or its serialised dict from a store.
    """
    if isinstance(doc, dict):
        from monty.json import MontyDecoder

        doc = MontyDecoder().process_decoded(doc)

    output = doc.output
    final = output.structure or doc.structure
    if isinstance(final, dict):
        final = Structure.from_dict(final)
    n_sites = len(final) if final is not None else None

    energy = output.energy_per_atom
    if energy is None and output.energy is not None and n_sites:
        energy = output.energy / n_sites

    max_force = None
    if output.forces is not None and len(output.forces) > 0:
        norms = np.linalg.norm(np.asarray(output.forces, dtype=float), axis=1)
        max_force = float(np.max(norms))

    stress_gpa = None
    if output.stress is not None:
        stress_gpa = float(np.max(np.abs(np.asarray(output.stress, dtype=float))))
        stress_gpa *= _GPA_PER_KBAR

    max_steps = getattr(doc.input, "steps", None) if doc.input is not None else None
    # ``state`` is SUCCESS only when the optimiser reached fmax within its step limit;
    # ``is_force_converged`` looks at atomic forces alone and misses unrelaxed stress.
    state = getattr(doc, "state", None)
    converged = str(getattr(state, "value", state)).lower() == "successful"

    return {
        "structure": final,
        "energy_per_atom": None if energy is None else float(energy),
        "n_steps": output.n_steps,
        "max_force": max_force,
        "converged": converged,
        "_stress_gpa": stress_gpa,
        "_max_steps": max_steps,
    }


def _not_converged_reason(
    max_force: float | None, stress_gpa: float | None, max_steps: int | None
) -> str:
    """Explain a relaxation that ran out of steps."""
    text = "not converged" + (f" after {max_steps} steps" if max_steps is not None else "")
    details = []
    if max_force is not None:
        details.append(f"max force {max_force:.2f} eV/Å")
    if stress_gpa is not None:
        details.append(f"max stress {stress_gpa:.2f} GPa")
    return text + (": " + ", ".join(details) if details else "")


def _store_unreachable(exc: BaseException) -> bool:
    """A lost connection to the job store (pymongo's ConnectionFailure, or OSError's)."""
    if isinstance(exc, ConnectionError):
        return True
    try:
        from pymongo.errors import ConnectionFailure
    except ImportError:  # pragma: no cover - pymongo comes with maggma
        return False
    return isinstance(exc, ConnectionFailure)


def _exception_reason(exc: BaseException) -> str:
    """One line naming the exception type and its message."""
    message = " ".join(str(exc).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence jobflow's logger and library warnings while relaxing."""
    if not enabled:
        yield
        return
    jobflow_logger = logging.getLogger("jobflow")
    previous = jobflow_logger.level
    jobflow_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        jobflow_logger.setLevel(previous)


@contextmanager
def _thread_limits(num_threads: int | None) -> Iterator[None]:
    """Limit torch, BLAS and OpenMP thread pools for the duration of the block."""
    if num_threads is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            yield
        else:
            with threadpool_limits(limits=num_threads):
                yield
    finally:
        torch.set_num_threads(previous)


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
        fields = _read_task_doc(found["output"])
    except Exception:  # an unreadable leftover: relax again rather than guess
        return None
    fields = _judge(fields, structure, found["uuid"], max_volume_ratio)
    return RelaxOutcome(candidate_id=candidate_id, potential=potential, wall_s=0.0, **fields)
