"""One consumed message -> a validated :class:`~detector.codec.Window`, or a WindowError with its reason.

The content-type header picks the codec (DESIGN.md): none, ``application/json`` -> JSON;
``application/x-detector-f32`` -> the binary codec; anything else -> ``unknown_content_type``. A value
larger than ``limits.max_message_bytes`` is ``oversize`` whatever its codec.
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.codec import F32_CONTENT_TYPE, JSON_CONTENT_TYPES, Window, decode_f32, decode_json, parse_json
from detector.errors import WindowError
from detector.serve.messages import Message

CONTENT_TYPE = "content-type"


def header(headers: Sequence[tuple[str, bytes]], name: str) -> bytes | None:
    """The last value of header ``name`` (case-insensitive), or None."""
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value
    return found


def content_type(headers: Sequence[tuple[str, bytes]]) -> str:
    """The media type of the content-type header, lower case without parameters; "" when absent."""
    raw = header(headers, CONTENT_TYPE)
    if raw is None:
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WindowError("unknown_content_type", "the content-type header is not valid UTF-8") from None
    return text.split(";", 1)[0].strip().lower()


def decode_message(message: Message, shape: tuple[int, int], max_bytes: int) -> Window:
    """Decode and validate one message for a model of window shape (T, F)."""
    value = message.value or b""
    if len(value) > max_bytes:
        raise WindowError("oversize", f"{len(value)} bytes, more than limits.max_message_bytes ({max_bytes})")
    kind = content_type(message.headers)
    if kind in JSON_CONTENT_TYPES:
        return decode_json(value, shape)
    if kind == F32_CONTENT_TYPE:
        return decode_f32(value, dict(message.headers), shape)
    raise WindowError("unknown_content_type", f"content-type {kind!r} is neither JSON nor {F32_CONTENT_TYPE}")


def series_id_hint(message: Message, max_bytes: int) -> str | None:
    """The series_id of a message that failed to decode, when one can still be read (for the log line)."""
    raw = header(message.headers, "series_id")
    if raw is not None:
        return raw.decode("utf-8", errors="replace")
    value = message.value
    if not value or len(value) > max_bytes:
        return None
    try:
        obj = parse_json(value)
    except WindowError:
        return None
    sid = obj.get("series_id") if isinstance(obj, dict) else None
    return sid if isinstance(sid, str) else None
