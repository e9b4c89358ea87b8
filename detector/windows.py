"""A set of validated windows of one shape as arrays (:class:`WindowSet`). Pure: reading and writing
recordings is :mod:`detector.recordings`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.codec import Window, default_window_id


@dataclass
class WindowSet:
    """All windows of a recording as arrays. ``labels`` (N, T) int8 when every window carries them."""

    values: np.ndarray  # (N, T, F) float32
    labels: np.ndarray | None  # (N, T) int8
    series_ids: list[str]
    window_ids: list[str | int]
    starts: list[int | None]
    step_ms: list[int | None]
    event_types: list[str | None]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[1], self.values.shape[2]

    @property
    def window_labels(self) -> np.ndarray | None:
        """A window's own label: 1 when any of its step labels is 1."""
        return None if self.labels is None else self.labels.max(axis=1)

    def time_order(self) -> list[int]:
        """Window indices series by series (by id), each series' windows by start (missing: 0), ties in
        line order."""
        return sorted(range(len(self)), key=lambda i: (self.series_ids[i], self.starts[i] or 0, i))

    def segments(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """Contiguous runs of each series (windows whose starts follow on exactly), as (series_id, values,
        labels)."""
        order = self.time_order()
        t = self.values.shape[1]
        runs: list[list[int]] = []
        for i in order:
            prev = runs[-1][-1] if runs else None
            if (
                prev is not None
                and self.series_ids[prev] == self.series_ids[i]
                and self.starts[prev] is not None
                and self.step_ms[prev]
                and self.starts[i] == self.starts[prev] + t * self.step_ms[prev]
            ):
                runs[-1].append(i)
            else:
                runs.append([i])
        out = []
        for run in runs:
            vals = self.values[run].reshape(-1, self.values.shape[2])
            labs = None if self.labels is None else self.labels[run].reshape(-1)
            out.append((self.series_ids[run[0]], vals, labs))
        return out


def from_windows(windows: list[Window], name: str, lines: Sequence[int] | None = None) -> WindowSet:
    """Stack validated windows of one shape. A missing window_id becomes
    :func:`~detector.codec.default_window_id`'s for line ``lines[i]`` of a recording named ``name`` (default:
    the windows are lines 1, 2, ... in order), the one every scoring path gives that line."""
    if lines is None:
        lines = range(1, len(windows) + 1)
    labelled = all(w.labels is not None for w in windows)
    return WindowSet(
        values=np.stack([w.values for w in windows]),
        labels=np.stack([w.labels for w in windows]) if labelled else None,  # type: ignore[misc]
        series_ids=[w.series_id for w in windows],
        window_ids=[
            w.window_id if w.window_id is not None else default_window_id(name, 0, line)
            for w, line in zip(windows, lines, strict=True)
        ],
        starts=[w.start for w in windows],
        step_ms=[w.step_ms for w in windows],
        event_types=[w.event_type for w in windows],
    )
