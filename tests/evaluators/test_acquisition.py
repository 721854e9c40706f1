from __future__ import annotations

import numpy as np
import pytest

from matloop.evaluators.acquisition import STRATEGIES, expected_improvement, select

MEAN = np.array([0.30, 0.10, 0.20, 0.10, 0.50])
STD = np.array([0.00, 0.00, 0.15, 0.00, 0.40])


def test_greedy_lowest_mean_ties_by_index():
    np.testing.assert_array_equal(select(MEAN, STD, 3, strategy="greedy"), [1, 3, 2])


def test_ucb_is_lower_confidence_bound():
    # mean - std: [0.30, 0.10, 0.05, 0.10, 0.10]
    np.testing.assert_array_equal(select(MEAN, STD, 2, strategy="ucb", beta=1.0), [2, 1])
    # beta = 2: index 4 -> -0.30 is best, then 2 -> -0.10
    np.testing.assert_array_equal(select(MEAN, STD, 2, strategy="ucb", beta=2.0), [4, 2])
    # beta = 0 is greedy
    np.testing.assert_array_equal(
        select(MEAN, STD, 5, strategy="ucb", beta=0.0), select(MEAN, STD, 5, strategy="greedy")
    )
    # Ties on the score (1, 3, 4 all at 0.10) fall back to the lower mean, then the index.
    np.testing.assert_array_equal(select(MEAN, STD, 5, strategy="ucb")[1:4], [1, 3, 4])


def test_expected_improvement_values():
    ei = expected_improvement(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]), best=0.5)
    assert ei[0] == pytest.approx(0.5)  # certain improvement of 0.5
    assert ei[1] == 0.0  # certainly worse
    # mean 0, std 1, best 0.5: 0.5 * Phi(0.5) + phi(0.5)
    assert ei[2] == pytest.approx(0.5 * 0.691462 + 0.352065, abs=1e-5)


def test_ei_prefers_uncertain_candidate_when_means_tie():
    mean = np.array([0.2, 0.2, 0.0])
    std = np.array([0.01, 0.3, 0.0])
    # best defaults to min(mean) = 0. Index 1 may still improve on it; index 0 (20 sigma away)
    # and index 2 (certain, no improvement) have no practical EI and tie, broken by the mean.
    np.testing.assert_array_equal(select(mean, std, 3, strategy="ei"), [1, 2, 0])
    assert expected_improvement(mean, std, 0.0)[1] == pytest.approx(0.04534, abs=1e-4)
    np.testing.assert_array_equal(select(mean, std, 1, strategy="ei", best=1.0), [2])


def test_thompson_is_seeded_and_follows_the_distribution():
    a = select(MEAN, STD, 3, strategy="thompson", rng=7)
    b = select(MEAN, STD, 3, strategy="thompson", rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        select(MEAN, STD, 3, strategy="thompson"), select(MEAN, STD, 3, strategy="thompson")
    )
    # Zero std: a Thompson draw is the mean itself.
    np.testing.assert_array_equal(
        select(MEAN, np.zeros(5), 5, strategy="thompson", rng=3), [1, 3, 2, 0, 4]
    )
    # Over many draws the wide candidate 4 sometimes wins, the certain worst (0) never does.
    rng = np.random.default_rng(0)
    wins = [select(MEAN, STD, 1, strategy="thompson", rng=rng)[0] for _ in range(300)]
    assert 4 in wins and 0 not in wins


def test_random_selects_distinct_indices():
    picked = select(MEAN, STD, 3, strategy="random", rng=1)
    assert len(set(picked.tolist())) == 3
    assert set(picked.tolist()) <= set(range(5))
    draws = {tuple(select(MEAN, STD, 2, strategy="random", rng=s)) for s in range(20)}
    assert len(draws) > 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_k_bounds(strategy):
    everything = select(MEAN, STD, 10, strategy=strategy)
    assert sorted(everything.tolist()) == [0, 1, 2, 3, 4]
    assert select(MEAN, STD, 0, strategy=strategy).size == 0
    assert select(np.array([]), np.array([]), 3, strategy=strategy).size == 0


def test_nan_ranks_last():
    mean = np.array([np.nan, 0.2, 0.1])
    std = np.array([0.1, 0.1, 0.1])
    for strategy in ("greedy", "ucb", "ei"):
        assert select(mean, std, 3, strategy=strategy)[-1] == 0


def test_unknown_strategy_and_bad_inputs():
    with pytest.raises(ValueError, match=r"'pi'.*greedy, ucb, ei, thompson, random"):
        select(MEAN, STD, 2, strategy="pi")
    with pytest.raises(ValueError, match="shape"):
        select(MEAN, STD[:3], 2)
    with pytest.raises(ValueError, match="non-negative"):
        select(MEAN, -STD - 1, 2)
