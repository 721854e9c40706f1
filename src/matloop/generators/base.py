"""The one interface every proposal maker implements.

A generator proposes crystals; it never relaxes or evaluates them. The loop calls
``sample`` each round, and ``update`` with what it learned (rewards) between rounds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from collections.abc import Collection, Container, Mapping, Sequence

    import numpy as np
    from pymatgen.core import Structure


@dataclass
class ChemicalSpace:
    """Where a campaign searches: allowed elements and the largest cell it accepts."""

    elements: list[str]
    max_atoms: int = 12
    min_atoms: int = 1

    def allows(self, structure: Structure) -> bool:
        """True when every element is allowed and the cell size is within bounds."""
        symbols = {el.symbol for el in structure.composition.elements}
        return symbols <= set(self.elements) and self.min_atoms <= len(structure) <= self.max_atoms


@dataclass
class Feedback:
    """What the loop learned about one proposed crystal, for ``Generator.update``.

    ``reward`` is higher for better candidates (e.g. stable, novel, in the property window);
    ``properties`` carries the evaluated numbers (``e_above_hull``, a target property, ...).
    """

    structure: Structure
    reward: float
    properties: dict[str, float] = field(default_factory=dict)


class GeneratorSettings(BaseModel):
    """The settings a generator takes (a campaign's ``generators[].settings``), typed.

    Each generator declares its own subclass as ``Settings``; unknown names are refused.
    """

    model_config = ConfigDict(extra="forbid")


class SettingsError(TypeError, ValueError):
    """Settings a generator does not take, or values it cannot use (one line per problem)."""


class Generator(ABC):
    """A proposal maker.

    Subclasses set ``name`` (the key used in campaign configs) and implement ``sample``.
    Learned models also implement ``fit``, ``update``, ``save`` and ``load``.
    """

    name: ClassVar[str] = "generator"
    #: How the loop may teach it between rounds: ``"finetune"`` (``update`` on rewarded
    #: feedback) and ``"reinforce"`` (``reinforce`` on its sampling policy). Empty: it does
    #: not learn, and the loop's learn step leaves it alone.
    learns: ClassVar[frozenset[str]] = frozenset()
    #: The typed settings of its constructor (None: not declared, passed on unchecked).
    Settings: ClassVar[type[BaseModel] | None] = None
    #: Bumped by ``fit``/``update`` so every candidate records which model state proposed it.
    version: int = 0
    #: Proposals skipped because the campaign knows them (:meth:`exclude_known`).
    skipped_known: int = 0

    def fit(
        self,
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Learn from known crystals (and optional per-crystal properties). Baselines may
        use the structures as a pool of templates; the default does nothing."""

    @abstractmethod
    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """Propose up to ``n`` crystals (fewer if the generator cannot make more distinct
        ones). ``conditions`` asks conditional models for target properties."""

    def exclude_proposed(self, labels: Collection[str]) -> None:
        """Told, before ``sample``, the labels of crystals it proposed in earlier rounds
        (stored candidates: ``properties["proposal"]``, else ``properties["prototype"]``),
        so a generator that enumerates or ranks its proposals moves on instead of proposing
        them again. Default: ignored."""

    def exclude_stored(self, ids: Collection[str]) -> None:
        """Told, before ``sample``, the ids (:func:`matloop.identity.candidate_id`) of every
        crystal the campaign has stored, so a generator with a finite set of proposals can
        skip the ones that are already there, whatever label they were proposed under.
        Default: ignored (the loop counts such proposals as repeats)."""

    def exclude_known(self, known: Container[Structure]) -> None:
        """Told, before ``sample``, the crystals the campaign knows (its reference crystals,
        every candidate stored in earlier rounds and those other generators proposed this
        round) as a container whose ``in`` compares structures with ``StructureMatcher``,
        as the screen's duplicate check does. A generator that ranks or enumerates its
        proposals skips those found in it and moves on down its list, counting them in
        :attr:`skipped_known`. Default: ignored (the screen rejects them as duplicates)."""

    @property
    def wants_discoveries(self) -> bool:
        """Whether :meth:`use_discoveries` does anything: the loop gathers the campaign's
        discoveries only for a generator that uses them. Default: False."""
        return False

    def use_discoveries(self, crystals: Mapping[str, Structure]) -> None:
        """Told, before ``sample``, the campaign's discoveries of earlier rounds (stable on
        its hull, unique, not a known crystal), as relaxed, by candidate id. A generator
        that builds on known crystals may build on these too, as GNoME's substitutions fed
        on each round's new stable crystals. Default: ignored."""

    def update(self, feedback: Sequence[Feedback]) -> None:
        """Learn from the loop's feedback (fine-tune, policy-gradient step). Default: no-op."""

    def save(self, path: str | Path) -> None:
        """Write a checkpoint. Baselines have no learned state, so the default refuses."""
        raise NotImplementedError(f"{type(self).__name__} has no learned state to save")

    @classmethod
    def load(cls, path: str | Path, trust: bool = False) -> Generator:
        """Read a checkpoint written by ``save`` (``trust``: without a matching sha256)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from a checkpoint")

    def describe(self) -> dict[str, Any]:
        """Provenance recorded with every candidate this generator proposes."""
        return {"generator": self.name, "generator_version": self.version}
