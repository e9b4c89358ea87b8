"""``detector replay REC --topic T``: publish a recording into a topic, keyed by series_id.

Each line becomes one record. JSON (the default) is published as given, less its ``_ts`` field; ``f32``
re-encodes the window with the binary codec (values as float32 bytes, the other fields in headers).
Pacing: by the lines' ``_ts`` deltas divided by ``speed``, or at ``rate`` windows/s, or none (as fast as
the producer goes). A line that is not a JSON object (or, for ``f32``, not a valid window; or whose
decoding raised anything at all, such as JSON nested deeper than the decoder goes) is reported with its
line number, counted and skipped; it never stops the replay. A line without a usable ``series_id`` is
published without a key under JSON (the daemon dead-letters it), so that bad input can be replayed too.

Every record sent ends the replay counted exactly once: acknowledged by the broker, refused (by the
producer or the broker), or sent but not acknowledged when the replay stopped waiting. The replay stops
early on a signal, or when the producer cannot take a record (no broker, no topic metadata) within its
blocking limit; either way what was sent is flushed and counted first.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from kafka import KafkaProducer
from kafka import errors as kerr
from tqdm import tqdm

from detector.codec import encode_f32, encode_json, parse_json_object, window_from_obj
from detector.errors import DataError
from detector.processes import StopSignals
from detector.recordings import iter_lines
from detector.settings import Settings
from detector.tools.clients import Problems, close_quietly, errors_as, make_producer, printable

Codec = Literal["json", "f32"]
FLUSH_TIMEOUT_S = 60.0
SHOWN_CHARS = 500  # of a problem reported (recording path, line number, reason)
SLEEP_SLICE_S = 0.2  # a long pause is slept in slices, so that a signal stops it promptly


class LineError(ValueError):
    """A recording line that cannot be published; ``str`` is the reason."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to publish, and the line's ``_ts`` (epoch ms) when it has one."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    ts: int | None


class _Head(msgspec.Struct):
    """The two fields replay needs from a line; the rest is skipped, not decoded."""

    series_id: Any = None
    ts: Any = msgspec.field(default=None, name="_ts")


_head = msgspec.json.Decoder(_Head)
# `_ts` as the last member of the object, as `record` writes it: cut out of the bytes, not re-encoded
_TS_TAIL = re.compile(rb',\s*"_ts"\s*:\s*(-?\d+)\s*\}\s*$')
_TAIL_BYTES = 64


def _valid_ts(ts: Any) -> bool:
    return ts is None or (not isinstance(ts, bool) and isinstance(ts, int | float) and math.isfinite(ts))


def _without_ts(line: bytes, ts: Any) -> bytes | None:
    """The line less its trailing ``_ts`` member, cut from the bytes; None where that is not safe."""
    if not isinstance(ts, int):
        return None
    tail = max(0, len(line) - _TAIL_BYTES)
    match = _TS_TAIL.search(line, tail)
    if match is None or int(match.group(1)) != ts:
        return None
    value = line[: match.start()] + b"}"
    return None if b'"_ts"' in value else value


@errors_as(LineError)
def to_record(line: bytes, codec: Codec) -> Outgoing:
    """A recording line -> the record to publish; LineError with the reason for a line that cannot be,
    whatever decoding it raised (e.g. RecursionError for JSON nested too deep).

    JSON lines are published as given (the bytes of the line) when they hold no ``_ts``; a trailing
    ``_ts`` is cut from the bytes; elsewhere the object is re-encoded without it.
    """
    if codec == "json":
        try:
            head = _head.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # the full parse below names the reason
        else:
            key = head.series_id.encode() if isinstance(head.series_id, str) and head.series_id else None
            if not _valid_ts(head.ts):
                raise LineError(f"bad_field: _ts must be epoch milliseconds, got {head.ts!r}")
            ts = None if head.ts is None else int(head.ts)
            if head.ts is None and b'"_ts"' not in line:
                return Outgoing(key, line, [], None)
            value = _without_ts(line, head.ts)
            if value is not None:
                return Outgoing(key, value, [], ts)
    obj = parse_json_object(line)
    ts = obj.get("_ts")
    if not _valid_ts(ts):
        raise LineError(f"bad_field: _ts must be epoch milliseconds, got {ts!r}")
    sid = obj.get("series_id")
    key = sid.encode() if isinstance(sid, str) and sid else None
    body = {k: v for k, v in obj.items() if k != "_ts"}
    if codec == "f32":
        window_from_obj(body)  # its WindowError names the reason
        value, headers = encode_f32(body)
        return Outgoing(key, value, headers, None if ts is None else int(ts))
    value = line if "_ts" not in obj else encode_json(body)
    return Outgoing(key, value, [], None if ts is None else int(ts))


class Pacer:
    """When each record is due, in seconds after the replay began: at ``rate`` records/s, or at the line's
    ``_ts`` offset from the first ``_ts`` divided by ``speed``, or at once. Lines without ``_ts`` (or whose
    ``_ts`` goes back in time) are due at once under ``speed``."""

    def __init__(self, speed: float | None = None, rate: float | None = None) -> None:
        if speed is not None and rate is not None:
            raise ValueError("speed and rate are mutually exclusive")
        if (speed is not None and speed <= 0) or (rate is not None and rate <= 0):
            raise ValueError("speed and rate must be > 0")
        self.speed = speed
        self.rate = rate
        self._count = 0
        self._first_ts: int | None = None

    def due(self, ts: int | None) -> float:
        index, self._count = self._count, self._count + 1
        if self.rate is not None:
            return index / self.rate
        if self.speed is None or ts is None:
            return 0.0
        if self._first_ts is None:
            self._first_ts = ts
        return max(0.0, (ts - self._first_ts) / 1000.0 / self.speed)


@dataclass
class ReplayResult:
    """What a replay did, counted once the replay stopped waiting for the broker.

    Every record sent is in exactly one of ``published`` (acknowledged by the broker, acks=all),
    ``refused`` (by the broker, with a reason) or ``unacknowledged`` (no answer yet: the broker may or may
    not have it); ``refused`` also counts the records the producer would not take. ``stopped_at``: the
    line at which the producer could not take a record in time, after which no line was read.
    """

    topic: str
    published: int = 0
    bad_lines: int = 0
    refused: int = 0
    unacknowledged: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped_at: int | None = None

    @property
    def failed(self) -> int:
        """Records that were to go out and are not known to be on the topic."""
        return self.refused + self.unacknowledged

    def summary(self) -> str:
        rate = self.published / self.seconds if self.seconds > 0 else 0.0
        text = f"published {self.published} windows to {self.topic} in {self.seconds:.2f} s ({rate:,.0f} windows/s)"
        if self.bad_lines:
            text += f"; {self.bad_lines} bad lines skipped"
        if self.refused:
            text += f"; {self.refused} not delivered"
        if self.unacknowledged:
            text += f"; {self.unacknowledged} sent but not acknowledged (the broker may or may not have them)"
        if self.stopped_at is not None:
            text += f"; stopped at line {self.stopped_at}, the rest was not sent"
        if self.interrupted:
            text += "; interrupted"
        return text


class _Tally:
    """Acknowledgements and refusals as the producer's I/O thread reports them, until ``close``: what
    ``close`` returns is final, whatever the producer reports later."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = True
        self._acknowledged = 0
        self._refused: list[tuple[int, BaseException]] = []

    def acknowledged(self, _: object) -> None:
        with self._lock:
            if self._open:
                self._acknowledged += 1

    def refused(self, number: int, error: BaseException) -> None:
        with self._lock:
            if self._open:
                self._refused.append((number, error))

    def close(self) -> tuple[int, list[tuple[int, BaseException]]]:
        """(acknowledged, [(line number, error) refused] in line order), from one instant."""
        with self._lock:
            self._open = False
            return self._acknowledged, sorted(self._refused, key=lambda item: item[0])


def publish(
    path: Path,
    topic: str,
    producer: KafkaProducer,
    *,
    codec: Codec = "json",
    pacer: Pacer | None = None,
    stopping: Callable[[], bool] = lambda: False,
    warn: Callable[[str], None] = lambda _: None,
    on_progress: Callable[[int], object] = lambda _: None,
    flush_timeout_s: float = FLUSH_TIMEOUT_S,
) -> ReplayResult:
    """Publish every line of ``path`` to ``topic``, then wait up to ``flush_timeout_s`` for the broker's
    answers; ``warn`` hears each skipped or undelivered line (the first ``clients.SHOWN_PROBLEMS``). Stops
    early, waiting the same for what was sent, when ``stopping()`` turns true or the producer cannot take a
    record within its blocking limit. Never raises for what a line holds or what the broker answers: the
    result counts every record (see ReplayResult)."""
    pacer = pacer or Pacer()
    result = ReplayResult(topic)
    tally = _Tally()
    sent = 0
    problems = Problems(warn, "further problems are only counted")

    def problem(text: str) -> None:
        problems(printable(text, SHOWN_CHARS))

    start = time.monotonic()
    for number, line in iter_lines(path):
        if stopping():
            result.interrupted = True
            break
        try:
            record = to_record(line, codec)
        except LineError as err:
            result.bad_lines += 1
            problem(f"{path}:{number}: {err} (skipped)")
            continue
        due = start + pacer.due(record.ts)
        while (wait := due - time.monotonic()) > 0.001 and not stopping():
            time.sleep(min(wait, SLEEP_SLICE_S))
        if stopping():
            result.interrupted = True
            break
        try:
            future = producer.send(topic, key=record.key, value=record.value, headers=record.headers)
        except kerr.KafkaTimeoutError as err:
            result.refused += 1
            result.stopped_at = number
            warn(
                f"replay to {topic} stopped at line {number}: the producer gave up waiting ({err});"
                " is the broker up and the topic there?"
            )
            break
        except kerr.KafkaError as err:  # e.g. a record over the size limit: refused before sending
            result.refused += 1
            problem(f"{path}:{number}: not sent: {type(err).__name__}: {err}")
            continue
        future.add_callback(tally.acknowledged)
        future.add_errback(lambda err, n=number: tally.refused(n, err))
        sent += 1
        on_progress(1)
    try:
        producer.flush(flush_timeout_s)
    except kerr.KafkaTimeoutError:
        warn(f"some records were not acknowledged within {flush_timeout_s:g} s")
    acknowledged, refused = tally.close()
    result.seconds = time.monotonic() - start
    for number, error in refused:
        problem(f"{path}:{number}: not delivered: {type(error).__name__}: {error}")
    result.published = acknowledged
    result.refused += len(refused)
    result.unacknowledged = sent - acknowledged - len(refused)
    return result


def _count_lines(path: Path) -> int | None:
    """Lines in the file (its newline characters: blank and bad lines included), or None when unreadable."""
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def run(
    settings: Settings,
    path: Path,
    topic: str,
    *,
    codec: Codec = "json",
    speed: float | None = None,
    rate: float | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> ReplayResult:
    """``detector replay`` to a topic: checks the file, connects, publishes with a progress bar on a TTY."""
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    pacer = Pacer(speed=speed, rate=rate)
    tty = sys.stderr.isatty()
    total = _count_lines(path) if tty else None
    producer = make_producer(settings, "replay")
    try:
        with (
            StopSignals(exit_on_second=False) as stop,
            tqdm(total=total, unit="win", desc=f"-> {topic}", disable=not tty, leave=False) as bar,
        ):
            return publish(
                path, topic, producer, codec=codec, pacer=pacer, stopping=stop, warn=warn, on_progress=bar.update
            )
    finally:
        close_quietly(producer)
