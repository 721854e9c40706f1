"""Cheap validity checks a campaign runs on every proposal before relaxing it.

Structural validity follows the crystal generative-model literature (CDVAE): every pair of
atoms (periodic images included) at least ``min_distance`` apart and a cell volume of at least
``min_volume``. Compositional validity is SMACT charge neutrality plus Pauling
electronegativity balance (:func:`matloop.chemistry.smact_valid`).

Every check returns a :class:`ValidityResult` whose ``reason`` names the problem, so a
rejected candidate records why it was rejected.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
>>> screen_structure(nacl, allowed_elements={"Na", "Cl"}, max_atoms=8)
ValidityResult(valid=True, reason=None)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from matloop.chemistry import smact_valid

if TYPE_CHECKING:
    from pymatgen.core import Composition, Element, Lattice, Structure

__all__ = [
    "ValidityResult",
    "compositional_validity",
    "nearest_neighbour_distances",
    "screen_structure",
    "shortest_lattice_translation",
    "structural_validity",
]

_IMAGES = np.array([v for v in itertools.product((-1, 0, 1), repeat=3) if any(v)], dtype=float)


@dataclass(frozen=True)
class ValidityResult:
    """Outcome of a validity check.

    Attributes
    ----------
    valid
        True when the structure or composition passed.
    reason
        None when valid, otherwise a short human-readable description of the first problem
        found (e.g. ``"min interatomic distance 0.31 Å < 0.5 Å"``).
    """

    valid: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.valid


_OK = ValidityResult(True, None)


def shortest_lattice_translation(lattice: Lattice) -> float:
    """Length (Å) of the shortest non-zero lattice vector.

    Searches the combinations with coefficients in {-1, 0, 1} of the LLL-reduced basis, which
    contains the shortest vector for all but pathologically skewed cells. This is the distance
    from an atom to its own periodic image.
    """
    matrix = lattice.lll_matrix
    return float(np.min(np.linalg.norm(_IMAGES @ matrix, axis=1)))


def nearest_neighbour_distances(structure: Structure) -> np.ndarray:
    """Distance (Å) from every site to its nearest neighbour, periodic images included.

    Uses pymatgen's minimum-image distance matrix (an O(n²) array, fine for the few hundred
    atoms a generated cell has) and the shortest lattice translation for self-images, so a
    one-atom cell gets its true nearest-neighbour distance.
    """
    n = len(structure)
    self_image = shortest_lattice_translation(structure.lattice)
    if n == 1:
        return np.array([self_image])
    dmat = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(dmat, np.inf)
    return np.minimum(dmat.min(axis=1), self_image)


def _finite(structure: Structure) -> bool:
    return bool(
        np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords))
    )


def structural_validity(
    structure: Structure, min_distance: float = 0.5, min_volume: float = 0.1
) -> ValidityResult:
    """Check that a structure is geometrically sensible.

    Parameters
    ----------
    structure
        The crystal to check.
    min_distance
        Smallest allowed interatomic distance in Å (periodic images included).
    min_volume
        Smallest allowed cell volume in Å³ (the whole cell, as in CDVAE).

    Returns
    -------
    ValidityResult
        Invalid with reasons such as ``"non-finite lattice/coords"``, ``"partial occupancy"``,
        ``"volume 0.05 Å³ < 0.1 Å³"`` or ``"min interatomic distance 0.31 Å < 0.5 Å"``.
    """
    if len(structure) == 0:
        return ValidityResult(False, "empty structure")
    if not _finite(structure):
        return ValidityResult(False, "non-finite lattice/coords")
    if not structure.is_ordered:
        return ValidityResult(False, "partial occupancy")
    volume = float(abs(np.linalg.det(structure.lattice.matrix)))
    if not np.isfinite(volume) or volume < min_volume:
        return ValidityResult(False, f"volume {volume:.3g} Å³ < {min_volume:g} Å³")
    dmin = float(nearest_neighbour_distances(structure).min())
    if not np.isfinite(dmin) or dmin < min_distance:
        return ValidityResult(False, f"min interatomic distance {dmin:.2f} Å < {min_distance:g} Å")
    return _OK


def compositional_validity(composition: Composition) -> ValidityResult:
    """SMACT charge neutrality and electronegativity balance (CDVAE's definition).

    Single elements and all-metal compositions are valid. A composition that cannot be
    written with integer counts is invalid (``"fractional composition ..."``).
    """
    try:
        ok = smact_valid(composition)
    except ValueError as exc:  # fractional occupancies
        return ValidityResult(False, f"fractional composition: {exc}")
    except (KeyError, TypeError) as exc:  # element unknown to SMACT
        return ValidityResult(False, f"SMACT cannot assess {composition.reduced_formula}: {exc}")
    if ok:
        return _OK
    return ValidityResult(
        False,
        f"{composition.reduced_formula}: not charge balanced / fails electronegativity test",
    )


def _symbols(elements: Iterable[str | Element]) -> set[str]:
    return {getattr(el, "symbol", el) for el in elements}


def screen_structure(
    structure: Structure,
    *,
    allowed_elements: Iterable[str | Element],
    max_atoms: int,
    min_distance: float = 0.5,
    min_volume: float = 0.1,
    max_volume_per_atom: float | None = 200.0,
) -> ValidityResult:
    """Everything a campaign checks before spending a relaxation on a proposal.

    Checks, cheapest first: atom count, elements within the chemical space, partial
    occupancy, geometry (:func:`structural_validity`) and composition
    (:func:`compositional_validity`). The first failure is returned.

    Parameters
    ----------
    structure
        The proposal.
    allowed_elements
        Element symbols (or pymatgen ``Element`` objects) of the campaign's chemical space.
    max_atoms
        Largest number of sites allowed in the cell.
    min_distance, min_volume
        Passed to :func:`structural_validity`.
    max_volume_per_atom
        Sparser cells (Å³ per atom) are rejected: their atoms see no neighbours within an
        ML potential's cutoff (the relaxation runner refuses them too). None: no limit.
    """
    n = len(structure)
    if n > max_atoms:
        return ValidityResult(False, f"{n} atoms > max_atoms {max_atoms}")
    if not structure.is_ordered:
        return ValidityResult(False, "partial occupancy")
    present = {el.symbol for el in structure.composition.elements}
    outside = sorted(present - _symbols(allowed_elements))
    if outside:
        return ValidityResult(False, f"elements outside the chemical space: {', '.join(outside)}")
    result = structural_validity(structure, min_distance=min_distance, min_volume=min_volume)
    if not result.valid:
        return result
    per_atom = float(abs(np.linalg.det(structure.lattice.matrix))) / n
    if max_volume_per_atom is not None and per_atom > max_volume_per_atom:
        return ValidityResult(
            False, f"cell too sparse: {per_atom:.3g} Å³/atom > {max_volume_per_atom:g}"
        )
    return compositional_validity(structure.composition)
