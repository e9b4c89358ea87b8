"""One consumed message -> a validated :class:`~detector.codec.Window`, or a WindowError with its reason.

The content-type header picks the codec: none, ``application/json`` -> JSON; ``application/x-detector-f32``
-> the binary codec; anything else -> ``unknown_content_type``. A value larger than
``limits.max_message_bytes`` is ``oversize`` whatever its codec. A header whose value is null counts as absent.
Whatever a message holds, decoding it raises nothing but WindowError: a fault no reason names is
``decode_failed``, so one message can never stop the loop that reads it.
"""

from __future__ import annotations

from detector.codec import (
    F32_CONTENT_TYPE,
    JSON_CONTENT_TYPES,
    Window,
    content_type,
    decode_f32,
    decode_json,
    header,
    parse_json,
)
from detector.errors import WindowError
from detector.serve.messages import Message


def decode_message(message: Message, shape: tuple[int, int], max_bytes: int) -> Window:
    """Decode and validate one message for a model of window shape (T, F); raises WindowError only."""
    try:
        return _decode(message, shape, max_bytes)
    except WindowError:
        raise
    except Exception as err:  # a decoder fault on input nobody foresaw: still that one message's dead letter
        raise WindowError("decode_failed", f"{type(err).__name__}: {err}") from None


def _decode(message: Message, shape: tuple[int, int], max_bytes: int) -> Window:
    value = message.value or b""
    if len(value) > max_bytes:
        raise WindowError("oversize", f"{len(value)} bytes, more than limits.max_message_bytes ({max_bytes})")
    kind = content_type(message.headers)
    if kind in JSON_CONTENT_TYPES:
        return decode_json(value, shape)
    if kind == F32_CONTENT_TYPE:
        return decode_f32(value, {k: v for k, v in message.headers if v is not None}, shape)
    raise WindowError("unknown_content_type", f"content-type {kind!r} is neither JSON nor {F32_CONTENT_TYPE}")


def series_id_hint(message: Message, max_bytes: int, max_chars: int = 80) -> str | None:
    """The series_id of a message that failed to decode, when one can still be read, cut to ``max_chars``
    (for the log line). Never raises."""
    try:
        raw = header(message.headers, "series_id")
        if raw is not None:
            return raw[: 4 * max_chars].decode("utf-8", errors="replace")[:max_chars]
        value = message.value
        if not value or len(value) > max_bytes:
            return None
        obj = parse_json(value)
        sid = obj.get("series_id") if isinstance(obj, dict) else None
        return sid[:max_chars] if isinstance(sid, str) else None
    except Exception:
        return None
