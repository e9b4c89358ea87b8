"""Records that kafka-python cannot parse, against the embedded broker: the daemon skips them, counts and
logs them with their partition and offset, and goes on scoring the partition."""

from __future__ import annotations

import urllib.request

from kafka import KafkaProducer

from detector.broker import EmbeddedBroker
from tests.integration.conftest import F, T
from tests.integration.kafka_helpers import TopicReader, Topics
from tests.sample_windows import encode, window


class _RawKey(str):
    """A header key that the producer writes as bytes that are not UTF-8 (other clients can write them)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:  # type: ignore[override]
        return b"\xff\xfe"


def test_a_record_the_client_cannot_parse_is_skipped_and_the_partition_goes_on(
    broker: EmbeddedBroker, topics: Topics, start_daemon
):
    """good, unreadable (a header key that is not UTF-8), good on one partition, each its own producer batch:
    both good windows are scored, the unreadable one is counted, logged at its offset, and committed past."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    windows = [window("s", i, T, F) for i in range(3)]
    for i, w in enumerate(windows):
        value, headers = encode(w)
        if i == 1:
            headers = [(_RawKey("k"), b"v")]
        producer.send(topics.input, value=value, headers=headers, partition=0).get(timeout=30)
    producer.close()
    daemon = start_daemon()
    reader = TopicReader(broker.bootstrap_servers, topics.output)
    try:
        out = reader.read_until(lambda records: len(records) >= 2, timeout_s=60)
        assert sorted(r.json()["window_id"] for r in out) == ["s/0", "s/2"], daemon.tail()
    finally:
        reader.close()
    skipped = daemon.wait_for_log("record skipped: the client cannot parse it", timeout_s=30)
    assert (skipped["partition"], skipped["offset"]) == (0, 1)
    assert "CorruptRecordError" in skipped["error"]
    metrics = urllib.request.urlopen(daemon.url() + "/metrics", timeout=10).read().decode()
    assert "detector_unreadable_records_total 1.0" in metrics
    assert daemon.alive
