"""What every step of a campaign needs in one process: :class:`RunContext`.

The context holds the config, the store, progress callbacks, the random streams, and the
generators and relaxers, built lazily on first use and kept for the process. It holds no
state of the campaign itself: everything a step decides is written to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from matloop.store import MatloopStore, ReferenceDoc, RoundDoc

if TYPE_CHECKING:
    from matloop.config import CampaignConfig
    from matloop.generators.base import Generator
    from matloop.relax.relaxer import Relaxer

log = logging.getLogger("matloop")

__all__ = ["Progress", "RunContext"]


@dataclass
class Progress:
    """Callbacks the CLI (rich) or Prefect (artifacts) hook into; all optional."""

    message: Callable[[str], None] = lambda text: log.info(text)
    relax_started: Callable[[int], None] = lambda total: None
    relax_advanced: Callable[[int, int, str], None] = lambda done, total, cid: None


class RunContext:
    """One campaign in one process: config, store, random streams, generators, relaxers.

    A plain class (not a dataclass), so Prefect passes it to tasks as it is.
    """

    def __init__(
        self,
        config: CampaignConfig,
        store: MatloopStore | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.store = store or MatloopStore(config.store)
        self.progress = progress or Progress()
        self._generators: list[tuple[Any, Generator]] | None = None
        self._maker = None
        self._relaxer: Relaxer | None = None
        self._reference_relaxer: Relaxer | None = None
        self._dft_maker = None

    # -- what the campaign relaxes with ------------------------------------------------
    @property
    def potential(self) -> str:
        """The campaign's potential label, e.g. ``'CHGNet 0.3.0'`` or ``'replay:perov_5/val'``."""
        from matloop.relax.potentials import relaxer_potential

        return relaxer_potential(self.config.relaxer.model_dump())

    @property
    def replaying(self) -> bool:
        """A replay campaign: "relaxations" are answered from a labelled table."""
        return self.config.relaxer.potential == "replay"

    @property
    def corrects_energies(self) -> bool:
        """Whether entries pass through MP2020 (see ``relax.potentials``)."""
        from matloop.relax.potentials import needs_mp2020_correction

        return needs_mp2020_correction(self.config.relaxer.potential)

    @property
    def hull_scheme(self) -> str:
        from matloop.evaluators.stability import hull_scheme

        return hull_scheme(self.potential, "MP2020" if self.corrects_energies else None)

    @property
    def oracle(self):
        """The replay table (:class:`matloop.relax.replay.ReplayOracle`), parsed once."""
        from matloop.relax.replay import cached_oracle

        table = self.config.relaxer.replay
        return cached_oracle(table.path, (table.energy_column, *table.property_columns),
                             cif_column=table.cif_column, id_column=table.id_column)  # fmt: skip

    @property
    def maker(self):
        """The atomate2 relax maker of the config (references and seeds relax with it)."""
        if self._maker is None:
            from matloop.relax.makers import make_relax_maker

            relaxer = self.config.relaxer
            self._maker = make_relax_maker(relaxer.potential, fmax=relaxer.fmax,
                                           steps=relaxer.steps, relax_cell=relaxer.relax_cell)
        return self._maker

    @maker.setter
    def maker(self, maker) -> None:
        self._maker, self._relaxer, self._reference_relaxer = maker, None, None

    @property
    def relaxer(self) -> Relaxer:
        """The candidates' relaxer (:func:`matloop.relax.relaxer.build_relaxer`)."""
        if self._relaxer is None:
            from matloop.relax.relaxer import MakerRelaxer, build_relaxer, relaxer_kind

            config = self.config.relaxer
            relaxer = build_relaxer(config, self.config.chemical_space, self.store.job_store())
            if relaxer_kind(config) == "maker" and self._maker is not None:
                relaxer = MakerRelaxer(self._maker, relaxer.job_store, relaxer.executor)
            self._relaxer = relaxer
        return self._relaxer

    @relaxer.setter
    def relaxer(self, relaxer: Relaxer) -> None:
        self._relaxer = relaxer

    def close_relaxers(self) -> None:
        """Stop the Dask clusters the relaxers started. Left open, they close at interpreter
        exit, after logging has gone; a later round starts them again."""
        for relaxer in (self._relaxer, self._reference_relaxer):
            for part in (relaxer, getattr(relaxer, "executor", None)):
                close = getattr(part, "close", None)
                if callable(close):
                    close()

    @property
    def reference_relaxer(self) -> Relaxer:
        """Relaxes hull references and seed crystals: the table of a replay campaign, else
        :attr:`maker` in this process, one structure at a time, without a size limit."""
        if self._reference_relaxer is None:
            from matloop.relax.relaxer import MakerRelaxer, ReplayRelaxer

            if self.replaying:
                self._reference_relaxer = ReplayRelaxer(self.oracle,
                                                        self.config.relaxer.replay.energy_column)
            else:
                self._reference_relaxer = MakerRelaxer(self.maker, self.store.job_store())
        return self._reference_relaxer

    @property
    def dft_maker(self):
        """The DFT maker of the verification stage (``config.dft``), or None when off."""
        dft = self.config.dft
        if dft is None:
            return None
        if self._dft_maker is None:
            from matloop.relax.dft import make_dft_maker

            kpoints = tuple(dft.kpoints) if isinstance(dft.kpoints, list) else dft.kpoints
            self._dft_maker = make_dft_maker(
                dft.code, dft.kind, fast=dft.fast, command=dft.command, kpoints=kpoints,
                input_settings=dict(dft.settings),
            )
        return self._dft_maker

    @dft_maker.setter
    def dft_maker(self, maker) -> None:
        self._dft_maker = maker

    @property
    def dft_relaxer(self) -> Relaxer | None:
        """The DFT relaxer of the verify step, or None when the config has no ``dft``."""
        from matloop.relax.relaxer import DftRelaxer

        maker, dft = self.dft_maker, self.config.dft
        if maker is None:
            return None
        return DftRelaxer(maker, self.store.job_store(), energy_tolerance=dft.energy_tolerance,
                          energy_window=dft.energy_window)

    # -- random streams ----------------------------------------------------------------
    def rng(self, round_: int, stream: int) -> np.random.Generator:
        """Per-round, per-purpose random streams: a resumed round draws the same numbers."""
        return np.random.default_rng([self.config.seed, round_, stream])

    # -- generators --------------------------------------------------------------------
    def generators(self) -> list[tuple[Any, Generator]]:
        """(config, generator) pairs, fitted on the seed crystals once per process."""
        if self._generators is None:
            self._generators = _build_generators(self)
        return self._generators

    def loaded_generators(self) -> list[Generator]:
        """The generators built so far in this process (none are built for this)."""
        return [generator for _, generator in self._generators or []]

    def reset_generators(self) -> None:
        """Forget the generators: the next use rebuilds them from what the store holds."""
        self._generators = None

    # -- references and rounds ----------------------------------------------------------
    def reference_ids(self) -> list[str]:
        campaign = self.store.get_campaign(self.name)
        ids = [f"element:{el}" for el in self.config.chemical_space.elements]
        if campaign is not None:
            ids += campaign.seed_reference_ids
        return ids

    def references(self) -> list[ReferenceDoc]:
        return self.store.references(self.potential, ids=self.reference_ids())

    def round(self, round_: int) -> RoundDoc:
        doc = self.store.get_round(self.name, round_)
        if doc is None:
            raise KeyError(f"round {round_} of {self.name!r} is not in the store")
        return doc


def _build_generators(ctx: RunContext) -> list[tuple[Any, Generator]]:
    """(config, generator) pairs: the campaign's latest stored version of each, else its
    checkpoint, else a new generator fitted on the seed crystals."""
    from matloop.generators.base import ChemicalSpace
    from matloop.generators.registry import build_generator, load_generator
    from matloop.loop.models import load_stored_model
    from matloop.store.documents import structure_from_dict

    config = ctx.config
    space = ChemicalSpace(elements=list(config.chemical_space.elements),
                          max_atoms=config.chemical_space.max_atoms)  # fmt: skip
    seeds = [structure_from_dict(ref.structure) for ref in ctx.references()
             if ref.source != "elemental"]  # fmt: skip
    pairs = []
    for index, gen_config in enumerate(config.generators):
        stored = ctx.store.models(ctx.name, name=gen_config.name)
        if stored:  # the campaign's own latest version, fine-tuned by earlier rounds
            generator = load_stored_model(ctx.store, stored[-1], space, gen_config.settings)
        elif gen_config.checkpoint:
            generator = load_generator(gen_config.name, gen_config.checkpoint, space,
                                       gen_config.settings, trust=gen_config.trust)
        else:
            generator = build_generator(gen_config.name, space, seed=config.seed + index,
                                        **gen_config.settings)  # fmt: skip
            if seeds:
                generator.fit(seeds)
        pairs.append((gen_config, generator))
    return pairs
