"""Acquisition functions: which candidates to relax next, for a target to *minimise*.

The target is typically the predicted energy above hull, so lower is better everywhere here:

* ``greedy``: lowest predicted mean.
* ``ucb``: lowest ``mean - beta * std``. For minimisation the optimistic bound is the *lower*
  confidence bound (LCB); the name ``ucb`` is kept because that is what the strategy is
  called in the literature and in campaign configs.
* ``ei``: highest expected improvement below ``best`` (the best value observed so far; the
  lowest predicted mean when not given).
* ``thompson``: lowest value of one draw from ``N(mean, std)`` per candidate.
* ``random``: a uniformly random subset.

Ties are broken deterministically (by the predicted mean, then by index), NaN predictions
rank last, and asking for more candidates than exist returns all of them.

Examples
--------
>>> import numpy as np
>>> select(np.array([0.3, 0.1, 0.2]), np.array([0.0, 0.0, 0.5]), 2, strategy="greedy")
array([1, 2])
>>> select(np.array([0.3, 0.1, 0.2]), np.array([0.0, 0.0, 0.5]), 2, strategy="ucb", beta=1.0)
array([2, 1])
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

__all__ = ["STRATEGIES", "best_k", "expected_improvement", "scores", "select"]

STRATEGIES: tuple[str, ...] = ("greedy", "ucb", "ei", "thompson", "random")


def _check(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=float).ravel()
    std = np.asarray(std, dtype=float).ravel()
    if mean.shape != std.shape:
        raise ValueError(f"mean {mean.shape} and std {std.shape} differ in shape")
    if np.any(std < 0):
        raise ValueError("std must be non-negative")
    return mean, std


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """Expected improvement below ``best`` for a minimisation target.

    ``EI = (best - mean) * Phi(z) + std * phi(z)`` with ``z = (best - mean) / std``; for
    ``std == 0`` it is ``max(best - mean, 0)``.
    """
    mean, std = _check(mean, std)
    improvement = best - mean
    ei = np.where(np.isfinite(improvement), np.maximum(improvement, 0.0), 0.0)
    pos = (std > 0) & np.isfinite(improvement) & np.isfinite(std)
    z = improvement[pos] / std[pos]
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2.0 * np.pi)
    ei[pos] = improvement[pos] * ndtr(z) + std[pos] * pdf
    return np.maximum(ei, 0.0)


def scores(
    mean: np.ndarray,
    std: np.ndarray,
    *,
    strategy: str = "ucb",
    beta: float = 1.0,
    rng: np.random.Generator | int | None = None,
    best: float | None = None,
) -> np.ndarray:
    """Per-candidate score, lower is better (EI is returned negated); NaN becomes +inf."""
    mean, std = _check(mean, std)
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown acquisition strategy {strategy!r}; known: {', '.join(STRATEGIES)}"
        )
    if strategy == "greedy":
        out = mean.copy()
    elif strategy == "ucb":
        out = mean - beta * std
    elif strategy == "ei":
        finite = np.isfinite(mean)
        if best is None:
            best = float(mean[finite].min()) if finite.any() else 0.0
        out = -expected_improvement(np.where(finite, mean, np.inf), np.nan_to_num(std), best)
        out[~finite] = np.inf
    elif strategy == "thompson":
        out = _rng(rng).normal(mean, np.nan_to_num(std))
    else:  # random
        out = _rng(rng).permutation(mean.shape[0]).astype(float)
    # Round away floating-point noise so that equal scores (e.g. 0.5 - 0.4 and 0.1) tie and
    # the deterministic tie-break applies.
    return np.where(np.isnan(out), np.inf, np.round(out, 12))


def select(
    mean: np.ndarray,
    std: np.ndarray,
    k: int,
    *,
    strategy: str = "ucb",
    beta: float = 1.0,
    rng: np.random.Generator | int | None = None,
    best: float | None = None,
) -> np.ndarray:
    """Indices of the ``k`` candidates to evaluate next, best first.

    Parameters
    ----------
    mean, std
        Surrogate prediction and uncertainty per candidate (same length; std >= 0).
    k
        How many to pick; ``k >= len(mean)`` returns every index (ranked), ``k <= 0`` none.
    strategy
        One of :data:`STRATEGIES` (see the module docstring).
    beta
        Exploration weight of ``ucb`` (``mean - beta * std``).
    rng
        Generator or seed for ``thompson`` and ``random``; None means seed 0 (deterministic).
    best
        Incumbent for ``ei``; defaults to the lowest predicted mean.

    Returns
    -------
    numpy.ndarray
        Integer indices into ``mean``.

    Raises
    ------
    ValueError
        For an unknown strategy (the message lists the known ones) or mismatched inputs.
    """
    score = scores(mean, std, strategy=strategy, beta=beta, rng=rng, best=best)
    return best_k(score, k, tie_break=mean)


def best_k(score: np.ndarray, k: int, *, tie_break: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` lowest scores, ties broken by ``tie_break`` (lower first), then
    by index; NaN scores rank last. Used by :func:`select` and for scores computed elsewhere
    (e.g. :func:`matloop.evaluators.reward.multiobjective_scores`).

    Examples
    --------
    >>> best_k(np.array([0.2, -0.5, 0.2, np.nan]), 3, tie_break=np.array([0, 0, -1, 0]))
    array([1, 2, 0])
    """
    score = np.where(np.isnan(score := np.asarray(score, dtype=float).ravel()), np.inf, score)
    n = score.shape[0]
    k = max(0, min(int(k), n))
    tie = np.zeros(n) if tie_break is None else np.asarray(tie_break, dtype=float).ravel()
    order = np.lexsort((np.arange(n), np.nan_to_num(tie, nan=np.inf), score))
    return order[:k].astype(np.intp)
