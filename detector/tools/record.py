"""``detector record --topic T --out REC``: capture a topic into a recording that ``replay`` publishes again.

One line per record: the value's JSON object with ``_ts`` (the record's broker timestamp, epoch ms)
added. Binary ``f32`` records become JSON windows: ``values`` from the float32 bytes (a flat list, or
rows of ``features``), ``series_id``, ``window_id``, ``start`` and ``step_ms`` from their headers. A
record that is neither (not JSON, JSON nested deeper than the decoder goes, not an object, an unknown
content-type, an empty value: whatever its decoding raised) is reported, counted and skipped; it never
stops the capture. No consumer group: every partition is assigned, from its beginning or (``from_now``)
its end.

The recording is written to a temporary file beside ``--out`` that takes its place when the capture ends
(``--max``, idle timeout, SIGINT or SIGTERM; a signal stops it between records, so the file is always
whole lines). When the capture fails, the temporary file is removed and ``--out`` is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from kafka import KafkaConsumer

from detector.codec import F32_CONTENT_TYPE, JSON_CONTENT_TYPES, content_type, encode_json, header, parse_json_object
from detector.errors import DataError, WindowError
from detector.recordings import replacing
from detector.settings import Settings
from detector.tools.clients import (
    Problems,
    StaleTail,
    errors_as,
    poll_in_order,
    printable,
    reading_topic,
)

POLL_S = 0.2
POLL_RECORDS = 5000
SHOWN_CHARS = 300  # of the reason a record was skipped
F32_FIELDS = ("series_id", "window_id", "start", "step_ms")


class RecordError(ValueError):
    """A record that cannot become a recording line; ``str`` is the reason."""


def _f32_window(value: bytes, headers: list[tuple[str, bytes]], features: int | None) -> dict[str, Any]:
    if not value or len(value) % 4:
        raise RecordError(f"f32 payload of {len(value)} bytes is not a whole number of float32 values")
    values = np.frombuffer(value, dtype="<f4")
    if features is not None:
        if len(values) % features:
            raise RecordError(f"f32 payload of {len(values)} values does not split into rows of {features}")
        values = values.reshape(-1, features)
    window: dict[str, Any] = {}
    for name in F32_FIELDS:
        raw = header(headers, name)
        if raw is None:
            continue
        text = raw.decode("utf-8", errors="replace")
        if name in ("start", "step_ms"):
            try:
                window[name] = int(text)
                continue
            except ValueError:
                pass
        window[name] = text
    window["values"] = values.tolist()
    return window


@errors_as(RecordError)
def to_line(value: bytes | None, headers: list[tuple[str, bytes]], timestamp: int, features: int | None) -> bytes:
    """One consumed record -> one recording line (no newline); RecordError with the reason otherwise,
    whatever decoding the record raised (e.g. RecursionError for JSON nested too deep)."""
    if value is None:
        raise RecordError("empty value (a tombstone)")
    try:
        kind = content_type(headers)
    except WindowError as err:
        raise RecordError(err.detail) from None
    if kind == F32_CONTENT_TYPE:
        obj = _f32_window(value, headers, features)
    elif kind in JSON_CONTENT_TYPES:
        obj = parse_json_object(value)
    else:
        raise RecordError(f"unknown content-type {kind!r}")
    obj["_ts"] = timestamp
    return encode_json(obj)


@dataclass
class RecordResult:
    topic: str
    out: Path
    written: int = 0
    skipped: int = 0
    partitions: int = 0
    seconds: float = 0.0
    ended_by: str = "idle"  # "max", "idle" or "signal"

    def summary(self) -> str:
        text = (
            f"recorded {self.written} records from {self.topic} ({self.partitions} partitions) to {self.out}"
            f" in {self.seconds:.1f} s ({self.ended_by})"
        )
        return text + (f"; {self.skipped} records skipped" if self.skipped else "")


def capture(
    consumer: KafkaConsumer,
    out: IO[bytes],
    result: RecordResult,
    *,
    max_records: int | None,
    idle_timeout_s: float | None,
    features: int | None = None,
    stale: StaleTail | None = None,
    stopping: Callable[[], bool] = lambda: False,
    warn: Callable[[str], None] = lambda _: None,
) -> RecordResult:
    """Write the assigned records to ``out`` until ``max_records``, ``idle_timeout_s`` without a record
    (None: no idle limit) or ``stopping()``; flushed after every poll. ``stale`` drops an embedded
    broker's stale tail after a seek to the end."""
    start = last = time.monotonic()
    skipped = Problems(warn, "further skipped records are only counted")
    noted_flat = False
    try:
        while True:
            if stopping():
                result.ended_by = "signal"
                break
            if max_records is not None and result.written >= max_records:
                result.ended_by = "max"
                break
            if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                result.ended_by = "idle"
                break
            room = POLL_RECORDS if max_records is None else min(POLL_RECORDS, max_records - result.written)
            records = poll_in_order(consumer, f"record {result.topic}", POLL_S, max_records=room)
            if records:
                last = time.monotonic()
            if stale is not None:
                records = stale.fresh(records)
            for r in records:
                headers = list(r.headers or [])
                try:
                    line = to_line(r.value, headers, r.timestamp, features)
                except RecordError as err:
                    result.skipped += 1
                    skipped(f"{r.topic}/{r.partition}@{r.offset}: {printable(str(err), SHOWN_CHARS)} (skipped)")
                    continue
                if features is None and not noted_flat and content_type(headers) == F32_CONTENT_TYPE:
                    noted_flat = True
                    warn("binary f32 values are written as flat lists; --features F writes rows of F")
                out.write(line + b"\n")
                result.written += 1
            out.flush()
    finally:
        out.flush()
        result.seconds = time.monotonic() - start
    return result


def run(
    settings: Settings,
    topic: str,
    out_path: Path,
    *,
    max_records: int | None = None,
    idle_timeout_s: float | None = 5.0,
    from_now: bool = False,
    features: int | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> RecordResult:
    """``detector record``: connect, assign every partition, capture into ``out_path``, which is replaced
    when the capture ends (limit or signal) and left as it was when it fails or is stopped before the topic
    is assigned."""
    result = RecordResult(topic, out_path)
    try:
        with reading_topic(
            settings, "record", topic, from_end=from_now, wait_s=idle_timeout_s, on_wait=warn
        ) as reading:
            if reading is None:
                result.ended_by = "signal"
                return result
            result.partitions = len(reading.partitions)
            with replacing(out_path) as out:
                return capture(
                    reading.consumer,
                    out,
                    result,
                    max_records=max_records,
                    idle_timeout_s=idle_timeout_s,
                    features=features,
                    stale=reading.stale,
                    stopping=reading.stopping,
                    warn=warn,
                )
    except OSError as err:  # writing the file (a full disk): the old recording is still there
        raise DataError(f"{out_path}: cannot write ({err.strerror})") from None
