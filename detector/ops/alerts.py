"""Alert transitions: per series, raise after k consecutive flagged windows, clear after m clean ones. Pure.

How the loop is meant to call it:

- The daemon builds one ``AlertTracker(settings.alerts.raise_after, settings.alerts.clear_after)`` when
  ``kafka.alert_topic`` is set. In ``Runner._records``, right after ``scorer.records(...)``, the runner
  calls ``tracker.observe(outputs)`` and appends one JSON record per transition returned to the batch's
  output, for ``kafka.alert_topic`` keyed by ``series_id``; they are delivered (and acknowledged) before
  the batch's offsets are committed, like every other output. Then ``metrics.alert_transitions(...)``.
- One thread only (the loop's); nothing here does I/O.

What a caller may rely on:

- Only transitions are returned, never a repeat: a series goes clear -> raised -> cleared -> raised ...
  Each is ``{series_id, state, window_id, probability, since, model_version}`` (DESIGN.md), where
  ``window_id``, ``probability`` and ``model_version`` are those of the window that completed the run.
- ``since`` (epoch ms) is when the run that caused the transition began: for ``raised``, the ``start`` of
  the first flagged window of the k consecutive ones; for ``cleared``, the ``start`` of the first clean
  window of the m consecutive ones. A window without ``start`` stands in with its ``scored_at``; None
  when it has neither.
- Within one ``observe`` call the windows of a series are processed in order of ``start`` (stable; in
  arrival order when some lack a ``start``). Across calls, a window whose ``start`` is earlier than the
  last one processed for its series, or that repeats the last one (same ``start`` and ``window_id``), is
  skipped: it is a redelivery after a rebalance, and counting it again would break the hysteresis.
- Memory is bounded: at most ``max_series`` series are remembered, least recently seen evicted first
  (``evicted`` counts them). An evicted series starts again clear with an empty run: a series that went
  silent while raised gets no ``cleared``, and a new run of k flagged windows raises it again.
"""

from __future__ import annotations

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


class AlertTracker:
    """Hysteresis per series over scored output records; see the module docstring."""

    def __init__(self, raise_after: int, clear_after: int, max_series: int = 100_000) -> None:
        if raise_after < 1 or clear_after < 1:
            raise ValueError("raise_after and clear_after must be >= 1")
        if max_series < 1:
            raise ValueError("max_series must be >= 1")
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.max_series = max_series
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
            if len(self._series) > self.max_series:
                self._series.popitem(last=False)
                self.evicted += 1
        else:
            self._series.move_to_end(series_id)
        return state

    def _step(self, series_id: str, window: Mapping[str, Any]) -> AlertRecord | None:
        state = self._state(series_id)
        start = window.get("start")
        window_id = window["window_id"]
        if state.last_start is not None and start is not None and _already_seen(start, window_id, state):
            self.skipped += 1
            return None
        if start is not None:
            state.last_start, state.last_window_id = int(start), window_id
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
