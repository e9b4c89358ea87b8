"""Per-series context (detector.model.context): what a window is measured against, and how history is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.model.context import (
    BLOCK_ROWS,
    HISTORY_BLOCKS,
    RECENT_BLOCKS,
    SUMMARY_ROWS,
    History,
    block_summary,
    cold_contexts,
    context_vector,
    context_width,
    contexts_in_order,
    level_context,
    pooled_context,
    series_blocks,
    split_context,
    warm_context,
)
from detector.model.features import (
    LEVELS_NORMALISATION,
    NORMALISATION,
    distance_channels,
    input_channels,
    robust_channels,
)

T = 16
STEP = 1000


def series(n: int, seed: int = 0, features: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0, 2.0, size=(n, features)).astype(np.float32)


def expected(rows_before: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The context a window should get after its series' rows ``rows_before`` (training's definition)."""
    return context_vector(series_blocks(rows_before), window)


def test_level_context_is_the_median_and_a_robust_scale_with_a_fallback_for_mostly_constant_series():
    loc, scale = level_context(np.array([[1.0], [2.0], [3.0], [4.0], [100.0]]))
    assert loc[0] == 3.0
    assert scale[0] == pytest.approx(1.4826 * 1.0)
    _, mostly_flat = level_context(np.array([[5.0]] * 7 + [[6.0], [9.0]]))
    assert mostly_flat[0] == pytest.approx(1.2533 * 5.0 / 9)
    flat_loc, flat_scale = level_context(np.full((50, 2), 7.0))
    assert (flat_loc == 7.0).all()
    assert (flat_scale > 0).all()
    assert np.isfinite(flat_scale).all()


def test_pooled_context_takes_the_larger_of_the_spread_between_blocks_and_within_them():
    rng = np.random.default_rng(1)
    noisy = np.stack([block_summary(rng.normal(0, 3.0, (BLOCK_ROWS, 1))) for _ in range(20)])
    loc, scale = pooled_context(noisy)
    assert abs(loc[0]) < 1.0
    assert scale[0] == pytest.approx(3.0, rel=0.2)
    levels = np.stack([block_summary(rng.normal(10.0 * (k % 2), 0.1, (BLOCK_ROWS, 1))) for k in range(20)])
    _, scale = pooled_context(levels)
    assert scale[0] == pytest.approx(1.4826 * 5.0, rel=0.05)  # the moves between blocks


def test_series_blocks_summarise_each_complete_block():
    rows = series(3 * BLOCK_ROWS + 5, seed=2, features=2)
    blocks = series_blocks(rows)
    assert blocks.shape == (3, SUMMARY_ROWS, 2)
    for k in range(3):
        block = rows[k * BLOCK_ROWS : (k + 1) * BLOCK_ROWS]
        np.testing.assert_allclose(blocks[k], block_summary(block))
        np.testing.assert_array_equal(blocks[k, 0], np.median(block.astype(np.float64), axis=0))
        np.testing.assert_array_equal(blocks[k, 3], block.max(axis=0))
        np.testing.assert_array_equal(blocks[k, 4], block.min(axis=0))


@pytest.mark.parametrize("timed", [True, False])
def test_sliding_windows_get_the_context_of_the_rows_before_them_each_row_counted_once(timed):
    rows = series(3 * BLOCK_ROWS + 40, seed=3)
    history = History(1 << 30)
    for first in range(len(rows) - T + 1):
        window = rows[first : first + T]
        start, step = (first * STEP, STEP) if timed else (None, None)
        got = history.observe("s", window, start, step)
        before = rows[: first + T - 1] if first else rows[:0]
        np.testing.assert_allclose(got, expected(before, window), rtol=1e-12)
    assert got[-1] == 3 / HISTORY_BLOCKS


def test_a_cold_series_is_its_own_context_until_a_block_completes():
    rows = series(BLOCK_ROWS + T, seed=4)
    history = History(1 << 30)
    first = history.observe("s", rows[:T], 0, STEP)
    np.testing.assert_array_equal(first, cold_contexts(rows[None, :T])[0])
    assert first[-1] == 0.0


def test_consecutive_windows_add_all_their_rows_and_late_or_repeated_windows_add_nothing():
    rows = series(12 * T, seed=5)
    history = History(1 << 30)
    for k in range(12):
        got = history.observe("s", rows[k * T : (k + 1) * T], k * T * STEP, STEP)
        np.testing.assert_allclose(got, expected(rows[: k * T], rows[k * T : (k + 1) * T]), rtol=1e-12)
    after = history.observe("s", rows[3 * T : 4 * T], 3 * T * STEP, STEP)  # redelivered: adds nothing
    again = history.observe("s", rows[11 * T : 12 * T], 11 * T * STEP, STEP)  # repeated: adds nothing
    np.testing.assert_allclose(after, expected(rows, rows[:T]), rtol=1e-12)
    np.testing.assert_array_equal(after, again)


def test_only_the_last_history_blocks_count():
    rows = series((HISTORY_BLOCKS + 7) * BLOCK_ROWS, seed=6)
    history = History(1 << 30)
    for k in range(len(rows) // BLOCK_ROWS):
        history.observe("s", rows[k * BLOCK_ROWS : (k + 1) * BLOCK_ROWS], k * BLOCK_ROWS * STEP, STEP)
    window = rows[-T:]
    got = history.observe("s", window, len(rows) * STEP, STEP)
    np.testing.assert_allclose(got, context_vector(series_blocks(rows)[-HISTORY_BLOCKS:], window), rtol=1e-12)
    assert got[-1] == 1.0


def test_the_context_is_long_run_and_recent_levels_the_range_and_the_recent_noise():
    """Long-run location and scale over the last HISTORY_BLOCKS blocks, the same over the newest RECENT_BLOCKS
    alone, the highest and lowest rows of the long run, the median noise within the recent blocks, then
    warmth; a cold context repeats its own location and scale as the recent ones, its own rows' extremes as
    the range and its level scale as the noise."""
    rng = np.random.default_rng(3)
    rows = np.concatenate([rng.normal(10, 2.0, (30 * BLOCK_ROWS, 2)), rng.normal(60, 0.5, (5 * BLOCK_ROWS, 2))])
    rows[100] = [-40.0, 500.0]
    blocks = series_blocks(rows)
    loc, scale = pooled_context(blocks)
    recent_loc, recent_scale = pooled_context(blocks[-RECENT_BLOCKS:])
    got = split_context(warm_context(blocks), 2)
    assert warm_context(blocks).shape == (context_width(2),)
    for name, want in [("loc", loc), ("scale", scale), ("recent_loc", recent_loc), ("recent_scale", recent_scale)]:
        np.testing.assert_array_equal(getattr(got, name), want)
    np.testing.assert_array_equal(got.highest, [rows[:, 0].max(), 500.0])
    np.testing.assert_array_equal(got.lowest, [-40.0, rows[:, 1].min()])
    assert (recent_loc > loc + 40).all()  # most of the newest blocks are at the new level
    assert got.noise == pytest.approx([0.5, 0.5], rel=0.25)  # within the recent blocks, not between them
    assert got.warmth[0] == 35 / HISTORY_BLOCKS
    window = series(T, seed=4, features=2)
    cold = split_context(cold_contexts(window[None])[0], 2)
    np.testing.assert_array_equal(cold.recent_loc, cold.loc)
    np.testing.assert_array_equal(cold.recent_scale, cold.scale)
    np.testing.assert_array_equal(cold.noise, cold.scale)
    np.testing.assert_array_equal(cold.highest, window.max(axis=0))
    np.testing.assert_array_equal(cold.lowest, window.min(axis=0))
    assert cold.warmth[0] == 0.0


def test_a_level_a_series_moves_to_and_holds_becomes_its_new_normal():
    """A series that steps to a new level: its first rows there are far from both contexts; once it has held
    the level for RECENT_BLOCKS blocks, its distance (from the nearer context) is small again, though the
    long-run context still places it far from its past."""
    rng = np.random.default_rng(7)
    before, after = 40 * BLOCK_ROWS, (RECENT_BLOCKS + 1) * BLOCK_ROWS
    rows = np.concatenate([rng.normal(10.0, 1.0, before), rng.normal(30.0, 1.0, after)])[:, None]
    history = History(1 << 30)
    last: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for end in range(T, len(rows) + 1, T):  # consecutive windows, each ending T rows after the last
        window = rows[end - T : end].astype(np.float32)
        last[end] = (window, history.observe("s", window, (end - T) * STEP, STEP))
    f = slice(3, 4)  # the one feature's history channel (level, change, quiet, history, distance)
    d = distance_channels(input_channels(1))

    def channels(end: int) -> tuple[float, float]:
        window, context = last[end]
        out = robust_channels(torch.from_numpy(window[None]), torch.from_numpy(context[None]), NORMALISATION)
        return float(out[0, -1, f][0]), float(out[0, -1, d][0])

    first_history, first_distance = channels(before + T)
    late_history, late_distance = channels(len(rows))
    assert first_distance > 2.0
    assert first_history > 2.0
    assert late_history > 2.0
    assert late_distance < 1.0


def test_a_series_climbing_to_heights_it_never_reached_stays_unusual_until_it_holds_them():
    """A series that climbs steadily for longer than the recent context: the recent level follows it, so its
    distance from the nearer level alone (the v3 normalisation) falls back near 1; the range keeps the climb
    unusual (each new height is beyond anything seen), and once the series holds its new height for
    RECENT_BLOCKS blocks, both say it is normal."""
    rng = np.random.default_rng(5)
    flat, climbing, holding = 40 * BLOCK_ROWS, (RECENT_BLOCKS + 2) * BLOCK_ROWS, (RECENT_BLOCKS + 1) * BLOCK_ROWS
    climb = 10.0 + np.arange(climbing) * (10.0 / BLOCK_ROWS)  # 10 noise units a block
    rows = np.concatenate([np.full(flat, 10.0), climb, np.full(holding, climb[-1])])
    rows = (rows + rng.normal(0.0, 1.0, len(rows)))[:, None].astype(np.float32)
    ends = np.arange(T, len(rows) + 1)  # sliding windows, one per row
    windows = np.stack([rows[end - T : end] for end in ends])
    history = History(1 << 30)
    contexts = np.stack([history.observe("s", w, (end - T) * STEP, STEP) for w, end in zip(windows, ends, strict=True)])
    d = distance_channels(input_channels(1))

    def distance(kind: str, rows_ending: np.ndarray) -> float:
        got = robust_channels(torch.from_numpy(windows[rows_ending]), torch.from_numpy(contexts[rows_ending]), kind)
        return float(np.median(got[:, -1, d][:, 0].numpy()))

    late_climb = (ends > flat + climbing - 2 * BLOCK_ROWS) & (ends <= flat + climbing)
    held = ends > len(rows) - BLOCK_ROWS
    assert distance(LEVELS_NORMALISATION, late_climb) < 1.5
    assert distance(NORMALISATION, late_climb) > 1.8
    assert distance(NORMALISATION, held) < 1.0
    assert distance(NORMALISATION, held) == distance(LEVELS_NORMALISATION, held)


def test_memory_is_bounded_and_the_least_recently_seen_series_goes_first():
    rows = series(4 * BLOCK_ROWS, seed=7)
    probe = History(1 << 30)
    probe.observe("x", rows, 0, STEP)
    one = probe.nbytes
    history = History(3 * one)
    for sid in ("a", "b", "c"):
        history.observe(sid, rows, 0, STEP)
    history.observe("a", rows[-T:], len(rows) * STEP, STEP)  # a is now the most recently seen
    history.observe("d", rows, 0, STEP)
    assert len(history) == 3
    assert set(history._series) == {"a", "c", "d"}
    assert history.nbytes <= 3 * one
    window = rows[:T]  # b comes back cold: its window is its own context again
    np.testing.assert_array_equal(history.observe("b", window, 0, STEP), cold_contexts(window[None])[0])


def test_a_window_of_another_width_starts_the_series_again():
    history = History(1 << 30)
    history.observe("s", series(4 * BLOCK_ROWS, features=1), 0, STEP)
    c = history.observe("s", series(T, features=3), 10**6, STEP)
    assert c.shape == (context_width(3),)
    assert c[-1] == 0.0


def test_contexts_in_order_are_what_a_history_fed_in_order_gives():
    rows = series(400, seed=8, features=2)
    ids, values, starts = [], [], []
    for sid in ("x", "y"):
        for k in range(400 // T):
            ids.append(sid)
            values.append(rows[k * T : (k + 1) * T] + (0 if sid == "x" else 100))
            starts.append(k * T * STEP)
    batch = contexts_in_order(ids, np.stack(values), starts, [STEP] * len(ids))
    history = History(1 << 30)
    one_by_one = np.stack([history.observe(i, v, s, STEP) for i, v, s in zip(ids, values, starts, strict=True)])
    np.testing.assert_array_equal(batch, one_by_one)
    assert batch[0, -1] == 0
    assert batch[-1, -1] > 0


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None)
@given(
    windows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.lists(finite32, min_size=4, max_size=4),
            st.one_of(st.none(), st.integers(-(2**70), 2**70)),
            st.one_of(st.none(), st.integers(1, 2**40)),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_any_sequence_of_windows_gives_finite_contexts_with_positive_scales(windows):
    history = History(20_000)
    for sid, vals, start, step in windows:
        c = history.observe(sid, np.array(vals, dtype=np.float32).reshape(4, 1), start, step)
        assert c.shape == (context_width(1),)
        assert np.isfinite(c).all()
        parts = split_context(c, 1)
        assert parts.scale[0] > 0
        assert parts.recent_scale[0] > 0
        assert parts.noise[0] > 0
        assert parts.highest[0] >= parts.lowest[0]
        assert 0 <= parts.warmth[0] <= 1
    assert history.nbytes <= max(20_000, max(s.nbytes for s in history._series.values()))
    state = history.state()  # whatever the times were, the state is valid and seeds a history
    state.check()
    again = History(20_000)
    again.seed(state)
    assert set(again._series) == set(history._series)
