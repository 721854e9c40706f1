"""A bandit over generators: share each round's proposals by who has been finding hits.

Each generator is an arm; a proposal is a pull, and it pays when the proposal becomes a
hit (novel, unique, within the stability threshold). With ``h`` hits in ``n`` proposals a
generator's hit rate has the posterior ``Beta(1 + h, 1 + n - h)``. Thompson sampling for a
batch gives each generator the share of posterior draws in which it is the best, after a
``floor`` every generator keeps (so a generator that starts slowly, e.g. a model that learns,
is still tried). Pure numpy: the caller passes the counts and a seeded random generator,
so the same history and seed give the same allocation.

Examples
--------
>>> import numpy as np
>>> shares = thompson_shares([8, 0], [40, 40], floor=0.1, rng=np.random.default_rng(0))
>>> bool(shares[0] > 0.85), float(round(shares.sum(), 6))
(True, 1.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["split_budget", "thompson_shares"]


def thompson_shares(
    hits: Sequence[int],
    trials: Sequence[int],
    *,
    floor: float,
    rng: np.random.Generator,
    draws: int = 4000,
    exhausted: Sequence[bool] | None = None,
) -> np.ndarray:
    """Share of proposals per generator: ``floor`` each, the rest by P(best arm).

    Parameters
    ----------
    hits, trials
        Hits and proposals of each generator so far (``hits <= trials``).
    floor
        Smallest share of each generator; ``floor * len(hits) <= 1``.
    rng
        Seeded random generator (the allocation is reproducible).
    draws
        Posterior draws used to estimate each generator's probability of being best.
    exhausted
        Generators that could not deliver what they were last asked (an enumeration used
        up): they keep the floor but leave the race for the rest, since a high past hit
        rate says nothing of proposals they no longer have. Ignored when all are.

    >>> rng = np.random.default_rng(0)
    >>> thompson_shares([8, 1], [10, 40], floor=0.1, rng=rng, exhausted=[True, False]).tolist()
    [0.1, 0.9]
    """
    hits = np.asarray(hits, dtype=float)
    trials = np.asarray(trials, dtype=float)
    k = len(hits)
    if k == 0:
        return np.zeros(0)
    if np.any(hits > trials) or np.any(hits < 0):
        raise ValueError(f"hits must lie between 0 and trials (hits {hits}, trials {trials})")
    if floor * k > 1 + 1e-9:
        raise ValueError(f"floor {floor} x {k} generators exceeds 1")
    theta = rng.beta(1 + hits, 1 + trials - hits, size=(draws, k))
    if exhausted is not None and not all(exhausted):
        theta[:, np.asarray(exhausted, dtype=bool)] = -np.inf
    best = np.bincount(theta.argmax(axis=1), minlength=k) / draws
    return floor + (1 - floor * k) * best


def split_budget(total: int, shares: Sequence[float]) -> np.ndarray:
    """``total`` proposals split by ``shares`` (largest remainders get the leftovers).

    >>> split_budget(10, [0.55, 0.45]).tolist()
    [6, 4]
    """
    shares = np.asarray(shares, dtype=float)
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts
