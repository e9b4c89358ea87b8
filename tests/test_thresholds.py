"""Threshold rules: parsing, and the threshold each rule picks on a hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from detector.model.metrics import binary_metrics
from detector.model.thresholds import ThresholdRule, choose_threshold, parse_rule

# Eight windows, four events (P = 4) and four clean ones (N = 4), sorted by probability:
PROB = np.array([0.95, 0.90, 0.80, 0.70, 0.60, 0.40, 0.30, 0.10])
Y = np.array([1, 0, 1, 1, 0, 1, 0, 0])
# Flag p >= c for each candidate c (each distinct probability):
#
#   c     TP  FP  precision   F1 = 2TP / (TP + FP + P)   FAR = FP / N
#   0.95   1   0  1/1 = 1.00  2/5  = 0.400                0/4 = 0.00
#   0.90   1   1  1/2 = 0.50  2/6  = 0.333                1/4 = 0.25
#   0.80   2   1  2/3 = 0.67  4/7  = 0.571                1/4 = 0.25
#   0.70   3   1  3/4 = 0.75  6/8  = 0.750                1/4 = 0.25
#   0.60   3   2  3/5 = 0.60  6/9  = 0.667                2/4 = 0.50
#   0.40   4   2  4/6 = 0.67  8/10 = 0.800  <- max F1     2/4 = 0.50
#   0.30   4   3  4/7 = 0.57  8/11 = 0.727                3/4 = 0.75
#   0.10   4   4  4/8 = 0.50  8/12 = 0.667                4/4 = 1.00


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("0.5", ThresholdRule("fixed", 0.5)),
        ("0", ThresholdRule("fixed", 0.0)),
        ("1", ThresholdRule("fixed", 1.0)),
        ("max-f1", ThresholdRule("max-f1")),
        ("precision:0.95", ThresholdRule("precision", 0.95)),
        ("far:0.01", ThresholdRule("far", 0.01)),
        (" far:0.01 ", ThresholdRule("far", 0.01)),
    ],
)
def test_parse_rule_accepts_the_documented_forms(text: str, rule: ThresholdRule) -> None:
    """parse_rule reads a number in [0, 1], max-f1, precision:P and far:R into the matching rule."""
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    "text",
    ["foo", "precision:", "precision:1.5", "far:abc", "1.2", "-0.1", "nan", "max-f1:0.5", "recall:0.9", ""],
)
def test_parse_rule_rejects_anything_else(text: str) -> None:
    """Unknown names, missing or non-numeric targets and numbers outside [0, 1] raise ValueError."""
    with pytest.raises(ValueError, match="threshold rule"):
        parse_rule(text)


@pytest.mark.parametrize("text", ["0.5", "0", "1", "max-f1", "precision:0.95", "far:0.01", "far:1e-05"])
def test_str_round_trips_through_parse_rule(text: str) -> None:
    """str(rule) is a rule text that parses back to the same rule."""
    rule = parse_rule(text)
    assert parse_rule(str(rule)) == rule


def test_str_round_trips_a_target_with_many_digits() -> None:
    """str(rule) keeps every digit of the target, so parsing it back gives the same rule."""
    rule = parse_rule("far:0.0123456789")
    assert parse_rule(str(rule)) == rule


def test_fixed_rule_returns_its_value() -> None:
    """A fixed rule ignores the data and returns its number."""
    assert choose_threshold(parse_rule("0.37"), PROB, Y) == 0.37


def test_max_f1_picks_the_hand_computed_threshold() -> None:
    """max-f1 picks 0.40, where F1 = 8/10 is the highest in the table."""
    assert choose_threshold(parse_rule("max-f1"), PROB, Y) == 0.40


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (1.0, 0.95),  # only c = 0.95 reaches precision 1
        # 0.70 reaches exactly 3/4; 0.80 (2/3) and 0.40 (4/6) fall short even though 0.40 is lower.
        (0.75, 0.70),
        (0.70, 0.70),  # same set as 0.75: {0.95, 0.70}
        (0.60, 0.40),  # 0.60 reaches exactly 3/5, 0.40 reaches 4/6; 0.30 (4/7 = 0.57) does not
        (0.50, 0.10),  # every candidate reaches 1/2
    ],
)
def test_precision_rule_picks_the_lowest_threshold_reaching_the_target(target: float, expected: float) -> None:
    """precision:P returns the lowest candidate whose precision is at least P (table above)."""
    assert choose_threshold(ThresholdRule("precision", target), PROB, Y) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.0, 0.95),  # only 0.95 flags no clean window
        (0.25, 0.70),  # FAR 1/4 at 0.90, 0.80 and 0.70; the lowest is 0.70
        (0.49, 0.70),  # 0.60 has FAR 0.5 > 0.49
        (0.50, 0.40),
        (1.00, 0.10),
    ],
)
def test_far_rule_picks_the_lowest_threshold_within_the_rate(target: float, expected: float) -> None:
    """far:R returns the lowest candidate whose false-alarm rate FP / (FP + TN) is at most R (table above)."""
    assert choose_threshold(ThresholdRule("far", target), PROB, Y) == expected


def test_unreachable_precision_returns_a_threshold_that_flags_nothing() -> None:
    """When no candidate reaches the precision, the threshold lies above 1.0 so no probability is flagged."""
    prob = np.array([0.9, 0.8, 0.7])
    y = np.array([0, 1, 0])
    # precision at 0.9: 0/1, at 0.8: 1/2, at 0.7: 1/3 -- never 0.9.
    t = choose_threshold(parse_rule("precision:0.9"), prob, y)
    assert t > 1.0
    assert not np.any(prob >= t)
    assert not np.any(np.array([1.0]) >= t)


def test_tied_probabilities_are_one_candidate() -> None:
    """Windows with equal probability are flagged together, so a tie cannot be split to reach a precision."""
    prob = np.array([0.8, 0.8, 0.2])
    y = np.array([1, 0, 0])
    # At 0.8 both tied windows are flagged: precision 1/2; at 0.2 it is 1/3. Precision 1 is unreachable,
    # even though the positive happens to sort first among the tied pair.
    assert choose_threshold(parse_rule("precision:1"), prob, y) > 1.0


def test_max_f1_without_positives_raises() -> None:
    """max-f1 on data with no positive label raises ValueError."""
    with pytest.raises(ValueError, match="positive"):
        choose_threshold(parse_rule("max-f1"), PROB, np.zeros_like(Y))


@pytest.mark.parametrize(("prob", "y"), [([], []), ([0.5, 0.6], [1])])
def test_data_rules_need_matching_non_empty_inputs(prob: list[float], y: list[int]) -> None:
    """Data-driven rules raise ValueError on empty input or on a length mismatch."""
    with pytest.raises(ValueError, match="labels"):
        choose_threshold(parse_rule("max-f1"), np.array(prob), np.array(y))


_probs = st.lists(st.integers(0, 20).map(lambda k: k / 20), min_size=1, max_size=24)  # grid of 21: ties


@settings(max_examples=60, deadline=None)
@given(data=st.data(), probs=_probs)
def test_max_f1_threshold_is_at_least_as_good_as_every_candidate(data: st.DataObject, probs: list[float]) -> None:
    """The max-f1 threshold's F1 (by binary_metrics) is at least the F1 at every probability in the data."""
    labels = data.draw(st.lists(st.integers(0, 1), min_size=len(probs), max_size=len(probs)))
    assume(any(labels))
    prob, y = np.array(probs), np.array(labels)
    best = binary_metrics(y, prob, choose_threshold(parse_rule("max-f1"), prob, y))["f1"]
    for c in np.unique(prob):
        assert best >= binary_metrics(y, prob, c)["f1"] - 1e-12


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    probs=_probs,
    target=st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9, 1.0]),
)
def test_precision_and_far_rules_keep_their_promise(data: st.DataObject, probs: list[float], target: float) -> None:
    """precision:P and far:R thresholds meet their target on the data (or flag nothing if unreachable)."""
    labels = data.draw(st.lists(st.integers(0, 1), min_size=len(probs), max_size=len(probs)))
    prob, y = np.array(probs), np.array(labels)
    t = choose_threshold(ThresholdRule("precision", target), prob, y)
    if t > 1.0:
        assert not np.any(prob >= t)
    else:
        assert binary_metrics(y, prob, t)["precision"] >= target
    t = choose_threshold(ThresholdRule("far", target), prob, y)
    flagged = prob >= t
    negatives = int(np.sum(y == 0))
    false_alarms = int(np.sum(flagged & (y == 0)))
    assert negatives == 0 or false_alarms / negatives <= target
