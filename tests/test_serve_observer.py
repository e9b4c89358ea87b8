"""Observers never break the loop: one that raises is logged once per hook and the others still hear."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from detector.serve.observer import CountingObserver, safe


class Raising(CountingObserver):
    def scored(self, windows, flagged, seconds, latencies_ms):
        raise RuntimeError("exporter down")


def test_an_observer_that_raises_is_logged_once_per_hook_and_the_others_still_hear():
    counting = CountingObserver()
    observer = safe(Raising(), counting)
    with capture_logs() as logs:
        for _ in range(3):
            observer.scored(4, 1, 0.01, [1.0])
        observer.consumed(2)
    assert counting.counts.scored == 12
    assert counting.counts.flagged == 3
    assert counting.counts.consumed == 2
    failures = [e for e in logs if e["event"] == "observer failed"]
    assert len(failures) == 1
    assert failures[0]["hook"] == "scored"
    assert "exporter down" in failures[0]["error"]


def test_only_the_hooks_of_the_protocol_are_forwarded():
    with pytest.raises(AttributeError):
        safe(CountingObserver()).no_such_hook  # type: ignore[attr-defined]  # noqa: B018
