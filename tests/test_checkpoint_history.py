"""The series history a checkpoint carries: what training leaves, what serving starts from, and what a
hostile file cannot do with it."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from detector.errors import CheckpointError
from detector.model import checkpoint
from detector.model.context import (
    BLOCK_ROWS,
    LEGACY_SUMMARY_ROWS,
    NO_TIME,
    SUMMARY_ROWS,
    History,
    HistoryState,
    contexts_in_order,
    state_bytes,
    upgraded_blocks,
)
from detector.scoring import Scorer
from detector.serve.files import DLQ_TOPIC, OUTPUT_TOPIC, FileSink, FileSource
from detector.serve.runner import Runner, RunnerConfig
from tests.conftest import SMALL

STEP = 1000


def series(n: int, seed: int, features: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).normal(5.0, 1.0, size=(n, features)).astype(np.float32)


def fed(windows: list[tuple[str, np.ndarray, int]]) -> History:
    history = History(1 << 30)
    for sid, values, start in windows:
        history.observe(sid, values, start, STEP)
    return history


def test_a_history_state_seeds_a_history_that_continues_exactly_as_the_original():
    rows = {sid: series(5 * BLOCK_ROWS + 23, seed) for seed, sid in enumerate(("a", "b"))}
    t = 16
    first = [(sid, r[k * t : (k + 1) * t], k * t * STEP) for sid, r in rows.items() for k in range(12)]
    later = [(sid, r[k * t : (k + 1) * t], k * t * STEP) for sid, r in rows.items() for k in range(12, len(r) // t)]
    original = fed(first)
    state = original.state()
    assert state is not None
    state.check()
    assert state.series == ("a", "b")
    seeded = History(1 << 30)
    seeded.seed(state)
    for sid, values, start in later:
        np.testing.assert_array_equal(
            original.observe(sid, values, start, STEP), seeded.observe(sid, values, start, STEP)
        )
    # A window the seed already holds adds nothing: rows at or before its newest time are not added again.
    assert seeded.state().counts.tolist() == original.state().counts.tolist()


def test_seeding_keeps_the_history_of_series_already_held_and_ages_seeded_ones_first():
    rows = series(3 * BLOCK_ROWS, 1)
    state = fed([("a", rows, 0), ("b", rows, 0)]).state()
    held = fed([("b", rows + 100, 0)])
    before = held.state()
    held.seed(state)
    assert list(held._series) == ["a", "b"]  # seeded "a" is older than "b", seen here
    np.testing.assert_array_equal(held.state().blocks[1], before.blocks[0])  # b kept its own


def test_state_keeps_the_most_recent_series_within_its_bytes():
    rows = series(2 * BLOCK_ROWS, 2)
    history = fed([(f"s{i}", rows, 0) for i in range(10)])
    full = history.state()
    per_series = full.blocks[0].nbytes + full.partial[0].nbytes + full.counts[0].nbytes
    assert history.state(max_bytes=3 * per_series).series == ("s7", "s8", "s9")


@pytest.mark.parametrize("narrow_max_features", [2, 1], ids=["narrow", "wide"])
def test_a_trained_model_carries_its_recording_and_serving_starts_warm(
    fit_tiny, small_data, tmp_path, narrow_max_features
):
    """The checkpoint holds every training series; saved and loaded it is the same, in the summaries its
    normalisation keeps (a wide model's, kept without the range, loads with each block's range unknown);
    a replay of a training series' later windows gets warm contexts from its first window."""
    ckpt = fit_tiny(narrow_max_features=narrow_max_features)
    assert ckpt.history is not None
    assert set(ckpt.history.series) == set(small_data.series_ids)
    path = tmp_path / "m.ckpt"
    checkpoint.save(ckpt, path)
    loaded = checkpoint.load(path)
    kept = checkpoint.summary_rows(ckpt.stats.kind)
    assert kept == (SUMMARY_ROWS if narrow_max_features == 2 else LEGACY_SUMMARY_ROWS)
    np.testing.assert_array_equal(loaded.history.blocks[:, :, :kept], ckpt.history.blocks[:, :, :kept])
    if kept < SUMMARY_ROWS:  # a range not kept is unknown once loaded
        np.testing.assert_array_equal(
            loaded.history.blocks[:, :, 3:], upgraded_blocks(ckpt.history.blocks[:, :, :3])[:, :, 3:]
        )
    for name in ("partial", "counts"):
        np.testing.assert_array_equal(getattr(loaded.history, name), getattr(ckpt.history, name))
    assert loaded.history.series == ckpt.history.series

    sid = small_data.series_ids[-1]
    idx = [i for i, s in enumerate(small_data.series_ids) if s == sid]
    last = idx[-1]
    t = SMALL.length
    later = small_data.values[last] + 1.0
    start = small_data.starts[last] + t * small_data.step_ms[last]
    contexts = contexts_in_order([sid], later[None], [start], [small_data.step_ms[last]], loaded.history)
    assert contexts[0, -1] > 0  # warm at once
    cold = contexts_in_order([sid], later[None], [start], [small_data.step_ms[last]])
    assert cold[0, -1] == 0

    rec = tmp_path / "later.jsonl"
    rec.write_text(
        json.dumps(
            {
                "series_id": sid,
                "window_id": "w",
                "start": start,
                "step_ms": small_data.step_ms[last],
                "values": later.tolist(),
            }
        )
        + "\n"
    )
    outs = {}
    for name, model in (("warm", loaded), ("cold", dataclasses.replace(loaded, history=None))):
        sink = FileSink(
            tmp_path / f"{name}.out", tmp_path / f"{name}.dlq", output_topic=OUTPUT_TOPIC, dlq_topic=DLQ_TOPIC
        )
        Runner(FileSource(rec), sink, Scorer(model), RunnerConfig(OUTPUT_TOPIC, DLQ_TOPIC, event_time=True)).run()
        sink.close()
        outs[name] = json.loads((tmp_path / f"{name}.out").read_text())
    expected = Scorer(loaded).score(later[None], contexts)
    np.testing.assert_allclose(outs["warm"]["step_probabilities"], expected.step_probability[0], atol=1e-5)
    assert outs["warm"]["step_probabilities"] != outs["cold"]["step_probabilities"]


def _rewritten(good: bytes, meta_change=None, tensor_change=None) -> bytes:
    """The checkpoint with its detector metadata and tensors changed, everything else as it was."""
    header_len = struct.unpack("<Q", good[:8])[0]
    meta = json.loads(json.loads(good[8 : 8 + header_len])["__metadata__"]["detector"])
    tensors = dict(load_tensors(good))
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    return save_tensors(tensors, metadata={"detector": json.dumps(meta)})


def _set(tensors, name, fn):
    arr = tensors[name].clone()
    fn(arr)
    tensors[name] = arr


HOSTILE = {
    "more-series-than-tensors": (lambda m: m["history"]["series"].append("extra"), None),
    "repeated-series": (lambda m: m["history"]["series"].__setitem__(1, m["history"]["series"][0]), None),
    "tensors-without-history": (lambda m: m.__setitem__("history", None), None),
    "nan-block": (None, lambda t: _set(t, "history.blocks", lambda a: a.view(-1).__setitem__(0, float("nan")))),
    "negative-scale": (None, lambda t: _set(t, "history.blocks", lambda a: a[0, 0, 1].fill_(-1.0))),
    "highest-below-lowest": (None, lambda t: _set(t, "history.blocks", lambda a: a[0, 0, 3].copy_(a[0, 0, 4] - 1.0))),
    # finite, but no float32 row gives it, and the median of two such overflows
    "huge-median": (None, lambda t: _set(t, "history.blocks", lambda a: a[0, :, 0].fill_(1.5e308))),
    "huge-partial": (None, lambda t: _set(t, "history.partial", lambda a: a[0, 0].fill_(-1e300))),
    "too-many-blocks-held": (None, lambda t: _set(t, "history.counts", lambda a: a[0, 0].fill_(10**6))),
    "partial-rows-out-of-range": (None, lambda t: _set(t, "history.counts", lambda a: a[0, 1].fill_(BLOCK_ROWS))),
    "wrong-dtype": (None, lambda t: t.__setitem__("history.counts", t["history.counts"].float())),
    "missing-tensor": (None, lambda t: t.pop("history.partial")),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_history_is_rejected_with_one_line(fit_tiny, tmp_path, kind):
    good = checkpoint.to_bytes(fit_tiny(narrow_max_features=2))  # a narrow model keeps every summary
    meta_change, tensor_change = HOSTILE[kind]
    path = tmp_path / "bad.ckpt"
    path.write_bytes(_rewritten(good, meta_change, tensor_change))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("narrow_max_features", [2, 1], ids=["narrow", "wide"])
def test_the_history_limit_counts_the_summaries_the_file_holds(fit_tiny, monkeypatch, narrow_max_features):
    """A file is measured as it is laid out: a wide model's history (3 summaries a block) of as many
    bytes as the limit loads, one byte more is refused; the same for a narrow one's (5)."""
    ckpt = fit_tiny(narrow_max_features=narrow_max_features)
    data = checkpoint.to_bytes(ckpt)
    summaries = checkpoint.summary_rows(ckpt.stats.kind)
    size = state_bytes(len(ckpt.history), ckpt.n_features, summaries)
    monkeypatch.setattr(checkpoint, "MAX_HISTORY_BYTES", size)
    assert checkpoint.from_bytes(data).history.series == ckpt.history.series
    monkeypatch.setattr(checkpoint, "MAX_HISTORY_BYTES", size - 1)
    with pytest.raises(CheckpointError, match="history of"):
        checkpoint.from_bytes(data)


def test_a_history_larger_than_the_limit_is_refused_from_the_header(fit_tiny, tmp_path, monkeypatch):
    ckpt = fit_tiny()
    path = tmp_path / "m.ckpt"
    checkpoint.save(ckpt, path)
    monkeypatch.setattr(checkpoint, "MAX_HISTORY_BYTES", 1000)
    with pytest.raises(CheckpointError, match="history of"):
        checkpoint.load(path)


def test_the_no_time_marker_round_trips():
    rows = series(2 * BLOCK_ROWS, 3)
    history = History(1 << 30)
    history.observe("u", rows, None, None)
    state = history.state()
    assert state.counts[0, 2] == NO_TIME
    seeded = History(1 << 30)
    seeded.seed(state)
    assert seeded._series["u"].last_time is None
    assert isinstance(state, HistoryState)
