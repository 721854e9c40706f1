"""Random symmetric crystals: a charge-balanced composition in a random space group.

The AIRSS / pyxtal baseline: pick a compositionally valid cell composition of the chemical
space, a space group whose Wyckoff positions can hold it, and let pyxtal place the atoms
at random on those positions with a sensible volume and no two atoms too close. No
learning and no prior beyond charge balance; what a learned generator must beat.

pyxtal is imported only when structures are made, so importing this module stays cheap.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from matloop.generators.base import ChemicalSpace, Generator, GeneratorSettings
from matloop.generators.compositions import charge_balanced_compositions
from matloop.generators.prototypes import DistinctStructures

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pymatgen.core import Structure

__all__ = ["RandomSymmetric"]

#: pyxtal's atomic tolerance matrix is 0.5 x the sum of covalent radii at ``t_factor=1``.
_PYXTAL_TOLERANCE = 0.5
#: Draws of a space group for one composition before trying another composition.
_GROUP_DRAWS = 20


@lru_cache(maxsize=256)
def _group(number: int):
    """pyxtal's ``Group`` (builds its Wyckoff tables: a few ms each, so cached)."""
    from pyxtal.symmetry import Group

    return Group(number)


@lru_cache(maxsize=65536)
def _compatible(number: int, counts: tuple[int, ...]) -> bool:
    """Whether the Wyckoff positions of space group ``number`` can hold ``counts`` atoms."""
    return bool(_group(number).check_compatible(list(counts))[0])


@lru_cache(maxsize=256)
def _covalent_radius(symbol: str) -> float:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    return float(CovalentRadius.radius[symbol])


@lru_cache(maxsize=1)
def _skip_unused_tolerance_matrix() -> None:
    """Make pyxtal's Wyckoff merge stop building a tolerance matrix it never reads.

    ``Wyckoff_position.merge`` calls ``check_images(..., tol=tol)`` without ``tm``, and
    ``check_images`` then builds a ``Tol_matrix`` (a ~120 x 120 Python loop, ~5 ms) that
    the fixed ``tol`` makes unused: about half of the CPU of ``from_random`` at 20 atoms.
    The wrapper hands it one prebuilt default matrix (the same values), so the crystals
    drawn do not change. Installed once, on pyxtal's module, when structures are made.
    """
    import functools

    import pyxtal.symmetry
    from pyxtal.tolerance import Tol_matrix

    original = pyxtal.symmetry.check_images
    default = Tol_matrix(prototype="atomic")

    @functools.wraps(original)
    def check_images(coords, species, lattice, PBC=None, tm=None, tol=None, d_factor=1.0):
        return original(coords, species, lattice, PBC=PBC, tm=default if tm is None else tm,
                        tol=tol, d_factor=d_factor)  # fmt: skip

    pyxtal.symmetry.check_images = check_images


def _far_enough(structure: Structure, factor: float) -> bool:
    """No pair (periodic images included) closer than ``factor`` x the covalent radii."""
    centers, points, _, distances = structure.get_neighbor_list(4.0)
    symbols = [site.specie.symbol for site in structure]
    return all(
        d >= factor * (_covalent_radius(symbols[i]) + _covalent_radius(symbols[j]))
        for i, j, d in zip(centers, points, distances, strict=True)
    )


class RandomSymmetric(Generator):
    """Random crystals with space-group symmetry, built by pyxtal.

    Parameters
    ----------
    chemical_space
        Allowed elements and cell size (atoms in the cell pyxtal builds, which is the
        conventional cell of the space group).
    seed
        Seeds the default random generator (pyxtal draws from the same generator, so a
        seed fixes the structures).
    max_elements
        Largest number of distinct elements in a composition (at least 2).
    spacegroups
        Space-group numbers to draw from (default: 2-230).
    volume_factor
        pyxtal's ``factor``: the starting volume relative to its atomic-volume estimate.
    min_distance_factor
        No two atoms closer than this x the sum of their covalent radii.
    max_attempts
        pyxtal calls allowed per requested structure, so ``sample(n)`` makes at most
        ``n * max_attempts`` attempts and may return fewer than ``n`` structures.
    alloys
        Include all-metal compositions (valid under SMACT's definition).

    Notes
    -----
    A composition is drawn in two steps, so every chemical system gets an equal share
    whatever its number of valid compositions: first a chemical system (a subset of the
    elements that has at least one valid composition), then one of its cell compositions
    (counts, atoms <= ``max_atoms``) that passes :func:`~matloop.chemistry.smact_valid`.
    Each structure records ``properties["spacegroup_requested"]``. ``conditions`` are
    ignored.

    Examples
    --------
    >>> gen = RandomSymmetric(ChemicalSpace(["Ca", "Ti", "O"], max_atoms=10), seed=1)
    >>> structures = gen.sample(2)  # doctest: +SKIP
    """

    name = "random_symmetric"

    class Settings(GeneratorSettings):
        max_elements: int = Field(3, ge=2, description="Most distinct elements per composition")
        spacegroups: list[int] | None = Field(None, description="Space groups (default 2-230)")
        volume_factor: float = Field(1.1, gt=0, description="pyxtal's starting volume factor")
        min_distance_factor: float = Field(0.7, gt=0, description="x sum of covalent radii")
        max_attempts: int = Field(10, ge=1, description="pyxtal calls per structure")
        alloys: bool = Field(True, description="Include all-metal compositions")

    def __init__(
        self,
        chemical_space: ChemicalSpace,
        seed: int = 0,
        max_elements: int = 3,
        spacegroups: Sequence[int] | None = None,
        volume_factor: float = 1.1,
        min_distance_factor: float = 0.7,
        max_attempts: int = 10,
        alloys: bool = True,
    ) -> None:
        groups = list(range(2, 231)) if spacegroups is None else [int(g) for g in spacegroups]
        if not groups or not all(1 <= g <= 230 for g in groups):
            raise ValueError(f"spacegroups must be numbers in 1-230, got {spacegroups}")
        if max_elements < 2:
            raise ValueError(f"max_elements must be at least 2, got {max_elements}")
        self.chemical_space = chemical_space
        self.seed = seed
        self.max_elements = max_elements
        self.spacegroups = groups
        self.volume_factor = volume_factor
        self.min_distance_factor = min_distance_factor
        self.max_attempts = max_attempts
        self.alloys = alloys
        self._rng = np.random.default_rng(seed)
        self._systems: list[list[dict[str, int]]] | None = None
        self._seen = DistinctStructures()

    @property
    def compositions(self) -> list[dict[str, int]]:
        """Every cell composition this generator may draw."""
        return [c for system in self._chemical_systems() for c in system]

    def _chemical_systems(self) -> list[list[dict[str, int]]]:
        if self._systems is None:
            space = self.chemical_space
            comps = charge_balanced_compositions(
                space.elements,
                space.max_atoms,
                min_atoms=space.min_atoms,
                max_elements=self.max_elements,
                alloys=self.alloys,
            )
            systems: dict[tuple[str, ...], list[dict[str, int]]] = {}
            for comp in comps:
                systems.setdefault(tuple(comp), []).append(comp)
            self._systems = list(systems.values())
        return self._systems

    def _draw_group(self, counts: tuple[int, ...], rng: np.random.Generator) -> int | None:
        for _ in range(_GROUP_DRAWS):
            number = self.spacegroups[int(rng.integers(len(self.spacegroups)))]
            if _compatible(number, counts):
                return number
        return None

    def _attempt(self, rng: np.random.Generator) -> Structure | None:
        """One composition, one space group, one pyxtal call; None when it fails."""
        from pyxtal import pyxtal

        _skip_unused_tolerance_matrix()
        systems = self._chemical_systems()
        system = systems[int(rng.integers(len(systems)))]
        composition = system[int(rng.integers(len(system)))]
        species, counts = list(composition), tuple(composition.values())
        number = self._draw_group(counts, rng)
        if number is None:
            return None
        crystal = pyxtal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                crystal.from_random(
                    3,
                    number,
                    species,
                    list(counts),
                    factor=self.volume_factor,
                    t_factor=self.min_distance_factor / _PYXTAL_TOLERANCE,
                    max_count=5,
                    random_state=rng,
                )
                structure = crystal.to_pymatgen()
            except Exception:  # pyxtal raises several types when a group cannot be filled
                return None
        if not (crystal.valid and self.chemical_space.allows(structure)):
            return None
        if structure.composition.get_el_amt_dict() != {s: float(c) for s, c in composition.items()}:
            return None
        if not _far_enough(structure, 0.95 * self.min_distance_factor):
            return None
        structure.properties = {**(structure.properties or {}), "spacegroup_requested": number}
        return structure

    def sample(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Structure]:
        """Up to ``n`` distinct random symmetric structures, none returned by an earlier call.

        Makes at most ``n * max_attempts`` pyxtal attempts and returns what it has then.
        """
        rng = self._rng if rng is None else rng
        out: list[Structure] = []
        if n <= 0 or not self._chemical_systems():
            return out
        for _ in range(n * self.max_attempts):
            structure = self._attempt(rng)
            if structure is None or structure in self._seen:
                continue
            self._seen.add(structure)
            out.append(structure)
            if len(out) == n:
                break
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance: generator name and version, seed and settings."""
        return {
            **super().describe(),
            "seed": self.seed,
            "max_elements": self.max_elements,
            "volume_factor": self.volume_factor,
            "min_distance_factor": self.min_distance_factor,
            "alloys": self.alloys,
        }
