"""``detector alerts``: follow the alert topic (or the output topic) and show alerts to people.

Two kinds of record are understood: alert transitions (``state`` = ``raised`` / ``cleared``) and scored
windows (``flag`` and ``probability``; only flagged ones are shown, as FLAGGED). Anything else on the
topic is reported in one line and skipped. ``min_probability`` applies to RAISED and FLAGGED; a CLEARED
is shown when its series' RAISED was shown (or when there is no probability filter), so that a raise a
person saw is always followed by its clearing. ``series`` are exact ids or glob patterns (``host-1/*``).
No consumer group: every partition is assigned, from its end (new records) or its beginning.

Whatever a record holds, what is printed is safe on a terminal: text from the record (series, window and
model ids, reasons a record was skipped) has its control characters and bidi overrides escaped, human
lines are one line each, and ``--json`` lines stay valid JSON that parses to the record as it came.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
from kafka import KafkaConsumer

from detector.codec import encode_json, parse_json_object
from detector.errors import ConfigError
from detector.settings import Settings
from detector.tools.clients import (
    Problems,
    StaleTail,
    errors_as,
    poll_in_order,
    printable,
    printable_json,
    reading_topic,
)

POLL_S = 0.2
SHORT_VERSION = 8  # hex digits of model_version shown to people
SHOWN_CHARS = 300  # of a series or window id (the daemon's are at most 256) and of a reason a record was skipped
REMEMBERED_RAISES = 100_000  # series whose RAISED was shown and whose CLEARED is awaited; the oldest go first
STATES = {"raised": "RAISED", "cleared": "CLEARED"}
COLOURS = {"RAISED": {"fg": "red", "bold": True}, "CLEARED": {"fg": "green"}, "FLAGGED": {"fg": "yellow"}}


class NotAnAlert(ValueError):
    """A record that is neither an alert transition nor a scored window; ``str`` is the reason."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert transition or flagged window, as shown; ``record`` is the value as it came."""

    state: str  # RAISED, CLEARED or FLAGGED
    series_id: str
    probability: float | None
    window_id: str | int | None
    model_version: str | None
    at_ms: int  # when: the record's broker timestamp, else its own time field
    record: dict[str, Any] = field(repr=False)


@errors_as(NotAnAlert)
def parse(value: bytes | None, timestamp: int) -> Alert | None:
    """A record value -> an Alert, or None for a scored window that is not flagged; NotAnAlert for anything
    else, whatever decoding it raised (nesting too deep for the decoder, numbers too large for a float)."""
    if value is None:
        raise NotAnAlert("empty value")
    obj = parse_json_object(value)
    sid = obj.get("series_id")
    if not isinstance(sid, str) or not sid:
        raise NotAnAlert("no series_id")
    prob = obj.get("probability")
    if prob is not None and (isinstance(prob, bool) or not isinstance(prob, int | float) or not math.isfinite(prob)):
        raise NotAnAlert(f"probability is not a number: {prob!r}")
    if "state" in obj:
        state = STATES.get(str(obj["state"]).lower())
        if state is None:
            raise NotAnAlert(f"unknown state {obj['state']!r}")
        own_time = obj.get("since")
    elif "flag" in obj:
        if not isinstance(obj["flag"], bool) or prob is None:
            raise NotAnAlert("a scored record needs a boolean flag and a probability")
        if not obj["flag"]:
            return None
        state, own_time = "FLAGGED", obj.get("scored_at")
    else:
        raise NotAnAlert("neither an alert (state) nor a scored window (flag)")
    if timestamp < 0:
        timestamp = own_time if isinstance(own_time, int) and not isinstance(own_time, bool) else 0
    wid = obj.get("window_id")
    version = obj.get("model_version")
    return Alert(
        state=state,
        series_id=sid,
        probability=None if prob is None else float(prob),
        window_id=wid if isinstance(wid, str | int) and not isinstance(wid, bool) else None,
        model_version=version if isinstance(version, str) else None,
        at_ms=timestamp,
        record=obj,
    )


class AlertFilter:
    """Which alerts to show (see the module docstring); remembers the series whose RAISED it let through."""

    def __init__(self, min_probability: float | None = None, series: Sequence[str] = ()) -> None:
        self.min_probability = min_probability
        self.series = tuple(series)
        # insertion-ordered, at most REMEMBERED_RAISES: a topic of endless new series cannot exhaust memory
        self._raised_shown: dict[str, None] = {}

    def __call__(self, alert: Alert) -> bool:
        if self.series and not any(fnmatch.fnmatchcase(alert.series_id, pattern) for pattern in self.series):
            return False
        if alert.state == "CLEARED":
            if self.min_probability is None:
                return True
            if alert.series_id in self._raised_shown:
                del self._raised_shown[alert.series_id]
                return True
            return False
        if self.min_probability is not None and (alert.probability or 0.0) < self.min_probability:
            return False
        if alert.state == "RAISED":
            self._raised_shown[alert.series_id] = None
            if len(self._raised_shown) > REMEMBERED_RAISES:
                del self._raised_shown[next(iter(self._raised_shown))]
        return True


def _utc(ms: int) -> str:
    """Epoch milliseconds as ``2026-01-01T00:00:05.000Z``; a time no calendar holds as ``@<ms>ms``."""
    try:
        when = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return f"@{ms}ms"
    return when.replace("+00:00", "Z")


def human_line(alert: Alert, colour: bool = False) -> str:
    """``2026-01-01T00:00:05.000Z  RAISED   host-1/cpu  p=0.973  window=w17  model=3f2a9c1d``: one line, its
    ids escaped with :func:`~detector.tools.clients.printable` (so safe on a terminal) and cut at
    ``SHOWN_CHARS``; the only escape sequences in it are the colours asked for."""
    state = f"{alert.state:<7}"
    if colour:
        state = click.style(state, **COLOURS[alert.state])  # type: ignore[arg-type]
    prob = "p=?" if alert.probability is None else f"p={alert.probability:.3f}"
    series = printable(alert.series_id, SHOWN_CHARS)
    window = "-" if alert.window_id is None else printable(str(alert.window_id), SHOWN_CHARS)
    model = printable((alert.model_version or "?")[:SHORT_VERSION])
    return f"{_utc(alert.at_ms)}  {state}  {series}  {prob}  window={window}  model={model}"


def json_line(alert: Alert) -> str:
    """The record as it came, as one compact line of JSON that parses to it; control characters and bidi
    overrides in its strings are ``\\uNNNN`` escapes, so the line is also safe on a terminal."""
    return printable_json(encode_json(alert.record).decode())


@dataclass
class FollowResult:
    topic: str
    shown: int = 0
    malformed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"{self.shown} alerts shown from {self.topic} in {self.seconds:.1f} s"
        return text + (f"; {self.malformed} malformed records skipped" if self.malformed else "")


def follow(
    consumer: KafkaConsumer,
    topic: str,
    show: Callable[[Alert], None],
    *,
    accept: Callable[[Alert], bool] = lambda _: True,
    max_alerts: int | None = None,
    idle_timeout_s: float | None = None,
    stale: StaleTail | None = None,
    stopping: Callable[[], bool] = lambda: False,
    warn: Callable[[str], None] = lambda _: None,
) -> FollowResult:
    """Pass the assigned records that ``accept`` lets through to ``show`` until ``max_alerts`` were shown,
    ``idle_timeout_s`` went by without a record (None: never) or ``stopping()``. ``stale`` drops an
    embedded broker's stale tail after a seek to the end."""
    result = FollowResult(topic)
    malformed = Problems(warn, "further malformed records are only counted")
    start = last = time.monotonic()
    while not stopping() and (max_alerts is None or result.shown < max_alerts):
        if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
            break
        records = poll_in_order(consumer, f"alerts {topic}", POLL_S)
        if records:
            last = time.monotonic()
        if stale is not None:
            records = stale.fresh(records)
        for r in records:
            try:
                alert = parse(r.value, r.timestamp)
            except NotAnAlert as err:
                result.malformed += 1
                reason = printable(str(err), SHOWN_CHARS)
                malformed(f"skipped a malformed record at {r.topic}/{r.partition}@{r.offset}: {reason}")
                continue
            if alert is None or not accept(alert):
                continue
            show(alert)
            result.shown += 1
            if max_alerts is not None and result.shown >= max_alerts:
                break
    result.seconds = time.monotonic() - start
    return result


def run(
    settings: Settings,
    topic: str | None,
    *,
    min_probability: float | None = None,
    series: Sequence[str] = (),
    as_json: bool = False,
    from_beginning: bool = False,
    max_alerts: int | None = None,
    idle_timeout_s: float | None = None,
    colour: bool = False,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = lambda _: None,
) -> FollowResult:
    """``detector alerts``: default topic ``kafka.alert_topic``; runs until a limit or SIGINT/SIGTERM."""
    topic = topic or settings.kafka.alert_topic
    if not topic:
        raise ConfigError("no alert topic: kafka.alert_topic is empty (alerts are off); pass --topic")

    def show(alert: Alert) -> None:
        say(json_line(alert) if as_json else human_line(alert, colour))

    with reading_topic(
        settings, "alerts", topic, from_end=not from_beginning, wait_s=idle_timeout_s, on_wait=warn
    ) as reading:
        if reading is None:
            return FollowResult(topic)
        return follow(
            reading.consumer,
            topic,
            show,
            accept=AlertFilter(min_probability, series),
            max_alerts=max_alerts,
            idle_timeout_s=idle_timeout_s,
            stale=reading.stale,
            stopping=reading.stopping,
            warn=warn,
        )
