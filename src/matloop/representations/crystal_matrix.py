"""An invertible crystal matrix: lattice parameters, element one-hots, fractional coordinates.

Layout of the ``(1 + max_atoms, n_classes + 3)`` matrix (``n_classes = len(elements) + 1``):

* row 0: ``a, b, c, alpha, beta, gamma`` (Å and degrees), zero padded;
* rows 1..max_atoms: one-hot species (class 0 = empty slot, class ``i + 1`` = ``elements[i]``)
  followed by the fractional coordinates ``x, y, z`` in ``[0, 1)``. Empty slots are all zero
  except for the class-0 one.

One crystal has one encoding. :func:`canonicalize` picks the cell and the site order:

1. the Niggli-reduced cell;
2. among the axis relabellings that leave the Niggli parameters unchanged (e.g. the six of a
   cube, with all axes inverted for odd permutations to keep the cell right handed) and the
   origins on the sites of the rarest element (ties: lowest Z), the choice whose sorted site
   list is lexicographically smallest;
3. sites wrapped into ``[0, 1)`` and sorted by ``(Z, x, y, z)`` (``site_order="species"``,
   the default) or by ``(x, y, z, Z)`` (``site_order="position"``: a slot then stands for
   a place in the cell whatever its element, so crystals of one structure type share their
   coordinate rows and a generative model that changes an element does not move atoms).

Decoding rebuilds the structure from the parameters (standard orientation), so it returns the
same crystal as a ``StructureMatcher``-equal structure.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> s = Structure(Lattice.cubic(4.0), ["Sr", "Ti", "O", "O", "O"],
...               [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
>>> enc = CrystalMatrixEncoder(["O", "Ti", "Sr"], max_atoms=5)
>>> enc.decode(enc.encode(s)).composition.reduced_formula
'SrTiO3'
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

_COORD_DECIMALS = 4


def _wrap(frac: np.ndarray) -> np.ndarray:
    """Wrap into [0, 1), folding values within 1e-4 of 1 onto 0 (so 0.99999 and 0 agree)."""
    frac = np.mod(frac, 1.0)
    frac[frac > 1.0 - 10.0**-_COORD_DECIMALS] = 0.0
    return frac


SITE_ORDERS = ("species", "position")


def _sorted_sites(
    z: np.ndarray, frac: np.ndarray, site_order: str = "species"
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Sites sorted by (Z, rounded x, y, z) or, for ``site_order="position"``, by
    (rounded x, y, z, Z); returns the order's Z, coords and a sort key."""
    rounded = np.round(frac, _COORD_DECIMALS)
    if site_order == "position":
        # Bin to the quarter grid first so small distortions do not reorder the sites.
        binned = np.mod(np.round(frac * 4), 4).astype(int)
        order = np.lexsort(
            (
                rounded[:, 2],
                rounded[:, 1],
                rounded[:, 0],
                z,
                binned[:, 2],
                binned[:, 1],
                binned[:, 0],
            )
        )
        key = (
            tuple(binned[order].ravel().tolist())
            + tuple(z[order].tolist())
            + tuple(rounded[order].ravel().tolist())
        )
    else:
        order = np.lexsort((rounded[:, 2], rounded[:, 1], rounded[:, 0], z))
        key = tuple(rounded[order].ravel().tolist())
    return z[order], frac[order], key


def _same_params(p: np.ndarray, q: np.ndarray) -> bool:
    return bool(
        np.allclose(p[:3], q[:3], rtol=1e-3, atol=1e-3) and np.allclose(p[3:], q[3:], atol=0.05)
    )


def canonical_arrays(
    structure: Structure, site_order: str = "species"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical ``(lattice_params (6,), Z (n,), frac (n, 3))`` of an ordered structure.

    See the module docstring for the choices made.
    """
    if site_order not in SITE_ORDERS:
        raise ValueError(f"site_order must be one of {SITE_ORDERS}, not {site_order!r}")
    if not structure.is_ordered:
        raise ValueError("only ordered structures can be encoded")
    # A learned generator encodes its replay crystals (thousands) again every round, as
    # new objects read from the store: remembered by content, they cost a hash, not a
    # Niggli reduction and a search over origins (~3 ms at 20 atoms).
    key = (site_order, structure.lattice.matrix.tobytes(), tuple(structure.atomic_numbers),
           np.asarray(structure.frac_coords, dtype=float).tobytes())  # fmt: skip
    arrays = _CANONICAL.get(key)
    if arrays is None:
        arrays = _canonical_arrays(structure, site_order)
        if len(_CANONICAL) >= _CANONICAL_SIZE:
            _CANONICAL.pop(next(iter(_CANONICAL)))  # the oldest first
        _CANONICAL[key] = arrays
    return tuple(a.copy() for a in arrays)  # type: ignore[return-value]


#: Canonical arrays by structure content (insertion order: the oldest is dropped first).
_CANONICAL: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_CANONICAL_SIZE = 20000


def _canonical_arrays(
    structure: Structure, site_order: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reduced = structure.get_reduced_structure("niggli")
    params = np.array(reduced.lattice.parameters, dtype=float)
    z_all = np.array([site.specie.Z for site in reduced], dtype=int)
    frac0 = np.array(reduced.frac_coords, dtype=float)

    # Origins: the sites of the rarest element, ties broken by lowest Z.
    values, counts = np.unique(z_all, return_counts=True)
    anchor_z = values[np.lexsort((values, counts))[0]]
    anchors = np.flatnonzero(z_all == anchor_z)

    best: tuple | None = None
    best_arrays: tuple[np.ndarray, np.ndarray] | None = None
    for perm in itertools.permutations(range(3)):
        sign = 1.0 if _perm_parity(perm) == 0 else -1.0
        lengths = params[list(perm)]
        # Angle alpha is between b and c: relabelling axes permutes angles the same way.
        angles = params[3:][list(perm)]
        if not _same_params(np.concatenate([lengths, angles]), params):
            continue
        frac_p = sign * frac0[:, list(perm)]
        for a in anchors:
            frac = _wrap(frac_p - frac_p[a])
            z_sorted, frac_sorted, key = _sorted_sites(z_all, frac, site_order)
            if best is None or key < best:
                best, best_arrays = key, (z_sorted, frac_sorted)
    assert best_arrays is not None
    return params, best_arrays[0], best_arrays[1]


def _perm_parity(perm: Sequence[int]) -> int:
    perm = list(perm)
    parity = 0
    for i in range(len(perm)):
        for j in range(i + 1, len(perm)):
            parity ^= perm[i] > perm[j]
    return parity


def canonicalize(structure: Structure, site_order: str = "species") -> Structure:
    """The structure in its canonical cell, origin and site order (see module docstring)."""
    from pymatgen.core import Lattice, Structure

    params, z, frac = canonical_arrays(structure, site_order)
    return Structure(Lattice.from_parameters(*params), [int(v) for v in z], frac)


@dataclass
class CrystalMatrixEncoder:
    """Encode ordered crystals of up to ``max_atoms`` sites as one fixed-size matrix.

    Parameters
    ----------
    elements
        Element symbols the one-hots range over (class ``i + 1`` is ``elements[i]``).
    max_atoms
        Number of site rows; smaller cells are padded with empty slots.
    site_order
        ``"species"`` (sites sorted by element first) or ``"position"`` (by coordinates
        first); see the module docstring.
    """

    elements: Sequence[str]
    max_atoms: int = 20
    site_order: str = "species"

    def __post_init__(self) -> None:
        from pymatgen.core import Element

        self.elements = list(self.elements)
        self._z_to_class = {Element(s).Z: i + 1 for i, s in enumerate(self.elements)}

    @property
    def n_classes(self) -> int:
        """Number of species classes, the empty slot included."""
        return len(self.elements) + 1

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one encoded crystal."""
        return (1 + self.max_atoms, max(self.n_classes + 3, 6))

    def encode_parts(self, structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lattice_params (6,), species_class (max_atoms,) int, frac (max_atoms, 3))``."""
        if len(structure) > self.max_atoms:
            raise ValueError(f"{len(structure)} sites exceed max_atoms={self.max_atoms}")
        params, z, frac = canonical_arrays(structure, self.site_order)
        classes = np.zeros(self.max_atoms, dtype=int)
        coords = np.zeros((self.max_atoms, 3))
        try:
            classes[: len(z)] = [self._z_to_class[int(v)] for v in z]
        except KeyError as err:
            raise ValueError(
                f"element Z={err.args[0]} is not in the encoder's element set"
            ) from None
        coords[: len(z)] = frac
        return params, classes, coords

    def encode(self, structure: Structure) -> np.ndarray:
        """The ``shape``-sized matrix of ``structure`` (see module docstring)."""
        params, classes, coords = self.encode_parts(structure)
        mat = np.zeros(self.shape)
        mat[0, :6] = params
        mat[1 + np.arange(self.max_atoms), classes] = 1.0
        mat[1:, self.n_classes : self.n_classes + 3] = coords
        return mat

    def split(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inverse of the layout: ``(params, species_class, frac)``; argmax over the one-hots."""
        matrix = np.asarray(matrix, dtype=float)
        params = matrix[0, :6]
        classes = matrix[1:, : self.n_classes].argmax(axis=1)
        coords = matrix[1:, self.n_classes : self.n_classes + 3]
        return params, classes, coords

    def decode_parts(
        self, params: np.ndarray, classes: np.ndarray, coords: np.ndarray
    ) -> Structure:
        """Structure from lattice parameters, species classes (0 = empty) and coordinates."""
        from pymatgen.core import Lattice, Structure

        classes = np.asarray(classes, dtype=int)
        keep = classes > 0
        if not keep.any():
            raise ValueError("every slot is empty: nothing to decode")
        species = [self.elements[c - 1] for c in classes[keep]]
        lattice = Lattice.from_parameters(*(float(v) for v in params))
        return Structure(lattice, species, np.mod(np.asarray(coords, dtype=float)[keep], 1.0))

    def decode(self, matrix: np.ndarray) -> Structure:
        """Structure from an encoded (or predicted, then argmax-ed) matrix."""
        return self.decode_parts(*self.split(matrix))


#: Angles (degrees) that :func:`snap_lattice` rounds onto.
SNAP_ANGLES = (90.0, 120.0, 60.0)
#: Fractional grids (1/2, 1/4, 1/3) that :func:`snap_coords` rounds onto, first match wins.
SNAP_GRIDS = (2, 4, 3)


def snap_lattice(
    params: np.ndarray, angle_tol: float = 3.0, length_rtol: float = 0.02
) -> np.ndarray:
    """Symmetry-aware rounding of lattice parameters ``(B, 6)`` (or ``(6,)``).

    Angles within ``angle_tol`` degrees of 90, 120 or 60 become exactly that; lengths that
    agree within ``length_rtol`` (relative) become their mean, all three together when all
    three agree, else the closest agreeing pair. Decoded cells of symmetric crystals come out
    with the small numerical noise of a regression head; this removes it.

    >>> snap_lattice(np.array([4.0, 4.03, 3.99, 89.2, 90.5, 91.0])).round(3).tolist()
    [4.007, 4.007, 4.007, 90.0, 90.0, 90.0]
    """
    p = np.array(params, dtype=float, copy=True)
    single = p.ndim == 1
    p = p.reshape(-1, 6)
    ang = p[:, 3:]
    for target in SNAP_ANGLES:
        ang[np.abs(ang - target) <= angle_tol] = target
    pairs = ((0, 1), (1, 2), (0, 2))
    for row in p[:, :3]:
        rel = [abs(row[i] - row[j]) / max(0.5 * (row[i] + row[j]), 1e-8) for i, j in pairs]
        if max(rel) <= length_rtol:
            row[:] = row.mean()
            continue
        k = int(np.argmin(rel))
        if rel[k] <= length_rtol:
            i, j = pairs[k]
            row[[i, j]] = 0.5 * (row[i] + row[j])
    return p[0] if single else p


def snap_coords(
    frac: np.ndarray, tol: float = 0.04, grids: Sequence[int] = SNAP_GRIDS
) -> np.ndarray:
    """Fractional coordinates within ``tol`` (periodic) of a multiple of ``1/g`` move onto it,
    trying the grids in order (1/2 before 1/4 ...); results are wrapped into ``[0, 1)``.

    >>> snap_coords(np.array([0.01, 0.49, 0.26, 0.40])).round(3).tolist()
    [0.0, 0.5, 0.25, 0.4]
    """
    f = np.mod(np.asarray(frac, dtype=float), 1.0)
    done = np.zeros(f.shape, dtype=bool)
    for g in grids:
        target = np.round(f * g) / g
        close = ~done & (np.abs(f - target) <= tol)
        f = np.where(close, target, f)
        done |= close
    return np.mod(f, 1.0) * (np.mod(f, 1.0) < 1.0 - 1e-9)
