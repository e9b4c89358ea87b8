"""Alert transitions: per series, raise after k consecutive flagged windows, clear after m clean ones. Pure.

What a caller may rely on:

- Nothing here does I/O, and a tracker is not thread-safe: use each from one thread at a time.
- Only transitions are returned, never a repeat: a series goes clear -> raised -> cleared -> raised ...
  Each is ``{series_id, state, window_id, probability, since, model_version}`` (the README's alert format), where
  ``window_id``, ``probability`` and ``model_version`` are those of the window that completed the run.
- ``since`` (epoch ms) is when the run that caused the transition began: for ``raised``, the ``start`` of
  the first flagged window of the k consecutive ones; for ``cleared``, the ``start`` of the first clean
  window of the m consecutive ones. A window without ``start`` stands in with its ``scored_at``; None
  when it has neither.
- Within one ``observe`` call the windows of a series are processed in order of ``start`` (stable; in
  arrival order when some lack a ``start``). Across calls, a window whose ``start`` is earlier than the
  last one processed for its series, or that repeats the last one (same ``start`` and ``window_id``), is
  skipped: it is a redelivery after a rebalance, and counting it again would break the hysteresis.
- Memory is bounded by count and by bytes: at most ``max_series`` series are remembered, and their state
  (ids included, as Python holds them) takes at most ``max_bytes``; the least recently seen are evicted
  first (``evicted`` counts them). An evicted series starts again clear with an empty run: a series that
  went silent while raised gets no ``cleared``, and a new run of k flagged windows raises it again.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict


class AlertRecord(TypedDict):
    """One transition, as produced to the alert topic."""

    series_id: str
    state: Literal["raised", "cleared"]
    window_id: str | int
    probability: float
    since: int | None
    model_version: str


@dataclass
class _Series:
    raised: bool = False
    run: int = 0  # consecutive windows that disagree with the state (flagged while clear, clean while raised)
    run_since: int | None = None  # when that run began
    last_start: int | None = None
    last_window_id: str | int | None = None
    size: int = 0  # bytes charged for this series: its id, its last window_id and the state itself


_STATE_BYTES = 200  # a _Series and its OrderedDict entry, as Python holds them (a generous estimate)


class AlertTracker:
    """Hysteresis per series over scored output records; see the module docstring."""

    def __init__(
        self, raise_after: int, clear_after: int, max_series: int = 100_000, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        if raise_after < 1 or clear_after < 1:
            raise ValueError("raise_after and clear_after must be >= 1")
        if max_series < 1 or max_bytes < 1:
            raise ValueError("max_series and max_bytes must be >= 1")
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.max_series = max_series
        self.max_bytes = max_bytes
        self.bytes = 0  # what the remembered series are charged, in all
        self.evicted = 0  # series forgotten to stay within max_series
        self.skipped = 0  # windows skipped as older than, or a repeat of, one already processed
        self._series: OrderedDict[str, _Series] = OrderedDict()

    def __len__(self) -> int:
        """How many series are remembered."""
        return len(self._series)

    def is_raised(self, series_id: str) -> bool:
        state = self._series.get(series_id)
        return state is not None and state.raised

    def observe(self, records: Iterable[Mapping[str, Any]]) -> list[AlertRecord]:
        """Advance every series by these scored records (output-record fields: series_id, window_id,
        start, probability, flag, model_version, optionally scored_at); the transitions, in order."""
        by_series: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            by_series.setdefault(str(record["series_id"]), []).append(record)
        transitions: list[AlertRecord] = []
        for series_id, windows in by_series.items():
            if all(w.get("start") is not None for w in windows):
                windows = sorted(windows, key=lambda w: int(w["start"]))
            for window in windows:
                transition = self._step(series_id, window)
                if transition is not None:
                    transitions.append(transition)
        return transitions

    def _state(self, series_id: str) -> _Series:
        state = self._series.get(series_id)
        if state is None:
            state = self._series[series_id] = _Series()
            self._charge(state, sys.getsizeof(series_id) + _STATE_BYTES)
        else:
            self._series.move_to_end(series_id)
        return state

    def _charge(self, state: _Series, size: int) -> None:
        """Set what ``state`` (the most recently seen series) is charged, then evict the least recently seen
        until the count and the bytes are within bounds (never ``state`` itself)."""
        self.bytes += size - state.size
        state.size = size
        while len(self._series) > 1 and (len(self._series) > self.max_series or self.bytes > self.max_bytes):
            _, gone = self._series.popitem(last=False)
            self.bytes -= gone.size
            self.evicted += 1

    def _step(self, series_id: str, window: Mapping[str, Any]) -> AlertRecord | None:
        state = self._state(series_id)
        start = window.get("start")
        window_id = window["window_id"]
        if state.last_start is not None and start is not None and _already_seen(start, window_id, state):
            self.skipped += 1
            return None
        if start is not None:
            if state.last_window_id is not None:
                size = state.size - sys.getsizeof(state.last_window_id)
            else:
                size = state.size
            state.last_start, state.last_window_id = int(start), window_id
            self._charge(state, size + sys.getsizeof(window_id))
        at = start if start is not None else window.get("scored_at")
        disagrees = bool(window["flag"]) != state.raised
        if not disagrees:
            state.run, state.run_since = 0, None
            return None
        if state.run == 0:
            state.run_since = None if at is None else int(at)
        state.run += 1
        if state.run < (self.clear_after if state.raised else self.raise_after):
            return None
        state.raised = not state.raised
        since = state.run_since
        state.run, state.run_since = 0, None
        return AlertRecord(
            series_id=series_id,
            state="raised" if state.raised else "cleared",
            window_id=window_id,
            probability=float(window["probability"]),
            since=since,
            model_version=str(window.get("model_version", "")),
        )


def _already_seen(start: int, window_id: str | int, state: _Series) -> bool:
    """Older than the last window processed for the series, or that same window again."""
    assert state.last_start is not None
    return start < state.last_start or (start == state.last_start and window_id == state.last_window_id)
