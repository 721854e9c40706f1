"""Is a generated crystal physically sound? One check shared by every generator and the CLI.

A sound crystal

* keeps every pair of atoms (periodic images included, an atom and its own image too) at
  least ``factor`` x the sum of their covalent radii apart (``factor`` = 0.8 by default:
  C-C >= 1.22 Å, Na-Cl >= 2.14 Å, H-H >= 0.50 Å);
* has a number of atoms seen in the training data (when those counts are known);
* reads back from the CIF pymatgen writes for it, with the same number of sites (atoms
  snapped onto one site are read back as "Occupancy 2.0" and refused by pymatgen).

Radii are ASE's covalent radii (Cordero et al. 2008). Their alkali and alkaline-earth
radii are large, so real crystals do not all pass 0.8 (measured on ``../shared/data``:
share of crystals passing 0.8 / 0.7 x the radii sum)::

    Carbon-24 (2,009)             1.000 / 1.000   (closest real C-C: 0.80 x 1.52 Å)
    Perov-5 (3,787)               0.914 / 0.997   (CsBeN3 0.67)
    MP sample, <= 20 atoms        0.936 / 0.994
    OQMD sample, <= 20 atoms      0.911 / 0.994

A generator therefore takes its factor from its training data
(:func:`data_distance_factor`: 0.8, or the 1st percentile of the training crystals' own
closest-pair ratio when that is lower; 0.8 on Carbon-24, 0.72 on Perov-5).

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
>>> unsound_reason(nacl) is None
True
>>> squeezed = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.3, 0, 0]])
>>> unsound_reason(squeezed)
'Na-Cl 1.69 Å < 0.8 x covalent radii sum 2.68 Å'
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "DEFAULT_FACTOR",
    "SoundnessTally",
    "atom_counts_of",
    "data_distance_factor",
    "covalent_radius",
    "min_distance_ratio",
    "reads_back",
    "unsound_reason",
]

#: Closest allowed pair distance, as a fraction of the sum of the two covalent radii.
DEFAULT_FACTOR = 0.8

_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)


def covalent_radius(z: int) -> float:
    """Covalent radius (Å) of element ``z`` (ASE's table; 1.5 Å where it has none)."""
    from ase.data import covalent_radii

    r = float(covalent_radii[int(z)]) if 0 < int(z) < len(covalent_radii) else 0.0
    return r if r > 0.05 else 1.5


def _pair_distances(structure: Structure) -> np.ndarray:
    """``(N, N)`` shortest distances over the 27 neighbouring images (an atom's own image
    on the diagonal). Exact for cells that are not extremely skewed, which the radius rule
    only makes stricter (a missed shorter image can only hide a clash, never invent one)."""
    lattice = structure.lattice.matrix
    frac = np.mod(structure.frac_coords, 1.0)
    diff = frac[None, :, None, :] - frac[:, None, None, :] + _SHIFTS[None, None, :, :]
    cart = diff @ lattice
    dist = np.linalg.norm(cart, axis=-1)
    n = len(structure)
    dist[np.arange(n), np.arange(n), 13] = np.inf  # shift (0, 0, 0) of an atom to itself
    return dist.min(axis=-1)


def min_distance_ratio(structure: Structure) -> float:
    """Smallest ``distance / (r_i + r_j)`` over all pairs and images (``inf`` for an empty
    cell). A crystal passes the rule when this is at least the factor (0.8)."""
    if len(structure) == 0:
        return float("inf")
    radii = np.array([covalent_radius(site.specie.Z) for site in structure])
    return float((_pair_distances(structure) / (radii[:, None] + radii[None, :])).min())


def reads_back(structure: Structure) -> bool:
    """True when pymatgen reads the CIF it writes for ``structure`` back with all its sites."""
    from pymatgen.core import Structure as PmgStructure
    from pymatgen.io.cif import CifWriter

    try:
        text = str(CifWriter(structure))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            back = PmgStructure.from_str(text, fmt="cif")
    except (ValueError, KeyError, IndexError, ZeroDivisionError):
        return False
    return len(back) == len(structure)


def unsound_reason(
    structure: Structure,
    factor: float = DEFAULT_FACTOR,
    atom_counts: Collection[int] | None = None,
    check_cif: bool = True,
) -> str | None:
    """``None`` for a sound crystal, else a one-line reason (the first problem found).

    Parameters
    ----------
    factor
        Every pair at least ``factor`` x the sum of covalent radii apart.
    atom_counts
        Cell sizes seen in the training data; ``None`` skips the check.
    check_cif
        Also write the CIF and read it back (about a millisecond a crystal).
    """
    volume = structure.volume
    if not np.isfinite(volume) or volume <= 0:
        return f"cell volume {volume:.3g} Å^3 is not positive"
    if atom_counts is not None and len(structure) not in atom_counts:
        return f"{len(structure)} atoms: a cell size not seen in the training data"
    if len(structure) and factor > 0:
        radii = np.array([covalent_radius(site.specie.Z) for site in structure])
        limit = factor * (radii[:, None] + radii[None, :])
        dist = _pair_distances(structure)
        ratio = dist / limit
        i, j = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
        if ratio[i, j] < 1.0:
            a, b = structure[int(i)].specie.symbol, structure[int(j)].specie.symbol
            return (
                f"{a}-{b} {dist[i, j]:.2f} Å < {factor:g} x covalent radii sum "
                f"{limit[i, j] / factor:.2f} Å"
            )
    if check_cif and not reads_back(structure):
        return "its CIF does not read back (sites merged or unreadable)"
    return None


@dataclass
class SoundnessTally:
    """How many draws were kept and why the others were redrawn (first word of the reason
    kept as the key: ``distance``, ``atoms``, ``cif``, ``volume``)."""

    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    def add(self, reason: str | None) -> bool:
        """Count one draw; True when it is sound."""
        if reason is None:
            self.kept += 1
            return True
        if "covalent" in reason:
            key = "distance"
        elif "atoms" in reason:
            key = "atom_count"
        elif "CIF" in reason:
            key = "cif"
        else:
            key = "volume"
        self.rejected[key] += 1
        return False

    @property
    def drawn(self) -> int:
        return self.kept + sum(self.rejected.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "drawn": self.drawn,
            "kept": self.kept,
            "rejected": dict(self.rejected),
            "sound_rate": self.kept / self.drawn if self.drawn else None,
        }


def data_distance_factor(
    structures: Iterable[Structure], cap: float = DEFAULT_FACTOR, quantile: float = 0.01
) -> float:
    """``cap``, or the ``quantile`` of the crystals' :func:`min_distance_ratio` (rounded
    down to 0.01) when that is lower: the radius rule a model trained on them is held to."""
    ratios = [min_distance_ratio(s) for s in structures]
    if not ratios:
        return cap
    q = float(np.quantile(np.asarray(ratios), quantile))
    return min(cap, float(np.floor(q * 100) / 100))


def atom_counts_of(structures: Iterable[Structure]) -> list[int]:
    """Sorted distinct cell sizes of ``structures``."""
    return sorted({len(s) for s in structures})
