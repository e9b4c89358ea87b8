"""The serving runner over the in-memory Source and Sink: batching, delivery order, dead letters, rebalances,
faults and stopping."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import msgspec
import numpy as np
import pytest

from detector.codec import encode_f32
from detector.model import checkpoint
from detector.model.context import contexts_in_order
from detector.model.train import train
from detector.processes import StopSignals
from detector.scoring import Scorer
from detector.serve.fakes import MemorySink, MemorySource, headers_dict
from detector.serve.messages import TopicPartition
from detector.serve.runner import Runner, RunnerConfig
from tests.conftest import tiny_config
from tests.sample_windows import REASONS, bad_messages

OUT, DLQ, TOPIC = "scores", "windows.dlq", "windows"


def _scorer(small_data, tmp_path_factory, seed: int) -> Scorer:
    path = tmp_path_factory.mktemp("models") / f"seed{seed}.ckpt"
    checkpoint.save(train(small_data, tiny_config(seed=seed)).checkpoint, path)
    return Scorer(checkpoint.load(path), "cpu")


@pytest.fixture(scope="module")
def scorer(small_data, tmp_path_factory) -> Scorer:
    return _scorer(small_data, tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def other_scorer(small_data, tmp_path_factory) -> Scorer:
    return _scorer(small_data, tmp_path_factory, seed=1)


def window(scorer: Scorer, i: int, series: str = "s-1", **extra: Any) -> dict[str, Any]:
    t, f = scorer.shape
    values = (np.sin(np.arange(t * f, dtype=np.float32) + i).reshape(t, f) * 3).tolist()
    return {
        "series_id": series,
        "window_id": f"{series}/{i}",
        "start": 1000 * i,
        "step_ms": 10,
        "values": values,
        **extra,
    }


class SlowScorer:
    """A scorer that takes ``seconds`` over each batch (a batch stays under way while the loop polls)."""

    def __init__(self, inner: Scorer, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score(self, values: np.ndarray, contexts: Any = None, pool: Any = None) -> Any:
        time.sleep(self.seconds)
        return self.inner.score(values, contexts, pool)


def config(**changes: Any) -> RunnerConfig:
    base: dict[str, Any] = {
        "output_topic": OUT,
        "dlq_topic": DLQ,
        "max_batch": 64,
        "max_wait_s": 0.01,
        "idle_poll_s": 0.01,
        "flush_timeout_s": 0.01,
        "backoff_s": (0.001, 0.004),
        "stop_grace_s": 5.0,
    }
    return RunnerConfig(**{**base, **changes})


def fill(source: MemorySource, scorer: Scorer, n: int, partitions: int = 4) -> list[str]:
    ids = []
    for i in range(n):
        w = window(scorer, i, series=f"s-{i % partitions}")
        source.append_json(w, partition=i % partitions, key=w["series_id"].encode())
        ids.append(w["window_id"])
    return ids


def output_ids(sink: MemorySink) -> list[str]:
    return [r["window_id"] for r in sink.values(OUT)]


def test_batches_close_when_full(scorer):
    """With a long max_wait, batches close at max_batch messages; the remainder closes when the run ends."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    ids = fill(source, scorer, 10, partitions=1)
    runner = Runner(source, sink, scorer, config(max_batch=4, max_wait_s=60))
    counts = runner.run(idle_timeout_s=0.1)
    assert counts.batch_sizes == [4, 4, 2]
    assert output_ids(sink) == ids
    assert [c[TopicPartition(TOPIC, 0)] for c in source.commits] == [4, 8, 10]


def test_a_poll_reads_ahead_but_batches_stay_max_batch(scorer):
    """A poll may take read_ahead batches' worth (so the client's next fetch goes out at once); the messages
    held back are scored in order, max_batch at a time, each batch committed after its own delivery."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    ids = fill(source, scorer, 20, partitions=1)
    asked: list[int] = []
    poll = source.poll
    source.poll = lambda timeout_s, max_records: (asked.append(max_records), poll(timeout_s, max_records))[1]
    counts = Runner(source, sink, scorer, config(max_batch=4, max_wait_s=60, read_ahead=3)).run(idle_timeout_s=0.1)
    assert asked[0] == 12
    assert counts.batch_sizes == [4, 4, 4, 4, 4]
    assert output_ids(sink) == ids
    assert [c[TopicPartition(TOPIC, 0)] for c in source.commits] == [4, 8, 12, 16, 20]


def test_batch_closes_when_its_first_message_has_waited_max_wait(scorer):
    """A batch that does not fill is scored once its first message has waited max_wait_s, not at the end."""
    source, sink = MemorySource(TOPIC), MemorySink()
    fill(source, scorer, 3)
    acked_at: list[float] = []
    sink.on_ack = lambda records: acked_at.append(time.monotonic())
    runner = Runner(source, sink, scorer, config(max_batch=100, max_wait_s=0.15))
    started = time.monotonic()
    counts = runner.run(idle_timeout_s=1.0)
    assert counts.batch_sizes == [3]
    assert 0.15 <= acked_at[0] - started < 0.9


def test_offsets_are_committed_only_after_the_sink_acknowledges(scorer):
    """While flushes acknowledge nothing, nothing is committed; each commit covers only acknowledged windows."""
    source, sink = MemorySource(TOPIC), MemorySink()
    ids = fill(source, scorer, 40)
    sink.unreachable_flushes = 5
    by_offset = {
        (m.partition, m.offset): msgspec.json.decode(m.value)["window_id"]
        for tp in source.logs
        for m in source.read(tp)
    }

    def check(offsets):
        acked = set(output_ids(sink))
        for tp, next_offset in offsets.items():
            for offset in range(next_offset):
                assert by_offset[(tp.partition, offset)] in acked

    source.on_commit = check
    runner = Runner(source, sink, scorer, config(max_batch=16))
    counts = runner.run(idle_timeout_s=0.1)
    assert counts.delivery_retries == 5
    assert sorted(output_ids(sink)) == sorted(ids)
    assert source.committed == {TopicPartition(TOPIC, p): 10 for p in range(4)}


def test_output_records_carry_the_contract_fields(scorer):
    """Key = series_id; fields as the README lists them; latency = scoring time - broker timestamp; a missing window_id
    becomes topic/partition/offset."""
    source, sink = MemorySource(TOPIC), MemorySink()
    w = window(scorer, 1, series="pump-7")
    source.append_json(w, partition=2, timestamp=5_000)
    anonymous = window(scorer, 2, series="pump-8")
    del anonymous["window_id"]
    source.append_json(anonymous, partition=2, timestamp=5_000)
    value, headers = encode_f32(window(scorer, 3, series="pump-9", window_id=None))
    source.append(value, partition=3, headers=headers, timestamp=5_500)
    runner = Runner(source, sink, scorer, config(), now_ms=lambda: 6_000)
    runner.run(idle_timeout_s=0.1)
    records = {r.key: msgspec.json.decode(r.value) for r in sink.topic(OUT)}
    first = records[b"pump-7"]
    assert set(first) == {
        "series_id", "window_id", "start", "end", "probability", "flag", "threshold", "step_probabilities",
        "step_flags", "model_version", "calibration", "scored_at", "latency_ms",
    }  # fmt: skip
    assert first["window_id"] == "pump-7/1"
    assert first["end"] == 1000 + scorer.shape[0] * 10
    assert first["model_version"] == scorer.version
    assert (first["scored_at"], first["latency_ms"]) == (6_000, 1_000.0)
    assert first["flag"] == (first["probability"] >= first["threshold"])
    assert records[b"pump-8"]["window_id"] == f"{TOPIC}/2/1"
    assert records[b"pump-9"]["window_id"] == f"{TOPIC}/3/0"
    assert records[b"pump-9"]["latency_ms"] == 500.0


def _bad_messages(scorer: Scorer, max_bytes: int) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """One message per dead-letter reason, plus an f32 payload one value short."""
    t, f = scorer.shape
    f32, f32_headers = encode_f32(window(scorer, 0))
    return [*bad_messages(t, f, max_bytes), ("bad_shape", f32[:-4], f32_headers)]


def test_each_kind_of_bad_input_goes_to_the_dlq_with_its_reason(scorer):
    """Every bad message becomes one DLQ record with the original key, value, headers and its reason; good
    neighbours are scored, and the offsets move past both."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    bad = _bad_messages(scorer, max_bytes=4000)
    good_ids = []
    for i, (_, value, headers) in enumerate(bad):
        w = window(scorer, i)
        source.append_json(w, key=b"k")
        good_ids.append(w["window_id"])
        source.append(value, key=f"bad-{i}".encode(), headers=headers)
    runner = Runner(source, sink, scorer, config(max_message_bytes=4000))
    counts = runner.run(idle_timeout_s=0.1)
    assert output_ids(sink) == good_ids
    dead = sink.topic(DLQ)
    assert [headers_dict(r)["error.reason"].decode() for r in dead] == [reason for reason, _, _ in bad]
    for i, (record, (_, value, headers)) in enumerate(zip(dead, bad, strict=True)):
        h = headers_dict(record)
        assert (record.key, record.value) == (f"bad-{i}".encode(), value)
        assert list(record.headers[: len(headers)]) == headers
        assert h["source.topic"] == TOPIC.encode()
        assert (h["source.partition"], h["source.offset"]) == (b"0", str(2 * i + 1).encode())
        assert h["error.detail"]
    assert sum(counts.dead_letters.values()) == len(bad)
    assert set(counts.dead_letters) == set(REASONS)
    assert source.committed[TopicPartition(TOPIC, 0)] == 2 * len(bad)


def test_a_dead_letter_the_broker_refuses_is_replaced_by_its_fallback(scorer):
    """A DLQ record refused for good (too large for the DLQ topic) goes without its value, marked as such."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink(max_value_bytes=5000)
    source.append(b"x" * 6000, key=b"big")
    Runner(source, sink, scorer, config()).run(idle_timeout_s=0.1)
    (record,) = sink.topic(DLQ)
    h = headers_dict(record)
    assert record.key == b"big"
    assert record.value == b""
    assert (h["error.reason"], h["error.value_dropped"]) == (b"bad_json", b"6000")
    assert source.committed[TopicPartition(TOPIC, 0)] == 1


def test_revoked_partitions_lose_their_unscored_messages_to_the_next_owner(scorer):
    """On revoke, buffered messages of the revoked partitions are dropped, never produced; read again after
    the partition comes back, every window is produced exactly once."""
    source, sink = MemorySource(TOPIC, partitions=2), MemorySink()
    ids = fill(source, scorer, 6, partitions=2)
    source.revoke([1], at_poll=2)
    source.assign([1], at_poll=4)
    produced_before_reassign: list[str] = []
    sink.on_ack = lambda records: produced_before_reassign.extend(
        msgspec.json.decode(r.value)["window_id"] for r in records if source.polls < 4
    )
    runner = Runner(source, sink, scorer, config(max_batch=100, max_wait_s=60))
    counts = runner.run(idle_timeout_s=0.2)
    assert counts.dropped_on_revoke == 3
    assert produced_before_reassign == []
    assert sorted(output_ids(sink)) == sorted(ids)


def test_a_revoked_partition_loses_the_outputs_of_its_batch_under_way(scorer):
    """A batch being scored (pipelined) when its partition is revoked produces nothing of that partition and
    commits nothing of it; its work resumes for the next owner from the batch's first offset."""
    source, sink = MemorySource(TOPIC, partitions=2), MemorySink()
    fill(source, scorer, 12, partitions=2)
    source.revoke([0], at_poll=2)  # poll 1 reads all 12 ahead; partition 0's first 4 are then under way
    runner = Runner(source, sink, SlowScorer(scorer, 0.3), config(max_batch=4, max_wait_s=60, read_ahead=3))
    counts = runner.run(idle_timeout_s=0.2)
    assert counts.dropped_on_revoke == 6
    assert {m["series_id"] for m in sink.values(OUT)} == {"s-1"}
    assert len(sink.values(OUT)) == 6
    assert source.committed == {TopicPartition(TOPIC, 0): 0, TopicPartition(TOPIC, 1): 6}


def test_a_batch_under_way_keeps_the_outputs_of_its_partitions_not_revoked(scorer):
    """A batch under way that mixes a revoked and a kept partition produces the kept partition's windows
    (with their scores), none of the revoked one's, and commits only the kept partition."""
    source, sink = MemorySource(TOPIC, partitions=2), MemorySink()
    ids = fill(source, scorer, 12, partitions=2)
    source.revoke([0], at_poll=2)  # the first batch holds partition 0's six windows and partition 1's first two
    runner = Runner(source, sink, SlowScorer(scorer, 0.3), config(max_batch=8, max_wait_s=60, read_ahead=2))
    counts = runner.run(idle_timeout_s=0.2)
    assert counts.dropped_on_revoke == 6
    assert output_ids(sink) == ids[1::2]  # partition 1 in order, partition 0 not at all
    kept = [window(scorer, i, series="s-1") for i in range(1, 12, 2)]
    values = np.array([w["values"] for w in kept], dtype=np.float32)
    contexts = contexts_in_order(  # each window against the rows of its series before it, as the runner gives
        [w["series_id"] for w in kept], values, [w["start"] for w in kept], [w["step_ms"] for w in kept]
    )
    expected = scorer.score(values, contexts)
    np.testing.assert_allclose([r["probability"] for r in sink.values(OUT)], expected.probability, atol=1e-5)
    assert source.committed == {TopicPartition(TOPIC, 0): 0, TopicPartition(TOPIC, 1): 6}


def test_a_partition_kept_through_a_rebalance_is_read_again_from_where_its_work_stopped(scorer):
    """An eager rebalance revokes everything and gives some partitions back with their fetch position: the
    dropped messages of a kept partition are read again from the resume offset, so none is lost."""
    source, sink = MemorySource(TOPIC, partitions=2), MemorySink()
    ids = fill(source, scorer, 6, partitions=2)
    source.rebalance(keep=[0], at_poll=2)
    counts = Runner(source, sink, scorer, config(max_batch=100, max_wait_s=60)).run(idle_timeout_s=0.2)
    assert counts.dropped_on_revoke == 6
    assert sorted(output_ids(sink)) == sorted(ids[0::2])  # partition 0 once; partition 1 went elsewhere
    assert source.committed == {TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 0}


def test_revocation_commits_what_was_delivered_but_not_yet_committed(scorer):
    """A batch whose commit failed is committed when its partitions are revoked, before they go."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 3, partitions=1)
    source.fail_commits(1)
    sink.on_ack = lambda records: source.revoke([0])  # at the poll after the batch's delivery
    Runner(source, sink, scorer, config(max_batch=3, backoff_s=(60.0, 60.0))).run(idle_timeout_s=0.1)
    assert source.commits == [{TopicPartition(TOPIC, 0): 3}]


def test_lost_partitions_are_dropped_without_a_commit(scorer):
    """On eviction the buffered messages of lost partitions are dropped and nothing of theirs is committed."""
    source, sink = MemorySource(TOPIC, partitions=2), MemorySink()
    fill(source, scorer, 4, partitions=2)
    source.lose([1], at_poll=2)
    counts = Runner(source, sink, scorer, config(max_batch=100, max_wait_s=60)).run(idle_timeout_s=0.1)
    assert counts.dropped_on_revoke == 2
    assert {m["series_id"] for m in sink.values(OUT)} == {"s-0"}
    assert source.committed == {TopicPartition(TOPIC, 0): 2}


def test_broker_faults_in_poll_and_commit_are_retried(scorer):
    """Failed polls and commits are retried with backoff; the loop goes on and every window is committed."""
    source, sink = MemorySource(TOPIC), MemorySink()
    ids = fill(source, scorer, 20)
    source.fail_polls(3)
    source.fail_commits(2)
    Runner(source, sink, scorer, config(max_batch=8)).run(idle_timeout_s=0.2)
    assert sorted(output_ids(sink)) == sorted(ids)
    assert sum(source.committed.values()) == 20


def test_a_crash_before_the_commit_loses_nothing(scorer):
    """A crash between acknowledgement and commit: after a restart the batch is read again, same window_ids."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    ids = fill(source, scorer, 12, partitions=1)
    commits = 0

    def crash_on_second(offsets):
        nonlocal commits
        commits += 1
        if commits == 2:
            raise KeyboardInterrupt("killed")

    source.on_commit = crash_on_second
    with pytest.raises(KeyboardInterrupt):
        Runner(source, sink, scorer, config(max_batch=4)).run(idle_timeout_s=0.1)
    assert source.committed == {TopicPartition(TOPIC, 0): 4}
    source.restart()
    Runner(source, sink, scorer, config(max_batch=4)).run(idle_timeout_s=0.1)
    out = output_ids(sink)
    assert set(out) == set(ids)
    assert sorted(out) == sorted(ids + ids[4:8])  # the crashed batch twice, with the same window_ids


def test_sigterm_finishes_the_batch_in_hand_commits_and_returns(scorer):
    """SIGTERM only sets a flag: the open batch is scored, delivered and committed, then run returns."""
    source, sink = MemorySource(TOPIC), MemorySink()
    ids = fill(source, scorer, 10)
    runner = Runner(source, sink, scorer, config(max_batch=1000, max_wait_s=600))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    with StopSignals() as signals:
        signals.on_stop(runner.request_stop)
        timer.start()
        counts = runner.run()
    assert signals.received == signal.SIGTERM
    assert counts.batch_sizes == [10]
    assert sorted(output_ids(sink)) == sorted(ids)
    assert sum(source.committed.values()) == 10


def test_stop_gives_up_on_undeliverable_output_without_committing(scorer):
    """When output cannot be delivered within stop_grace_s after a stop, run returns and commits nothing."""
    source, sink = MemorySource(TOPIC), MemorySink()
    fill(source, scorer, 4)
    sink.unreachable_flushes = 10**9
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    runner = Runner(source, sink, scorer, config(max_batch=4, stop_grace_s=30.0, backoff_s=(0.5, 4.0)),
                    clock=lambda: now[0], sleep=sleep)  # fmt: skip
    stopped_at: list[float] = []
    flush = sink.flush

    def stop_at_first_flush(timeout_s: float):  # type: ignore[no-untyped-def]
        if not stopped_at:
            runner.request_stop()
            stopped_at.append(now[0])
        return flush(timeout_s)

    sink.flush = stop_at_first_flush  # type: ignore[method-assign]
    runner.run()
    assert 30.0 < now[0] - stopped_at[0] <= 30.0 + 4.0  # gave up after stop_grace_s, within one backoff
    assert source.commits == []


def test_after_output_is_given_up_on_no_later_batch_is_committed(scorer):
    """Stopping with a batch undeliverable: neither it nor the batches read after it are committed."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 12, partitions=1)
    sink.unreachable_flushes = 10**9
    runner = Runner(source, sink, scorer, config(max_batch=4, stop_grace_s=0.2))
    threading.Timer(0.2, runner.request_stop).start()
    runner.run()
    assert source.commits == []
    assert len(sink.sent) == 4  # the batches after the abandoned one were not even produced


def test_a_new_scorer_takes_over_between_batches(scorer, other_scorer):
    """use_scorer swaps the model at a batch boundary: no batch is scored by two models."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 12, partitions=1)
    runner = Runner(source, sink, scorer, config(max_batch=4))
    sink.on_ack = lambda records: runner.use_scorer(other_scorer)
    runner.run(idle_timeout_s=0.1)
    versions = [r["model_version"] for r in sink.values(OUT)]
    batches = [versions[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(b)) == 1 for b in batches)  # never two models in one batch
    # The swap lands on the next batch to be decoded after the first delivery: the second batch, or the third
    # when the second was already under way (pipelined). Once swapped, never back.
    firsts = [b[0] for b in batches]
    old, new = scorer.version, other_scorer.version
    assert firsts in ([old, new, new], [old, old, new])


def test_a_failing_observer_does_not_break_the_loop(scorer):
    """An observer that raises is logged and ignored; scoring and commits go on."""

    class Broken:
        def __getattr__(self, name):
            def fail(*args):
                raise RuntimeError(name)

            return fail

    source, sink = MemorySource(TOPIC), MemorySink()
    ids = fill(source, scorer, 8)
    counts = Runner(source, sink, scorer, config(), observer=Broken()).run(idle_timeout_s=0.1)  # type: ignore[arg-type]
    assert sorted(output_ids(sink)) == sorted(ids)
    assert counts.scored == 8


def test_max_messages_stops_the_run_after_that_many(scorer):
    """run(max_messages=N) consumes N messages, delivers and commits them, and returns."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    ids = fill(source, scorer, 10, partitions=1)
    counts = Runner(source, sink, scorer, config(max_batch=4, max_wait_s=60)).run(max_messages=6)
    assert counts.batch_sizes == [4, 2]
    assert output_ids(sink) == ids[:6]
    assert source.committed == {TopicPartition(TOPIC, 0): 6}
