"""Input windows from bytes, with validation in one pass; output records to bytes.

Two input codecs (README, message formats): JSON (the default) and the compact binary ``application/x-detector-f32``
(little-endian float32 row-major values; the other fields in headers). Every failure is a
:class:`~detector.errors.WindowError` carrying a stable reason code (a dead letter's ``error.reason``).

Reason codes (stable): :data:`REASONS`, which docs/reference.md's table repeats (a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from detector.errors import WindowError

F32_CONTENT_TYPE = "application/x-detector-f32"
JSON_CONTENT_TYPES = ("application/json", "")
MAX_SERIES_ID = 256
MAX_WINDOW_ID = 256  # characters of a string window_id: it is copied into every output and alert record

# Every reason a message can become a dead letter for, with its meaning: the one list of them.
REASONS: dict[str, str] = {
    "bad_encoding": "not UTF-8",
    "bad_json": "not parseable JSON, or nested deeper than the decoder allows",
    "not_object": "JSON that is not an object",
    "missing_series_id": "`series_id` absent, empty, not a string or over 256 characters",
    "missing_values": "`values` absent or empty",
    "bad_values": "ragged rows, or entries that are not numbers (strings, booleans, null)",
    "non_finite": "NaN, infinity, or a number beyond float range",
    "bad_shape": "not the (T, F) of the model",
    "bad_labels": "labels that are not T integers in {0, 1}",
    "bad_field": "`window_id`, `start` or `step_ms` of the wrong type, `step_ms` <= 0, "
    "or a `window_id` over 256 characters",
    "oversize": "larger than `limits.max_message_bytes`",
    "unknown_content_type": "a content-type header the daemon does not decode (daemon)",
    "decode_failed": "decoding failed in a way no other reason covers; `error.detail` names the error",
    "output_refused": "the window was scored, but the broker refused its output record for good "
    "(e.g. too large); `error.detail` holds the broker's error (daemon)",
}

_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Window:
    """One validated input window. ``values`` is float32 of shape (T, F); ``labels`` (T,) int8 or None."""

    series_id: str
    window_id: str | int | None
    start: int | None
    step_ms: int | None
    values: np.ndarray
    labels: np.ndarray | None = None
    event_type: str | None = None

    @property
    def end(self) -> int | None:
        """Epoch ms just after the last step (``start + T * step_ms``); ``start`` without ``step_ms``."""
        if self.start is None or self.step_ms is None:
            return self.start
        return self.start + len(self.values) * self.step_ms


def default_window_id(topic: str, partition: int, offset: int) -> str:
    """The ``window_id`` of a window that has none: where it was read (a recording is a topic of one
    partition named after the file, whose offsets are its line numbers), so a re-read carries the same one."""
    return f"{topic}/{partition}/{offset}"


def _check_shape(values: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise WindowError("bad_values", f"values must be T rows of F numbers, got shape {values.shape}")
    if shape is not None and values.shape != tuple(shape):
        t, f = shape
        raise WindowError("bad_shape", f"values have shape {values.shape}, the model expects ({t}, {f})")
    if not np.isfinite(values).all():
        raise WindowError("non_finite", "values hold NaN or infinity")
    return values


def _optional_int(obj: dict[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise WindowError("bad_field", f"{key} must be an integer, got {type(v).__name__}")
    return v


def window_from_obj(obj: Any, shape: tuple[int, int] | None = None) -> Window:
    """Validate a decoded JSON value as an input window; ``shape`` = (T, F) to enforce, or None."""
    if not isinstance(obj, dict):
        raise WindowError("not_object", f"a window must be a JSON object, got {type(obj).__name__}")
    sid = obj.get("series_id")
    if not isinstance(sid, str) or not sid or len(sid) > MAX_SERIES_ID:
        raise WindowError("missing_series_id", "series_id must be a string of 1..256 characters")
    raw = obj.get("values")
    if not isinstance(raw, list) or not raw:
        raise WindowError("missing_values", "values must be a non-empty list")
    try:  # strict: numbers only (no strings, booleans or null), then rows of equal length
        rows = msgspec.convert(raw, list[list[float]] if isinstance(raw[0], list) else list[float])
        with np.errstate(over="ignore"):
            values = np.asarray(rows, dtype=np.float32)
    except msgspec.ValidationError as err:
        raise WindowError("bad_values", f"values must be T rows of F numbers: {err}") from None
    except ValueError:
        raise WindowError("bad_values", "values must be T rows of F numbers (rows of unequal length)") from None
    values = _check_shape(values, shape)
    wid = obj.get("window_id")
    if wid is not None and (isinstance(wid, bool) or not isinstance(wid, str | int)):
        raise WindowError("bad_field", f"window_id must be a string or an integer, got {type(wid).__name__}")
    if isinstance(wid, str) and len(wid) > MAX_WINDOW_ID:
        raise WindowError("bad_field", f"window_id must be at most {MAX_WINDOW_ID} characters, got {len(wid)}")
    step_ms = _optional_int(obj, "step_ms")
    if step_ms is not None and step_ms <= 0:
        raise WindowError("bad_field", "step_ms must be > 0")
    labels = obj.get("labels")
    lab = None
    if labels is not None:
        try:
            lab = _check_labels(msgspec.convert(labels, list[int]), values.shape[0])
        except msgspec.ValidationError:
            raise WindowError("bad_labels", "labels must be T integers in {0, 1}") from None
    event_type = obj.get("event_type")
    return Window(
        series_id=sid,
        window_id=wid,
        start=_optional_int(obj, "start"),
        step_ms=step_ms,
        values=values,
        labels=lab,
        event_type=event_type if isinstance(event_type, str) else None,
    )


def _check_labels(labels: list[int], length: int) -> np.ndarray:
    lab = np.asarray(labels, dtype=np.int64)
    if lab.shape != (length,) or not ((lab == 0) | (lab == 1)).all():
        raise WindowError("bad_labels", f"labels must be {length} integers in {{0, 1}}")
    return lab.astype(np.int8)


def parse_json(data: bytes) -> Any:
    """JSON bytes -> Python value; WindowError ``bad_encoding``, ``non_finite`` or ``bad_json`` otherwise."""
    try:
        return _json_decoder.decode(data)
    except RecursionError:  # msgspec's own depth limit: ~1,000 nested arrays or objects
        raise WindowError("bad_json", "JSON nested deeper than the decoder allows") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as err:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise WindowError("bad_encoding", "the message is not valid UTF-8") from None
        if "Number out of range" in str(err):  # valid JSON (1e400) whose value is infinite
            raise WindowError("non_finite", f"a number is out of range: {err}") from None
        raise WindowError("bad_json", f"not valid JSON: {err}") from None


def parse_json_object(data: bytes) -> dict[str, Any]:
    """JSON bytes that must hold an object -> that object; WindowError as :func:`parse_json` raises it, or
    ``not_object`` for any other JSON value."""
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise WindowError("not_object", f"a JSON {type(obj).__name__}, not an object")
    return obj


# The fast path: a window of the usual shape is parsed and type-checked in one pass by msgspec, straight
# into typed fields (no intermediate dict, no second conversion of the values). Anything it does not
# accept, for whatever reason, is decoded again by the generic path above, which names the reason; so the
# fast path only has to be right about what it accepts, and it accepts exactly what the generic path does.
class _Rows(msgspec.Struct):
    series_id: str
    values: list[list[float]]
    window_id: str | int | None = None
    start: int | None = None
    step_ms: int | None = None
    labels: list[int] | None = None
    event_type: str | None = None
    ts: int | None = msgspec.field(default=None, name="_ts")  # recordings only: when it was on the topic


class _Flat(_Rows):
    values: list[float]  # type: ignore[assignment]  # F = 1 windows may be a flat list


_rows_decoder = msgspec.json.Decoder(_Rows)
_flat_decoder = msgspec.json.Decoder(_Flat)


def _decode_typed(data: bytes, shape: tuple[int, int] | None) -> tuple[Window, int | None] | None:
    """The fast path: the window and its ``_ts``, or None when the generic path must decide."""
    decoders = (_flat_decoder, _rows_decoder) if shape is not None and shape[1] == 1 else (_rows_decoder,)
    for decoder in decoders:
        try:
            obj = decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            continue
        sid = obj.series_id
        if not sid or len(sid) > MAX_SERIES_ID or not obj.values:
            return None
        if isinstance(obj.window_id, str) and len(obj.window_id) > MAX_WINDOW_ID:
            return None
        try:
            with np.errstate(over="ignore"):
                values = _check_shape(np.asarray(obj.values, dtype=np.float32), shape)
            if obj.step_ms is not None and obj.step_ms <= 0:
                return None
            labels = _check_labels(obj.labels, values.shape[0]) if obj.labels is not None else None
        except (ValueError, WindowError):
            return None
        window = Window(sid, obj.window_id, obj.start, obj.step_ms, values, labels, obj.event_type)
        return window, obj.ts
    return None


def decode_json(data: bytes, shape: tuple[int, int] | None = None) -> Window:
    """Decode and validate one JSON window (bytes as they come off the topic or a recording line)."""
    fast = _decode_typed(data, shape)
    if fast is not None:
        return fast[0]
    return window_from_obj(parse_json(data), shape)


def decode_recording_line(data: bytes, shape: tuple[int, int] | None = None) -> tuple[Window, int | None]:
    """A recording line: the validated window and its ``_ts`` (None when absent or not an integer)."""
    fast = _decode_typed(data, shape)
    if fast is not None:
        return fast
    obj = parse_json(data)
    window = window_from_obj(obj, shape)
    ts = obj.get("_ts")
    return window, ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def decode_f32(data: bytes, headers: dict[str, bytes], shape: tuple[int, int]) -> Window:
    """Decode the binary codec: float32 little-endian row-major values, the other fields in headers."""

    def text(key: str) -> str | None:
        raw = headers.get(key)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WindowError("bad_encoding", f"header {key} is not valid UTF-8") from None

    def integer(key: str) -> int | None:
        s = text(key)
        if s is None:
            return None
        try:
            return int(s)
        except ValueError:
            raise WindowError("bad_field", f"header {key} must be an integer, got {s[:40]!r}") from None

    sid = text("series_id")
    if not sid or len(sid) > MAX_SERIES_ID:
        raise WindowError("missing_series_id", "header series_id must be a string of 1..256 characters")
    t, f = shape
    if len(data) == 0:
        raise WindowError("missing_values", "empty f32 payload")
    if len(data) != t * f * 4:
        raise WindowError("bad_shape", f"f32 payload of {len(data)} bytes, the model expects {t}x{f}x4")
    values = _check_shape(np.frombuffer(data, dtype="<f4").reshape(t, f).astype(np.float32), shape)
    step_ms = integer("step_ms")
    if step_ms is not None and step_ms <= 0:
        raise WindowError("bad_field", "header step_ms must be > 0")
    window_id = text("window_id")
    if window_id is not None and len(window_id) > MAX_WINDOW_ID:
        raise WindowError("bad_field", f"header window_id must be at most {MAX_WINDOW_ID} characters")
    return Window(
        series_id=sid,
        window_id=window_id,  # headers are text: an integer window_id comes back as a string
        start=integer("start"),
        step_ms=step_ms,
        values=values,
    )


def encode_f32(window: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Encode a window dict for the binary codec: (value bytes, Kafka headers)."""
    values = np.asarray(window["values"], dtype="<f4")
    headers = [("content-type", F32_CONTENT_TYPE.encode())]
    for key in ("series_id", "window_id", "start", "step_ms"):
        if window.get(key) is not None:
            headers.append((key, str(window[key]).encode()))
    return values.tobytes(), headers


# -- Kafka headers: a list of (key, value) pairs, a value possibly null ---------------------------------

CONTENT_TYPE = "content-type"


def header(headers: Sequence[tuple[str, bytes | None]], name: str) -> bytes | None:
    """The last non-null value of header ``name`` (case-insensitive), or None."""
    found = None
    for key, value in headers:
        if value is not None and key.lower() == name:
            found = value
    return found


def content_type(headers: Sequence[tuple[str, bytes | None]]) -> str:
    """The media type of the content-type header, lower case without parameters; "" when absent."""
    raw = header(headers, CONTENT_TYPE)
    if raw is None:
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WindowError("unknown_content_type", "the content-type header is not valid UTF-8") from None
    return text.split(";", 1)[0].strip().lower()


def encode_json(obj: Any) -> bytes:
    """Output and dead-letter records: compact JSON bytes (numpy scalars not allowed; use plain types)."""
    return _json_encoder.encode(obj)
