"""Input codecs: JSON and f32 windows decode to validated float32 arrays, or fail with a stable reason."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detector.codec import F32_CONTENT_TYPE, decode_f32, decode_json, encode_f32, window_from_obj
from detector.errors import WindowError

T, F = 8, 4
# 8 rows of 4 features: row t holds t, t + 0.5, -t, 1000 * t (all exactly representable in float32).
ROWS = [[t, t + 0.5, -t, 1000.0 * t] for t in range(T)]
LABELS = [0, 0, 0, 1, 1, 0, 0, 0]


def _window(**changes: Any) -> dict[str, Any]:
    """A valid (T=8, F=4) window dict with ``changes`` applied; a value of ``...`` removes the key."""
    obj: dict[str, Any] = {
        "series_id": "pump-7",
        "window_id": "pump-7/42",
        "start": 1_767_225_600_000,
        "step_ms": 1000,
        "values": ROWS,
        "labels": LABELS,
    }
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _reason(fn: Any, *args: Any) -> str:
    """The reason code of the WindowError that ``fn(*args)`` raises; its message must be one line."""
    with pytest.raises(WindowError) as info:
        fn(*args)
    assert str(info.value)
    assert "\n" not in str(info.value)
    return info.value.reason


# --- JSON: accepted windows -------------------------------------------------------------------------


def test_valid_json_window_decodes_to_float32_rows_and_fields() -> None:
    """A valid JSON window becomes a float32 (T, F) array with its series, id, start, step and int8 labels."""
    w = decode_json(_json(_window()), (T, F))
    assert w.values.dtype == np.float32
    assert w.values.shape == (T, F)
    np.testing.assert_array_equal(w.values, np.asarray(ROWS, dtype=np.float32))
    assert (w.series_id, w.window_id, w.start, w.step_ms) == ("pump-7", "pump-7/42", 1_767_225_600_000, 1000)
    assert w.labels is not None
    assert w.labels.dtype == np.int8
    assert w.labels.tolist() == LABELS


def test_integer_window_id_stays_an_integer() -> None:
    """window_id may be an integer in JSON and is kept as one."""
    assert decode_json(_json(_window(window_id=17))).window_id == 17


def test_flat_list_is_one_feature() -> None:
    """A flat list of T numbers is accepted as F = 1 and becomes shape (T, 1)."""
    w = decode_json(_json(_window(values=[1.5, 2.5, 3.5], labels=...)), (3, 1))
    assert w.values.shape == (3, 1)
    assert w.values.dtype == np.float32
    assert w.values[:, 0].tolist() == [1.5, 2.5, 3.5]


def test_series_id_of_256_characters_is_accepted() -> None:
    """256 characters is the longest series_id accepted (257 is missing_series_id)."""
    assert decode_json(_json(_window(series_id="x" * 256))).series_id == "x" * 256


def test_absent_optional_fields_are_none() -> None:
    """Without window_id, start, step_ms and labels the window carries None for each."""
    w = decode_json(_json(_window(window_id=..., start=..., step_ms=..., labels=...)))
    assert (w.window_id, w.start, w.step_ms, w.labels) == (None, None, None, None)


def test_window_from_obj_accepts_an_already_decoded_dict() -> None:
    """window_from_obj validates a dict the same way decode_json validates bytes."""
    w = window_from_obj(_window(), (T, F))
    np.testing.assert_array_equal(w.values, np.asarray(ROWS, dtype=np.float32))


# --- JSON: every reason code decode_json can produce -------------------------------------------------

REJECTED_JSON = [
    pytest.param(b"\xff\xfe{", None, "bad_encoding", id="bad_encoding-not-utf8"),
    pytest.param(b'{"series_id": "a", "values": [1, 2]', None, "bad_json", id="bad_json-truncated"),
    pytest.param(b"", None, "bad_json", id="bad_json-empty"),
    # msgspec follows RFC 8259: the NaN / Infinity literals Python's json.dumps writes are not JSON at all,
    # so they are bad_json, not non_finite.
    pytest.param(b'{"series_id": "a", "values": [1, NaN]}', None, "bad_json", id="bad_json-NaN-literal"),
    pytest.param(b'{"series_id": "a", "values": [Infinity]}', None, "bad_json", id="bad_json-Infinity"),
    pytest.param(b"[1, 2]", None, "not_object", id="not_object-list"),
    pytest.param(b"3.5", None, "not_object", id="not_object-number"),
    pytest.param(b'"a string"', None, "not_object", id="not_object-string"),
    pytest.param(_json(_window(series_id=...)), None, "missing_series_id", id="missing_series_id-absent"),
    pytest.param(_json(_window(series_id="")), None, "missing_series_id", id="missing_series_id-empty"),
    pytest.param(_json(_window(series_id=7)), None, "missing_series_id", id="missing_series_id-int"),
    pytest.param(_json(_window(series_id="x" * 257)), None, "missing_series_id", id="missing_series_id-257"),
    pytest.param(_json(_window(values=...)), None, "missing_values", id="missing_values-absent"),
    pytest.param(_json(_window(values=[])), None, "missing_values", id="missing_values-empty"),
    pytest.param(_json(_window(values="1,2,3")), None, "missing_values", id="missing_values-string"),
    pytest.param(_json(_window(values=[[1, 2], [3]], labels=...)), None, "bad_values", id="bad_values-ragged"),
    pytest.param(_json(_window(values=["a", "b"], labels=...)), None, "bad_values", id="bad_values-strings"),
    pytest.param(_json(_window(values=[[[1]]], labels=...)), None, "bad_values", id="bad_values-too-deep"),
    pytest.param(_json(_window(values=[[]], labels=...)), None, "bad_values", id="bad_values-empty-row"),
    pytest.param(_json(_window(values=[True, 1], labels=...)), None, "bad_values", id="bad_values-bool"),
    # 1e39 is a finite JSON number but overflows float32 (max ~3.4e38): it becomes inf in the window.
    pytest.param(
        _json(_window(values=[1.0, 1e39], labels=...)),
        None,
        "non_finite",
        id="non_finite-float32-overflow",
        marks=pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
    ),
    pytest.param(_json(_window()), (T + 1, F), "bad_shape", id="bad_shape-T"),
    pytest.param(_json(_window()), (T, F - 1), "bad_shape", id="bad_shape-F"),
    pytest.param(_json(_window(labels=[0, 1])), None, "bad_labels", id="bad_labels-too-short"),
    pytest.param(_json(_window(labels=[0] * 7 + [2])), None, "bad_labels", id="bad_labels-two"),
    pytest.param(_json(_window(labels=[0] * 7 + [-1])), None, "bad_labels", id="bad_labels-minus-one"),
    pytest.param(_json(_window(labels=[0] * 7 + [256])), None, "bad_labels", id="bad_labels-int8-overflow"),
    pytest.param(_json(_window(labels="00010000")), None, "bad_labels", id="bad_labels-string"),
    pytest.param(_json(_window(window_id=[1])), None, "bad_field", id="bad_field-window_id-list"),
    pytest.param(_json(_window(window_id=True)), None, "bad_field", id="bad_field-window_id-bool"),
    pytest.param(_json(_window(start="1767225600000")), None, "bad_field", id="bad_field-start-string"),
    pytest.param(_json(_window(start=1.5)), None, "bad_field", id="bad_field-start-float"),
    pytest.param(_json(_window(step_ms=0)), None, "bad_field", id="bad_field-step_ms-zero"),
    pytest.param(_json(_window(step_ms=-1000)), None, "bad_field", id="bad_field-step_ms-negative"),
]


@pytest.mark.parametrize(("data", "shape", "reason"), REJECTED_JSON)
def test_json_rejections_carry_their_reason(data: bytes, shape: tuple[int, int] | None, reason: str) -> None:
    """Each kind of bad JSON window raises WindowError with its documented reason and a one-line message."""
    assert _reason(decode_json, data, shape) == reason


def test_window_from_obj_rejects_nan_as_non_finite() -> None:
    """A NaN or infinity in an already-decoded dict (json.loads accepts NaN) is non_finite."""
    assert _reason(window_from_obj, _window(values=[1.0, float("nan")], labels=...)) == "non_finite"
    assert _reason(window_from_obj, _window(values=[[float("-inf")]], labels=...)) == "non_finite"


def test_invalid_utf8_inside_a_string_is_bad_encoding() -> None:
    """Invalid UTF-8 inside a well-formed JSON string is bad_encoding, not an uncaught exception."""
    assert _reason(decode_json, b'{"series_id": "\xff", "values": [1]}') == "bad_encoding"


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(["1", "2"], id="numeric-strings"),
        pytest.param([1, True], id="late-bool"),
        pytest.param([[True, 1.0]], id="bool-in-row"),
        pytest.param([1, None], id="null"),
    ],
)
def test_non_numbers_among_values_are_bad_values(values: list[Any]) -> None:
    """Strings, booleans and nulls anywhere among the values are bad_values ('not numbers')."""
    assert _reason(decode_json, _json(_window(values=values, labels=...))) == "bad_values"


def test_fractional_labels_are_bad_labels() -> None:
    """A label of 0.5 is not an integer in {0, 1} and is rejected as bad_labels."""
    assert _reason(decode_json, _json(_window(labels=[0.5] + [0] * 7))) == "bad_labels"


def test_json_number_beyond_float64_is_non_finite() -> None:
    """A JSON number too large for float64 (1e400, which Python's json reads as inf) is non_finite."""
    assert _reason(decode_json, b'{"series_id": "a", "values": [1, 1e400]}') == "non_finite"


# --- f32 codec --------------------------------------------------------------------------------------


def _f32(window: dict[str, Any]) -> tuple[bytes, dict[str, bytes]]:
    payload, headers = encode_f32(window)
    return payload, dict(headers)


def test_f32_round_trip_gives_identical_values_and_fields() -> None:
    """encode_f32 then decode_f32 returns the same float32 values and the same string/int fields."""
    payload, headers = _f32(_window())
    assert headers["content-type"] == F32_CONTENT_TYPE.encode()
    # Little-endian float32 row-major: 8 * 4 values of 4 bytes.
    assert len(payload) == T * F * 4
    w = decode_f32(payload, headers, (T, F))
    assert w.values.dtype == np.float32
    np.testing.assert_array_equal(w.values, np.asarray(ROWS, dtype=np.float32))
    assert (w.series_id, w.window_id, w.start, w.step_ms) == ("pump-7", "pump-7/42", 1_767_225_600_000, 1000)


def test_f32_payload_is_little_endian_row_major() -> None:
    """The f32 payload is the values' little-endian float32 bytes in row-major order."""
    payload, _ = _f32(_window(values=[[1.0, 2.0], [3.0, 4.0]]))
    assert payload == np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4").tobytes()


REJECTED_F32 = [
    # 8x4 floats need 128 bytes; 124 is one value short.
    pytest.param(bytes(124), {"series_id": b"s"}, "bad_shape", id="bad_shape-short"),
    pytest.param(bytes(132), {"series_id": b"s"}, "bad_shape", id="bad_shape-long"),
    pytest.param(b"", {"series_id": b"s"}, "missing_values", id="missing_values-empty"),
    pytest.param(bytes(128), {}, "missing_series_id", id="missing_series_id-absent"),
    pytest.param(bytes(128), {"series_id": b""}, "missing_series_id", id="missing_series_id-empty"),
    pytest.param(bytes(128), {"series_id": b"x" * 257}, "missing_series_id", id="missing_series_id-257"),
    pytest.param(bytes(128), {"series_id": b"\xff"}, "bad_encoding", id="bad_encoding-series_id"),
    pytest.param(bytes(128), {"series_id": b"s", "start": b"soon"}, "bad_field", id="bad_field-start"),
    pytest.param(
        np.r_[np.zeros(T * F - 1), np.nan].astype("<f4").tobytes(),
        {"series_id": b"s"},
        "non_finite",
        id="non_finite-nan",
    ),
    pytest.param(
        np.r_[np.inf, np.zeros(T * F - 1)].astype("<f4").tobytes(),
        {"series_id": b"s"},
        "non_finite",
        id="non_finite-inf",
    ),
]


@pytest.mark.parametrize(("payload", "headers", "reason"), REJECTED_F32)
def test_f32_rejections_carry_their_reason(payload: bytes, headers: dict[str, bytes], reason: str) -> None:
    """Each kind of bad f32 message raises WindowError with its documented reason and a one-line message."""
    assert _reason(decode_f32, payload, headers, (T, F)) == reason


@pytest.mark.parametrize("step", [b"0", b"-1000"])
def test_f32_non_positive_step_ms_is_bad_field(step: bytes) -> None:
    """A step_ms header of 0 or less is bad_field, as it is in JSON."""
    assert _reason(decode_f32, bytes(T * F * 4), {"series_id": b"s", "step_ms": step}, (T, F)) == "bad_field"


# --- properties -------------------------------------------------------------------------------------

_finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_series_id = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=256)
_arrays = st.tuples(st.integers(1, 16), st.integers(1, 4)).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=_finite_f32)
)


@settings(max_examples=60, deadline=None)
@given(values=_arrays, series_id=_series_id)
def test_json_and_f32_round_trip_any_finite_window(values: np.ndarray, series_id: str) -> None:
    """Any finite float32 (T, F) window with any 1..256-character series id survives both codecs unchanged."""
    t, f = values.shape
    data = json.dumps({"series_id": series_id, "values": values.tolist()}).encode()
    w = decode_json(data, (t, f))
    assert w.series_id == series_id
    # float32 -> Python float is exact, json writes the shortest repr that reads back to the same float64,
    # and that float64 casts back to the same float32: the round trip is exact, not merely within rounding.
    np.testing.assert_array_equal(w.values, values)

    payload, headers = encode_f32({"series_id": series_id, "values": values})
    w32 = decode_f32(payload, dict(headers), (t, f))
    assert w32.series_id == series_id
    assert w32.values.tobytes() == values.astype("<f4").tobytes()


# --- the fast path agrees with the generic one --------------------------------------------------------

_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.lists(st.integers(0, 2), max_size=3),
)


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values nine times in ten, anything JSON else: with eight fields, both paths get exercised."""
    return st.one_of(*[valid] * 9, _ANY)


_VALUES = st.one_of(
    st.lists(st.lists(st.floats(-1e6, 1e6) | st.integers(-5, 5), min_size=F, max_size=F), min_size=T, max_size=T),
    st.lists(st.lists(st.floats(-1e40, 1e40), min_size=F, max_size=F), min_size=T, max_size=T),
    st.lists(st.floats(-1e3, 1e3) | st.integers(-5, 5), min_size=T, max_size=T),
    st.lists(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=1), min_size=T, max_size=T),
    st.lists(st.lists(st.integers(-5, 5) | st.booleans() | st.none(), min_size=1, max_size=F), min_size=1, max_size=T),
    st.lists(st.floats(-1e3, 1e3) | st.text(max_size=1), min_size=1, max_size=T),
    _ANY,
)


@settings(max_examples=400, deadline=None)
@given(
    values=_VALUES,
    series_id=_mostly(st.text(min_size=1, max_size=3)) | st.text(min_size=255, max_size=257),
    window_id=_mostly(st.none() | st.text(max_size=3) | st.integers(-(2**63), 2**63 - 1)),
    start=_mostly(st.none() | st.integers(-(2**63), 2**63 - 1)),
    step_ms=_mostly(st.none() | st.integers(-1, 2**40)),
    labels=_mostly(st.none() | st.lists(st.integers(0, 1), min_size=T, max_size=T)),
    event_type=_mostly(st.none() | st.text(max_size=3)),
    ts=_mostly(st.none() | st.integers(0, 2**45)),
    shape=st.sampled_from([None, (T, F), (T, F), (T, 1)]),
)
def test_fast_json_path_accepts_and_rejects_exactly_as_the_generic_path(
    values: Any,
    series_id: Any,
    window_id: Any,
    start: Any,
    step_ms: Any,
    labels: Any,
    event_type: Any,
    ts: Any,
    shape: tuple[int, int] | None,
) -> None:
    """decode_json and decode_recording_line give the same window, or the same reason, as window_from_obj."""
    from detector.codec import decode_recording_line, parse_json

    obj = {"series_id": series_id, "values": values, "window_id": window_id, "start": start}
    obj.update({"step_ms": step_ms, "labels": labels, "event_type": event_type, "_ts": ts})
    data = _json(obj)
    try:
        with np.errstate(over="ignore"):
            expected = window_from_obj(parse_json(data), shape)
    except WindowError as err:
        reason = err.reason
    else:
        reason = None
    if reason is not None:
        assert _reason(decode_json, data, shape) == reason
        assert _reason(decode_recording_line, data, shape) == reason
        return
    with np.errstate(over="ignore"):
        got, got_ts = decode_recording_line(data, shape)
        assert_same_window(decode_json(data, shape), expected)
    assert_same_window(got, expected)
    assert got_ts == (ts if isinstance(ts, int) and not isinstance(ts, bool) else None)


def assert_same_window(got: Any, expected: Any) -> None:
    for field in ("series_id", "window_id", "start", "step_ms", "event_type"):
        assert getattr(got, field) == getattr(expected, field)
        assert type(getattr(got, field)) is type(getattr(expected, field))
    assert got.values.dtype == expected.values.dtype
    np.testing.assert_array_equal(got.values, expected.values)
    if expected.labels is None:
        assert got.labels is None
    else:
        assert got.labels.dtype == expected.labels.dtype
        np.testing.assert_array_equal(got.labels, expected.labels)
