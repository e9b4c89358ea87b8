"""Binary metrics against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.model.metrics import (
    binary_metrics,
    brier_score,
    expected_calibration_error,
    false_alarm_rate,
    reliability_curve,
)

# Ten windows: four events (first four), six clean.
Y10 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P10 = [0.9, 0.8, 0.4, 0.6, 0.7, 0.2, 0.1, 0.3, 0.05, 0.55]
# At threshold 0.5 the flagged windows are 0.9, 0.8, 0.6 (events) and 0.7, 0.55 (clean):
#   tp = 3, fp = 2, fn = 1 (the 0.4 event), tn = 6 - 2 = 4
#   precision = 3/5 = 0.6, recall = 3/4 = 0.75, f1 = 2 * 0.6 * 0.75 / 1.35 = 0.9 / 1.35 = 2/3
#   false alarm rate = fp / (fp + tn) = 2/6 = 1/3

# ECE example with 5 bins [0, .2) [.2, .4) [.4, .6) [.6, .8) [.8, 1]; three are occupied:
#   bin 0: p = .1 .1 .1 .1,     y = 0 0 1 0 -> mean p 0.1,   observed 0.25, |gap| 0.15,  4 samples
#   bin 2: p = .5 .5,           y = 1 0     -> mean p 0.5,   observed 0.5,  |gap| 0,     2 samples
#   bin 4: p = .85 .95 1.0 .9,  y = 1 1 1 0 -> mean p 0.925, observed 0.75, |gap| 0.175, 4 samples
#   ECE = 4/10 * 0.15 + 2/10 * 0 + 4/10 * 0.175 = 0.06 + 0.07 = 0.13
Y_ECE = [0, 0, 1, 0, 1, 0, 1, 1, 1, 0]
P_ECE = [0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.85, 0.95, 1.0, 0.9]


def test_precision_recall_f1_and_counts_on_ten_windows() -> None:
    """Precision, recall, F1 and the confusion counts match the hand count at threshold 0.5."""
    m = binary_metrics(Y10, P10, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    assert (m["n"], m["positives"]) == (10, 4)
    assert m["precision"] == pytest.approx(0.6)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["threshold"] == 0.5
    assert all(isinstance(m[k], int) for k in ("tp", "fp", "fn", "tn", "n", "positives"))


def test_threshold_is_inclusive() -> None:
    """A probability equal to the threshold is flagged."""
    m = binary_metrics([1, 0], [0.7, 0.2], 0.7)
    assert m["tp"] == 1
    assert m["precision"] == 1.0


def test_binary_metrics_reports_ece_and_brier() -> None:
    """binary_metrics carries the same ECE (15 bins) and Brier score as the standalone functions."""
    m = binary_metrics(Y10, P10, 0.5)
    assert m["ece"] == pytest.approx(expected_calibration_error(Y10, P10, bins=15))
    assert m["brier"] == pytest.approx(brier_score(Y10, P10))


def test_brier_score_small_example() -> None:
    """Brier is the mean squared error between probability and outcome."""
    # (0.9-1)^2 + (0.2-0)^2 + (0.6-1)^2 + (0-0)^2 = 0.01 + 0.04 + 0.16 + 0 = 0.21; / 4 = 0.0525
    assert brier_score([1, 0, 1, 0], [0.9, 0.2, 0.6, 0.0]) == pytest.approx(0.0525)


def test_ece_three_occupied_bins() -> None:
    """ECE weights each occupied bin's |observed - predicted| gap by its share of samples."""
    assert expected_calibration_error(Y_ECE, P_ECE, bins=5) == pytest.approx(0.13)


def test_reliability_curve_uses_the_ece_bins() -> None:
    """The reliability curve lists occupied bins only, with 1.0 in the last bin, as ECE bins them."""
    mean_pred, observed, counts = reliability_curve(Y_ECE, P_ECE, bins=5)
    np.testing.assert_allclose(mean_pred, [0.1, 0.5, 0.925])
    np.testing.assert_allclose(observed, [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(counts, [4, 2, 4])
    assert np.sum(counts / 10 * np.abs(observed - mean_pred)) == pytest.approx(0.13)


def test_ece_is_zero_when_calibrated() -> None:
    """A bin whose mean prediction equals its observed frequency contributes no error."""
    # one bin [0.2, 0.4) with p = 0.25 x 4 and one event out of four -> gap 0
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4, bins=5) == pytest.approx(0.0)


def test_auprc_perfect_ranking_is_one() -> None:
    """Every event scored above every clean window gives average precision 1."""
    m = binary_metrics([0, 1, 0, 1, 1], [0.1, 0.8, 0.3, 0.9, 0.6], 0.5)
    assert m["auprc"] == pytest.approx(1.0)


def test_auprc_known_small_case() -> None:
    """AUPRC is step-wise average precision: sum over ranks of (recall gain) x precision."""
    # ranked by probability: 0.9 (event)  P = 1/1, R = 1/2
    #                        0.8 (clean)  P = 1/2, R = 1/2  (no recall gain)
    #                        0.7 (event)  P = 2/3, R = 2/2
    #                        0.1 (clean)  P = 2/4, R = 2/2  (no recall gain)
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    m = binary_metrics([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], 0.5)
    assert m["auprc"] == pytest.approx(5 / 6)


def test_no_predicted_positives_gives_zero_precision() -> None:
    """When nothing is flagged, precision and F1 are 0.0 rather than NaN."""
    m = binary_metrics(Y10, P10, 0.95)
    assert (m["tp"], m["fp"]) == (0, 0)
    assert m["precision"] == 0.0
    assert m["recall"] == 0.0
    assert m["f1"] == 0.0


def test_no_positives_gives_zero_recall_and_auprc_without_warning() -> None:
    """Without any event, recall and AUPRC are 0.0, no NaN and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([0, 0, 0, 0], [0.1, 0.6, 0.3, 0.9], 0.5)
    assert m["recall"] == 0.0
    assert m["auprc"] == 0.0
    assert m["precision"] == 0.0  # two flagged, both false alarms
    assert all(not math.isnan(v) for v in m.values())


@pytest.mark.parametrize(
    "call",
    [
        lambda: binary_metrics([1, 0, 1], [0.5, 0.5], 0.5),
        lambda: expected_calibration_error([1, 0], [0.5, 0.5, 0.5]),
        lambda: brier_score([1], [0.5, 0.5]),
        lambda: reliability_curve([1, 0, 1], [0.5]),
        lambda: false_alarm_rate([1, 0, 1], [True, False]),
    ],
)
def test_mismatched_lengths_raise(call) -> None:
    """Labels and probabilities (or flags) of different lengths raise ValueError."""
    with pytest.raises(ValueError, match="same length"):
        call()


@pytest.mark.parametrize("bad", [1.2, -0.1, float("nan")])
def test_probability_outside_unit_interval_raises(bad: float) -> None:
    """A probability below 0, above 1 or NaN raises ValueError in every probability-taking metric."""
    for fn in (brier_score, expected_calibration_error, reliability_curve):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            fn([1, 0], [0.5, bad])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_metrics([1, 0], [0.5, bad], 0.5)


def test_empty_input_raises() -> None:
    """Empty inputs raise ValueError instead of returning NaN."""
    with pytest.raises(ValueError, match="empty"):
        binary_metrics([], [], 0.5)
    with pytest.raises(ValueError, match="empty"):
        false_alarm_rate([], [])


def test_non_binary_labels_raise() -> None:
    """Labels other than 0/1 raise ValueError."""
    with pytest.raises(ValueError, match="0/1"):
        brier_score([0, 2], [0.5, 0.5])


def test_bad_bins_raise() -> None:
    """A bin count below 1 raises ValueError."""
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error([1], [0.5], bins=0)


def test_false_alarm_rate() -> None:
    """False alarm rate is the share of clean windows flagged; 0.0 when there are no clean windows."""
    flags = np.asarray(P10) >= 0.5
    assert false_alarm_rate(Y10, flags) == pytest.approx(1 / 3)
    assert false_alarm_rate([1, 1], [True, False]) == 0.0
    assert false_alarm_rate([True, False, False], [0, 0, 1]) == pytest.approx(0.5)


labelled_probabilities = st.integers(min_value=1, max_value=200).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=n, max_size=n),
    )
)


@given(labelled_probabilities, st.integers(min_value=1, max_value=30))
def test_ece_and_brier_are_in_unit_interval(data, bins: int) -> None:
    """ECE and Brier lie in [0, 1] for any valid labels and probabilities."""
    y, p = data
    assert 0.0 <= expected_calibration_error(y, p, bins=bins) <= 1.0
    assert 0.0 <= brier_score(y, p) <= 1.0


@given(labelled_probabilities, st.floats(min_value=0.0, max_value=1.0))
def test_binary_metrics_are_finite(data, threshold: float) -> None:
    """Every value binary_metrics returns is finite, and the counts add up to n."""
    y, p = data
    m = binary_metrics(y, p, threshold)
    assert all(math.isfinite(v) for v in m.values())
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == m["n"] == len(y)
    *_, counts = reliability_curve(y, p)
    assert counts.sum() == len(y)
