"""Alert hysteresis: raise after k flagged windows in a row, clear after m clean ones, transitions only."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.alerting import AlertTracker
from detector.codec import encode_json


def rec(series: str, i: int, flag: bool | int, *, start: int | None = -1, **extra: Any) -> dict[str, Any]:
    """A scored output record: window i of a series starts at i seconds, probability 0.9 when flagged."""
    record: dict[str, Any] = {
        "series_id": series,
        "window_id": f"{series}/{i}",
        "start": 1000 * i if start == -1 else start,
        "probability": 0.9 if flag else 0.1,
        "flag": bool(flag),
        "model_version": "v1",
    }
    record.update(extra)
    return record


def summary(transitions: list) -> list[tuple[str, str, str, int | None]]:
    return [(t["series_id"], t["state"], t["window_id"], t["since"]) for t in transitions]


FLAGS = [1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1]
# raise_after=3, clear_after=2, worked by hand:
#  w0 w1 flagged (run 2), w2 clean resets; w3 w4 w5 flagged -> raised at w5, since w3's start (3000);
#  w6 flagged (agrees); w7 clean (run 1), w8 flagged resets; w9 w10 clean -> cleared at w10, since w9 (9000);
#  w11 flagged starts a run of 1: nothing.
EXPECTED = [("a", "raised", "a/5", 3000), ("a", "cleared", "a/10", 9000)]


def test_hand_computed_sequence_raises_and_clears_once():
    """The worked sequence gives exactly one raise and one clear, at the windows that complete each run."""
    tracker = AlertTracker(raise_after=3, clear_after=2)
    out = tracker.observe([rec("a", i, f) for i, f in enumerate(FLAGS)])
    assert summary(out) == EXPECTED
    assert out[0]["probability"] == pytest.approx(0.9)
    assert out[1]["probability"] == pytest.approx(0.1)
    assert tracker.is_raised("a") is False


def test_same_result_one_window_at_a_time():
    """Hysteresis state carries across observe calls: batch boundaries change nothing."""
    tracker = AlertTracker(raise_after=3, clear_after=2)
    out = []
    for i, f in enumerate(FLAGS):
        out += tracker.observe([rec("a", i, f)])
    assert summary(out) == EXPECTED


def test_record_fields_are_the_design_fields_and_json_safe():
    """A transition carries exactly series_id, state, window_id, probability, since, model_version."""
    tracker = AlertTracker(raise_after=1, clear_after=1)
    (raised,) = tracker.observe([rec("s", 4, 1, model_version="abc123")])
    assert set(raised) == {"series_id", "state", "window_id", "probability", "since", "model_version"}
    assert raised == {
        "series_id": "s",
        "state": "raised",
        "window_id": "s/4",
        "probability": 0.9,
        "since": 4000,
        "model_version": "abc123",
    }
    assert msgspec.json.decode(encode_json(raised)) == raised


def test_interleaved_series_are_independent():
    """Windows of several series interleaved in one batch each follow their own hysteresis."""
    a = [rec("a", i, f) for i, f in enumerate(FLAGS)]
    b = [rec("b", i, 1) for i in range(4)] + [rec("b", i, 0) for i in range(4, 6)]
    c = [rec("c", i, i % 2) for i in range(12)]  # never 2 flagged in a row
    mixed = [w for group in zip(a, b + [None] * 6, c, strict=True) for w in group if w is not None]
    tracker = AlertTracker(raise_after=3, clear_after=2)
    out = tracker.observe(mixed)
    per_series = {s: [t for t in summary(out) if t[0] == s] for s in "abc"}
    assert per_series["a"] == EXPECTED
    assert per_series["b"] == [("b", "raised", "b/2", 0), ("b", "cleared", "b/5", 4000)]
    assert per_series["c"] == []
    assert len(tracker) == 3


def test_windows_of_a_series_are_ordered_by_start_within_a_batch():
    """A batch whose windows arrive out of order is processed in order of start."""
    windows = [rec("a", i, f) for i, f in enumerate(FLAGS)]
    random.Random(3).shuffle(windows)
    assert summary(AlertTracker(3, 2).observe(windows)) == EXPECTED


def test_redelivered_windows_do_not_repeat_transitions():
    """The same windows seen again (a redelivery after a rebalance) are skipped, not counted twice."""
    tracker = AlertTracker(raise_after=3, clear_after=2)
    first = [rec("a", i, 1) for i in range(3)]
    assert summary(tracker.observe(first)) == [("a", "raised", "a/2", 0)]
    assert tracker.observe(first) == []
    assert tracker.skipped == 3
    # later clean windows still clear normally
    assert summary(tracker.observe([rec("a", 3, 0), rec("a", 4, 0)])) == [("a", "cleared", "a/4", 3000)]


def test_a_long_flagged_run_raises_once():
    """Flagged windows beyond the k-th keep the series raised without another transition."""
    tracker = AlertTracker(raise_after=2, clear_after=2)
    out = tracker.observe([rec("a", i, 1) for i in range(50)])
    assert summary(out) == [("a", "raised", "a/1", 0)]


def test_since_falls_back_to_scored_at_without_start():
    """Windows without start are taken in arrival order and since comes from scored_at."""
    tracker = AlertTracker(raise_after=2, clear_after=1)
    out = tracker.observe(
        [
            rec("a", 0, 1, start=None, scored_at=500),
            rec("a", 1, 1, start=None, scored_at=700),
            rec("a", 2, 0, start=None),
        ]
    )
    assert summary(out) == [("a", "raised", "a/1", 500), ("a", "cleared", "a/2", None)]


def test_memory_is_bounded_least_recently_seen_series_go_first():
    """Past max_series, the series seen longest ago is forgotten and starts again clear."""
    tracker = AlertTracker(raise_after=1, clear_after=1, max_series=2)
    assert summary(tracker.observe([rec("a", 0, 1)])) == [("a", "raised", "a/0", 0)]
    tracker.observe([rec("b", 0, 0)])
    tracker.observe([rec("a", 1, 1)])  # a is now the most recently seen
    tracker.observe([rec("c", 0, 0)])  # evicts b, not a
    assert len(tracker) == 2
    assert tracker.evicted == 1
    assert tracker.is_raised("a")
    tracker.observe([rec("d", 0, 0)])  # now a is the oldest: evicted with its raised state
    assert not tracker.is_raised("a")
    assert summary(tracker.observe([rec("a", 2, 1)])) == [("a", "raised", "a/2", 2000)]


def test_invalid_hysteresis_is_refused():
    """raise_after and clear_after below 1 make no sense."""
    with pytest.raises(ValueError, match="raise_after"):
        AlertTracker(raise_after=0, clear_after=1)


@settings(max_examples=200, deadline=None)
@given(
    flags=st.lists(st.booleans(), max_size=60),
    raise_after=st.integers(1, 4),
    clear_after=st.integers(1, 4),
    batch=st.integers(1, 7),
)
def test_transitions_follow_the_runs(flags, raise_after, clear_after, batch):
    """For any flag sequence and batching: transitions alternate raised/cleared, each completes a run of
    exactly the right length that began at ``since``, and no run long enough goes unreported."""
    tracker = AlertTracker(raise_after, clear_after)
    windows = [rec("s", i, f) for i, f in enumerate(flags)]
    out = []
    for at in range(0, len(windows), batch):
        out += tracker.observe(windows[at : at + batch])
    states = [t["state"] for t in out]
    assert states == ["raised", "cleared"] * (len(states) // 2) + ["raised"] * (len(states) % 2)
    for t in out:
        end = int(str(t["window_id"]).split("/")[1])
        need, want = (raise_after, True) if t["state"] == "raised" else (clear_after, False)
        first = end - need + 1
        assert first >= 0
        assert all(flags[j] == want for j in range(first, end + 1))
        assert t["since"] == 1000 * first
    # completeness: while clear, any raise_after flagged in a row must have raised
    raised, run = False, 0
    transitions = iter(out)
    for f in flags:
        run = run + 1 if f != raised else 0
        if run == (clear_after if raised else raise_after):
            assert next(transitions)["state"] == ("cleared" if raised else "raised")
            raised, run = not raised, 0
    assert next(transitions, None) is None


def test_memory_is_bounded_by_bytes_as_well_as_by_count():
    """Series with long ids fill the byte budget before the count: the least recently seen are evicted and
    the bytes charged never exceed max_bytes."""
    tracker = AlertTracker(1, 1, max_series=10**6, max_bytes=200_000)
    for i in range(2000):
        sid = f"{i:04d}" + "s" * 252
        tracker.observe([{"series_id": sid, "window_id": "w" * 256, "start": i, "probability": 0.1, "flag": False,
                          "model_version": "v"}])  # fmt: skip
        assert tracker.bytes <= 200_000
    assert 0 < len(tracker) < 2000
    assert tracker.evicted == 2000 - len(tracker)
    assert not tracker.is_raised("0000" + "s" * 252)  # the oldest went first
    assert tracker.bytes == sum(s.size for s in tracker._series.values())
