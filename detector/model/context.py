"""Per-series context: where a window sits against its own series' past.

A window alone cannot tell a series that is always spiky from one that has just broken: normalised by its
own median and noise (:mod:`detector.model.features`), every spike looks alike. So each window is also
given a *context*: per feature, a location and a robust scale of its series' levels over the last
``HISTORY_BLOCKS`` blocks of ``BLOCK_ROWS`` rows seen before it, the same over its last ``RECENT_BLOCKS``
blocks alone (the recent context), the highest and lowest rows of those ``HISTORY_BLOCKS`` blocks (the
series' range), its recent noise, plus how much history that is. The network reads
``asinh((x - location) / scale)`` beside its window channels, and how far a step is from its series'
normal (:mod:`detector.model.features`): from the nearer of the two levels (a step is far from its
series' history only when it is far from both its long-run and its recent levels, so a level a series has
moved to and held for a few hundred rows becomes its new normal, while the first rows of the move stand
out), plus, for narrow models, how far it goes beyond anything the series did in its long-run history, in
units of its recent noise (a series climbing to heights it has never reached stays unusual while it
climbs).

A series' history is kept as block summaries, not rows: each completed block of ``BLOCK_ROWS`` rows leaves
its median, its robust scale, its mean absolute deviation, its highest and its lowest row per feature
(:func:`block_summary`, ``SUMMARY_ROWS`` rows), so that a series costs a few KiB whatever its history, and
a context is cheap to measure. From the blocks held (:func:`pooled_context`): the location is the median of
the block medians; the scale is the larger of the spread of the block medians (the series moving between
blocks) and the median scale within a block (its noise), both as 1.4826 x MAD, or 1.2533 x the mean
absolute deviation where the MAD is 0 (a series that mostly holds one value). The recent noise is that
median scale within a block over the recent blocks alone.

One definition serves training and scoring alike:

- :class:`History` keeps each series' rows in the order they arrive and gives each window its context
  *before* adding the window's new rows. A window's context therefore covers its series up to the last
  completed block: up to ``BLOCK_ROWS`` rows plus one window before the window's last row. Training draws
  contexts the same way (:func:`warm_context` over the blocks completed 1 to ``T + BLOCK_ROWS`` rows
  before a window's end).
- A series with no completed block is *cold*: the window is its own context (its own median and level
  scale as both the long-run and the recent context, its own highest and lowest rows as the range, its
  level scale as the noise: :func:`cold_contexts`) and the warmth entry is 0. A cold series therefore
  scores from its first window on the window's evidence alone, against its own history once
  ``BLOCK_ROWS`` rows have been seen, and against up to ``HISTORY_BLOCKS`` x ``BLOCK_ROWS`` rows (its
  recent context: up to ``RECENT_BLOCKS`` x ``BLOCK_ROWS``) as they accumulate.

Which rows of a window are new: with ``start`` and ``step_ms`` the rows are placed by time (rows at or
before the last time held are not added again, so overlapping windows add each row once, and a window that
arrives late or twice adds nothing); without them, a window whose first ``T - 1`` rows are the last
``T - 1`` rows of the series' previous window adds its last row (a sliding window), any other adds all its
rows.

A :class:`HistoryState` is what a :class:`History` holds for some series, in arrays: a checkpoint carries
the state its training recording left, and serving starts from it, so that a series the model was trained
on is warm from its first window, as if the training recording had been replayed just before.

A context vector is float64 of length ``7F + 1`` (:func:`context_width`, parts named by
:class:`ContextParts`): ``F`` locations, ``F`` scales (over ``HISTORY_BLOCKS`` blocks), ``F`` recent
locations, ``F`` recent scales (over ``RECENT_BLOCKS``), ``F`` highest and ``F`` lowest rows (over
``HISTORY_BLOCKS``), ``F`` recent noise scales, then warmth (blocks held / ``HISTORY_BLOCKS``, in [0, 1]).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

import numpy as np

from detector.windows import WindowSet

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", np.ndarray, "torch.Tensor")

BLOCK_ROWS = 64  # rows summarised together; a series' context is measured again when a block completes
HISTORY_BLOCKS = 100  # blocks the context is measured over (6,400 rows)
RECENT_BLOCKS = 8  # the newest blocks, measured again on their own: the series' recent context (512 rows)
MAD_TO_SIGMA = 1.4826  # the standard deviation of a normal sample over its MAD
MEAN_ABS_TO_SIGMA = 1.2533  # ... over its mean absolute deviation
SUMMARY_ROWS = 5  # a block summary per feature: median, robust scale, mean absolute deviation, highest, lowest
MEDIAN, SCALE, MEAN_ABS, HIGHEST, LOWEST = range(SUMMARY_ROWS)  # where each sits in a summary
LEGACY_SUMMARY_ROWS = 3  # before the range: median, robust scale, mean absolute deviation
# The range of a block kept without one: no row (float32) goes beyond it, so it adds nothing to a distance.
UNKNOWN_RANGE = float(np.finfo(np.float32).max)
# No summary or row held can be larger in magnitude (rows are float32; a scale is at most a few times one).
MAX_MAGNITUDE = 8 * UNKNOWN_RANGE


def _median(x: np.ndarray, axis: int) -> np.ndarray:
    """np.median along ``axis`` (NaN-free input), several times faster on the small arrays used here."""
    ordered = np.sort(x, axis=axis)
    n = ordered.shape[axis]
    if axis == 0:
        return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    return 0.5 * (np.take(ordered, (n - 1) // 2, axis=axis) + np.take(ordered, n // 2, axis=axis))


def _spread(mad: np.ndarray, mean_abs: np.ndarray) -> np.ndarray:
    """1.4826 x MAD, or 1.2533 x the mean absolute deviation where the MAD is 0."""
    return np.where(mad > 0, MAD_TO_SIGMA * mad, MEAN_ABS_TO_SIGMA * mean_abs)


def _floored(scale: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """Never 0: a constant series gets a tiny scale relative to its level (a move away is a very large z)."""
    return np.maximum(scale, 1e-7 * (np.abs(loc) + 1e-3))


def _robust(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along ``axis`` of ``x`` (as float64): median, spread (:func:`_spread`, unfloored) and mean absolute
    deviation from the median."""
    x = np.asarray(x, dtype=np.float64)
    med = _median(x, axis=axis)
    dev = np.abs(x - np.expand_dims(med, axis))
    mean_abs = dev.mean(axis=axis)
    return med, _spread(_median(dev, axis=axis), mean_abs), mean_abs


def level_context(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (..., n, F), n >= 1 -> (location (..., F), scale (..., F)) float64: each feature's median and
    the robust scale of its levels (see the module docstring), floored so that it is positive and finite."""
    loc, spread, _ = _robust(rows, axis=np.ndim(rows) - 2)
    return loc, _floored(spread, loc)


def _summaries(rows: np.ndarray, axis: int) -> np.ndarray:
    """Block summaries of ``rows`` along ``axis``, stacked on the axis after it (SUMMARY_ROWS of them)."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.stack([*_robust(rows, axis=axis), rows.max(axis=axis), rows.min(axis=axis)], axis=axis)


def block_summary(rows: np.ndarray) -> np.ndarray:
    """One block's rows (BLOCK_ROWS, F) -> (SUMMARY_ROWS, F) float64: median, robust scale, mean absolute
    deviation, highest and lowest row."""
    return _summaries(rows, axis=0)


def upgraded_blocks(blocks: np.ndarray) -> np.ndarray:
    """Block summaries (..., LEGACY_SUMMARY_ROWS, F) of a history kept without the range -> (..., SUMMARY_ROWS,
    F): each block's range unknown (highest ``UNKNOWN_RANGE``, lowest its negative), so that while such a
    block is among a series' last ``HISTORY_BLOCKS`` nothing counts as beyond its range; others unchanged."""
    if blocks.shape[-2] != LEGACY_SUMMARY_ROWS:
        return blocks
    unknown = np.full_like(blocks[..., :1, :], UNKNOWN_RANGE)
    return np.concatenate([blocks, unknown, -unknown], axis=-2)


def _within(blocks: np.ndarray) -> np.ndarray:
    """The median scale within a block of summaries (k, SUMMARY_ROWS, F), or 1.2533 x their mean absolute
    deviation where that median is 0 (unfloored)."""
    within = _median(blocks[:, SCALE], axis=0)
    return np.where(within > 0, within, MEAN_ABS_TO_SIGMA * blocks[:, MEAN_ABS].mean(axis=0))


def pooled_context(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block summaries (k, SUMMARY_ROWS, F), k >= 1 -> (location (F,), scale (F,)) (see the module
    docstring)."""
    loc, between, _ = _robust(blocks[:, MEDIAN], axis=0)
    return loc, _floored(np.maximum(between, _within(blocks)), loc)


class ContextParts(NamedTuple, Generic[Array]):
    """The parts of contexts (..., 7F + 1), each (..., F) but warmth (..., 1): see the module docstring."""

    loc: Array
    scale: Array
    recent_loc: Array
    recent_scale: Array
    highest: Array
    lowest: Array
    noise: Array
    warmth: Array


def context_width(n_features: int) -> int:
    """The length of a context vector for windows of ``n_features`` features (see the module docstring)."""
    return (len(ContextParts._fields) - 1) * n_features + 1


def warm_context(blocks: np.ndarray) -> np.ndarray:
    """The context (7F + 1,) given by the summaries (k, SUMMARY_ROWS, F), k >= 1, of a series' completed
    blocks, oldest first: pooled over the last ``HISTORY_BLOCKS`` of them, then over the last
    ``RECENT_BLOCKS``; their range over the last ``HISTORY_BLOCKS``, their noise over the last
    ``RECENT_BLOCKS``."""
    blocks = blocks[-HISTORY_BLOCKS:]
    recent = blocks[-RECENT_BLOCKS:]
    loc, scale = pooled_context(blocks)
    recent_loc, recent_scale = pooled_context(recent)
    noise = _floored(_within(recent), recent_loc)
    highest, lowest = blocks[:, HIGHEST].max(axis=0), blocks[:, LOWEST].min(axis=0)
    warmth = [len(blocks) / HISTORY_BLOCKS]
    return np.concatenate([loc, scale, recent_loc, recent_scale, highest, lowest, noise, warmth])


def context_vector(blocks: np.ndarray | None, window: np.ndarray) -> np.ndarray:
    """The context (7F + 1,) of ``window`` (T, F) given the summaries of its series' completed blocks
    before it (see :func:`warm_context`); none (or None) gives the cold context, measured on the window."""
    if blocks is None or len(blocks) == 0:
        return cold_contexts(window[None])[0]
    return warm_context(blocks)


def cold_contexts(values: np.ndarray) -> np.ndarray:
    """Cold contexts (B, 7F + 1) for windows (B, T, F): each window its own context (:func:`level_context`),
    long-run and recent alike, its own highest and lowest rows as the range, its level scale as the noise,
    warmth 0."""
    values = np.asarray(values, dtype=np.float64)
    loc, scale = level_context(values)
    highest, lowest = values.max(axis=1), values.min(axis=1)
    return np.concatenate([loc, scale, loc, scale, highest, lowest, scale, np.zeros((len(loc), 1))], axis=1)


def split_context(contexts: Array, n_features: int) -> ContextParts[Array]:
    """Contexts (..., 7F + 1), numpy or torch -> their parts (views, in the layout of the module docstring).
    ValueError for another width."""
    if contexts.shape[-1] != context_width(n_features):
        raise ValueError(f"contexts of width {contexts.shape[-1]} for {n_features} features")
    f = n_features
    parts: list[Array] = [contexts[..., i * f : (i + 1) * f] for i in range(len(ContextParts._fields) - 1)]
    return ContextParts._make([*parts, contexts[..., -1:]])


def join_context(parts: ContextParts[np.ndarray]) -> np.ndarray:
    """Parts (each (B, F), warmth (B, 1)) -> contexts (B, 7F + 1): the inverse of :func:`split_context`."""
    return np.concatenate(list(parts), axis=1)


def series_blocks(rows: np.ndarray) -> np.ndarray:
    """Summaries (n // BLOCK_ROWS, SUMMARY_ROWS, F) of the complete blocks of a series' rows (n, F), in
    order."""
    n = len(rows) // BLOCK_ROWS
    if n == 0:
        return np.zeros((0, SUMMARY_ROWS, rows.shape[1]))
    return _summaries(rows[: n * BLOCK_ROWS].reshape(n, BLOCK_ROWS, -1), axis=1)


class _Series:
    """One series: the summaries of its last HISTORY_BLOCKS blocks, the rows of the block under way, and
    the cached context."""

    __slots__ = ("blocks", "context", "held", "last_time", "partial", "partial_rows", "previous", "write")

    def __init__(self, n_features: int) -> None:
        # A ring of block summaries, the oldest at (write - held) % HISTORY_BLOCKS.
        self.blocks = np.empty((HISTORY_BLOCKS, SUMMARY_ROWS, n_features))
        self.held = 0  # blocks in the ring
        self.write = 0  # where the next block goes
        self.partial = np.empty((BLOCK_ROWS, n_features), dtype=np.float64)
        self.partial_rows = 0
        self.last_time: int | None = None  # epoch ms of the newest row held, when windows carry time
        self.previous: np.ndarray | None = None  # the last window, when windows carry no time
        self.context: np.ndarray | None = None  # cached while no block completes

    @property
    def n_features(self) -> int:
        return self.partial.shape[1]

    @property
    def nbytes(self) -> int:
        previous = 0 if self.previous is None else self.previous.nbytes
        context = 8 * context_width(self.n_features)  # counted whether or not it is cached now
        return self.partial.nbytes + self.blocks.nbytes + previous + context

    def add(self, rows: np.ndarray) -> None:
        while len(rows):
            take = min(BLOCK_ROWS - self.partial_rows, len(rows))
            self.partial[self.partial_rows : self.partial_rows + take] = rows[:take]
            self.partial_rows += take
            rows = rows[take:]
            if self.partial_rows == BLOCK_ROWS:
                self.blocks[self.write] = block_summary(self.partial)
                self.write = (self.write + 1) % HISTORY_BLOCKS
                self.held = min(self.held + 1, HISTORY_BLOCKS)
                self.partial_rows = 0
                self.context = None

    def chronological(self) -> np.ndarray:
        """The block summaries held (held, SUMMARY_ROWS, F), oldest first."""
        return self.blocks[(self.write - self.held + np.arange(self.held)) % HISTORY_BLOCKS]

    def context_for(self, window: np.ndarray) -> np.ndarray:
        if not self.held:
            return context_vector(None, window)
        if self.context is None:
            self.context = context_vector(self.chronological(), window)
        return self.context

    def new_rows(self, values: np.ndarray, start: int | None, step_ms: int | None) -> int:
        """Index of the window's first row that the series does not hold yet (len(values): none); notes
        the window as the newest seen."""
        t = len(values)
        if start is not None and step_ms:
            last = self.last_time
            first = 0 if last is None or start > last else min(t, (last - start) // step_ms + 1)
            self.last_time = max(start + (t - 1) * step_ms, last if last is not None else start)
            return first
        previous, self.previous = self.previous, values.copy()
        if previous is not None and previous.shape == values.shape and t > 1:
            return t - 1 if np.array_equal(previous[1:], values[:-1]) else 0
        return 0


NO_TIME = -(2**63)  # HistoryState.counts' last time of a series whose windows carried none


def state_bytes(n_series: int, n_features: int, summaries: int = SUMMARY_ROWS) -> int:
    """The bytes of a HistoryState's arrays for ``n_series`` series of ``n_features`` features, with
    ``summaries`` per block (as a checkpoint keeps them)."""
    return n_series * ((HISTORY_BLOCKS * summaries + BLOCK_ROWS) * n_features * 8 + 3 * 8)


@dataclass(frozen=True)
class HistoryState:
    """The history of S series of F features, oldest series first (the first to be forgotten).

    ``blocks`` (S, HISTORY_BLOCKS, SUMMARY_ROWS, F) float64: block summaries, oldest first, the first ``counts[i, 0]``
    of series i in use; ``partial`` (S, BLOCK_ROWS, F) float64: the rows of the block under way, the first
    ``counts[i, 1]`` in use; ``counts`` (S, 3) int64: blocks held, rows under way, and the time of the
    newest row (``NO_TIME`` when its windows carried none, or a time beyond int64).
    """

    series: tuple[str, ...]
    blocks: np.ndarray
    partial: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.series)

    @property
    def n_features(self) -> int:
        return int(self.blocks.shape[3])

    def check(self) -> None:
        """ValueError unless the arrays agree with each other and hold what a History could hold."""
        s, f = len(self.series), self.blocks.shape[-1] if self.blocks.ndim == 4 else -1
        shapes = {
            "blocks": (self.blocks, (s, HISTORY_BLOCKS, SUMMARY_ROWS, f), np.float64),
            "partial": (self.partial, (s, BLOCK_ROWS, f), np.float64),
            "counts": (self.counts, (s, 3), np.int64),
        }
        for name, (array, shape, dtype) in shapes.items():
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"history {name} of shape {array.shape} ({array.dtype}), expected {shape} ({dtype})")
        if len(set(self.series)) != s or not all(isinstance(x, str) and 1 <= len(x) <= 256 for x in self.series):
            raise ValueError("history series are not distinct strings of 1 to 256 characters")
        held, rows = self.counts[:, 0], self.counts[:, 1]
        if ((held < 0) | (held > HISTORY_BLOCKS) | (rows < 0) | (rows >= BLOCK_ROWS)).any():
            raise ValueError("history counts out of range")
        if not (np.isfinite(self.blocks).all() and np.isfinite(self.partial).all()):
            raise ValueError("history holds a value that is not finite")
        if max(np.abs(self.blocks).max(initial=0.0), np.abs(self.partial).max(initial=0.0)) > MAX_MAGNITUDE:
            raise ValueError("history holds a value larger than any row could give")
        if (self.blocks[:, :, [SCALE, MEAN_ABS]] < 0).any():
            raise ValueError("history holds a negative scale")
        if (self.blocks[:, :, HIGHEST] < self.blocks[:, :, LOWEST]).any():
            raise ValueError("history holds a block whose highest row is below its lowest")


class History:
    """The history of every series seen, in at most ``max_bytes`` all told: past it, the least recently
    seen series are forgotten (one that comes back starts cold). The newest series is always kept.

    Not thread-safe, except :meth:`__len__`: feed it windows in the order they are to be scored.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0  # held, all series
        self._series: OrderedDict[str, _Series] = OrderedDict()

    def __len__(self) -> int:
        return len(self._series)

    def state(self, max_bytes: int | None = None, summaries: int = SUMMARY_ROWS) -> HistoryState | None:
        """What is held, as arrays (None when nothing is); with ``max_bytes``, only the most recently seen
        series whose state fits in it, kept with ``summaries`` per block. Series of another width than the
        most recent one are left out."""
        if not self._series:
            return None
        newest = next(reversed(self._series.values()))
        f = newest.n_features
        room = len(self._series) if max_bytes is None else max(1, max_bytes // state_bytes(1, f, summaries))
        chosen = [(k, v) for k, v in self._series.items() if v.n_features == f][-room:]
        blocks = np.zeros((len(chosen), HISTORY_BLOCKS, SUMMARY_ROWS, f))
        partial = np.zeros((len(chosen), BLOCK_ROWS, f))
        counts = np.zeros((len(chosen), 3), dtype=np.int64)
        for i, (_, series) in enumerate(chosen):
            blocks[i, : series.held] = series.chronological()
            partial[i] = series.partial
            last = series.last_time
            if last is None or not NO_TIME < last < 2**63:  # a time int64 cannot hold is kept as none
                last = NO_TIME
            counts[i] = (series.held, series.partial_rows, last)
        return HistoryState(tuple(k for k, _ in chosen), blocks, partial, counts)

    def seed(self, state: HistoryState) -> None:
        """Take on the history of every series of ``state`` that is not held (held ones keep theirs),
        oldest first, within the memory bound."""
        for i in reversed(range(len(state))):  # newest first: each goes in front of those after it
            series_id = state.series[i]
            if series_id in self._series:
                continue
            series = _Series(state.n_features)
            held, rows, last = (int(c) for c in state.counts[i])
            series.blocks[:held] = state.blocks[i, :held]
            series.held, series.write = held, held % HISTORY_BLOCKS
            series.partial[:] = state.partial[i]
            series.partial_rows = rows
            series.last_time = None if last == NO_TIME else last
            self._series[series_id] = series
            self._series.move_to_end(series_id, last=False)  # seeded history is older than anything seen
            self.nbytes += series.nbytes
        self._forget_past_bound()

    def observe(self, series_id: str, values: np.ndarray, start: int | None, step_ms: int | None) -> np.ndarray:
        """The context (7F + 1,) of a window (values (T, F)) of ``series_id``; then the window's new rows
        join that series' history (see the module docstring)."""
        series = self._series.pop(series_id, None)
        if series is not None:
            self.nbytes -= series.nbytes
            if series.n_features != values.shape[1]:  # another model's width: start again
                series = None
        if series is None:
            series = _Series(values.shape[1])
        self._series[series_id] = series  # the most recently seen comes last
        context = series.context_for(values)
        series.add(values[series.new_rows(values, start, step_ms) :])
        self.nbytes += series.nbytes
        self._forget_past_bound()
        return context

    def _forget_past_bound(self) -> None:
        """Forget the least recently seen series until what is held fits max_bytes (the newest stays)."""
        while self.nbytes > self.max_bytes and len(self._series) > 1:
            _, forgotten = self._series.popitem(last=False)
            self.nbytes -= forgotten.nbytes


def contexts_in_order(
    series_ids: list[str],
    values: np.ndarray,
    starts: list[int | None],
    step_ms: list[int | None],
    seed: HistoryState | None = None,
) -> np.ndarray:
    """Contexts (N, 7F + 1) of windows scored in the given order by a fresh, unbounded :class:`History`
    seeded with ``seed``: what ``replay --offline`` gives the windows of a recording."""
    if not len(values):
        return np.zeros((0, context_width(values.shape[-1])))
    history = History(max_bytes=1 << 62)
    if seed is not None and seed.n_features == values.shape[-1]:
        history.seed(seed)
    return np.stack(
        [history.observe(s, v, a, d) for s, v, a, d in zip(series_ids, values, starts, step_ms, strict=True)]
    )


def recording_contexts(data: WindowSet, seed: HistoryState | None = None) -> np.ndarray:
    """:func:`contexts_in_order` for the windows of a recording, in its line order."""
    return contexts_in_order(data.series_ids, data.values, data.starts, data.step_ms, seed)


def history_after(data: WindowSet, max_bytes: int, summaries: int = SUMMARY_ROWS) -> HistoryState | None:
    """The history a recording's windows leave, fed series by series in time order
    (:meth:`~detector.windows.WindowSet.time_order`); at most ``max_bytes`` of it kept with ``summaries``
    per block (the series fed last); None for no windows."""
    history = History(max_bytes=1 << 62)
    for i in data.time_order():
        history.observe(data.series_ids[i], data.values[i], data.starts[i], data.step_ms[i])
    return history.state(max_bytes, summaries)
