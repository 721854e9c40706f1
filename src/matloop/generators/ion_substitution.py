"""Ion substitution into known crystals, ranked by data-mined substitution probabilities.

GNoME's SAPS ("symmetry-aware partial substitutions") and, before it, Hautier et al.
(Inorg. Chem. 2011, 50, 656) turn known crystals into candidates of a new chemistry: every
ion of a known crystal is swapped for an ion of the campaign's space, and each swap is
scored by how often it is seen between known compounds (pymatgen's
:class:`~pymatgen.analysis.structure_prediction.substitution_probability.SubstitutionProbability`,
fitted on the ICSD). A candidate's probability is the product over its swaps of
``P(new ion | old ion)``; the most probable come first.

Templates are known crystals of *any* chemistry: the seed crystals given to :meth:`fit`
(inside the space), the crystals of the ``templates`` file(s) (e.g. a sample of the
Materials Project) and, with ``discoveries`` on, the campaign's own discoveries of earlier
rounds (:meth:`use_discoveries`), so substitution keeps finding new crystals after the known
ones are used up. A template qualifies when it is ordered, has at most ``max_atoms`` sites,
at most as many elements as the space, and pymatgen can guess integer oxidation states for
it. A substitution maps each element to a distinct element of the space with an oxidation
state pymatgen knows for it, keeps the cell charge neutral, and changes the composition.

Differences from :class:`~matloop.generators.prototypes.PrototypeSubstitution`: that one
decorates 16 built-in structure types (and fitted crystals) by charge sign alone, in random
order; this one ranks every substitution into every known crystal by its probability.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from matloop.data import expand_path
from matloop.generators.base import ChemicalSpace, Generator, GeneratorSettings

if TYPE_CHECKING:
    from collections.abc import Collection, Container, Mapping, Sequence

    from pymatgen.core import Structure

log = logging.getLogger("matloop")

__all__ = ["IonSubstitution", "Substitution", "rank_substitutions"]


@dataclass(frozen=True)
class Substitution:
    """One candidate: a template, its old -> new species and the probability of the swap."""

    template: int
    label: str
    old: tuple[tuple[str, int], ...]
    new: tuple[tuple[str, int], ...]
    probability: float

    @property
    def key(self) -> str:
        """Unique label (template and swaps), stored as the candidate's ``prototype``."""
        swaps = ",".join(f"{o[0]}{o[1]:+d}>{n[0]}{n[1]:+d}"
                         for o, n in zip(self.old, self.new, strict=True))  # fmt: skip
        return f"{self.label}:{swaps}"


@cache
def _probability_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pymatgen.analysis.structure_prediction.substitution_probability import (
            SubstitutionProbability,
        )

        return SubstitutionProbability()


@lru_cache(maxsize=4096)
def _oxidation_states(formula: str) -> tuple[tuple[str, int], ...] | None:
    """Integer oxidation state per element of a reduced formula (pymatgen's most likely
    guess), or None when it has none or a mixed valence."""
    from pymatgen.core import Composition

    comp = Composition(formula)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            guesses = comp.oxi_state_guesses(max_sites=-1)
        except Exception:
            return None
    if not guesses:
        return None
    states = guesses[0]
    if any(abs(v - round(v)) > 1e-6 or round(v) == 0 for v in states.values()):
        return None
    return tuple(sorted((el, round(v)) for el, v in states.items()))


@cache
def _known_species() -> frozenset[str]:
    """The species the probability table has statistics for, as text (e.g. ``'Co3+'``)."""
    return frozenset(str(s) for s in _probability_model().species)


@lru_cache(maxsize=64)
def _target_species(elements: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """Every (element, oxidation state) of the space the probability table knows."""
    from pymatgen.core import Element, Species

    model = _probability_model()
    known = {str(s) for s in model.species}
    out = []
    for el in elements:
        for ox in Element(el).oxidation_states:
            if ox != 0 and str(Species(el, ox)) in known:
                out.append((el, int(ox)))
    return tuple(out)


def rank_substitutions(
    templates: Sequence[Structure],
    elements: Sequence[str],
    *,
    threshold: float = 1e-3,
    labels: Sequence[str] | None = None,
) -> list[Substitution]:
    """Every charge-neutral substitution of ``templates`` into ``elements`` with probability
    at least ``threshold``, most probable first (ties: template order, then species).

    Each element of a template goes to a distinct element of ``elements``; the template's
    own composition (no change) is skipped.
    """
    out: list[Substitution] = []
    space = tuple(elements)
    for index, structure in enumerate(templates):
        comp = structure.composition
        if len(comp.elements) > len(set(elements)):
            continue
        label = labels[index] if labels else f"t{index}"
        # what a composition allows depends on its reduced formula alone: worked out once
        # per formula and process (templates repeat formulas; rounds rebuild the generator)
        states, swaps = _formula_substitutions(comp.reduced_formula, space, threshold)
        out += [Substitution(index, label, states, new, p) for new, p in swaps]
    out.sort(key=lambda s: (-s.probability, s.template, s.new))
    return out


#: (element, oxidation state) per element of a composition
_Ions = tuple[tuple[str, int], ...]


@lru_cache(maxsize=16384)
def _formula_substitutions(
    formula: str, elements: tuple[str, ...], threshold: float
) -> tuple[_Ions | None, tuple[tuple[_Ions, float], ...]]:
    """(old species, ((new species, probability), ...)) of the charge-neutral substitutions
    of a reduced formula into ``elements`` at least ``threshold`` likely."""
    from pymatgen.core import Composition, Species

    model = _probability_model()
    targets = _target_species(elements)
    known = _known_species()
    states = _oxidation_states(formula)
    if states is None or any(str(Species(el, ox)) not in known for el, ox in states):
        return states, ()  # an ion the table has never seen has no substitution statistics
    comp = Composition(formula)
    counts = [comp[el] for el, _ in states]
    # per old species, the new ones likely enough alone (a product is never larger)
    options = []
    for el, ox in states:
        old = Species(el, ox)
        scored = [(t, model.cond_prob(Species(*t), old)) for t in targets]
        options.append([(t, p) for t, p in scored if p >= threshold])
    out = []
    for combo in itertools.product(*options):
        new = tuple(t for t, _ in combo)
        if len({el for el, _ in new}) < len(new) or new == states:
            continue
        if abs(sum(c * ox for c, (_, ox) in zip(counts, new, strict=True))) > 1e-6:
            continue
        if {el for el, _ in new} == {el for el, _ in states} and all(
            dict(new)[el] == ox for el, ox in states
        ):
            continue  # a permutation that gives back the same composition
        p = math.prod(p for _, p in combo)
        if p >= threshold:
            out.append((new, p))
    return states, tuple(out)


def _radius(symbol: str, ox: int) -> float:
    from pymatgen.core import Element, Species

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        radius = Species(symbol, ox).ionic_radius
        if radius is None:
            el = Element(symbol)
            radius = (el.average_cationic_radius if ox > 0 else None) or el.atomic_radius
    return float(radius or 1.0)


def apply_substitution(template: Structure, sub: Substitution) -> Structure:
    """The template with its elements swapped and its volume scaled by the ions' sizes
    (sum of cubed radii), so the new ions start near their usual distances."""
    mapping = {o[0]: n[0] for o, n in zip(sub.old, sub.new, strict=True)}
    old_r = {o[0]: _radius(*o) for o in sub.old}
    new_r = {o[0]: _radius(*n) for o, n in zip(sub.old, sub.new, strict=True)}
    symbols = [site.specie.symbol for site in template]
    ratio = sum(new_r[s] ** 3 for s in symbols) / sum(old_r[s] ** 3 for s in symbols)
    structure = template.copy()
    structure.replace_species(mapping)
    structure.scale_lattice(template.volume * ratio)
    structure.properties = {
        "prototype": sub.key,
        "template": sub.label,
        "substitution": mapping,
        "oxidation_states": {n[0]: n[1] for n in sub.new},
        "substitution_probability": sub.probability,
    }
    return structure


@lru_cache(maxsize=8)
def _read_templates(path: str, mtime: float, max_atoms: int, n_elements: int):
    """Ordered crystals of a file small enough for the space (cached per file version)."""
    from matloop.data import RowFilter, read_structures

    # rows too large or of too many elements are not parsed (their CIFs cost ~10 ms each)
    report = read_structures(path, row_filter=RowFilter(max_atoms=max_atoms,
                                                        max_elements=n_elements))
    keep = [c for c in report.crystals
            if len(c.structure) <= max_atoms and c.structure.is_ordered
            and 2 <= len(c.structure.composition.elements) <= n_elements]  # fmt: skip
    return tuple(c.structure for c in keep), tuple(c.source_id for c in keep)


class IonSubstitution(Generator):
    """SAPS-like substitution of known crystals into the campaign's space.

    Parameters
    ----------
    chemical_space
        Allowed elements and the largest cell.
    seed
        Unused (the order is the probability ranking); kept for the common constructor.
    templates
        Files of known crystals of any chemistry (CSV with a CIF column, extxyz, ASE db) to
        substitute into, beside the seed crystals given to :meth:`fit`. ``$VAR`` is
        expanded (e.g. ``${MATLOOP_SHARED_DATA}/known_crystals_mp.csv.gz``).
    threshold
        Smallest substitution probability proposed (Hautier et al. used 0.001 and lower).

    Examples
    --------
    >>> from pymatgen.core import Lattice, Structure
    >>> nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    >>> gen = IonSubstitution(ChemicalSpace(["Li", "F"], max_atoms=4))
    >>> gen.fit([nacl])
    >>> gen.sample(1)[0].composition.reduced_formula
    'LiF'
    """

    name = "ion_substitution"

    class Settings(GeneratorSettings):
        templates: list[str] = Field(
            default_factory=list,
            description="Files of known crystals (any chemistry) to substitute into; $VAR expanded",
        )
        threshold: float = Field(1e-3, gt=0, le=1, description="Smallest probability proposed")
        max_templates: int | None = Field(
            None, ge=1, description="Use at most this many crystals of the files (first rows)"
        )
        discoveries: bool = Field(
            True, description="Substitute into the campaign's discoveries of earlier rounds too"
        )

    def __init__(
        self,
        chemical_space: ChemicalSpace,
        seed: int = 0,
        templates: Sequence[str] = (),
        threshold: float = 1e-3,
        max_templates: int | None = None,
        discoveries: bool = True,
    ) -> None:
        self.chemical_space = chemical_space
        self.seed = seed
        self.threshold = threshold
        self.use_campaign_discoveries = discoveries
        self.template_files = [str(t) for t in templates]
        self._structures: list[Structure] = []
        self._labels: list[str] = []
        for path in self.template_files:
            resolved = expand_path(path)
            if not resolved.is_file():
                raise FileNotFoundError(f"ion_substitution template file not found: {resolved}")
            structures, ids = _read_templates(str(resolved), resolved.stat().st_mtime,
                                              chemical_space.max_atoms,
                                              len(chemical_space.elements))  # fmt: skip
            structures, ids = structures[:max_templates], ids[:max_templates]
            self._structures += list(structures)
            self._labels += [f"{s.composition.reduced_formula}[{i}]"
                             for s, i in zip(structures, ids, strict=True)]  # fmt: skip
        self._n_file = len(self._structures)
        self._discoveries: dict[str, Structure] = {}  # use_discoveries, by candidate id
        self._templates: tuple[list[Structure], list[str]] | None = None
        self._ranked: list[Substitution] | None = None
        self._excluded: set[str] = set()
        self._known: Container[Structure] = ()  # exclude_known

    def fit(
        self,
        structures: Sequence[Structure],
        properties: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Add known crystals of the space as templates (replacing an earlier ``fit``'s)."""
        space = self.chemical_space
        del self._structures[self._n_file :], self._labels[self._n_file :]
        for i, s in enumerate(structures):
            if len(s) <= space.max_atoms and s.is_ordered:
                self._structures.append(s)
                self._labels.append(f"{s.composition.reduced_formula}[seed{i}]")
        self._templates = self._ranked = None
        self.version += 1

    @property
    def wants_discoveries(self) -> bool:
        return self.use_campaign_discoveries

    def use_discoveries(self, crystals: Mapping[str, Structure]) -> None:
        """Substitute into the campaign's discoveries too (with ``discoveries`` on)."""
        if not self.use_campaign_discoveries:
            return
        space = self.chemical_space
        new = {cid: s for cid, s in crystals.items()
               if cid not in self._discoveries and len(s) <= space.max_atoms
               and s.is_ordered}  # fmt: skip
        if new:
            self._discoveries.update(sorted(new.items()))
            self._templates = self._ranked = None

    @property
    def templates(self) -> tuple[list[Structure], list[str]]:
        """(structures, labels): the files', the seeds', then the discoveries'."""
        if self._templates is None:
            found = list(self._discoveries.items())
            self._templates = (
                self._structures + [s for _, s in found],
                self._labels + [f"{s.composition.reduced_formula}[{cid}]" for cid, s in found],
            )
        return self._templates

    @property
    def ranked(self) -> list[Substitution]:
        """Every substitution, most probable first (computed once per set of templates)."""
        if self._ranked is None:
            structures, labels = self.templates
            self._ranked = rank_substitutions(
                structures, self.chemical_space.elements, threshold=self.threshold,
                labels=labels,
            )
        return self._ranked

    def exclude_proposed(self, labels: Collection[str]) -> None:
        self._excluded |= {label for label in labels if label}

    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """The ``n`` most probable substitutions not proposed before (distinct structures)."""
        from matloop.generators.prototypes import DistinctStructures

        out: list[Structure] = []
        seen = DistinctStructures()
        space = self.chemical_space
        for sub in self.ranked:
            if len(out) >= n:
                break
            if sub.key in self._excluded:
                continue
            self._excluded.add(sub.key)
            structure = apply_substitution(self.templates[0][sub.template], sub)
            if not space.min_atoms <= len(structure) <= space.max_atoms or structure in seen:
                continue
            seen.add(structure)
            if structure in self._known:  # another template gave it, or it is a known crystal
                self.skipped_known += 1
                continue
            out.append(structure)
        return out

    def exclude_known(self, known: Container[Structure]) -> None:
        """Skip substitutions that give a crystal the campaign knows; take the next ones."""
        self._known = known

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "templates": self.template_files,
                "n_templates": len(self.templates[0]), "threshold": self.threshold,
                "n_discovery_templates": len(self._discoveries)}  # fmt: skip
