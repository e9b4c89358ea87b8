"""KafkaSource and KafkaSink: the :class:`~detector.serve.messages.Source` and
:class:`~detector.serve.messages.Sink` protocols on kafka-python clients made by :mod:`detector.kafka_clients`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection, Mapping

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as KafkaTopicPartition
from kafka import errors as kerr
from kafka.future import Future

from detector.errors import ConfigError
from detector.kafka_clients import CLOSE_TIMEOUT_S, GROUP_MOVED_ON, PERMANENT, error_text
from detector.serve.messages import (
    CommitError,
    Failure,
    FlushResult,
    Message,
    OutRecord,
    PartitionListener,
    SourceError,
    TopicPartition,
    UnreadableRecord,
)

COMMIT_TIMEOUT_MS = 10_000
# The longest single wait in kafka-python's poll, while partitions are assigned. kafka-python 3.0.x can sleep
# min(poll timeout, retry_backoff_ms) with a finished fetch's records already buffered (its IO thread drops the
# done future before the poll looks for one in flight), so those records wait out the sleep: polled in steps,
# they wait at most one step. (retry_backoff_ms is left alone: it also paces the client's retries.) Not during
# a group join, where short polls make kafka-python spin on timeouts and leave garbage (exceptions and their
# frames) for the cyclic collector to walk later.
POLL_STEP_MS = 10

log = structlog.get_logger("detector.serve")


def _ours(tps: Collection[KafkaTopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(tp.topic, tp.partition) for tp in tps]


class _Rebalance(AsyncConsumerRebalanceListener):
    """Passes kafka-python's rebalance callbacks on. Async, because they run on the client's IO thread,
    where a blocking commit is not allowed: the commit of a revocation is awaited there instead.

    kafka-python keeps the fetch position of a partition that is revoked and assigned again in the same
    rebalance, so such a partition is moved back to where the listener's unfinished work starts.
    """

    def __init__(self, consumer: KafkaConsumer, listener: PartitionListener) -> None:
        self.consumer = consumer
        self.listener = listener
        self.resume: dict[KafkaTopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: Collection[KafkaTopicPartition]) -> None:
        resume = self.listener.on_revoked(_ours(revoked))
        self.resume = {KafkaTopicPartition(*tp): offset for tp, offset in resume.items()}
        if not self.resume:
            return
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self.resume.items()}
        try:
            future: Future = self.consumer.commit_async(offsets)
            await future
        except Exception as err:  # best effort: the new owner re-reads from the last commit
            log.warning("commit before revocation failed", error=error_text(err))

    async def on_partitions_assigned(self, assigned: Collection[KafkaTopicPartition]) -> None:
        for tp in assigned:
            if tp in self.resume:
                self.consumer.seek(tp, self.resume[tp])
        self.resume = {}
        self.listener.on_assigned(_ours(assigned))

    async def on_partitions_lost(self, lost: Collection[KafkaTopicPartition]) -> None:
        self.resume = {}
        self.listener.on_lost(_ours(lost))


class KafkaSource:
    """The input topic, read as a member of the consumer group."""

    def __init__(self, consumer: KafkaConsumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self._next: dict[KafkaTopicPartition, int] = {}  # per partition, the offset after the last one returned

    def start(self, listener: PartitionListener) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self.consumer, listener))

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first (in POLL_STEP_MS steps)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))  # never a spin of 0 ms polls
            step_ms = min(POLL_STEP_MS, left_ms) if self.consumer.assignment() else left_ms
            try:
                batches = self.consumer.poll(timeout_ms=step_ms, max_records=max_records)
            except kerr.CorruptRecordError as err:
                raise self._skip_unreadable(err) from err
            except kerr.KafkaError as err:
                raise SourceError(error_text(err)) from err
            if batches or time.monotonic() >= deadline:
                break
        out: list[Message] = []
        for tp, records in batches.items():
            for r in records:
                out.append(Message(r.topic, r.partition, r.offset, r.key, r.value, r.headers or (), r.timestamp))
            if records:
                self._next[tp] = records[-1].offset + 1
        return out

    def _skip_unreadable(self, err: kerr.CorruptRecordError) -> SourceError:
        """Move past a record that kafka-python cannot parse, which would otherwise fail every poll.

        kafka-python parses a fetched batch record by record and raises at the first it cannot read, with
        the partition's position at that record; which partition it was is only in its fetcher's state.
        The position is moved one past it, so the next poll reads on (when later records of the same
        producer batch are behind it, each is skipped in turn: the client cannot resume inside a batch).
        Returns the error for the caller to raise: UnreadableRecord, or a plain SourceError when the
        partition cannot be told."""
        part = getattr(getattr(self.consumer, "_fetcher", None), "_next_partition_records", None)
        tp = getattr(part, "topic_partition", None)
        if tp is None or tp not in self.consumer.assignment():
            return SourceError(error_text(err))
        offset = self.consumer.position(tp, timeout_ms=COMMIT_TIMEOUT_MS)
        if offset is None:
            return SourceError(error_text(err))
        self.consumer.seek(tp, offset + 1)
        self._next[tp] = offset + 1
        return UnreadableRecord(TopicPartition(tp.topic, tp.partition), offset, error_text(err))

    def lag(self) -> dict[TopicPartition, int]:
        """High watermark (from the last fetch response) minus the next offset this member hands out."""
        lags: dict[TopicPartition, int] = {}
        assignment = self.consumer._subscription.assignment  # kafka-python's own state: read without a request
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self._next.get(tp)
            if position is None:
                state = assignment.get(tp)
                position = state.position.offset if state is not None and state.position is not None else None
            if high is not None and position is not None:
                lags[TopicPartition(tp.topic, tp.partition)] = max(0, high - position)
        self._next = {tp: n for tp, n in self._next.items() if tp in assignment}
        return lags

    def exhausted(self) -> bool:
        return False  # a topic has no end

    def problem(self) -> str | None:
        """Whether the client holds a live connection to the group coordinator (kafka-python's own view)."""
        coordinator = self.consumer._coordinator.coordinator_id
        if coordinator is None:
            return "group coordinator unknown (broker unreachable?)"
        if not self.consumer._client.connected(coordinator):
            return f"no connection to the group coordinator (node {coordinator})"
        return None

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        commit = {KafkaTopicPartition(*tp): OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        try:
            self.consumer.commit(commit, timeout_ms=COMMIT_TIMEOUT_MS)
        except GROUP_MOVED_ON as err:
            raise CommitError(error_text(err), retriable=False) from err
        except kerr.KafkaError as err:
            raise CommitError(error_text(err), retriable=True) from err

    def close(self) -> None:
        """Leave the group (the partitions move to the other members at once) and disconnect."""
        try:
            self.consumer.close(autocommit=False, timeout_ms=int(CLOSE_TIMEOUT_S * 1000))
        except kerr.KafkaError as err:
            log.warning("consumer close failed", error=error_text(err))


class KafkaSink:
    """Output and dead-letter records through one idempotent producer.

    The producer is replaced by a new one from ``new_producer`` when every send fails for ``REPLACE_AFTER``
    flushes in a row, or when nothing has been acknowledged for ``STALL_S`` while records wait: an idempotent
    kafka-python producer whose broker lost its state (a restarted memory broker, a deleted topic) can be
    left in a fatal state, or retrying a reset sequence forever, and never recovers by itself. Records still
    in flight in the old producer are handed back as failures, to be sent again (at-least-once).
    """

    REPLACE_AFTER = 3
    STALL_S = 20.0

    def __init__(self, new_producer: Callable[[], KafkaProducer], producer: KafkaProducer | None = None) -> None:
        self.new_producer = new_producer
        self.producer: KafkaProducer | None = producer
        self._in_flight: list[tuple[OutRecord, Future]] = []
        self._failures: list[Failure] = []
        self._blocked: str | None = None  # a send failed since the last flush: hold the rest until then
        self._failed_flushes = 0  # flushes in a row where every record failed
        self._progress_at = time.monotonic()  # the last acknowledgement (or the producer's creation)

    def send(self, record: OutRecord) -> None:
        if self.producer is None:
            self._blocked = self._blocked or "no producer (the broker was unreachable when it was created)"
        if self._blocked is not None or self.producer is None:
            self._failures.append(Failure(record, False, self._blocked or "blocked"))
            return
        try:
            future = self.producer.send(record.topic, key=record.key, value=record.value, headers=list(record.headers))
        except PERMANENT as err:
            self._failures.append(Failure(record, True, error_text(err)))
        except (TypeError, ValueError) as err:  # kafka-python's own checks of the record: sending it again fails too
            self._failures.append(Failure(record, True, error_text(err)))
        except kerr.KafkaError as err:  # metadata of an unreachable cluster, a full buffer, ...
            self._blocked = error_text(err)
            self._failures.append(Failure(record, False, self._blocked))
        else:
            self._in_flight.append((record, future))

    def flush(self, timeout_s: float) -> FlushResult:
        if self.producer is not None:
            with contextlib.suppress(kerr.KafkaTimeoutError):  # what is not done is counted below
                self.producer.flush(timeout=timeout_s)
        unfinished: list[tuple[OutRecord, Future]] = []
        failures, self._failures, self._blocked = self._failures, [], None
        acknowledged = 0
        for record, future in self._in_flight:
            if not future.is_done:
                unfinished.append((record, future))
            elif future.failed():
                err = future.exception
                failures.append(Failure(record, isinstance(err, PERMANENT), error_text(err)))
            else:
                acknowledged += 1
        self._in_flight = unfinished
        now = time.monotonic()
        if acknowledged or not (failures or unfinished):
            self._progress_at = now
        if failures and not acknowledged and not unfinished and not any(f.permanent for f in failures):
            self._failed_flushes += 1
        else:
            self._failed_flushes = 0
        if self.producer is None or self._failed_flushes >= self.REPLACE_AFTER:
            self._replace_producer(failures[0].error if failures else "no producer")
        elif unfinished and now - self._progress_at > self.STALL_S:
            self._replace_producer(f"nothing acknowledged for {now - self._progress_at:.0f} s")
            failures.extend(Failure(record, False, "in flight in a replaced producer") for record, _ in unfinished)
            unfinished = []
        return FlushResult(len(unfinished), failures)

    def _replace_producer(self, reason: str) -> None:
        log.warning("replacing the producer", reason=reason)
        old, self.producer = self.producer, None
        self._in_flight = []
        if old is not None:
            try:
                old.close(timeout=1)
            except Exception as err:  # a broken producer may fail to close; it is dropped either way
                log.warning("producer close failed", error=error_text(err))
        self._failed_flushes = 0
        self._progress_at = time.monotonic()
        try:
            self.producer = self.new_producer()
        except (kerr.KafkaError, OSError, ConfigError) as err:  # e.g. a TLS file being replaced: retried
            log.warning("new producer not created yet; retrying", error=error_text(err))

    def close(self) -> None:
        if self.producer is None:
            return
        try:
            self.producer.close(timeout=CLOSE_TIMEOUT_S)
        except kerr.KafkaError as err:
            log.warning("producer close failed", error=error_text(err))
