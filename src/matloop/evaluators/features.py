"""Fixed-length crystal features for the surrogate models (offline, deterministic, ~ms each).

Composition features are Magpie-like: for each element property, the fraction-weighted mean
and standard deviation and the minimum and maximum over the elements present. Properties come
from pymatgen's bundled periodic table (no network); a property an element lacks (e.g. the
electronegativity of He) takes the median of that property over elements 1–103, so features
are always finite.

Structure features: volume per atom, density, number of sites, number of elements, space group
number (``SpacegroupAnalyzer``, ``symprec=0.1``; 1 when it fails) and the minimum and mean
nearest-neighbour distance.

Examples
--------
>>> from pymatgen.core import Lattice, Structure
>>> nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
>>> X = featurize([nacl])
>>> X.shape == (1, len(feature_names()))
True
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from matloop.evaluators.validity import nearest_neighbour_distances

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["ELEMENT_PROPERTIES", "STRUCTURE_FEATURES", "feature_names", "featurize"]

logger = logging.getLogger(__name__)

#: Element properties used for the composition statistics, in feature order.
ELEMENT_PROPERTIES: tuple[str, ...] = (
    "Z",
    "row",
    "group",
    "mendeleev_no",
    "X",
    "atomic_radius",
    "atomic_mass",
    "melting_point",
    "molar_volume",
    "average_ionic_radius",
    "block",
    "mean_oxidation_state",
    "max_oxidation_state",
    "min_oxidation_state",
)
_STATS = ("mean", "std", "min", "max")
#: Structure-level features, in feature order (after the composition features).
STRUCTURE_FEATURES: tuple[str, ...] = (
    "volume_per_atom",
    "density",
    "n_sites",
    "n_elements",
    "spacegroup_number",
    "min_nn_distance",
    "mean_nn_distance",
)
_BLOCKS = {"s": 0.0, "p": 1.0, "d": 2.0, "f": 3.0}
_MAX_Z = 103


def feature_names() -> list[str]:
    """Names of the columns returned by :func:`featurize`, in order."""
    comp = [f"{stat}_{prop}" for prop in ELEMENT_PROPERTIES for stat in _STATS]
    return comp + list(STRUCTURE_FEATURES)


def _raw_property(element, prop: str) -> float:
    try:
        if prop == "block":
            return _BLOCKS.get(element.block, math.nan)
        if prop.endswith("oxidation_state"):
            states = element.common_oxidation_states or ()
            if not states:
                return 0.0
            return float({"mean": np.mean, "max": max, "min": min}[prop.split("_")[0]](states))
        value = getattr(element, prop)
        return math.nan if value is None else float(value)
    except Exception:  # noqa: BLE001 - missing data in the periodic table
        return math.nan


@lru_cache(maxsize=1)
def _element_table() -> tuple[np.ndarray, np.ndarray]:
    """(table of shape (104, n_props) indexed by Z, per-property medians)."""
    from pymatgen.core import Element

    table = np.full((_MAX_Z + 1, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data
        for z in range(1, _MAX_Z + 1):
            el = Element.from_Z(z)
            table[z] = [_raw_property(el, p) for p in ELEMENT_PROPERTIES]
    medians = np.nanmedian(table[1:], axis=0)
    rows = np.where(np.isnan(table), medians, table)
    rows[0] = medians  # Z = 0: unknown / dummy species
    return rows, medians


def _composition_features(structure: Structure) -> np.ndarray:
    table, _ = _element_table()
    amounts = structure.composition.element_composition.get_el_amt_dict()
    zs, weights = [], []
    from pymatgen.core import Element

    for symbol, amount in sorted(amounts.items()):
        try:
            z = Element(symbol).Z
        except ValueError:
            z = 0
        zs.append(z if z <= _MAX_Z else 0)
        weights.append(amount)
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    values = table[np.asarray(zs)]  # (n_el, n_props)
    mean = w @ values
    std = np.sqrt(np.maximum(w @ (values - mean) ** 2, 0.0))
    stats = np.stack([mean, std, values.min(axis=0), values.max(axis=0)], axis=1)
    return stats.reshape(-1)  # property-major, matching feature_names()


def _spacegroup_number(structure: Structure) -> int:
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        return int(SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number())
    except Exception as exc:  # noqa: BLE001 - spglib fails on some generated structures
        logger.debug("space group detection failed: %s", exc)
        return 1


def _density(structure: Structure) -> float:
    try:
        return float(structure.density)
    except Exception:  # noqa: BLE001 - e.g. dummy species without a mass
        return 0.0


def _structure_features(structure: Structure) -> np.ndarray:
    n = max(len(structure), 1)
    volume = float(structure.volume)
    try:
        nn = nearest_neighbour_distances(structure)
        nn_min, nn_mean = float(nn.min()), float(nn.mean())
    except Exception:  # noqa: BLE001
        nn_min = nn_mean = 0.0
    return np.array(
        [
            volume / n,
            _density(structure),
            float(n),
            float(len(structure.composition.elements)),
            float(_spacegroup_number(structure)),
            nn_min,
            nn_mean,
        ]
    )


def featurize(structures: Sequence[Structure]) -> np.ndarray:
    """Feature matrix of shape ``(len(structures), len(feature_names()))``.

    Deterministic, finite (non-finite values are replaced by 0) and offline.
    """
    n_features = len(ELEMENT_PROPERTIES) * len(_STATS) + len(STRUCTURE_FEATURES)
    out = np.zeros((len(structures), n_features))
    for i, structure in enumerate(structures):
        out[i] = np.concatenate([_composition_features(structure), _structure_features(structure)])
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
