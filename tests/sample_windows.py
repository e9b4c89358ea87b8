"""Input windows and bad messages for the serving tests (unit and integration), built for a (T, F) model."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from detector.codec import encode_f32

# Every dead-letter reason the daemon gives, each with a message that earns it.
REASONS = (
    "bad_encoding",
    "bad_json",
    "not_object",
    "missing_series_id",
    "missing_values",
    "bad_values",
    "non_finite",
    "bad_shape",
    "bad_labels",
    "bad_field",
    "oversize",
    "unknown_content_type",
)


def window(series: str, i: int, t: int, f: int, *, with_id: bool = True) -> dict[str, Any]:
    """Window ``i`` of a series: a noisy sine per feature, deterministic in (series, i)."""
    rng = np.random.default_rng([i, *series.encode()])
    steps = np.arange(t)[:, None] + i * t
    values = np.sin(steps / 9.0 + np.arange(f)) * 5 + rng.normal(0, 0.3, (t, f))
    obj: dict[str, Any] = {
        "series_id": series,
        "start": 1_767_225_600_000 + i * t * 1000,
        "step_ms": 1000,
        "values": np.round(values, 4).tolist(),
    }
    if with_id:
        obj["window_id"] = f"{series}/{i}"
    return obj


def encode(obj: dict[str, Any], binary: bool = False) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of a window in the JSON codec, or the f32 codec when ``binary``."""
    if binary:
        return encode_f32(obj)
    return msgspec.json.encode(obj), []


def bad_messages(t: int, f: int, max_bytes: int) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """One (reason, value, headers) per reason in REASONS, for a model of shape (T, F)."""
    good = window("bad-neighbour", 0, t, f)

    def js(**changes: Any) -> bytes:
        obj = {**good, **changes}
        return msgspec.json.encode({k: v for k, v in obj.items() if v is not ...})

    rows = b",".join([b"[" + b",".join([b"1e400"] * f) + b"]"] * t)
    cases = {
        "bad_encoding": b'{"series_id": "\xff\xfe", "values": []}',
        "bad_json": b'{"series_id": "s", "values": [[1, 2',
        "not_object": b"[1, 2, 3]",
        "missing_series_id": js(series_id=...),
        "missing_values": js(values=[]),
        "bad_values": js(values=[[1.0] * f, [1.0] * (f + 1)]),
        "non_finite": b'{"series_id": "s", "values": [' + rows + b"]}",
        "bad_shape": js(values=[[1.0] * f] * (t + 1)),
        "bad_labels": js(labels=[2] * t),
        "bad_field": js(step_ms=0),
        "oversize": js(padding="x" * max_bytes),
        "unknown_content_type": js(),
    }
    headers = {"unknown_content_type": [("content-type", b"application/avro")]}
    return [(reason, cases[reason], headers.get(reason, [])) for reason in REASONS]
