"""replay --offline is the serving loop over files: a recording as a one-partition source, JSONL sinks.

Its output does not depend on the thread count or the batch size, carries the window_id defaults that
serve and evaluate give, and is in event time (byte-identical across runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detector import recordings, synth
from detector.errors import DataError
from detector.model import checkpoint
from detector.model.train import train
from detector.scoring import Scorer
from detector.serve.files import DLQ_TOPIC, OUTPUT_TOPIC, FileSink, FileSource, line_timestamp, score_file
from detector.serve.messages import TopicPartition
from detector.serve.runner import Runner, RunnerConfig
from tests.conftest import SMALL, tiny_config


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, small_data) -> Scorer:
    path = tmp_path_factory.mktemp("model") / "m.ckpt"
    checkpoint.save(train(small_data, tiny_config(0, False)).checkpoint, path)
    return Scorer(checkpoint.load(path))


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_is_byte_identical_for_any_thread_count(small_recording, scorer, tmp_path):
    """One, two or four scoring threads write the same bytes, and torch's thread count is put back."""
    before = torch.get_num_threads()
    outs = []
    for threads in (1, 2, 4):
        out = tmp_path / f"t{threads}.jsonl"
        counts = score_file(scorer, small_recording, out, tmp_path / "dlq.jsonl", batch_size=10, threads=threads)
        assert counts.scored == len(small_recording.read_text().splitlines())
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert torch.get_num_threads() == before


def test_output_does_not_depend_on_the_batch_size(small_recording, scorer, tmp_path):
    """Batches of 1, 7 and 1024 windows give the same records, probabilities within 1e-5."""
    runs = []
    for batch in (1, 7, 1024):
        out = tmp_path / f"b{batch}.jsonl"
        score_file(scorer, small_recording, out, tmp_path / "dlq.jsonl", batch_size=batch)
        runs.append(lines_of(out))
    for other in runs[1:]:
        assert [r["window_id"] for r in other] == [r["window_id"] for r in runs[0]]
        np.testing.assert_allclose(
            [r["probability"] for r in other], [r["probability"] for r in runs[0]], atol=1e-5 + 1e-6
        )
        np.testing.assert_allclose(
            [r["step_probabilities"] for r in other], [r["step_probabilities"] for r in runs[0]], atol=1e-5 + 1e-6
        )


def unlabelled_lines(n: int) -> list[dict]:
    """``n`` windows of the tiny model's shape, without window_id."""
    lines = list(synth.generate(3, dataclasses.replace(SMALL, series=1, windows_per_series=n)))
    for line in lines:
        del line["window_id"]
    return lines


def test_a_window_without_id_gets_the_id_serve_and_evaluate_give(scorer, tmp_path):
    """The default window_id is the recording's name, partition 0 and the line number (blank lines count),
    as recordings.load (what evaluate and calibrate read) gives it."""
    src = tmp_path / "rec.jsonl"
    lines = unlabelled_lines(3)
    src.write_text(json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[1:]) + "\n")
    out = tmp_path / "scores.jsonl"
    score_file(scorer, src, out, tmp_path / "dlq.jsonl")
    ids = [r["window_id"] for r in lines_of(out)]
    assert ids == ["rec.jsonl/0/1", "rec.jsonl/0/3", "rec.jsonl/0/4"]
    assert recordings.load(src).window_ids == ids


def test_scored_at_is_the_line_ts_else_the_window_end_and_latency_is_zero(scorer, tmp_path):
    """An offline run has no clock: scored_at is the line's _ts, else the window's end, else its start,
    else 0; latency_ms is 0."""
    first, second, third, fourth = unlabelled_lines(4)
    first["_ts"] = 1_700_000_000_123
    del third["step_ms"]
    del fourth["start"]
    src = tmp_path / "rec.jsonl"
    recordings.write(src, [first, second, third, fourth])
    out = tmp_path / "scores.jsonl"
    score_file(scorer, src, out, tmp_path / "dlq.jsonl")
    records = lines_of(out)
    length = len(second["values"])
    assert [r["scored_at"] for r in records] == [
        1_700_000_000_123,
        second["start"] + length * second["step_ms"],
        third["start"],
        0,
    ]
    assert {r["latency_ms"] for r in records} == {0.0}


def test_bad_and_oversize_lines_are_dead_letters_with_their_line_number(scorer, tmp_path):
    """Every line is one output record or one dead-letter line; the size limit of serve applies."""
    good = [json.dumps(x) for x in unlabelled_lines(3)]
    big = json.dumps({**unlabelled_lines(1)[0], "pad": "x" * 5000})
    src = tmp_path / "rec.jsonl"
    src.write_text("\n".join([good[0], "not json", big, good[1], "[1, 2]", good[2]]) + "\n")
    out, dlq = tmp_path / "scores.jsonl", tmp_path / "dlq.jsonl"
    counts = score_file(scorer, src, out, dlq, max_message_bytes=4096)
    assert counts.scored == 3
    dead = lines_of(dlq)
    assert [(d["line"], d["reason"]) for d in dead] == [(2, "bad_json"), (3, "oversize"), (5, "not_object")]
    assert dead[0]["raw"] == "not json"
    assert dict(counts.dead_letters) == {"bad_json": 1, "oversize": 1, "not_object": 1}


def test_no_dead_letter_file_is_made_when_every_line_is_good(small_recording, scorer, tmp_path):
    score_file(scorer, small_recording, tmp_path / "scores.jsonl", tmp_path / "dlq.jsonl")
    assert not (tmp_path / "dlq.jsonl").exists()


def test_a_file_that_cannot_be_written_or_read_is_a_data_error(small_recording, scorer, tmp_path):
    with pytest.raises(DataError, match="cannot write"):
        score_file(scorer, small_recording, tmp_path / "missing" / "s.jsonl", tmp_path / "dlq.jsonl")
    with pytest.raises(DataError, match="no such file"):
        score_file(scorer, tmp_path / "absent.jsonl", tmp_path / "s.jsonl", tmp_path / "dlq.jsonl")


def test_the_file_source_hands_out_lines_as_offsets_of_one_partition_then_is_exhausted(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_bytes(b'{"a": 1, "_ts": 5}\n\n{"b": 2}\n{"c": 3}\n')
    source = FileSource(src)
    first = source.poll(0.0, 2)
    assert [(m.topic, m.partition, m.offset, m.value, m.timestamp) for m in first] == [
        ("r.jsonl", 0, 1, b'{"a": 1, "_ts": 5}', 5),
        ("r.jsonl", 0, 3, b'{"b": 2}', -1),
    ]
    assert not source.exhausted()
    assert [m.offset for m in source.poll(0.0, 2)] == [4]
    assert source.exhausted()
    assert source.poll(0.0, 2) == []
    source.commit({TopicPartition("r.jsonl", 0): 5})
    assert source.committed == {TopicPartition("r.jsonl", 0): 5}


def test_the_runner_ends_at_the_end_of_a_file_and_commits_all_of_it(small_recording, scorer, tmp_path):
    source = FileSource(small_recording)
    sink = FileSink(tmp_path / "o.jsonl", tmp_path / "d.jsonl", output_topic=OUTPUT_TOPIC, dlq_topic=DLQ_TOPIC)
    lines = len(small_recording.read_text().splitlines())
    counts = Runner(source, sink, scorer, RunnerConfig(OUTPUT_TOPIC, DLQ_TOPIC, max_batch=16)).run()
    sink.close()
    assert counts.scored == lines
    assert source.committed == {TopicPartition(small_recording.name, 0): lines + 1}


@given(st.binary(max_size=200) | st.builds(lambda v: b'{"_ts": ' + v + b"}", st.binary(max_size=30)))
def test_a_line_timestamp_is_an_integer_or_minus_one_for_any_bytes(line):
    ts = line_timestamp(line)
    assert isinstance(ts, int)
    assert ts == -1 or b'"_ts"' in line


def sliding_recording(path: Path, rows: np.ndarray, length: int) -> None:
    """One series, a window ending at every row from ``length - 1`` on (stride 1), in time order."""
    recordings.write(
        path,
        (
            {
                "series_id": "s",
                "start": 1_000 * first,
                "step_ms": 1_000,
                "values": rows[first : first + length].tolist(),
            }
            for first in range(len(rows) - length + 1)
        ),
    )


def test_scores_are_causal_changing_later_rows_leaves_earlier_records_unchanged(scorer, tmp_path):
    """Every window that ends before the changed rows keeps its exact output record; the windows that hold
    changed rows score differently."""
    length = scorer.shape[0]
    rows = np.random.default_rng(5).normal(size=(160, scorer.shape[1]))
    changed = rows.copy()
    changed[120:] += np.linspace(0, 30, 40)[:, None]
    outs = []
    for name, data in (("a", rows), ("b", changed)):
        (tmp_path / name).mkdir()
        rec, out = tmp_path / name / "rec.jsonl", tmp_path / name / "out.jsonl"  # same name: same window_ids
        sliding_recording(rec, data, length)
        score_file(scorer, rec, out, tmp_path / name / "dlq.jsonl")
        outs.append(out.read_text().splitlines())
    before = 120 - length + 1  # windows 0 .. before-1 end before row 120
    assert outs[0][:before] == outs[1][:before]
    assert outs[0][before:] != outs[1][before:]


def consecutive(series_id: str, rows: np.ndarray, length: int, first_id: int = 0) -> list[dict]:
    """Windows of ``length`` rows one after the other, with times and explicit ids."""
    return [
        {
            "series_id": series_id,
            "window_id": f"{series_id}-{first_id + k}",
            "start": 1_000 * k * length,
            "step_ms": 1_000,
            "values": rows[k * length : (k + 1) * length].tolist(),
        }
        for k in range(len(rows) // length)
    ]


def test_a_window_is_judged_against_its_own_series_history_and_no_other(scorer, tmp_path):
    """The same last window scores differently after a quiet history than after a wild one; another
    series' rows, interleaved, change nothing; the runner holds one history per series."""
    length, n_features = scorer.shape
    rng = np.random.default_rng(9)
    last = rng.normal(0, 1.0, (length, n_features))
    quiet = np.concatenate([rng.normal(0, 0.05, (10 * length, n_features)), last])
    wild = np.concatenate([rng.normal(0, 50.0, (10 * length, n_features)), last])
    runs = {}
    for name, windows in (
        ("quiet", consecutive("s", quiet, length)),
        ("wild", consecutive("s", wild, length)),
        (
            "mixed",
            [
                w
                for pair in zip(consecutive("s", quiet, length), consecutive("o", wild, length), strict=True)
                for w in pair
            ],
        ),
    ):
        rec = tmp_path / f"{name}.jsonl"
        recordings.write(rec, windows)
        sink = FileSink(
            tmp_path / f"{name}.out", tmp_path / f"{name}.dlq", output_topic=OUTPUT_TOPIC, dlq_topic=DLQ_TOPIC
        )
        runner = Runner(FileSource(rec), sink, scorer, RunnerConfig(OUTPUT_TOPIC, DLQ_TOPIC, event_time=True))
        runner.run()
        sink.close()
        runs[name] = {r["window_id"]: r for r in lines_of(tmp_path / f"{name}.out")}
        seeded = len(scorer.checkpoint.history or ())  # the series the model was trained on start warm
        assert runner.series_held == seeded + (2 if name == "mixed" else 1)
    final = "s-10"
    assert runs["quiet"][final]["step_probabilities"] != runs["wild"][final]["step_probabilities"]
    assert runs["quiet"][final] == runs["mixed"][final]
