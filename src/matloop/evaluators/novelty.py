"""Novelty and uniqueness of proposed crystals with pymatgen's ``StructureMatcher``.

Two crystals can only match when they share a reduced formula, so the index keeps one bucket
per reduced formula and compares a query only with its own bucket. The cost of a query grows
with the number of known polymorphs of that formula, not with the size of the store.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> fcc = Lattice([[0, 2.82, 2.82], [2.82, 0, 2.82], [2.82, 2.82, 0]])
>>> nacl = Structure(fcc, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
>>> index = NoveltyIndex()
>>> index.add("mp-22862", nacl)
>>> index.match(nacl.copy().apply_strain(0.02))
'mp-22862'
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import combinations
from typing import TYPE_CHECKING, Any, NamedTuple

from pymatgen.analysis.structure_matcher import StructureMatcher

from matloop.identity import reduced_for_matching  # re-exported: the cell fit() reduces to

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "Novelty",
    "NoveltyIndex",
    "NoveltyResult",
    "ReferenceCoverage",
    "judge_novelty",
    "novelty_and_uniqueness",
    "reduced_for_matching",
]

logger = logging.getLogger(__name__)


class NoveltyResult(NamedTuple):
    """Novelty and uniqueness of one candidate.

    Attributes
    ----------
    is_novel
        No matching structure among the known ones (training/seed data, earlier rounds).
    is_unique
        No matching structure among the earlier candidates of the same batch.
    duplicate_of
        Id of the match: the known structure when not novel, otherwise the earlier batch
        member when not unique, otherwise None.
    """

    is_novel: bool
    is_unique: bool
    duplicate_of: Hashable | None


class NoveltyIndex:
    """Known structures bucketed by reduced formula, queried with ``StructureMatcher``.

    Parameters
    ----------
    ltol, stol, angle_tol
        ``StructureMatcher`` tolerances (pymatgen's defaults).
    primitive_cell, scale, attempt_supercell
        Passed to ``StructureMatcher`` (pymatgen's defaults).
    entries
        Optional initial ``(id, structure)`` pairs.

    Attributes
    ----------
    n_comparisons
        Number of ``StructureMatcher.fit`` calls made so far (for monitoring the cost).
    """

    def __init__(
        self,
        ltol: float = 0.2,
        stol: float = 0.3,
        angle_tol: float = 5.0,
        *,
        primitive_cell: bool = True,
        scale: bool = True,
        attempt_supercell: bool = False,
        entries: Iterable[tuple[Hashable, Structure]] = (),
    ) -> None:
        self.settings = {
            "ltol": ltol,
            "stol": stol,
            "angle_tol": angle_tol,
            "primitive_cell": primitive_cell,
            "scale": scale,
            "attempt_supercell": attempt_supercell,
        }
        self.matcher = StructureMatcher(**self.settings)
        # per formula: [id, structure, its reduced cell (made on first comparison)]
        self._buckets: dict[str, list[list[Any]]] = {}
        self._n = 0
        self.n_comparisons = 0
        for id_, structure in entries:
            self.add(id_, structure)

    @staticmethod
    def key(structure: Structure) -> str:
        """Bucket key: the reduced formula (oxidation states ignored)."""
        return structure.composition.element_composition.reduced_formula

    def add(self, id_: Hashable, structure: Structure) -> None:
        """Add a known structure (no duplicate check: call :meth:`match` first if needed)."""
        self._buckets.setdefault(self.key(structure), []).append([id_, structure, None])
        self._n += 1

    def match(self, structure: Structure) -> Hashable | None:
        """Id of the first known structure matching ``structure``, or None.

        Only structures with the same reduced formula are compared.
        """
        bucket = self._buckets.get(self.key(structure), ())
        query = self._reduced(structure) if bucket else None
        for entry in bucket:
            id_, known, reduced = entry
            self.n_comparisons += 1
            if reduced is None:
                reduced = entry[2] = self._reduced(known)
            try:
                if query is not False and reduced is not False:
                    # both cells reduced once here, not again (and looked up in pymatgen's
                    # cache, an O(sites^2) comparison) on every fit
                    if self.matcher.fit(query, reduced, skip_structure_reduction=True):
                        return id_
                elif self.matcher.fit(structure, known):
                    return id_
            except Exception as exc:  # noqa: BLE001 - one odd structure must not stop a round
                logger.debug("StructureMatcher failed on %s: %s", id_, exc)
        return None

    def _reduced(self, structure: Structure) -> Structure | bool:
        """The cell ``StructureMatcher.fit`` compares (Niggli-reduced, then primitive when
        ``primitive_cell``), or False when that fails (the plain ``fit`` is tried then)."""
        try:
            return reduced_for_matching(structure, self.settings["primitive_cell"])
        except Exception as exc:  # noqa: BLE001
            logger.debug("could not reduce a structure for matching: %s", exc)
            return False

    def bucket_size(self, structure: Structure) -> int:
        """Number of known structures sharing ``structure``'s reduced formula."""
        return len(self._buckets.get(self.key(structure), ()))

    def spawn(self) -> NoveltyIndex:
        """An empty index with the same matcher settings."""
        return NoveltyIndex(**self.settings)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, structure: object) -> bool:
        return self.match(structure) is not None  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"NoveltyIndex({self._n} structures, {len(self._buckets)} formulas)"


def novelty_and_uniqueness(
    candidates: Sequence[tuple[Hashable, Structure]], known: NoveltyIndex
) -> dict[Hashable, NoveltyResult]:
    """Novelty against ``known`` and uniqueness within the batch, per candidate id.

    Parameters
    ----------
    candidates
        ``(id, structure)`` pairs in proposal order. An id seen earlier in the batch is the
        same record (ids are structure hashes), so its repeats are skipped and the first
        occurrence's result is kept.
    known
        Training/seed structures and earlier rounds' candidates. It is not modified; add the
        accepted candidates to it yourself after the round.

    Returns
    -------
    dict
        ``id -> NoveltyResult(is_novel, is_unique, duplicate_of)``. A candidate is unique when
        no *earlier* batch member matches it (so the first of a group of duplicates is unique).
    """
    batch = known.spawn()
    results: dict[Hashable, NoveltyResult] = {}
    for id_, structure in candidates:
        if id_ in results:
            logger.debug("candidate id %s repeated in the batch; keeping the first", id_)
            continue
        known_match = known.match(structure)
        batch_match = batch.match(structure)
        results[id_] = NoveltyResult(
            is_novel=known_match is None,
            is_unique=batch_match is None,
            duplicate_of=known_match if known_match is not None else batch_match,
        )
        batch.add(id_, structure)
    return results


# -- novelty judged against a reference, or not judged at all -------------------------------
class Novelty(StrEnum):
    """Whether a candidate is new, and whether that could be judged at all.

    ``novel``     no match among the reference crystals, and the reference holds at least one
                  crystal of the candidate's chemical system (so it was searched where it counts)
    ``known``     matches a reference crystal (``duplicate_of`` names it)
    ``unjudged``  no match, but the reference holds no crystal of the candidate's chemical
                  system: "not found" means nothing, so novelty is unknown
    """

    novel = "novel"
    known = "known"
    unjudged = "unjudged"


def _chemsys(elements: Iterable[str]) -> str:
    return "-".join(sorted(set(elements)))


def subsystems(chemsys: str) -> list[str]:
    """Every proper, non-empty subsystem of a chemical system, smallest first.

    Examples
    --------
    >>> subsystems("Na-Cl")
    ['Cl', 'Na']
    """
    elements = sorted(chemsys.split("-"))
    return [
        "-".join(combo)
        for size in range(1, len(elements))
        for combo in combinations(elements, size)
    ]


@dataclass
class ReferenceCoverage:
    """Which reference sets novelty is judged against, and how many crystals of each
    chemical system they hold.

    Only crystals from a reference set (seed files, Materials Project, OPTIMADE providers,
    a reference shipped with matloop) count: matloop's own elemental ground states are
    matched against (a copy of one is ``known``) but do not make an element's system
    *judged*, since they are one guessed structure per element, not a database.

    Examples
    --------
    >>> cov = ReferenceCoverage.from_crystals([("file:mp.csv", "Cl-Na"), ("file:mp.csv", "Na")])
    >>> cov.count("Na-Cl"), cov.describe("Na-Cl")["n_subsystems"]
    (1, {'Cl': 0, 'Na': 1})
    """

    sets: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    @classmethod
    def from_crystals(cls, crystals: Iterable[tuple[str, str]]) -> ReferenceCoverage:
        """From ``(reference set, chemical system)`` pairs, one per known crystal."""
        sets: dict[str, None] = {}
        counts: Counter = Counter()
        for source, chemsys in crystals:
            sets[source] = None
            counts[_chemsys(chemsys.split("-"))] += 1
        return cls(list(sets), counts)

    def count(self, chemsys: str) -> int:
        """Reference crystals of exactly this chemical system (element order free)."""
        return int(self.counts.get(_chemsys(chemsys.split("-")), 0))

    def describe(self, chemsys: str) -> dict[str, Any]:
        """The ``novelty_reference`` of a candidate of ``chemsys``: the sets searched and
        the known crystals of its system and of each subsystem."""
        return {
            "sets": list(self.sets),
            "chemsys": _chemsys(chemsys.split("-")),
            "n_chemsys": self.count(chemsys),
            "n_subsystems": {sub: self.count(sub) for sub in subsystems(chemsys)},
        }


def judge_novelty(
    duplicate_of: Hashable | None, chemsys: str, coverage: ReferenceCoverage
) -> tuple[Novelty, dict[str, Any]]:
    """``(novelty, novelty_reference)`` of one candidate.

    ``duplicate_of`` is its match among the reference crystals (or None); a match is always
    ``known``. Without a match it is ``novel`` only when the reference holds a crystal of its
    chemical system, else ``unjudged``.

    Examples
    --------
    >>> cov = ReferenceCoverage.from_crystals([("file:mp.csv", "Ti-O")])
    >>> judge_novelty(None, "Ca-O", cov)[0].value, judge_novelty(None, "O-Ti", cov)[0].value
    ('unjudged', 'novel')
    >>> judge_novelty("mp-1", "Ca-O", cov)[0].value
    'known'
    """
    described = coverage.describe(chemsys)
    if duplicate_of is not None:
        return Novelty.known, described
    if described["n_chemsys"] == 0:
        return Novelty.unjudged, described
    return Novelty.novel, described
