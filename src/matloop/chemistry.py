"""Composition-level chemistry shared by generators and evaluators (pure functions).

Compositional validity follows the definition used in the crystal generative-model
literature (CDVAE's ``smact_validity``): a composition is valid when some assignment of
SMACT oxidation states makes it charge neutral and passes the Pauling electronegativity
test; single elements and all-metal alloys count as valid.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from math import gcd
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.core import Composition


@lru_cache(maxsize=4096)
def _smact_valid_counts(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    import smact
    from smact.screening import pauling_test

    if len(set(symbols)) == 1:
        return True
    if all(s in smact.metals for s in symbols):
        return True
    space = smact.element_dictionary(symbols)
    elements = [space[s] for s in symbols]
    electronegativities = [el.pauling_eneg for el in elements]
    if any(en is None for en in electronegativities):
        return False
    stoichs = [(c,) for c in counts]
    for ox_states in itertools.product(*(el.oxidation_states for el in elements)):
        # SMACT 4 returns the list of neutral ratios (empty when none).
        if smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=max(counts)) and (
            pauling_test(ox_states, electronegativities)
        ):
            return True
    return False


def reduced_counts(composition: Composition) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols (sorted) and integer counts of the reduced formula."""
    items = sorted(composition.get_el_amt_dict().items())
    symbols = tuple(s for s, _ in items)
    counts = [round(a) for _, a in items]
    if any(abs(a - c) > 1e-6 for (_, a), c in zip(items, counts, strict=True)):
        raise ValueError(f"composition {composition} has fractional occupancies")
    divisor = 0
    for c in counts:
        divisor = gcd(divisor, c)
    return symbols, tuple(c // max(divisor, 1) for c in counts)


def smact_valid(composition: Composition) -> bool:
    """Charge neutrality plus electronegativity balance (CDVAE's compositional validity)."""
    symbols, counts = reduced_counts(composition)
    return _smact_valid_counts(symbols, counts)
