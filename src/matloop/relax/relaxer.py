"""One interface for every relaxation back-end: :class:`Relaxer`.

A relaxer turns ``(candidate_id, structure)`` pairs into one outcome each, in order, and
names the potential its energies come from. Failures are outcomes with ``ok=False`` and a
reason, never exceptions. The loop holds one relaxer and never asks which kind it is.

=====================  ==================================================================
:class:`MakerRelaxer`  an atomate2 maker run by an executor: in this process, one jobflow
                       job per structure (``local``), or on Dask, FireWorks,
                       jobflow-remote (:mod:`matloop.relax.executors`)
``BatchedRelaxer``     many crystals relaxed together in one torch state
                       (:mod:`matloop.relax.batched`)
:class:`ReplayRelaxer` answers from a labelled table (:mod:`matloop.relax.replay`)
:class:`DftRelaxer`    a CP2K / VASP maker, one job per structure (:mod:`matloop.relax.dft`);
                       its outcomes are :class:`~matloop.relax.dft.DftOutcome`
=====================  ==================================================================

:func:`build_relaxer` picks one from a campaign's ``relaxer`` settings, as
:func:`matloop.generators.registry.build_generator` picks a generator.

Adding a back-end: write a class with ``potential`` and ``relax(items)``, and add one line
to :data:`RELAXERS` (see README, "Extending matloop").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from jobflow import JobStore, Maker
    from pymatgen.core import Structure

    from matloop.relax.outcome import RelaxOutcome

__all__ = [
    "RELAXERS",
    "DftRelaxer",
    "MakerRelaxer",
    "Relaxer",
    "ReplayRelaxer",
    "build_relaxer",
]

Items = Sequence[tuple[str, "Structure"]]


@runtime_checkable
class Relaxer(Protocol):
    """Relaxes structures and judges each result; ``potential`` names the energy source.

    A relaxer may also have ``claim_size``: how many candidates the loop hands it at once
    (default 1; None: every candidate there is), and ``stream(items)``: the same outcomes,
    yielded as each one finishes, so the loop stores them at once
    (:class:`~matloop.relax.cluster.DaskBatchedRelaxer`).
    """

    @property
    def potential(self) -> str: ...

    def relax(self, items: Items) -> list[RelaxOutcome]:
        """One outcome per ``(candidate_id, structure)``, in order."""
        ...


@dataclass
class MakerRelaxer:
    """An atomate2 maker, run by an executor (default: in this process, one job at a time).

    Task documents go to ``job_store``; the executor applies the shared pre-checks and
    judging of :mod:`matloop.relax.checks`.
    """

    maker: Maker
    job_store: JobStore
    executor: Any = None  # an :class:`~matloop.relax.executors.Executor`; None: local

    def __post_init__(self) -> None:
        if self.executor is None:
            from matloop.relax.executors import LocalExecutor

            self.executor = LocalExecutor()

    @property
    def potential(self) -> str:
        from matloop.relax.makers import maker_potential

        return maker_potential(self.maker)

    @property
    def claim_size(self) -> int | None:
        """Candidates the loop hands over at once: one in this process; all there are for
        executors that fan them out to workers."""
        return 1 if self.executor.name == "local" else None

    def relax(self, items: Items) -> list[RelaxOutcome]:
        return self.executor.run(list(items), self.maker, self.job_store)


@dataclass
class ReplayRelaxer:
    """Answers "relaxations" from a labelled table
    (a :class:`~matloop.relax.replay.ReplayOracle`)."""

    oracle: Any
    energy_column: str
    claim_size: int = 1

    @property
    def potential(self) -> str:
        return f"replay:{self.oracle.name}"

    def relax(self, items: Items) -> list[RelaxOutcome]:
        return [self.oracle.relax_outcome(cid, structure, self.energy_column)
                for cid, structure in items]  # fmt: skip


@dataclass
class DftRelaxer:
    """A DFT maker (:func:`matloop.relax.dft.make_dft_maker`), one in-process job each;
    returns :class:`~matloop.relax.dft.DftOutcome` objects."""

    maker: Maker
    job_store: JobStore
    root_dir: str | None = None
    #: accept relaxations stopped at MAX_ITER whose energy settled (verify_with_dft)
    energy_tolerance: float | None = None
    energy_window: int = 5

    @property
    def potential(self) -> str:
        from matloop.relax.dft import maker_code_kind

        return maker_code_kind(self.maker)[0]

    def relax(self, items: Items) -> list:
        from matloop.relax import dft  # looked up at call time: tests wrap verify_with_dft

        return dft.verify_with_dft(list(items), self.maker, self.job_store,
                                   root_dir=self.root_dir,
                                   energy_tolerance=self.energy_tolerance,
                                   energy_window=self.energy_window)  # fmt: skip


def _maker_relaxer(config: Any, space: Any, job_store: JobStore) -> MakerRelaxer:
    from matloop.relax.executors import LocalExecutor, make_executor
    from matloop.relax.makers import make_relax_maker

    maker = make_relax_maker(config.potential, fmax=config.fmax, steps=config.steps,
                             relax_cell=config.relax_cell)  # fmt: skip
    max_atoms = getattr(space, "max_atoms", None)
    if config.executor == "local":
        executor = LocalExecutor(max_atoms=max_atoms)
    else:
        executor = make_executor(config.executor, max_atoms=max_atoms,
                                 **config.executor_settings)  # fmt: skip
    return MakerRelaxer(maker, job_store, executor)


def _batched_relaxer(config: Any, space: Any, job_store: JobStore) -> Relaxer:
    """In this process (executor local), or in chunks on Dask workers / FireWorks."""
    settings = {"fmax": config.fmax, "steps": config.steps, "relax_cell": config.relax_cell,
                "batch_size": config.batch_size, "max_atoms": getattr(space, "max_atoms", None)}
    if config.executor == "local":
        from matloop.relax.batched import BatchedRelaxer

        return BatchedRelaxer(**settings)
    if config.executor == "dask":
        from matloop.relax.cluster import DaskBatchedRelaxer as cls
    elif config.executor == "fireworks":
        from matloop.relax.fireworks_chunks import FireWorksBatchedRelaxer as cls
    else:
        raise ValueError(f"batched: true runs on the local, dask or fireworks executor, "
                         f"not {config.executor!r}")  # fmt: skip
    try:
        return cls(**settings, **config.executor_settings)
    except TypeError as err:
        raise ValueError(f"bad executor_settings for batched: true on {config.executor}: "
                         f"{err}") from None  # fmt: skip


def _replay_relaxer(config: Any, space: Any, job_store: JobStore) -> ReplayRelaxer:
    from matloop.relax.replay import cached_oracle

    table = config.replay
    oracle = cached_oracle(table.path, (table.energy_column, *table.property_columns),
                           cif_column=table.cif_column, id_column=table.id_column)  # fmt: skip
    return ReplayRelaxer(oracle, table.energy_column)


#: How each kind of relaxer is built from a campaign's ``relaxer`` settings, the chemical
#: space and the campaign's job store. :func:`relaxer_kind` says which applies.
RELAXERS: dict[str, Callable[[Any, Any, Any], Relaxer]] = {
    "maker": _maker_relaxer,
    "batched": _batched_relaxer,
    "replay": _replay_relaxer,
}


def relaxer_kind(config: Any) -> str:
    """Which entry of :data:`RELAXERS` a ``relaxer`` config asks for."""
    if getattr(config, "kind", None):  # a relaxer added by a plugin names itself
        return config.kind
    if config.potential == "replay":
        return "replay"
    if config.batched:
        return "batched"
    return "maker"


def build_relaxer(config: Any, space: Any = None, job_store: JobStore | None = None) -> Relaxer:
    """The relaxer of a campaign's ``relaxer`` settings (a :class:`matloop.config.RelaxerConfig`).

    Parameters
    ----------
    config : RelaxerConfig
        Potential, fmax, steps, executor, batching, replay table.
    space : ChemicalSpaceConfig, optional
        Its ``max_atoms`` is the largest cell relaxed; larger ones fail their pre-check.
    job_store : jobflow.JobStore, optional
        Where atomate2 task documents go (maker relaxers need one).
    """
    kind = relaxer_kind(config)
    if kind not in RELAXERS:
        raise ValueError(f"unknown relaxer {kind!r}; known: {', '.join(RELAXERS)}")
    return RELAXERS[kind](config, space, job_store)
