"""The rules every relaxer applies, in one place: pre-checks before a relaxation runs, and
the judgement of a finished one. The per-structure atomate2 path, the batched path and
every executor call these, so all of them refuse and judge with the same reason texts.

What counts as a failure (``ok=False``, with ``reason``):

- checked before running (:func:`precheck`): too many atoms, ``"too many atoms (40 > 20)"``;
  overlapping atoms, ``"atoms too close (0.10 Å < 0.5 Å)"``; a nearly empty cell, ``"cell
  too sparse (5e+08 Å³/atom > 200)"``;
- the job raised: ``"<ExceptionType>: <message>"`` (:func:`exception_reason`);
- the final energy is not finite: ``"energy is NaN"``;
- the cell volume changed by more than ``max_volume_ratio`` either way:
  ``"cell exploded: volume grew 5.2x"`` or ``"cell collapsed: volume shrank to 0.21x"``;
- the optimiser stopped at its step limit before reaching ``fmax`` (forces and, for cell
  relaxations, stress): ``"not converged after 300 steps: max force 0.31 eV/Å, max stress
  0.52 GPa"``. A non-converged relaxation is a failure, but its structure and energy are
  kept in the outcome for inspection.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Structure

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "RelaxChecks",
    "TaskResult",
    "decode_task_doc",
    "exception_reason",
    "judge",
    "not_converged_reason",
    "precheck",
    "quiet",
    "read_task_doc",
    "reject_reason",
    "store_unreachable",
    "task_succeeded",
    "thread_limits",
]

GPA_PER_KBAR = 0.1


@dataclass
class TaskResult:
    """What a finished relaxation produced, before it is judged."""

    structure: Structure | None
    energy_per_atom: float | None
    n_steps: int | None
    max_force: float | None
    converged: bool
    stress_gpa: float | None = None
    max_steps: int | None = None


@dataclass
class RelaxChecks:
    """The sanity-check settings every relaxer applies (see :func:`precheck`, :func:`judge`)."""

    max_atoms: int | None = None
    max_volume_ratio: float = 3.0
    min_distance: float = 0.5
    max_volume_per_atom: float | None = 200.0

    def precheck(self, structure: Structure) -> str | None:
        """Why ``structure`` must not be relaxed, or None (never raises)."""
        return reject_reason(structure, self.max_atoms, self.min_distance,
                             self.max_volume_per_atom)  # fmt: skip

    def relax_kwargs(self) -> dict[str, Any]:
        return {
            "max_atoms": self.max_atoms,
            "max_volume_ratio": self.max_volume_ratio,
            "min_distance": self.min_distance,
            "max_volume_per_atom": self.max_volume_per_atom,
        }


def precheck(
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


def reject_reason(
    structure: Structure,
    max_atoms: int | None,
    min_distance: float,
    max_volume_per_atom: float | None,
) -> str | None:
    """:func:`precheck` that never raises: a structure too broken to inspect is refused."""
    try:
        return precheck(structure, max_atoms, min_distance, max_volume_per_atom)
    except Exception as exc:
        return f"invalid structure: {exception_reason(exc)}"


def judge(
    result: TaskResult, structure: Structure, job_uuid: str | None, max_volume_ratio: float
) -> dict[str, Any]:
    """Decide whether a finished relaxation is usable: the outcome's fields, with the
    reason when it is not (``structure`` is the input, for the volume change)."""
    fields: dict[str, Any] = {
        "structure": result.structure,
        "energy_per_atom": result.energy_per_atom,
        "n_steps": result.n_steps,
        "max_force": result.max_force,
        "converged": result.converged,
        "job_uuid": job_uuid,
        "ok": False,
    }
    energy = result.energy_per_atom
    final = result.structure
    if energy is None or not math.isfinite(energy):
        fields["energy_per_atom"] = None
        fields["reason"] = "energy is NaN" if energy is not None else "no energy in task document"
    elif final is None:
        fields["reason"] = "no structure in task document"
    elif (ratio := final.volume / structure.volume) > max_volume_ratio:
        fields["reason"] = f"cell exploded: volume grew {ratio:.1f}x"
    elif ratio < 1.0 / max_volume_ratio:
        fields["reason"] = f"cell collapsed: volume shrank to {ratio:.2f}x"
    elif not result.converged:
        fields["reason"] = not_converged_reason(result.max_force, result.stress_gpa,
                                                result.max_steps)  # fmt: skip
    else:
        fields["ok"] = True
    return fields


def decode_task_doc(doc: Any) -> tuple[Any, Structure | None]:
    """An atomate2 task document (the pydantic document a job returns, or its serialised
    dict from a store) as the pydantic document, and its final structure."""
    if isinstance(doc, dict):
        from monty.json import MontyDecoder

        doc = MontyDecoder().process_decoded(doc)
    final = doc.output.structure or doc.structure
    if isinstance(final, dict):
        final = Structure.from_dict(final)
    return doc, final


def task_succeeded(doc: Any) -> bool:
    """True when atomate2 marked the (decoded) task document successful."""
    state = getattr(doc, "state", None)
    return str(getattr(state, "value", state)).lower() == "successful"


def read_task_doc(doc: Any) -> TaskResult:
    """Pull what a relaxation produced out of an atomate2 force-field task document.

    Accepts the pydantic document a job returns or its serialised dict from a store.
    """
    doc, final = decode_task_doc(doc)
    output = doc.output
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
        stress_gpa *= GPA_PER_KBAR

    max_steps = getattr(doc.input, "steps", None) if doc.input is not None else None
    # ``state`` is SUCCESS only when the optimiser reached fmax within its step limit;
    # ``is_force_converged`` looks at atomic forces alone and misses unrelaxed stress.
    converged = task_succeeded(doc)

    return TaskResult(
        structure=final,
        energy_per_atom=None if energy is None else float(energy),
        n_steps=output.n_steps,
        max_force=max_force,
        converged=converged,
        stress_gpa=stress_gpa,
        max_steps=max_steps,
    )


def not_converged_reason(
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


def store_unreachable(exc: BaseException) -> bool:
    """A lost connection to the job store (pymongo's ConnectionFailure, or OSError's)."""
    if isinstance(exc, ConnectionError):
        return True
    try:
        from pymongo.errors import ConnectionFailure
    except ImportError:  # pragma: no cover - pymongo comes with maggma
        return False
    return isinstance(exc, ConnectionFailure)


def exception_reason(exc: BaseException) -> str:
    """One line naming the exception type and its message."""
    message = " ".join(str(exc).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextmanager
def quiet(enabled: bool) -> Iterator[None]:
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
def thread_limits(num_threads: int | None) -> Iterator[None]:
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
