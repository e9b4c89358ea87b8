"""KafkaSource.poll's own waiting, over a stand-in for kafka-python's consumer (no broker): it waits in short
steps while partitions are assigned (kafka-python 3.0 may sleep 100 ms inside one long poll with records
in hand), in one step while the group is joining, and returns as soon as records come."""

from __future__ import annotations

import time
from collections import namedtuple

import pytest
from kafka import TopicPartition as KafkaTopicPartition
from kafka import errors as kerr

from detector.serve.kafka_io import POLL_STEP_MS, KafkaSource
from detector.serve.messages import SourceError

Record = namedtuple("Record", "topic partition offset key value headers timestamp")
TP = KafkaTopicPartition("in", 0)


class StandInConsumer:
    """poll() waits out its timeout and returns nothing, until ``records_after_calls`` calls have been made."""

    def __init__(self, assigned: bool, records_after_calls: int | None = None, fail: bool = False) -> None:
        self.assigned = assigned
        self.records_after_calls = records_after_calls
        self.fail = fail
        self.timeouts: list[int] = []

    def assignment(self) -> set[KafkaTopicPartition]:
        return {TP} if self.assigned else set()

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        if self.fail:
            raise kerr.KafkaConnectionError("broker gone")
        self.timeouts.append(timeout_ms)
        if self.records_after_calls is not None and len(self.timeouts) >= self.records_after_calls:
            return {TP: [Record("in", 0, 7, b"k", b"v", [("h", b"1")], 123)]}
        time.sleep(timeout_ms / 1000)
        return {}


def test_an_assigned_consumer_is_polled_in_short_steps_for_the_whole_timeout() -> None:
    consumer = StandInConsumer(assigned=True)
    started = time.monotonic()
    assert KafkaSource(consumer, "in").poll(0.1, 10) == []  # type: ignore[arg-type]
    assert time.monotonic() - started >= 0.1
    assert max(consumer.timeouts) <= POLL_STEP_MS
    assert len(consumer.timeouts) >= 100 // POLL_STEP_MS


def test_records_end_the_wait_at_once() -> None:
    consumer = StandInConsumer(assigned=True, records_after_calls=3)
    messages = KafkaSource(consumer, "in").poll(5.0, 10)  # type: ignore[arg-type]
    assert len(consumer.timeouts) == 3  # three 10 ms steps, not the whole 5 s
    assert [(m.topic, m.partition, m.offset, m.value, m.headers, m.timestamp) for m in messages] == [
        ("in", 0, 7, b"v", [("h", b"1")], 123)
    ]


def test_a_joining_consumer_gets_the_whole_timeout_in_one_poll() -> None:
    """Short polls during a join make kafka-python spin on timeouts (and leave garbage to collect later)."""
    consumer = StandInConsumer(assigned=False)
    KafkaSource(consumer, "in").poll(0.05, 10)  # type: ignore[arg-type]
    assert consumer.timeouts == [50]


def test_a_zero_timeout_polls_once_without_waiting() -> None:
    consumer = StandInConsumer(assigned=True)
    assert KafkaSource(consumer, "in").poll(0.0, 10) == []  # type: ignore[arg-type]
    assert consumer.timeouts == [0]


def test_a_client_error_becomes_a_source_error() -> None:
    with pytest.raises(SourceError, match="broker gone"):
        KafkaSource(StandInConsumer(assigned=True, fail=True), "in").poll(0.05, 10)  # type: ignore[arg-type]
