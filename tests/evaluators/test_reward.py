"""The reward of a proposal and the multi-objective acquisition score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matloop.evaluators.acquisition import select
from matloop.evaluators.reward import (
    multiobjective_scores,
    probability_in_window,
    reward,
    window_desirability,
)


def test_stability_term():
    assert reward(0.0) == 1.0
    assert reward(-0.05) == 1.0  # below the hull counts as on it
    assert reward(0.1, stability_threshold=0.1) == pytest.approx(math.exp(-1))
    assert reward(0.05) > reward(0.2) > 0


def test_validity_novelty_and_missing_energy():
    assert reward(0.0, valid=False) == 0.0
    assert reward(None) == 0.0 and reward(float("nan")) == 0.0
    assert reward(0.0, novel=False) == 0.5 and reward(0.0, unique=False) == 0.5


def test_property_window():
    assert window_desirability(2.0, (1.5, 2.5)) == 1.0
    assert window_desirability(3.0, (1.5, 2.5), softness=0.5) == pytest.approx(math.exp(-1))
    assert window_desirability(1.0, (1.5, None), softness=0.5) == pytest.approx(math.exp(-1))
    assert window_desirability(None, (1.5, 2.5)) == 0.5
    assert window_desirability(9.0, None) == 1.0
    both = reward(0.1, stability_threshold=0.1, property_value=3.0, window=(1.5, 2.5),
                  softness=0.5)  # fmt: skip
    assert both == pytest.approx(math.exp(-2))  # a product of the desirabilities


def test_probability_in_window():
    p = probability_in_window(np.array([2.0, 2.0, 10.0]), np.array([0.0, 1e6, 1.0]), 1.5, 2.5)
    assert p[0] == 1.0 and p[1] < 1e-3 and p[2] < 1e-6


def test_multiobjective_prefers_joint_hits():
    # candidate 0: stable, gap out of window; 1: stable and in window; 2: in window, unstable
    e_mean, e_std = np.array([0.0, 0.02, 0.5]), np.full(3, 0.05)
    g_mean, g_std = np.array([0.2, 2.0, 2.0]), np.full(3, 0.3)
    score = multiobjective_scores(e_mean, e_std, 0.1, g_mean, g_std, (1.5, 2.5))
    assert list(select(score, np.zeros(3), 3, strategy="greedy")) == [1, 0, 2]
    alone = multiobjective_scores(e_mean, e_std, 0.1)
    assert alone[0] < alone[1] < alone[2]
