"""Decoding a consumed message: the content-type header picks the codec; size is checked first."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from detector.codec import encode_f32
from detector.errors import WindowError
from detector.serve.decode import decode_message, series_id_hint
from detector.serve.dlq import dead_letter
from detector.serve.messages import Message

T, F = 8, 2
WINDOW = {"series_id": "pump-7", "window_id": "w1", "start": 0, "step_ms": 10, "values": np.ones((T, F)).tolist()}


def message(value: bytes | None, headers=(), key: bytes | None = b"pump-7") -> Message:
    return Message("windows", 1, 42, key, value, tuple(headers), 1000)


@pytest.mark.parametrize("content_type", [None, b"application/json", b"Application/JSON; charset=utf-8", b""], ids=str)
def test_json_is_the_default_and_accepts_parameters(content_type):
    """No content-type, application/json (any case, with parameters) and an empty one decode as JSON."""
    headers = [] if content_type is None else [("Content-Type", content_type)]
    window = decode_message(message(msgspec.json.encode(WINDOW), headers), (T, F), 10_000)
    assert (window.series_id, window.window_id, window.values.shape) == ("pump-7", "w1", (T, F))


def test_the_f32_codec_is_chosen_by_its_header():
    """application/x-detector-f32 decodes the binary codec with the fields from headers."""
    value, headers = encode_f32(WINDOW)
    window = decode_message(message(value, headers), (T, F), 10_000)
    assert (window.series_id, window.window_id, window.start) == ("pump-7", "w1", 0)
    np.testing.assert_array_equal(window.values, np.ones((T, F), dtype=np.float32))


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"x" * 1001, [], "oversize"),
        (b"x" * 1001, [("content-type", b"application/avro")], "oversize"),
        (msgspec.json.encode(WINDOW), [("content-type", b"text/csv")], "unknown_content_type"),
        (msgspec.json.encode(WINDOW), [("content-type", b"\xff")], "unknown_content_type"),
        (None, [], "bad_json"),
    ],
)
def test_failures_carry_their_reason(value, headers, reason):
    """Oversize wins over everything; an unknown or undecodable content-type is its own reason."""
    with pytest.raises(WindowError) as err:
        decode_message(message(value, headers), (T, F), 1000)
    assert err.value.reason == reason


def test_series_id_hint_reads_what_it_can():
    """The log line of a dead letter names the series when the JSON or the headers still say it."""
    assert series_id_hint(message(b'{"series_id": "a", "values": 3}'), 1000) == "a"
    assert series_id_hint(message(b"\x00", [("series_id", b"b")]), 1000) == "b"
    assert series_id_hint(message(b"not json"), 1000) is None
    assert series_id_hint(message(b'{"series_id": "a"}'), 5) is None


def test_a_message_with_neither_key_nor_value_still_makes_a_dead_letter():
    """Kafka needs a key or a value: the dead letter of an empty message carries an empty value."""
    record = dead_letter(message(None, key=None), WindowError("bad_json", "empty"), "dlq")
    assert (record.key, record.value) == (None, b"")
    assert dict(record.headers)["source.offset"] == b"42"
