"""Relaxation makers for ML interatomic potentials.

The makers follow atomate2's idiom: a ``@dataclass`` whose fields are its settings and whose
one method is ``make(structure)``, returning a jobflow ``Job`` that writes an atomate2
``ForceFieldTaskDocument``. :class:`CachedForceFieldRelaxMaker` behaves exactly like
atomate2's ``ForceFieldRelaxMaker`` except that the ASE calculator (the loaded model) is built
once per process, per thread and per setting, and then reused by every job.

Examples
--------
>>> from jobflow import run_locally
>>> maker = make_relax_maker("CHGNet", fmax=0.05, steps=300)  # doctest: +SKIP
>>> job = maker.make(structure)  # doctest: +SKIP
>>> run_locally(job, store=job_store)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atomate2.forcefields.jobs import ForceFieldRelaxMaker
from atomate2.forcefields.utils import MLFF, ForceFieldMixin, ase_calculator

from matloop.relax.potentials import (  # re-exported: makers is where users look for them
    KNOWN_POTENTIALS,
    NEEDS_MP2020_CORRECTION,
    canonical_potential,
    needs_mp2020_correction,
    potential_version,
    relaxer_potential,
)

if TYPE_CHECKING:
    from pathlib import Path

    from ase.calculators.calculator import Calculator
    from atomate2.ase.schemas import AseResult
    from jobflow import Maker
    from pymatgen.core import Molecule, Structure

__all__ = [
    "KNOWN_POTENTIALS",
    "NEEDS_MP2020_CORRECTION",
    "CachedForceFieldRelaxMaker",
    "clear_calculator_cache",
    "get_calculator",
    "make_relax_maker",
    "maker_potential",
    "needs_mp2020_correction",
    "potential_version",
    "relaxer_potential",
]

# (thread id, cache key) -> calculator. A module-level dict, not a dataclass field, so makers
# stay plain settings that jobflow / monty serialise. Keyed by thread as well because an ASE
# calculator keeps per-call state (``calc.atoms``, ``calc.results``) and must not be shared by
# threads running relaxations at the same time (Prefect's thread-pool task runner, Dask).
_CALCULATOR_CACHE: dict[tuple[int, str], Calculator] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(calculator_meta: Any, calculator_kwargs: dict[str, Any]) -> str:
    """Return a stable text key for a calculator's metadata and keyword arguments."""
    meta: Any = calculator_meta
    if isinstance(meta, MLFF):
        meta = str(meta)
    elif isinstance(meta, dict) and "@module" in meta:
        # a monty dict and an import string name the same calculator (atomate2 turns one
        # into the other in ForceFieldMixin.__post_init__)
        name = meta.get("@callable", meta.get("@class"))
        meta = f"{meta['@module']}.{name}" if name else meta
    return json.dumps({"meta": meta, "kwargs": calculator_kwargs}, sort_keys=True, default=repr)


def get_calculator(
    calculator_meta: str | MLFF | dict, calculator_kwargs: dict[str, Any] | None = None
) -> Calculator:
    """Return the cached ASE calculator for these settings, building it on first use.

    Parameters
    ----------
    calculator_meta : str, MLFF or dict
        What atomate2's ``ase_calculator`` accepts: an ``MLFF`` member or name, an import
        string or a monty-style dict.
    calculator_kwargs : dict, optional
        Keyword arguments passed to the calculator (part of the cache key).

    Returns
    -------
    ase.calculators.calculator.Calculator
        The same object for the same settings within one thread of one process.

    Examples
    --------
    >>> calc = get_calculator(MLFF.CHGNet, {"stress_unit": "eV/A3"})  # doctest: +SKIP
    >>> calc is get_calculator(MLFF.CHGNet, {"stress_unit": "eV/A3"})  # doctest: +SKIP
    True
    """
    kwargs = dict(calculator_kwargs or {})
    key = (threading.get_ident(), _cache_key(calculator_meta, kwargs))
    calc = _CALCULATOR_CACHE.get(key)
    if calc is None:
        # Load outside the lock: two threads never share a key, so no duplicate work.
        calc = ase_calculator(calculator_meta, **kwargs)
        with _CACHE_LOCK:
            _CALCULATOR_CACHE[key] = calc
    return calc


def clear_calculator_cache() -> None:
    """Drop every cached calculator (frees the models' memory)."""
    with _CACHE_LOCK:
        _CALCULATOR_CACHE.clear()


@dataclass
class CachedForceFieldRelaxMaker(ForceFieldRelaxMaker):
    """atomate2's ``ForceFieldRelaxMaker`` with the ASE calculator loaded once and reused.

    atomate2 builds the calculator (and so loads the model) once per maker instance, and
    jobflow deep-copies the maker into every job, so each job loads the model again. This
    maker takes its calculator from a process-wide cache keyed by ``calculator_meta`` and
    ``calculator_kwargs`` (see :func:`get_calculator`). Fields, outputs and serialisation are
    those of ``ForceFieldRelaxMaker``; see its documentation for the parameters.

    Examples
    --------
    >>> maker = CachedForceFieldRelaxMaker(force_field_name="CHGNet")  # doctest: +SKIP
    >>> job = maker.make(structure)  # doctest: +SKIP
    """

    def _get_calculator(self) -> Calculator:
        """Return the process-wide cached calculator for this maker's settings."""
        return get_calculator(self.calculator_meta, self.calculator_kwargs)

    @property
    def calculator(self) -> Calculator:
        """The cached ASE calculator; never stored on the instance.

        Keeping it off the instance matters: jobflow deep-copies the maker into each job,
        and a deep copy of a loaded model would cost as much as loading it.
        """
        return self._get_calculator()

    def run_ase(
        self, mol_or_struct: Structure | Molecule, prev_dir: str | Path | None = None
    ) -> AseResult:
        """Relax with a reset calculator, as a freshly loaded one would start.

        A shared calculator keeps the last atoms and results; some (EMT, for one) are left
        half-initialised by a failed call. Resetting before each run and after a failure
        keeps one job from leaking into the next.
        """
        calc = self.calculator
        calc.reset()
        try:
            return super().run_ase(mol_or_struct, prev_dir=prev_dir)
        except Exception:
            calc.reset()
            raise


def make_relax_maker(
    potential: str = "CHGNet",
    *,
    fmax: float = 0.05,
    steps: int = 300,
    relax_cell: bool = True,
    **maker_kwargs: Any,
) -> Maker:
    """Build matloop's default relaxation maker for an ML potential.

    The maker is a :class:`CachedForceFieldRelaxMaker` tuned for throughput: FIRE with a
    Frechet cell filter (atomate2's defaults), no stored trajectory, no per-step ionic data
    and no ``final_atoms_object.xyz`` written into the working folder.

    Parameters
    ----------
    potential : str
        ``"CHGNet"`` (model 0.3.0, MPtrj) or ``"SevenNet"`` (7net-0, MPtrj).
    fmax : float
        Force convergence threshold in eV/Å.
    steps : int
        Maximum number of optimiser steps.
    relax_cell : bool
        Whether the cell shape and volume relax too.
    **maker_kwargs
        Any other ``ForceFieldRelaxMaker`` field (``name``, ``calculator_kwargs``,
        ``ionic_step_data``, ``store_trajectory``, ``optimizer_kwargs``, ``tags``...); a
        ``relax_kwargs`` dict given here is merged over the defaults above.

    Returns
    -------
    jobflow.Maker
        A maker whose ``make(structure)`` returns a relaxation job.

    Raises
    ------
    ValueError
        If ``potential`` is not one of :data:`KNOWN_POTENTIALS`.

    Examples
    --------
    >>> maker = make_relax_maker("CHGNet", fmax=0.05, steps=300)
    >>> maker.relax_kwargs["fmax"]
    0.05
    """
    name = canonical_potential(potential)
    relax_kwargs = {"fmax": fmax, "final_atoms_object_file": None}
    relax_kwargs.update(maker_kwargs.pop("relax_kwargs", {}))
    settings: dict[str, Any] = {
        "name": f"{name} relax",
        "ionic_step_data": None,
        "store_trajectory": "no",
    }
    settings.update(maker_kwargs)
    return CachedForceFieldRelaxMaker(
        force_field_name=name,
        relax_cell=relax_cell,
        steps=steps,
        relax_kwargs=relax_kwargs,
        **settings,
    )


def maker_potential(maker: Maker) -> str:
    """Describe the potential a maker relaxes with, e.g. ``"CHGNet 0.3.0"``.

    Parameters
    ----------
    maker : jobflow.Maker
        Any maker; force-field makers of a known potential get a versioned name, others
        their ``force_field_name`` or class name.

    Returns
    -------
    str
        The description stored with every relaxation outcome.
    """
    if isinstance(maker, ForceFieldMixin):
        ff_name = str(maker.force_field_name).split("MLFF.")[-1]
        try:
            return potential_version(ff_name, maker.calculator_kwargs)
        except ValueError:
            meta = maker.calculator_meta
            return ff_name if ff_name != "Forcefield" else str(meta)
    return type(maker).__name__
