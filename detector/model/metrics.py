"""Binary detection metrics over per-window (or per-step) labels and calibrated probabilities.

Pure numpy (scikit-learn for average precision): no I/O, no logging. Every function accepts
array-likes of ints/bools (labels, flags) and floats (probabilities), checks that they are
one-dimensional, non-empty and of equal length, that labels are 0/1 and that probabilities lie in
[0, 1], and raises ``ValueError`` naming the problem otherwise. None returns NaN: where a ratio is
undefined (no predicted positives, no positives, no negatives) it is reported as 0.0.

Calibration binning is the same everywhere (``expected_calibration_error``, ``reliability_curve``
and the report's reliability diagram): ``bins`` equal-width bins on [0, 1], each closed on the left
and open on the right, except the last, which also holds probability 1.0.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score

__all__ = [
    "binary_metrics",
    "brier_score",
    "expected_calibration_error",
    "false_alarm_rate",
    "reliability_curve",
]


def binary_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, float]:
    """Detection quality at one threshold (a window is flagged when ``prob >= threshold``).

    Returns ``precision``, ``recall``, ``f1``, ``auprc`` (average precision, threshold-free),
    ``ece`` (15 bins), ``brier`` and ``threshold`` as floats, and the counts ``tp``, ``fp``, ``fn``,
    ``tn``, ``n``, ``positives`` as ints. Undefined ratios are 0.0, never NaN: precision when
    nothing is flagged, recall and auprc when ``y_true`` holds no positive, f1 when precision and
    recall are both 0.
    """
    y, p = _labels_and_probabilities(y_true, prob)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    tp, fp, fn, tn = _confusion(y, p >= threshold)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2.0 * precision * recall, precision + recall)
    positives = tp + fn
    # Average precision is undefined without a positive (scikit-learn warns); 0.0 is "no ranking skill shown".
    auprc = float(average_precision_score(y, p)) if positives > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auprc": auprc,
        "ece": _ece(y, p, 15),
        "brier": _brier(y, p),
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n": int(y.size),
        "positives": positives,
    }


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, bins: int = 15) -> float:
    """Mean |observed frequency - mean predicted probability| over equal-width bins, weighted by bin count.

    The result lies in [0, 1]; 0 means every occupied bin's predictions match its observed rate.
    """
    y, p = _labels_and_probabilities(y_true, prob)
    return _ece(y, p, _check_bins(bins))


def brier_score(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Mean squared difference between probability and outcome, in [0, 1] (lower is better)."""
    y, p = _labels_and_probabilities(y_true, prob)
    return _brier(y, p)


def reliability_curve(
    y_true: ArrayLike, prob: ArrayLike, bins: int = 15
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Per occupied bin, in increasing probability: (mean predicted, observed frequency, count).

    Empty bins are omitted, so the three arrays have equal length <= ``bins`` and counts sum to n.
    """
    y, p = _labels_and_probabilities(y_true, prob)
    mean_pred, observed, counts = _bin_statistics(y, p, _check_bins(bins))
    occupied = counts > 0
    return mean_pred[occupied], observed[occupied], counts[occupied]


def false_alarm_rate(y_true: ArrayLike, flag: ArrayLike) -> float:
    """FP / (FP + TN): the share of negatives that were flagged; 0.0 when there are no negatives."""
    y = _binary_array(y_true, "y_true")
    f = _binary_array(flag, "flag")
    _check_same_length(y, f, "flag")
    _, fp, _, tn = _confusion(y, f.astype(bool))
    return _ratio(fp, fp + tn)


# --- shared internals ------------------------------------------------------------------------------


def _bin_statistics(
    y: NDArray[np.float64], p: NDArray[np.float64], bins: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Mean prediction, observed frequency and count for each of ``bins`` bins (empty bins: 0, 0, 0)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Left-closed bins [e_k, e_k+1); searching only the inner edges puts 1.0 in the last bin.
    index = np.searchsorted(edges[1:-1], p, side="right")
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    sum_pred = np.bincount(index, weights=p, minlength=bins)
    sum_true = np.bincount(index, weights=y, minlength=bins)
    safe = np.maximum(counts, 1)
    return sum_pred / safe, sum_true / safe, counts


def _ece(y: NDArray[np.float64], p: NDArray[np.float64], bins: int) -> float:
    mean_pred, observed, counts = _bin_statistics(y, p, bins)
    return float(np.sum(counts * np.abs(observed - mean_pred)) / y.size)


def _brier(y: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    return float(np.mean((p - y) ** 2))


def _confusion(y: NDArray[np.float64], flag: NDArray[np.bool_]) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) as Python ints."""
    positive = y == 1
    tp = int(np.sum(flag & positive))
    fp = int(np.sum(flag & ~positive))
    fn = int(np.sum(~flag & positive))
    tn = int(np.sum(~flag & ~positive))
    return tp, fp, fn, tn


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else 0.0


def _labels_and_probabilities(y_true: ArrayLike, prob: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    y = _binary_array(y_true, "y_true")
    p = _vector(prob, "prob")
    _check_same_length(y, p, "prob")
    if not np.all((p >= 0.0) & (p <= 1.0)):  # also false for NaN
        bad = p[~((p >= 0.0) & (p <= 1.0))]
        raise ValueError(f"prob must lie in [0, 1]; found {bad.size} value(s) outside, e.g. {bad[0]!r}")
    return y, p


def _binary_array(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """A 1-D float array of 0.0/1.0 from ints, bools or floats that are exactly 0 or 1."""
    array = _vector(values, name)
    if not np.all((array == 0) | (array == 1)):
        bad = array[~((array == 0) | (array == 1))]
        raise ValueError(f"{name} must hold only 0/1 (or booleans); found {bad[0]!r}")
    return array


def _vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers: {exc}") from exc
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; metrics need at least one sample")
    return array


def _check_same_length(y: NDArray[np.float64], other: NDArray[np.float64], name: str) -> None:
    if y.size != other.size:
        raise ValueError(f"y_true and {name} must have the same length, got {y.size} and {other.size}")


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)
