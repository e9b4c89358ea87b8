"""Per-series context (detector.model.context): what a window is measured against, and how history is kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.model.context import (
    BLOCK_ROWS,
    HISTORY_BLOCKS,
    History,
    block_summary,
    cold_contexts,
    context_vector,
    contexts_in_order,
    level_context,
    pooled_context,
    series_blocks,
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
    assert blocks.shape == (3, 3, 2)
    for k in range(3):
        np.testing.assert_allclose(blocks[k], block_summary(rows[k * BLOCK_ROWS : (k + 1) * BLOCK_ROWS]))


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
    assert c.shape == (7,)
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
        assert c.shape == (3,)
        assert np.isfinite(c).all()
        assert c[1] > 0
        assert 0 <= c[2] <= 1
    assert history.nbytes <= max(20_000, max(s.nbytes for s in history._series.values()))
    state = history.state()  # whatever the times were, the state is valid and seeds a history
    state.check()
    again = History(20_000)
    again.seed(state)
    assert set(again._series) == set(history._series)
