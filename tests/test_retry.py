"""The one backoff schedule: doubling from the first delay, capped, reset by a success."""

from __future__ import annotations

from detector.retry import Backoff


def test_delays_double_up_to_the_longest_and_start_again_after_a_reset():
    backoff = Backoff(0.25, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next() == 0.25
