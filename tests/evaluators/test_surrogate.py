from __future__ import annotations

import numpy as np
import pytest

from matloop.evaluators.surrogate import MIN_TRAIN, EnsembleSurrogate


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _data(rng: np.random.Generator, n: int, shift: float = 0.0):
    X = rng.uniform(0.0, 1.0, size=(n, 4)) + shift
    return X, X.sum(axis=1)


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    return 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


@pytest.mark.parametrize("kind", ["gbr", "rf", "et"])
def test_learns_sum_and_uncertainty_grows_away_from_data(rng, kind):
    X, y = _data(rng, 200)
    X_test, y_test = _data(rng, 60)
    X_far, _ = _data(rng, 60, shift=3.0)
    model = EnsembleSurrogate(n_members=5, seed=0, kind=kind).fit(X, y)
    assert model.is_fitted and model.n_train == 200
    mean, std = model.predict(X_test)
    assert mean.shape == std.shape == (60,)
    assert _r2(mean, y_test) > 0.8
    _, std_far = model.predict(X_far)
    assert np.median(std_far) > 3 * np.median(std)


def test_mlp_member_kind(rng):
    X, y = _data(rng, 80)
    model = EnsembleSurrogate(n_members=3, seed=1, kind="mlp").fit(X, y)
    X_test, y_test = _data(rng, 40)
    mean, std = model.predict(X_test)
    assert _r2(mean, y_test) > 0.8
    assert (std > 0).all()


def test_seeded_and_deterministic(rng):
    X, y = _data(rng, 40)
    a = EnsembleSurrogate(n_members=3, seed=3).fit(X, y).predict(X[:5])
    b = EnsembleSurrogate(n_members=3, seed=3).fit(X, y).predict(X[:5])
    c = EnsembleSurrogate(n_members=3, seed=4).fit(X, y).predict(X[:5])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_tiny_training_set_predicts_mean_with_large_std(rng):
    X, y = _data(rng, MIN_TRAIN - 1)
    model = EnsembleSurrogate(prior_std=1.0).fit(X, y)
    assert not model.is_fitted and model.n_train == MIN_TRAIN - 1
    mean, std = model.predict(rng.uniform(size=(3, 4)))
    np.testing.assert_allclose(mean, y.mean())
    np.testing.assert_allclose(std, 1.0)
    unfitted = EnsembleSurrogate()
    m0, s0 = unfitted.predict(np.zeros((2, 4)))
    assert (m0 == 0).all() and (s0 == 1.0).all() and unfitted.n_train == 0


def test_non_finite_inputs_handled(rng):
    X, y = _data(rng, 30)
    X[3, 1] = np.nan
    y[5] = np.nan
    model = EnsembleSurrogate(n_members=2).fit(X, y)
    assert model.n_train == 29
    mean, std = model.predict(np.array([[np.nan, 0.5, 0.5, 0.5]]))
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    with pytest.raises(ValueError, match="features"):
        model.predict(np.zeros((1, 3)))


def test_calibration_report(rng):
    X, y = _data(rng, 100)
    X_test, y_test = _data(rng, 50)
    model = EnsembleSurrogate(n_members=4).fit(X, y)
    report = model.calibration(X_test, y_test)
    assert report["n"] == 50
    assert 0.0 <= report["frac_within_1sigma"] <= report["frac_within_2sigma"] <= 1.0
    mean, _ = model.predict(X_test)
    assert report["mae"] == pytest.approx(np.abs(mean - y_test).mean())
    # A model that is not fitted has a huge std: everything falls within 1 sigma.
    tiny = EnsembleSurrogate(prior_std=10.0).fit(X[:2], y[:2]).calibration(X_test, y_test)
    assert tiny["frac_within_1sigma"] == 1.0


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"'svm'.*gbr, rf, et, mlp"):
        EnsembleSurrogate(kind="svm")  # type: ignore[arg-type]


def test_cross_validated_calibration_widens_an_overconfident_spread():
    # a noisy target: the bootstrap spread of the trees is far narrower than the errors
    rng = np.random.default_rng(3)
    X = rng.uniform(size=(300, 4))
    y = np.sin(4 * X[:, 0]) + X[:, 1] + rng.normal(0.0, 0.3, size=300)
    X_test = rng.uniform(size=(400, 4))
    y_test = np.sin(4 * X_test[:, 0]) + X_test[:, 1] + rng.normal(0.0, 0.3, size=400)
    raw = EnsembleSurrogate(n_members=6, seed=0, kind="et").fit(X, y)
    cal = EnsembleSurrogate(n_members=6, seed=0, kind="et", calibrate=True).fit(X, y)
    assert raw.std_scale == 1.0 and cal.std_scale > 1.5
    raw_report, cal_report = raw.calibration(X_test, y_test), cal.calibration(X_test, y_test)
    assert raw_report["frac_within_1sigma"] < 0.5  # overconfident as fitted
    assert 0.55 <= cal_report["frac_within_1sigma"] <= 0.85  # about 68 % after scaling
    assert cal_report["frac_within_2sigma"] >= 0.85
    assert cal_report["mae"] == pytest.approx(raw_report["mae"])  # the mean is untouched


def test_calibration_needs_enough_points():
    rng = np.random.default_rng(4)
    X = rng.uniform(size=(3 * MIN_TRAIN - 1, 2))
    model = EnsembleSurrogate(n_members=3, calibrate=True).fit(X, X.sum(axis=1))
    assert model.is_fitted and model.std_scale == 1.0
