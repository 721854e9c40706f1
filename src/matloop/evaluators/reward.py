"""Rewards for generator updates and the multi-objective acquisition score.

Reward of one proposed crystal (what ``learn`` hands to ``Generator.update`` and to the
REINFORCE step), a product of desirabilities in [0, 1] (Derringer-style: every objective must
be met for a high reward, none can compensate for another failing completely)::

    reward = validity * stability * window * novelty

* ``validity``: 0 when the proposal was rejected at screening (invalid or a duplicate) or its
  relaxation failed, else 1 — a rejected proposal teaches a policy what not to propose;
* ``stability = exp(-max(e_above_hull, 0) / stability_threshold)``: 1 on the hull, 1/e at the
  campaign's threshold, smoothly smaller above it;
* ``window``: 1 when the property lies in ``[min, max]``, else
  ``exp(-distance_to_window / softness)``; ``missing_property`` (0.5) when a window is asked
  for but the value is unknown; 1 when no window is asked for;
* ``novelty``: 1 for a novel and unique crystal, ``known_factor`` (0.5) when it matches a
  seed crystal or an earlier candidate.

Multi-objective acquisition (stability + property window) on surrogate predictions uses the
probability of a joint hit, the objectives taken as independent Gaussians::

    P(hit) = P(e_above_hull <= threshold) * P(min <= property <= max)

:func:`multiobjective_scores` returns ``-P(hit)`` (lower is better, like
:func:`matloop.evaluators.acquisition.scores`).

Examples
--------
>>> round(reward(0.0), 3), round(reward(0.1, stability_threshold=0.1), 3)
(1.0, 0.368)
>>> reward(0.0, valid=False)
0.0
>>> round(reward(0.0, property_value=3.0, window=(1.5, 2.5), softness=0.5), 3)
0.368
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

__all__ = [
    "multiobjective_scores",
    "probability_below",
    "probability_in_window",
    "reward",
    "window_desirability",
]


def window_desirability(
    value: float | None,
    window: tuple[float | None, float | None] | None,
    *,
    softness: float = 0.25,
    missing_property: float = 0.5,
) -> float:
    """1 inside ``window`` (either bound may be None), ``exp(-distance / softness)`` outside."""
    if window is None:
        return 1.0
    if value is None or not math.isfinite(value):
        return missing_property
    lo, hi = window
    below = (lo - value) if lo is not None else 0.0
    above = (value - hi) if hi is not None else 0.0
    distance = max(below, above, 0.0)
    return math.exp(-distance / max(softness, 1e-9))


def reward(
    e_above_hull: float | None,
    *,
    stability_threshold: float = 0.1,
    valid: bool = True,
    novel: bool = True,
    unique: bool = True,
    property_value: float | None = None,
    window: tuple[float | None, float | None] | None = None,
    softness: float = 0.25,
    missing_property: float = 0.5,
    known_factor: float = 0.5,
) -> float:
    """Reward in [0, 1] of one proposed crystal (see the module docstring for the terms)."""
    if not valid or e_above_hull is None or not math.isfinite(e_above_hull):
        return 0.0
    stability = math.exp(-max(e_above_hull, 0.0) / max(stability_threshold, 1e-3))
    prop = window_desirability(property_value, window, softness=softness,
                               missing_property=missing_property)  # fmt: skip
    novelty = 1.0 if (novel and unique) else known_factor
    return float(stability * prop * novelty)


def probability_below(mean: np.ndarray, std: np.ndarray, threshold: float) -> np.ndarray:
    """``P(y <= threshold)`` for ``y ~ N(mean, std)`` (a step function where std is 0)."""
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (threshold - mean) / std
    return np.where(std > 0, ndtr(z), (mean <= threshold).astype(float))


def probability_in_window(
    mean: np.ndarray, std: np.ndarray, low: float | None, high: float | None
) -> np.ndarray:
    """``P(low <= y <= high)`` for ``y ~ N(mean, std)``; a None bound is open."""
    mean = np.asarray(mean, dtype=float)
    upper = probability_below(mean, std, high) if high is not None else np.ones_like(mean)
    lower = probability_below(mean, std, low) if low is not None else np.zeros_like(mean)
    return np.clip(upper - lower, 0.0, 1.0)


def multiobjective_scores(
    e_mean: np.ndarray,
    e_std: np.ndarray,
    stability_threshold: float,
    prop_mean: np.ndarray | None = None,
    prop_std: np.ndarray | None = None,
    window: tuple[float | None, float | None] | None = None,
) -> np.ndarray:
    """``-P(stable) * P(in window)`` per candidate (lower is better; NaN becomes +inf).

    Without a window (or property predictions) this is ``-P(e_above_hull <= threshold)``,
    the probability-of-improvement form of the stability objective alone.
    """
    p = probability_below(e_mean, e_std, stability_threshold)
    if window is not None and prop_mean is not None and prop_std is not None:
        p = p * probability_in_window(prop_mean, prop_std, *window)
    return np.where(np.isnan(p), np.inf, -p)
