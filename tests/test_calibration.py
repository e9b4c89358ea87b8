"""Calibrators fitted on synthetic logits: outputs in [0, 1], monotone, and known parameters recovered."""

from __future__ import annotations

import functools
import json
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from detector.model.calibration import METHODS, apply, fit, sigmoid, validate
from detector.model.metrics import expected_calibration_error

# Sorted logits from -50 to 50, plus the extremes a network can emit (huge, and infinite in fp16).
GRID = np.r_[-np.inf, -1e6, np.linspace(-50.0, 50.0, 2001), 1e6, np.inf]


def _draw(seed: int, n: int, slope: float, intercept: float, spread: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z ~ N(0, spread^2) and labels ~ Bernoulli(sigmoid(slope * z + intercept))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, spread, n)
    y = (rng.random(n) < sigmoid(slope * z + intercept)).astype(int)
    return z, y


@functools.cache
def _fitted(method: str) -> dict[str, Any]:
    """``method`` fitted on 4000 logits whose true probability is sigmoid(2z - 1) (so sigmoid(z) is off)."""
    z, y = _draw(seed=1, n=4000, slope=2.0, intercept=-1.0)
    return fit(method, z, y)


@pytest.mark.parametrize("method", METHODS)
def test_apply_maps_into_unit_interval(method: str) -> None:
    """A fitted calibrator maps every logit, including +-1e6 and +-inf, to a probability in [0, 1]."""
    p = apply(_fitted(method), GRID)
    assert p.shape == GRID.shape
    assert np.all((p >= 0.0) & (p <= 1.0))  # also false for NaN


@pytest.mark.parametrize("method", METHODS)
def test_apply_is_monotone_non_decreasing(method: str) -> None:
    """A fitted calibrator never gives a larger logit a smaller probability."""
    p = apply(_fitted(method), GRID)
    assert np.all(np.diff(p) >= 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_validate_accepts_fitted_params(method: str) -> None:
    """Parameters from fit() pass validate() (what checkpoint loading runs)."""
    validate(_fitted(method))


@pytest.mark.parametrize("method", METHODS)
def test_params_are_plain_json_numbers(method: str) -> None:
    """fit() returns only str/float/list-of-float values, which survive a JSON round trip unchanged."""
    params = _fitted(method)
    for key, value in params.items():
        if key == "method":
            assert value == method
        elif isinstance(value, list):
            assert value
            assert all(type(v) is float for v in value)
        else:
            assert type(value) is float
    restored = json.loads(json.dumps(params))
    np.testing.assert_array_equal(apply(restored, GRID), apply(params, GRID))


def test_platt_recovers_slope_and_intercept() -> None:
    """Platt scaling on 20k labels drawn from sigmoid(2z - 1) finds a = 2 and b = -1 within 0.3."""
    z, y = _draw(seed=2, n=20_000, slope=2.0, intercept=-1.0, spread=1.0)
    params = fit("platt", z, y)
    assert params["a"] == pytest.approx(2.0, abs=0.3)
    assert params["b"] == pytest.approx(-1.0, abs=0.3)


def test_temperature_recovers_the_temperature() -> None:
    """Temperature scaling on 20k labels drawn from sigmoid(z / 3) finds T = 3 within 0.3."""
    z, y = _draw(seed=3, n=20_000, slope=1.0 / 3.0, intercept=0.0, spread=3.0)
    assert fit("temperature", z, y)["temperature"] == pytest.approx(3.0, abs=0.3)


def test_isotonic_reduces_calibration_error_on_held_out_data() -> None:
    """Isotonic calibration has a much lower ECE than the raw sigmoid on fresh data from the same source."""
    z, y = _draw(seed=4, n=4000, slope=2.0, intercept=-1.0)
    none_ece = expected_calibration_error(y, apply({"method": "none"}, z))
    iso_ece = expected_calibration_error(y, apply(_fitted("isotonic"), z))
    # sigmoid(z) against a truth of sigmoid(2z - 1): ECE 0.13 here (measured); isotonic fitted on
    # another 4000 samples (seed 1): 0.02.
    assert none_ece > 0.1
    assert iso_ece < none_ece / 2


@pytest.mark.parametrize(
    ("logits", "labels", "method", "match"),
    [
        pytest.param([0.1, 0.5, 2.0], [1, 1, 1], "platt", "both", id="one-class"),
        pytest.param([0.1, 0.5, 2.0], [0, 0, 0], "isotonic", "both", id="only-negatives"),
        pytest.param([0.1, 0.5, 2.0], [0, 1], "temperature", "as many", id="length-mismatch"),
        pytest.param([], [], "platt", "at least one", id="empty"),
        pytest.param([0.1, 0.5, 2.0], [0, 1, 1], "beta", "unknown", id="unknown-method"),
    ],
)
def test_fit_rejects_unusable_input(logits: list[float], labels: list[int], method: str, match: str) -> None:
    """fit() raises ValueError on a single class, mismatched lengths, no data or an unknown method."""
    with pytest.raises(ValueError, match=match):
        fit(method, np.array(logits), np.array(labels))


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"method": "isotonic", "x": [0.1, 0.5, 0.9], "y": [0.1, 0.6, 0.4]}, id="decreasing-y"),
        pytest.param({"method": "isotonic", "x": [0.1, 0.9, 0.5], "y": [0.1, 0.4, 0.6]}, id="decreasing-x"),
        pytest.param({"method": "isotonic", "x": [], "y": []}, id="isotonic-empty"),
        pytest.param({"method": "isotonic", "x": [0.1, 0.5], "y": [0.1]}, id="isotonic-lengths"),
        pytest.param({"method": "temperature", "temperature": 0.0}, id="temperature-zero"),
        pytest.param({"method": "temperature", "temperature": -2.0}, id="temperature-negative"),
        pytest.param({"method": "platt", "a": -1.0, "b": 0.0}, id="platt-negative-slope"),
        pytest.param({"method": "platt", "a": 0.0, "b": 0.0}, id="platt-zero-slope"),
        pytest.param({"method": "beta", "a": 1.0}, id="unknown-method"),
        pytest.param({"a": 1.0}, id="no-method"),
    ],
)
def test_validate_rejects_broken_params(params: dict[str, Any]) -> None:
    """validate() raises ValueError on non-monotone, non-positive-scale or unknown calibrators."""
    with pytest.raises(ValueError, match=r"must|unknown"):
        validate(params)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"method": "platt", "a": 1.0, "b": float("nan")}, id="platt-nan-intercept"),
        pytest.param({"method": "platt", "a": float("inf"), "b": 0.0}, id="platt-inf-slope"),
        pytest.param({"method": "isotonic", "x": [0.0, float("nan")], "y": [0.0, 1.0]}, id="isotonic-nan"),
    ],
)
def test_validate_rejects_non_finite_params(params: dict[str, Any]) -> None:
    """validate() rejects NaN or infinite parameters, which would make apply() return NaN probabilities."""
    with pytest.raises(ValueError, match=r"must|finite"):
        validate(params)


def test_apply_rejects_unknown_method() -> None:
    """apply() raises ValueError for a method it does not know."""
    with pytest.raises(ValueError, match="unknown"):
        apply({"method": "beta"}, np.zeros(3))


def test_sigmoid_is_stable_at_extremes() -> None:
    """sigmoid(+-1000) is exactly 1 and 0 with no overflow, invalid value or warning."""
    # Underflow is left out on purpose: exp(-1000) rounding to 0.0 is the correct float result (numpy ignores
    # underflow by default), and it is what makes sigmoid(-1000) exactly 0.
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        p = sigmoid(np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0]))
    assert p[0] == 0.0
    assert p[2] == 0.5
    assert p[4] == 1.0
    assert 0.0 < p[1] < 1e-17  # sigmoid(-40) = e^-40 / (1 + e^-40) ~ 4.2e-18, not rounded to 0
    assert not np.any(np.isnan(p))


def test_sigmoid_accepts_a_scalar() -> None:
    """sigmoid of a 0-d input returns the same value as in an array."""
    assert float(sigmoid(np.float64(2.0))) == float(sigmoid(np.array([2.0]))[0])


_logit = st.floats(-60.0, 60.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(
    pairs=st.lists(st.tuples(_logit, st.integers(0, 1)), min_size=2, max_size=40),
    a=_logit,
    b=_logit,
)
def test_isotonic_map_is_monotone_for_any_fit(pairs: list[tuple[float, int]], a: float, b: float) -> None:
    """For any isotonic fit and any logits a <= b, apply(a) <= apply(b)."""
    z = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    assume(0 < y.sum() < len(y))
    params = fit("isotonic", z, y)
    lo, hi = sorted((a, b))
    p = apply(params, np.array([lo, hi]))
    assert p[0] <= p[1]


def test_isotonic_keeps_the_ranking_of_the_scores() -> None:
    """A step-function isotonic map would tie every score inside a block; ours stays strictly increasing,
    so calibrating never lowers the ranking metrics (AUPRC) of the raw scores."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(1.5 * z - 1)))).astype(int)
    params = fit("isotonic", z, y)
    grid = np.sort(rng.normal(0, 3, 5000))
    p = apply(params, grid)
    assert np.all(np.diff(p) > 0)
    from sklearn.isotonic import IsotonicRegression

    steps = IsotonicRegression(out_of_bounds="clip").fit(1 / (1 + np.exp(-z)), y).predict(1 / (1 + np.exp(-grid)))
    assert np.abs(p - steps).max() < 0.1  # still the isotonic fit, drawn through block centres
    assert len(np.unique(steps)) < len(grid) / 10  # (the step function really does tie most of them)
