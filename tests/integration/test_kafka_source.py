"""KafkaSource in a real consumer group: a rebalance commits what the runner hands back on revoke, and a
partition kept through the rebalance is read again from that commit (no message skipped)."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition

from detector.broker import CLIENT_SETTINGS, EmbeddedBroker
from detector.kafka_clients import make_consumer
from detector.serve.kafka_io import KafkaSource
from detector.serve.messages import Message, TopicPartition
from detector.settings import load_settings
from tests.integration.kafka_helpers import Topics, produce

GROUP = {"enable_auto_commit": False, **CLIENT_SETTINGS}


class Listener:
    def __init__(self) -> None:
        self.assignments: list[set[TopicPartition]] = []

    def on_revoked(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 7)  # "delivered up to 7, not yet committed"

    def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        raise AssertionError(f"lost {partitions}")

    def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.assignments.append(set(partitions))


def test_revocation_commits_handed_back_offsets_and_kept_partitions_resume_from_them(
    broker: EmbeddedBroker, topics: Topics
):
    """Offsets returned by on_revoked are committed before the partitions go; the partitions this member
    keeps are read again from those offsets."""
    bootstrap = broker.bootstrap_servers
    produce(bootstrap, topics.input, [(f"k{i}".encode(), f"v{i}".encode(), []) for i in range(200)])
    listener = Listener()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, auto_offset_reset="earliest", **GROUP)
    source = KafkaSource(consumer, topics.input)
    source.start(listener)
    read: list[Message] = []
    deadline = time.monotonic() + 60
    while len(read) < 200 and time.monotonic() < deadline:
        read.extend(source.poll(0.2, 500))
    assert len(read) == 200

    other = KafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, **GROUP)
    other.subscribe([topics.input])
    stop = threading.Event()
    member = threading.Thread(target=lambda: [other.poll(200) for _ in iter(stop.is_set, True)])
    member.start()
    again: list[Message] = []
    try:
        deadline = time.monotonic() + 60
        while (len(listener.assignments) < 2 or not again) and time.monotonic() < deadline:
            again.extend(source.poll(0.2, 500))
    finally:
        stop.set()
        member.join()
        other.close()
    kept = listener.assignments[-1]
    assert kept
    assert len(kept) < 4
    assert {m.tp for m in again} <= kept
    firsts = {tp: min(m.offset for m in again if m.tp == tp) for tp in {m.tp for m in again}}
    assert set(firsts.values()) == {7}, firsts  # each kept partition read again from the commit
    committed = {p: consumer.committed(KafkaTopicPartition(topics.input, p)) for p in range(4)}
    assert committed == dict.fromkeys(range(4), 7)
    source.close()


def _arrival_ms(consumer: KafkaConsumer, bootstrap: str, topic: str, n: int) -> list[float]:
    """Per record, produced one at a time into an idle partition: ms until this consumer's poll returns it."""
    delays: list[float] = []
    for i in range(n):
        while consumer.poll(timeout_ms=300):  # drained, and its next fetch held by the broker for want of data
            pass
        sent = time.monotonic()
        produce(bootstrap, topic, [(b"k", f"v{i}".encode(), [])])
        got: dict = {}
        while not got and time.monotonic() - sent < 10:
            got = consumer.poll(timeout_ms=5)
        assert got, "the record never arrived"
        delays.append((time.monotonic() - sent) * 1000)
    return delays


def test_fetch_max_wait_reaches_the_consumer_and_bounds_what_an_idle_fetch_adds(broker: EmbeddedBroker, topics: Topics):
    """`kafka.fetch_max_wait_ms` is the consumer's. The embedded broker answers a fetch that found nothing new
    late, and a record arriving meanwhile waits for it: at 10 ms it arrives within a few ms."""
    bootstrap = broker.bootstrap_servers
    settings = load_settings(
        environ={"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "DETECTOR_KAFKA__FETCH_MAX_WAIT_MS": "10"}
    )
    consumer = make_consumer(settings)
    try:
        assert consumer.config["fetch_max_wait_ms"] == 10
        consumer.assign([KafkaTopicPartition(topics.input, 0)])
        delays = sorted(_arrival_ms(consumer, bootstrap, topics.input, 7))
    finally:
        consumer.close()
    assert delays[3] < 50, delays  # the median: ~8 ms; ~80 at kafka-python's default (500 ms)
