"""Synthetic events: spikes, level shifts, noise bursts, flat lines and drifts, written into series in place.

Each event comes with its step mask, so a series gets labelled events where it has none. Every kind draws
its size, length and position at random; sizes are in units of the series' local noise scale so that the
same event is as visible on a series around 0.5 as on one around 100,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EVENT_KINDS: tuple[str, ...] = ("spike", "level_shift", "noise_burst", "flat_line", "drift")


@dataclass(frozen=True)
class EventSpec:
    """Ranges the random events are drawn from; sizes are multiples of the local noise scale."""

    spike_size: tuple[float, float] = (5.0, 10.0)
    spike_length: tuple[int, int] = (1, 3)
    shift_size: tuple[float, float] = (3.5, 7.0)
    shift_length: tuple[int, int] = (8, 32)
    burst_gain: tuple[float, float] = (3.0, 6.0)
    burst_length: tuple[int, int] = (6, 24)
    flat_length: tuple[int, int] = (10, 32)
    drift_size: tuple[float, float] = (5.0, 9.0)
    drift_length: tuple[int, int] = (12, 40)
    all_features_share: float = 0.3  # chance that an event hits every feature rather than one
    gain: tuple[float, float] = (1.0, 1.0)  # extra log-uniform factor on every size (training widens it)
    tail_share: float = 0.0  # chance that an event runs to the window's last step (one still under way)


def noise_scale(x: np.ndarray) -> np.ndarray:
    """Robust scale of step-to-step changes per feature: MAD of first differences (x: (T, F) -> (F,), or
    windows (N, T, F) -> (N, F), each window on its own)."""
    floor = 1e-6 * (np.abs(np.median(x, axis=-2)) + 1.0)
    if x.shape[-2] < 2:
        return floor
    d = np.diff(x, axis=-2)
    mad = np.median(np.abs(d - np.median(d, axis=-2, keepdims=True)), axis=-2) * 1.4826
    return np.maximum(mad / np.sqrt(2.0), floor)


def inject_event(
    x: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    spec: EventSpec | None = None,
    start: int | None = None,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Write one random event into ``x`` (shape (T, F), changed in place); return its step mask and kind.

    The mask is 1 on exactly the steps whose values the event changed: a flat line drawn over rows that
    already hold one value (a series at rest at 0, say) changes nothing and is no event, and a spike too
    small to change a float32 row is none either. ``scale`` (F,) is the scale to size the event by; the
    window's noise scale (:func:`noise_scale`) when not given.
    """
    spec = spec or EventSpec()
    kind = kind or EVENT_KINDS[int(rng.integers(len(EVENT_KINDS)))]
    t_len, n_feat = x.shape
    if start is None and spec.tail_share > 0 and rng.random() < spec.tail_share:
        start = t_len  # placed as late as its length allows: it ends on the last step
    sigma = noise_scale(x) if scale is None else scale
    if n_feat > 1 and rng.random() < spec.all_features_share:
        feats = np.arange(n_feat)
    else:
        feats = np.array([int(rng.integers(n_feat))])
    sign = np.where(rng.random(len(feats)) < 0.5, -1.0, 1.0)
    gain = np.exp(rng.uniform(*np.log(spec.gain))) if spec.gain != (1.0, 1.0) else 1.0
    s = sigma[feats] * sign * gain

    def span(bounds: tuple[int, int]) -> tuple[int, int]:
        length = int(rng.integers(bounds[0], bounds[1] + 1))
        length = min(length, t_len)
        lo = int(rng.integers(0, t_len - length + 1)) if start is None else min(start, t_len - length)
        return lo, lo + length

    before = x.copy()
    mask = np.zeros(t_len, dtype=np.int8)
    if kind == "spike":
        lo, hi = span(spec.spike_length)
        x[lo:hi, feats] += rng.uniform(*spec.spike_size) * s
        mask[lo:hi] = 1
    elif kind == "level_shift":
        lo, hi = span(spec.shift_length)
        x[lo:hi, feats] += rng.uniform(*spec.shift_size) * s
        mask[lo:hi] = 1
    elif kind == "noise_burst":
        lo, hi = span(spec.burst_length)
        burst = rng.uniform(*spec.burst_gain) * gain
        x[lo:hi, feats] += rng.standard_normal((hi - lo, len(feats))) * burst * sigma[feats] * np.sqrt(2.0)
        mask[lo:hi] = 1
    elif kind == "flat_line":
        lo, hi = span(spec.flat_length)
        x[lo:hi, feats] = x[max(lo - 1, 0), feats]  # held at the last value before the event
        mask[lo:hi] = 1
    elif kind == "drift":
        lo, hi = span(spec.drift_length)
        ramp = np.arange(1, hi - lo + 1)[:, None] / (hi - lo)
        x[lo:hi, feats] += ramp * rng.uniform(*spec.drift_size) * s
        mask[lo:hi] = 1
    else:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
    mask &= (x != before).any(axis=1)
    return mask, kind


def inject_batch(
    values: np.ndarray,
    rng: np.random.Generator,
    rate: float,
    kinds: Sequence[str] = EVENT_KINDS,
    spec: EventSpec | None = None,
    scales: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Inject one event into a random ``rate`` share of windows (values (N, T, F)); return a copy.

    ``scales`` (N, F) sizes each window's event (default: the window's own noise scale). Returns (values,
    step masks (N, T) int8, kind per window or "" where none was injected or the event changed nothing).
    """
    out = values.copy()
    masks = np.zeros(values.shape[:2], dtype=np.int8)
    names = [""] * len(values)
    for i in np.flatnonzero(rng.random(len(values)) < rate):
        kind = kinds[int(rng.integers(len(kinds)))]
        scale = None if scales is None else scales[i]
        masks[i], name = inject_event(out[i], rng, kind=kind, spec=spec, scale=scale)
        names[i] = name if masks[i].any() else ""
    return out, masks, names
