"""Composition vectors over a fixed element set (pure functions, numpy only).

Three encodings of one composition, all over the element list the encoder was built with:

* ``counts``: bag of atoms, ``v[i]`` = number of atoms of element ``i`` in the cell;
* ``fractional``: the counts divided by their sum (what composition-only models often use);
* ``onehot``: a ``(n_elements, max_count + 1)`` matrix whose row ``i`` one-hot encodes the count
  of element ``i`` (MatGAN's representation; a softmax per row makes it easy to learn).

Examples
--------
>>> enc = CompositionEncoder(["Ba", "O", "Ti"])
>>> enc.encode("BaTiO3")
array([1., 3., 1.])
>>> enc.decode(enc.encode("BaTiO3", kind="fractional"), kind="fractional").reduced_formula
'BaTiO3'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pymatgen.core import Composition, Structure

Kind = Literal["counts", "fractional"]


def _as_composition(composition: Composition | str | dict) -> Composition:
    from pymatgen.core import Composition

    return composition if isinstance(composition, Composition) else Composition(composition)


def elements_of(structures: Iterable[Structure | Composition]) -> list[str]:
    """The sorted (by atomic number) element symbols present in ``structures``."""
    from pymatgen.core import Element

    symbols: set[str] = set()
    for item in structures:
        comp = item.composition if hasattr(item, "composition") else item
        symbols.update(el.symbol for el in comp.elements)
    return sorted(symbols, key=lambda s: Element(s).Z)


@dataclass
class CompositionEncoder:
    """Encode and decode compositions over a fixed, ordered element set.

    Parameters
    ----------
    elements
        Element symbols; their order fixes the vector layout.
    max_count
        Largest count of one element the ``onehot`` encoding can hold.
    max_atoms
        Largest cell the ``fractional`` decoder will consider when it looks for integer counts.
    """

    elements: Sequence[str]
    max_count: int = 8
    max_atoms: int = 20

    def __post_init__(self) -> None:
        self.elements = list(self.elements)
        if len(set(self.elements)) != len(self.elements):
            raise ValueError("elements must be distinct")
        self._index = {s: i for i, s in enumerate(self.elements)}

    @property
    def n_elements(self) -> int:
        """Length of the ``counts`` / ``fractional`` vectors."""
        return len(self.elements)

    def encode(self, composition: Composition | str | dict, kind: Kind = "counts") -> np.ndarray:
        """Vector of counts (or fractions) over ``elements``.

        Raises
        ------
        ValueError
            If the composition holds an element outside the encoder's element set.
        """
        comp = _as_composition(composition)
        vec = np.zeros(self.n_elements)
        for el, amt in comp.get_el_amt_dict().items():
            if el not in self._index:
                raise ValueError(f"element {el} is not in the encoder's element set")
            vec[self._index[el]] = amt
        if kind == "fractional":
            return vec / vec.sum()
        if kind != "counts":
            raise ValueError(f"unknown kind {kind!r}; use 'counts' or 'fractional'")
        return vec

    def decode(
        self,
        vector: np.ndarray,
        kind: Kind = "counts",
        n_atoms: int | None = None,
        tol: float = 2e-3,
    ) -> Composition:
        """Composition from a (possibly noisy) vector.

        ``counts`` vectors are rounded to integers (negatives clipped to zero). ``fractional``
        vectors are scaled to ``n_atoms`` atoms when given, else to the smallest cell (up to
        ``max_atoms``) whose integer counts reproduce every fraction within ``tol`` (or, failing
        that, the cell that reproduces them best).
        """
        from pymatgen.core import Composition

        vec = np.clip(np.asarray(vector, dtype=float), 0.0, None)
        if kind == "fractional":
            if vec.sum() <= 0:
                raise ValueError("cannot decode an all-zero fractional vector")
            frac = vec / vec.sum()
            if n_atoms is None:
                errors = []
                for n in range(1, self.max_atoms + 1):
                    counts = np.round(frac * n)
                    err = np.abs(counts / max(counts.sum(), 1) - frac).max()
                    errors.append(err if counts.sum() > 0 else np.inf)
                    if err < tol:
                        break
                n_atoms = int(np.argmin(errors)) + 1
            vec = frac * n_atoms
        elif kind != "counts":
            raise ValueError(f"unknown kind {kind!r}; use 'counts' or 'fractional'")
        counts = np.round(vec).astype(int)
        return Composition({self.elements[i]: int(c) for i, c in enumerate(counts) if c > 0})

    def encode_onehot(self, composition: Composition | str | dict) -> np.ndarray:
        """``(n_elements, max_count + 1)`` one-hot matrix of per-element counts."""
        counts = self.encode(composition).round().astype(int)
        if counts.max() > self.max_count:
            raise ValueError(f"a count exceeds max_count={self.max_count}")
        mat = np.zeros((self.n_elements, self.max_count + 1))
        mat[np.arange(self.n_elements), counts] = 1.0
        return mat

    def decode_onehot(self, matrix: np.ndarray) -> Composition:
        """Composition from a one-hot (or probability / logit) count matrix: argmax per row."""
        counts = np.asarray(matrix).argmax(axis=-1)
        return self.decode(counts.astype(float))
