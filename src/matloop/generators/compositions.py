"""Charge-balanced compositions and oxidation-state assignments shared by the baselines.

Two questions the baseline generators ask over and over:

* which cell compositions of a chemical space are compositionally valid
  (:func:`charge_balanced_compositions`, used by random symmetric structures), and
* which oxidation states make a *decorated* template neutral when each site role is
  fixed to be a cation or an anion (:func:`role_oxidation_states`, used by prototype
  substitution, where putting O on the cation site of a perovskite must not pass just
  because the composition is neutral some other way).

Both follow :func:`matloop.chemistry.smact_valid`: SMACT oxidation states, charge
neutrality and Pauling electronegativity balance, all-metal alloys valid.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from math import gcd
from typing import TYPE_CHECKING

from matloop.chemistry import smact_valid

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Role of a site: a cation, an anion, or a metal atom of an intermetallic.
CATION, ANION, METAL = 1, -1, 0


@lru_cache(maxsize=256)
def _smact_element(symbol: str):
    """The SMACT element (imported lazily: ``import smact`` is slow)."""
    import smact

    return smact.Element(symbol)


@lru_cache(maxsize=256)
def is_alloy_element(symbol: str) -> bool:
    """True when SMACT counts ``symbol`` as a metal (all-metal compositions are valid)."""
    import smact

    return symbol in smact.metals


@lru_cache(maxsize=256)
def can_be_anion(symbol: str) -> bool:
    """True for non-metals (and metalloids) that have a negative SMACT oxidation state."""
    from pymatgen.core import Element

    return (not Element(symbol).is_metal) and any(
        ox < 0 for ox in _smact_element(symbol).oxidation_states or ()
    )


@lru_cache(maxsize=256)
def _role_states(symbol: str, role: int) -> tuple[int, ...]:
    """Oxidation states ``symbol`` may take on a site of the given role.

    Cations take any positive SMACT state. Anions take one state: the negative SMACT state
    that pymatgen lists as common (O²⁻, Cl⁻, N³⁻), else the most negative one, so that
    peroxides and other polyanions are not placed on the anion site of an ionic prototype.
    """
    from pymatgen.core import Element

    states = _smact_element(symbol).oxidation_states or ()
    if role == CATION:
        return tuple(sorted(ox for ox in states if ox > 0))
    if role == ANION:
        negative = sorted(ox for ox in states if ox < 0)
        if not negative or Element(symbol).is_metal:
            return ()
        common = [ox for ox in negative if ox in Element(symbol).common_oxidation_states]
        return (common[0] if common else negative[0],)
    raise ValueError(f"role must be CATION (1) or ANION (-1), got {role}")


@lru_cache(maxsize=65536)
def role_oxidation_states(
    symbols: tuple[str, ...], counts: tuple[int, ...], roles: tuple[int, ...]
) -> tuple[int, ...] | None:
    """One oxidation state per site role that makes a decorated ionic template valid.

    Parameters
    ----------
    symbols
        Element on each role (distinct elements).
    counts
        Number of sites of each role in the cell.
    roles
        :data:`CATION` or :data:`ANION` for each role.

    Returns
    -------
    tuple of int or None
        Oxidation states (same order as ``symbols``) such that the cell is charge neutral
        and every cation is less electronegative than every anion, or ``None`` when there
        is none. The assignment with the lowest cation states is returned first.

    Examples
    --------
    >>> role_oxidation_states(("Sr", "Ti", "O"), (1, 1, 3), (1, 1, -1))
    (2, 4, -2)
    >>> role_oxidation_states(("O", "Ti", "Sr"), (1, 1, 3), (1, 1, -1)) is None
    True
    """
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"each role needs its own element, got {symbols}")
    if CATION not in roles or ANION not in roles:
        return None
    enegs = [_smact_element(s).pauling_eneg for s in symbols]
    if any(en is None for en in enegs):
        return None
    max_cation = max(en for en, r in zip(enegs, roles, strict=True) if r == CATION)
    min_anion = min(en for en, r in zip(enegs, roles, strict=True) if r == ANION)
    if max_cation >= min_anion:
        return None
    choices = [_role_states(s, r) for s, r in zip(symbols, roles, strict=True)]
    for states in itertools.product(*choices):
        if sum(c * ox for c, ox in zip(counts, states, strict=True)) == 0:
            return tuple(states)
    return None


def _reduced(counts: Sequence[int]) -> tuple[int, ...]:
    divisor = 0
    for c in counts:
        divisor = gcd(divisor, c)
    return tuple(c // divisor for c in counts)


def charge_balanced_compositions(
    elements: Sequence[str],
    max_atoms: int,
    *,
    min_atoms: int = 1,
    min_elements: int = 2,
    max_elements: int = 3,
    alloys: bool = True,
) -> list[dict[str, int]]:
    """All cell compositions of a chemical space that pass :func:`~matloop.chemistry.smact_valid`.

    Parameters
    ----------
    elements
        The elements of the chemical space.
    max_atoms, min_atoms
        Bounds on the number of atoms in the cell (multiples of a formula unit count).
    min_elements, max_elements
        How many distinct elements a composition has.
    alloys
        Keep all-metal compositions (valid by definition); ``False`` keeps only ionic ones.

    Returns
    -------
    list of dict
        ``{element: count}`` per cell composition, elements in the order of ``elements``,
        in a deterministic order (by element subset, then counts).

    Examples
    --------
    >>> comps = charge_balanced_compositions(["Na", "Cl"], max_atoms=4)
    >>> comps
    [{'Na': 1, 'Cl': 1}, {'Na': 2, 'Cl': 2}]
    """
    from pymatgen.core import Composition

    elements = list(dict.fromkeys(elements))
    out: list[dict[str, int]] = []
    for k in range(max(min_elements, 1), min(max_elements, len(elements)) + 1):
        for subset in itertools.combinations(elements, k):
            if not alloys and all(is_alloy_element(s) for s in subset):
                continue
            valid: dict[tuple[int, ...], bool] = {}
            for counts in itertools.product(range(1, max_atoms - k + 2), repeat=k):
                total = sum(counts)
                if total > max_atoms or total < min_atoms:
                    continue
                reduced = _reduced(counts)
                if reduced not in valid:
                    valid[reduced] = smact_valid(
                        Composition(dict(zip(subset, reduced, strict=True)))
                    )
                if valid[reduced]:
                    out.append(dict(zip(subset, counts, strict=True)))
    return out
