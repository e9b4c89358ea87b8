"""`detector serve` against the embedded broker over TCP: throughput and exactly one record per window, dead
letters, compressed input from librdkafka, and a clean SIGTERM. Settings come only from DETECTOR_* variables."""

from __future__ import annotations

import json
import time
from datetime import datetime

from detector.broker import EmbeddedBroker
from tests.integration.conftest import MEASUREMENTS, F, T
from tests.integration.kafka_helpers import Record, TopicReader, Topics, end_offsets, produce, read_to_end
from tests.sample_windows import REASONS, bad_messages, encode, window

CODECS = ("gzip", "snappy", "lz4", "zstd")


def _records(windows: list[dict], binary_every: int = 0) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    out = []
    for i, w in enumerate(windows):
        value, headers = encode(w, binary=binary_every > 0 and i % binary_every == 0)
        out.append((w["series_id"].encode(), value, headers))
    return out


def _ids(records: list[Record]) -> list[str]:
    return [r.json()["window_id"] for r in records]


def _epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def test_every_window_is_scored_once_and_the_rates_are_measured(broker: EmbeddedBroker, topics: Topics, start_daemon):
    """6,000 windows (10 series x 600, F=4, T=64) in: 6,000 distinct window_ids out, no duplicates, no DLQ."""
    windows = [window(f"series-{s}", i, T, F) for i in range(600) for s in range(10)]
    expected = {w["window_id"] for w in windows}
    started = time.monotonic()
    produce(broker.bootstrap_servers, topics.input, _records(windows))
    produce_s = time.monotonic() - started

    launched_ms = time.time() * 1000
    daemon = start_daemon()
    assigned = daemon.wait_for_log("partitions assigned", timeout_s=90)
    out = TopicReader(broker.bootstrap_servers, topics.output)
    records = out.read_count(len(windows), timeout_s=240)
    assert daemon.alive
    assert daemon.terminate(timeout_s=15) == 0
    records = read_to_end(out, broker.bootstrap_servers, topics.output, timeout_s=60)
    ids = _ids(records)
    assert len(ids) == len(windows), f"{len(ids)} output records for {len(windows)} windows"
    assert set(ids) == expected
    assert end_offsets(broker.bootstrap_servers, topics.dlq) == dict.fromkeys(range(4), 0)

    first = records[0].json()
    assert records[0].key == first["series_id"].encode()
    assert {"probability", "flag", "threshold", "model_version", "calibration", "scored_at", "latency_ms"} <= set(first)
    assert len(first["step_probabilities"]) == T

    # End to end: from the group assignment to the last window scored (inputs were all on the topic).
    last_scored = max(r.json()["scored_at"] for r in records)
    e2e_s = (last_scored - _epoch_ms(assigned["timestamp"])) / 1000
    # Consume only: a bare kafka-python consumer (no group) draining the same input topic.
    began = time.monotonic()
    drained = TopicReader(broker.bootstrap_servers, topics.input).read_count(len(windows), timeout_s=120)
    consume_s = time.monotonic() - began
    assert len(drained) == len(windows)
    MEASUREMENTS.append(
        f"scenario 1 ({len(windows)} JSON windows, T={T}, F={F}, 4 partitions): "
        f"produce {len(windows) / produce_s:,.0f}/s; serve end-to-end {len(windows) / e2e_s:,.0f} windows/s "
        f"({e2e_s:.1f} s from assignment to last score; {(last_scored - launched_ms) / 1000:.1f} s from process "
        f"launch, start-up and group join included); consume-only {len(windows) / consume_s:,.0f} msg/s"
    )


def test_bad_messages_go_to_the_dlq_and_their_neighbours_are_scored(
    broker: EmbeddedBroker, topics: Topics, start_daemon
):
    """200 good windows with 12 bad messages of every kind interleaved: 200 scored, 12 dead letters, each
    with its reason and its source, and the daemon still running."""
    max_bytes = 32_768
    good = [window(f"pump-{i % 5}", i, T, F, with_id=i % 25 != 0) for i in range(200)]
    good_records = _records(good, binary_every=4)  # a quarter in the binary f32 codec
    bad = bad_messages(T, F, max_bytes)
    records = []
    for i, record in enumerate(good_records):
        records.append(record)
        j, r = divmod(i - 8, 16)  # bad message j after good window 8 + 16 j
        if r == 0 and 0 <= j < len(bad):
            records.append((f"bad-{j}".encode(), bad[j][1], bad[j][2]))
    assert len(records) == 212
    produce(broker.bootstrap_servers, topics.input, records)

    daemon = start_daemon(DETECTOR_LIMITS__MAX_MESSAGE_BYTES=str(max_bytes))
    out_reader, dlq_reader = (TopicReader(broker.bootstrap_servers, t) for t in (topics.output, topics.dlq))
    out_reader.read_count(200, timeout_s=120)
    dlq_reader.read_count(12, timeout_s=60)
    assert daemon.alive
    assert daemon.terminate(timeout_s=15) == 0
    out = read_to_end(out_reader, broker.bootstrap_servers, topics.output, timeout_s=60)
    dead = read_to_end(dlq_reader, broker.bootstrap_servers, topics.dlq, timeout_s=60)
    inputs = {
        (r.partition, r.offset): r for r in TopicReader(broker.bootstrap_servers, topics.input).read_count(212, 60)
    }

    ids = _ids(out)
    assert len(ids) == 200
    assert len(set(ids)) == 200
    assert {w["window_id"] for w in good if "window_id" in w} <= set(ids)
    for record in out:  # windows without a window_id are named after where they were read
        wid = record.json()["window_id"]
        if wid.startswith(topics.input + "/"):
            partition, offset = map(int, wid.rsplit("/", 2)[1:])
            assert inputs[(partition, offset)].key == record.key

    assert len(dead) == 12
    assert sorted(r.header("error.reason").decode() for r in dead) == sorted(REASONS)
    for record in dead:
        assert record.header("error.detail")
        assert record.header("source.topic") == topics.input.encode()
        source = inputs[(int(record.header("source.partition")), int(record.header("source.offset")))]
        assert (record.key, record.value) == (source.key, source.value)
        assert record.headers[: len(source.headers)] == source.headers

    lines = [entry for entry in daemon.logs() if entry.get("event") == "dead letter"]
    assert len(lines) == 12
    assert all({"topic", "partition", "offset", "series_id", "reason"} <= set(entry) for entry in lines)


def test_compressed_batches_from_librdkafka_are_scored(broker: EmbeddedBroker, topics: Topics, start_daemon):
    """400 windows produced by confluent-kafka, 100 under each of gzip, snappy, lz4 and zstd: all 400 are
    scored, and the output topic reads back with confluent-kafka."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
    from confluent_kafka import TopicPartition as CTopicPartition

    windows = [window(f"valve-{i % 4}", i, T, F) for i in range(400)]
    for k, codec in enumerate(CODECS):
        producer = Producer(
            {"bootstrap.servers": broker.bootstrap_servers, "compression.type": codec, "linger.ms": 50, "acks": "all"}
        )
        for key, value, headers in _records(windows[k * 100 : (k + 1) * 100]):
            producer.produce(topics.input, key=key, value=value, headers=headers)
        assert producer.flush(30) == 0

    daemon = start_daemon()
    reader = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": topics.group + ".reader"})
    reader.assign([CTopicPartition(topics.output, p, OFFSET_BEGINNING) for p in range(4)])
    got: list = []

    def consume_until(n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            for message in reader.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                got.append(message)

    consume_until(len(windows), timeout_s=180)
    assert daemon.terminate(timeout_s=15) == 0
    consume_until(sum(end_offsets(broker.bootstrap_servers, topics.output).values()), timeout_s=60)
    reader.close()
    values = [json.loads(m.value()) for m in got]
    assert len(values) == len(windows)
    assert {v["window_id"] for v in values} == {w["window_id"] for w in windows}
    assert all(m.key() == v["series_id"].encode() for m, v in zip(got, values, strict=True))
    assert end_offsets(broker.bootstrap_servers, topics.dlq) == dict.fromkeys(range(4), 0)


def test_sigterm_exits_zero_and_a_restart_scores_nothing_twice(broker: EmbeddedBroker, topics: Topics, start_daemon):
    """SIGTERM: the daemon commits, leaves the group and exits 0; the next one goes on from the commit, so
    every window is scored exactly once."""
    first = [window("fan-1", i, T, F) for i in range(300)]
    produce(broker.bootstrap_servers, topics.input, _records(first))
    daemon = start_daemon()
    reader = TopicReader(broker.bootstrap_servers, topics.output)
    assert len(reader.read_count(300, timeout_s=120)) == 300

    assert daemon.terminate(timeout_s=15) == 0
    assert daemon.logs()[-1]["event"] == "stopped"

    again = start_daemon()
    again.wait_for_log("partitions assigned", timeout_s=90)
    second = [window("fan-1", i, T, F) for i in range(300, 400)]
    produce(broker.bootstrap_servers, topics.input, _records(second))
    expected = {w["window_id"] for w in first + second}
    reader.read_until(lambda rs: {r.json()["window_id"] for r in rs} >= expected, timeout_s=120)
    assert again.terminate(timeout_s=15) == 0
    ids = _ids(read_to_end(reader, broker.bootstrap_servers, topics.output, timeout_s=60))
    assert set(ids) == expected
    assert len(ids) == len(expected), f"{len(ids) - len(expected)} windows scored twice"
