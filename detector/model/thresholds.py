"""Threshold rules: calibrated probabilities -> flags. A window is flagged when probability >= threshold.

0.5 (any number in [0, 1])   fixed
max-f1                       the threshold that maximises F1 on held-out data
precision:P                  the lowest threshold whose precision reaches P (most recall at that precision)
far:R                        the lowest threshold whose false-alarm rate FP / (FP + TN) is at most R
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The threshold a rule picks when no threshold meets its target: above every probability, so nothing is flagged.
FLAG_NOTHING = math.nextafter(1.0, 2.0)


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed rule; ``target`` is the fixed value, P or R."""

    kind: str  # "fixed" | "max-f1" | "precision" | "far"
    target: float | None = None

    def __str__(self) -> str:
        if self.kind == "fixed":
            return repr(self.target)
        if self.kind == "max-f1":
            return "max-f1"
        return f"{self.kind}:{self.target!r}"


def parse_rule(text: str) -> ThresholdRule:
    """Parse ``0.5``, ``max-f1``, ``precision:0.95`` or ``far:0.01``; ValueError with the accepted forms."""
    forms = "a number in [0, 1], max-f1, precision:P or far:R"
    text = text.strip()
    if text == "max-f1":
        return ThresholdRule("max-f1")
    kind, sep, value = text.partition(":")
    try:
        number = float(value if sep else kind)
    except ValueError:
        raise ValueError(f"threshold rule {text!r} not understood; use {forms}") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"threshold rule {text!r}: the number must be in [0, 1]")
    if not sep:
        return ThresholdRule("fixed", number)
    if kind in ("precision", "far"):
        return ThresholdRule(kind, number)
    raise ValueError(f"threshold rule {text!r} not understood; use {forms}")


def choose_threshold(rule: ThresholdRule, prob: np.ndarray, labels: np.ndarray) -> float:
    """The threshold the rule picks on held-out calibrated probabilities and 0/1 labels."""
    if rule.kind == "fixed":
        assert rule.target is not None
        return rule.target
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if len(p) == 0 or len(p) != len(y):
        raise ValueError("threshold rules need as many labels as probabilities, and at least one")
    # Candidate thresholds: each distinct probability; flagging p >= c for c in descending order.
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]  # last index of each distinct value
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(~ys)[last]
    cand = ps[last]
    positives, negatives = y.sum(), (~y).sum()
    if rule.kind == "max-f1":
        if positives == 0:
            raise ValueError("max-f1 needs positive examples in the data")
        f1 = 2 * tp / (tp + fp + positives)
        return float(cand[int(np.argmax(f1))])
    assert rule.target is not None
    if rule.kind == "precision":
        ok = np.flatnonzero(tp / (tp + fp) >= rule.target)
        # No threshold reaches it: flag nothing rather than promise a precision we cannot give.
        return float(cand[ok[-1]]) if len(ok) else FLAG_NOTHING
    if rule.kind == "far":
        rate = fp / negatives if negatives else np.zeros_like(fp, dtype=float)
        ok = np.flatnonzero(rate <= rule.target)
        return float(cand[ok[-1]]) if len(ok) else FLAG_NOTHING
    raise ValueError(f"unknown threshold rule {rule.kind!r}")
