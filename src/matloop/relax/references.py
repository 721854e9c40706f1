"""Elemental reference energies computed with the campaign's own potential.

Hulls only make sense when compounds and elements are relaxed with the same potential, so
matloop relaxes a small built-in set of candidate structures per element and keeps the one
with the lowest energy per atom as that element's reference:

- every element: fcc, bcc, hcp, diamond and simple cubic, with lattice constants from the
  element's metallic (else empirical atomic) radius;
- a few elements whose ground state is none of those: graphite (C), A7 (As, Sb, Bi) and the
  trigonal chains of Se and Te;
- the molecular elements H, N, O, F, Cl, Br and I: packed crystals of dimers only (parallel
  dimers in a rhombohedral stacking, 1 dimer per cell; the cubic Pa-3 alpha-N2 packing, 4
  dimers; the orthorhombic Cmca packing of solid Cl2 / Br2 / I2, 2 dimers per primitive
  cell), with the molecules' experimental bond length, in cells scaled to the solid's
  experimental volume per atom;
- noble gases: fcc and hcp at the van der Waals spacing.

Elements with complex ground states (B, P, S, Ga, In, Mn, Sm, the actinides...) get only the
simple lattices above; pass their known structures through ``extra``.

Examples
--------
>>> [s.properties["prototype"] for s in elemental_candidates("O")]
['dimer-rhombohedral', 'Pa-3', 'Cmca']
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from matloop.relax.outcome import RelaxOutcome
from matloop.relax.runner import relax_structures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from jobflow import JobStore, Maker

__all__ = [
    "DIMER_BOND_LENGTHS",
    "ElementalReferenceError",
    "elemental_candidates",
    "relax_elemental_references",
]

#: Bond lengths (Å) of the diatomic molecules of the molecular elements.
DIMER_BOND_LENGTHS: dict[str, float] = {
    "H": 0.74,
    "N": 1.10,
    "O": 1.21,
    "F": 1.42,
    "Cl": 1.99,
    "Br": 2.28,
    "I": 2.67,
}

_NOBLE_GASES = frozenset({"He", "Ne", "Ar", "Kr", "Xe", "Rn"})

# Volumes per atom (Å^3) of the solid molecular elements near 0 K, to size the cells.
_MOLECULAR_SOLID_VOLUMES: dict[str, float] = {
    "H": 19.0,
    "N": 22.7,
    "O": 17.4,
    "F": 18.0,
    "Cl": 28.9,
    "Br": 32.6,
    "I": 42.6,
}

# Solid iodine, Cmca (No. 64), 8f site (0, y, z): the template of the Cmca packing.
_I2_CMCA = {"a": 7.27, "b": 4.79, "c": 9.79, "y": 0.1543, "z": 0.1174}

# A7 (R-3m, hexagonal setting, 6c site (0, 0, u)).
_A7 = {
    "As": (3.76, 10.55, 0.227),
    "Sb": (4.31, 11.27, 0.2336),
    "Bi": (4.55, 11.86, 0.2339),
}

# Trigonal chains (P3_121, 3a site (x, 0, 1/3)).
_CHAINS = {"Se": (4.37, 4.95, 0.2254), "Te": (4.45, 5.93, 0.2636)}


class ElementalReferenceError(RuntimeError):
    """No candidate structure of an element relaxed successfully."""


def elemental_candidates(symbol: str) -> list[Structure]:
    """Candidate ground-state structures of one element, built in code.

    Parameters
    ----------
    symbol : str
        An element symbol, e.g. ``"O"`` or ``"Fe"``.

    Returns
    -------
    list of Structure
        Small cells (at most 8 atoms); each carries its prototype name in
        ``structure.properties["prototype"]``.

    Examples
    --------
    >>> [s.properties["prototype"] for s in elemental_candidates("Si")]
    ['fcc', 'bcc', 'hcp', 'diamond', 'sc']
    """
    element = Element(symbol)
    el = element.symbol
    if el in DIMER_BOND_LENGTHS:
        builds = _molecular_candidates(el)
    elif el in _NOBLE_GASES:
        d = 2.0 * _radius(element, van_der_waals=True)
        builds = [("fcc", _fcc(el, d)), ("hcp", _hcp(el, d))]
    else:
        d = 2.0 * _radius(element)
        builds = [
            ("fcc", _fcc(el, d)),
            ("bcc", _bcc(el, d)),
            ("hcp", _hcp(el, d)),
            ("diamond", _diamond(el, d)),
            ("sc", _sc(el, d)),
        ]
        builds += _special_candidates(el)
    structures = []
    for name, structure in builds:
        structure.properties["prototype"] = name
        structures.append(structure)
    return structures


def relax_elemental_references(
    symbols: Iterable[str],
    maker: Maker,
    job_store: JobStore,
    *,
    extra: Mapping[str, Sequence[Structure]] | None = None,
    max_volume_ratio: float = 3.0,
    progress: Callable[[int, int], None] | None = None,
    num_threads: int | None = 1,
) -> dict[str, RelaxOutcome]:
    """Relax every candidate of each element and keep the lowest energy per atom.

    Parameters
    ----------
    symbols : iterable of str
        Element symbols; duplicates are relaxed once.
    maker : jobflow.Maker
        The relaxation maker the campaign uses for its candidates (same potential, same
        settings), e.g. from :func:`matloop.relax.makers.make_relax_maker`.
    job_store : jobflow.JobStore
        Where the task documents of every candidate relaxation go.
    extra : mapping of str to list of Structure, optional
        More candidate structures per element (e.g. known ground states from a database).
    max_volume_ratio : float
        Passed to :func:`~matloop.relax.runner.relax_structures`.
    progress : callable, optional
        Called as ``progress(done, total)`` over all candidates.
    num_threads : int or None
        Thread limit while relaxing (see :func:`~matloop.relax.runner.relax_structures`).

    Returns
    -------
    dict of str to RelaxOutcome
        The lowest-energy successful relaxation of each element. Its ``candidate_id`` reads
        ``"ref:<element>:<prototype>"``; failed candidates are ignored as long as one
        candidate of the element succeeds.

    Raises
    ------
    ElementalReferenceError
        If every candidate of an element failed; the message names the element and each
        candidate's reason.

    Examples
    --------
    >>> refs = relax_elemental_references(["O"], make_relax_maker(), store)  # doctest: +SKIP
    >>> round(refs["O"].energy_per_atom, 1)  # doctest: +SKIP
    -4.9
    """
    extra = extra or {}
    ordered = list(dict.fromkeys(Element(s).symbol for s in symbols))
    items: list[tuple[str, Structure]] = []
    for el in ordered:
        candidates = elemental_candidates(el) + list(extra.get(el, ()))
        for index, structure in enumerate(candidates):
            prototype = structure.properties.get("prototype", f"extra-{index}")
            items.append((f"ref:{el}:{prototype}", structure))

    outcomes = relax_structures(
        items,
        maker,
        job_store,
        max_volume_ratio=max_volume_ratio,
        progress=progress,
        num_threads=num_threads,
    )

    references: dict[str, RelaxOutcome] = {}
    for el in ordered:
        mine = [o for o in outcomes if o.candidate_id.split(":")[1] == el]
        good = [o for o in mine if o.ok and o.energy_per_atom is not None]
        if not good:
            reasons = "; ".join(f"{o.candidate_id.split(':', 2)[2]}: {o.reason}" for o in mine)
            raise ElementalReferenceError(
                f"no reference for {el}: all {len(mine)} candidates failed ({reasons})"
            )
        references[el] = min(good, key=lambda o: o.energy_per_atom)
    return references


def _radius(element: Element, van_der_waals: bool = False) -> float:
    """Radius (Å) setting the nearest-neighbour distance of the simple lattices."""
    names = (
        ("van_der_waals_radius", "atomic_radius")
        if van_der_waals
        else ("metallic_radius", "atomic_radius", "atomic_radius_calculated")
    )
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for every missing radius
            try:
                value = getattr(element, name)
            except (AttributeError, ValueError):
                continue
        if value is not None and float(value) > 0:
            return float(value)
    return 1.5


def _fcc(el: str, d: float) -> Structure:
    """Primitive fcc cell with nearest-neighbour distance ``d``."""
    h = d / math.sqrt(2.0)  # a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), [el], [[0, 0, 0]])


def _bcc(el: str, d: float) -> Structure:
    """Primitive bcc cell with nearest-neighbour distance ``d``."""
    h = d / math.sqrt(3.0)  # a / 2
    return Structure(Lattice([[-h, h, h], [h, -h, h], [h, h, -h]]), [el], [[0, 0, 0]])


def _hcp(el: str, d: float) -> Structure:
    """Ideal hcp cell (c/a = 1.633) with nearest-neighbour distance ``d``."""
    lattice = Lattice.hexagonal(d, d * math.sqrt(8.0 / 3.0))
    return Structure(lattice, [el, el], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])


def _diamond(el: str, d: float) -> Structure:
    """Primitive diamond cell with bond length ``d``."""
    h = 2.0 * d / math.sqrt(3.0)  # a / 2, a = 4 d / sqrt(3)
    lattice = Lattice([[0, h, h], [h, 0, h], [h, h, 0]])
    return Structure(lattice, [el, el], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _sc(el: str, d: float) -> Structure:
    """Simple cubic cell with nearest-neighbour distance ``d``."""
    return Structure(Lattice.cubic(d), [el], [[0, 0, 0]])


def _special_candidates(el: str) -> list[tuple[str, Structure]]:
    """Known non-simple ground states of a few common elements."""
    if el == "C":
        lattice = Lattice.hexagonal(2.46, 6.71)
        coords = [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]]
        return [("graphite", Structure(lattice, [el] * 4, coords))]
    if el in _A7:
        a, c, u = _A7[el]
        conventional = Structure.from_spacegroup(166, Lattice.hexagonal(a, c), [el], [[0, 0, u]])
        return [("A7", conventional.get_primitive_structure())]
    if el in _CHAINS:
        a, c, x = _CHAINS[el]
        chains = Structure.from_spacegroup(152, Lattice.hexagonal(a, c), [el], [[x, 0, 1 / 3]])
        return [("trigonal-chains", chains)]
    return []


def _molecular_candidates(el: str) -> list[tuple[str, Structure]]:
    """Packed molecular crystals of dimers for H, N, O, F, Cl, Br and I.

    Each cell is scaled to the element's solid molar volume and the dimers keep their
    experimental bond length.
    """
    bond = DIMER_BOND_LENGTHS[el]
    volume = _MOLECULAR_SOLID_VOLUMES[el]

    # Parallel dimers along z on a triangular net, layers stacked rhombohedrally
    # (alpha-O2 is a monoclinic distortion of this packing). One dimer per cell.
    shape = Lattice([[1, 0, 0], [-0.5, 3**0.5 / 2, 0], [0.5, 0.5 / 3**0.5, 1.25]])
    rhombohedral = _dimer_crystal(el, bond, 2 * volume, shape, [[0, 0, 0]], [[0, 0, 1]])

    # alpha-N2: Pa-3, molecular centres on an fcc lattice, axes along the four <111>.
    centres = [[0, 0, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.5, 0.5, 0]]
    axes = [[1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1]]
    pa3 = _dimer_crystal(el, bond, 8 * volume, Lattice.cubic(1.0), centres, axes)

    # Solid Cl2 / Br2 / I2: Cmca layers, shaped like iodine (molecules in the bc plane).
    t = _I2_CMCA
    axis = [0.0, t["y"] * t["b"], t["z"] * t["c"]]
    mirrored = [0.0, -axis[1], axis[2]]
    shape = Lattice([[t["a"] / 2, -t["b"] / 2, 0], [t["a"] / 2, t["b"] / 2, 0], [0, 0, t["c"]]])
    # Primitive cell of the C-centred cell: centres at 0 and (0, 1/2, 1/2) conventional.
    cmca = _dimer_crystal(
        el, bond, 4 * volume, shape, [[0, 0, 0], [0.5, 0.5, 0.5]], [axis, mirrored]
    )
    return [("dimer-rhombohedral", rhombohedral), ("Pa-3", pa3), ("Cmca", cmca)]


def _dimer_crystal(
    el: str,
    bond: float,
    cell_volume: float,
    shape: Lattice,
    centres: Sequence[Sequence[float]],
    axes: Sequence[Sequence[float]],
) -> Structure:
    """Place dimers of length ``bond`` at fractional ``centres`` along Cartesian ``axes``.

    ``shape`` is scaled isotropically to ``cell_volume``.
    """
    lattice = shape.scale(cell_volume)
    coords = []
    for centre, axis in zip(centres, axes, strict=True):
        middle = lattice.get_cartesian_coords(centre)
        half = 0.5 * bond * np.asarray(axis, dtype=float) / np.linalg.norm(axis)
        coords += [middle - half, middle + half]
    return Structure(lattice, [el] * len(coords), coords, coords_are_cartesian=True)
