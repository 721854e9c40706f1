"""How the screen treats labels (relaxed e_above_hull the surrogate learns from)."""

from __future__ import annotations

__all__ = ["LABEL_DECIMALS", "MIN_TRAINING_POINTS"]

#: Fewer labelled crystals than this and the surrogate is not trusted: selection is random.
MIN_TRAINING_POINTS = 6
#: Labels are rounded to this many decimals (1 meV/atom, far below a potential's error)
#: before the surrogate sees them: with a handful of labels its trees pick between
#: near-equal splits, and CHGNet energies differ by ~1e-6 eV between CPUs (BLAS), which
#: was enough to change which candidates a round selects.
LABEL_DECIMALS = 3
