"""In-memory :class:`~detector.serve.messages.Source` and :class:`~detector.serve.messages.Sink`.

For the runner's unit tests and for users testing their own set-up without a broker. They keep Kafka's
semantics where the runner depends on them: per-partition offsets, commits of the next offset to read,
re-reading from the last commit after a rebalance or a restart, the revocation of every partition (and the
commit of what the listener hands back) when the member closes, and acknowledgements only on flush. Faults
are scripted: polls that fail, records the client cannot parse, flushes that acknowledge nothing, records
refused for good for their size or their topic, commits that fail or are refused.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

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


class MemorySource:
    """A topic of ``partitions`` in-memory logs, read by one group member that holds all of them at start."""

    def __init__(self, topic: str = "windows", partitions: int = 4, *, max_idle_sleep_s: float = 0.01) -> None:
        self.topic = topic
        self.logs: dict[TopicPartition, list[Message]] = {TopicPartition(topic, p): [] for p in range(partitions)}
        self.committed: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.assigned: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []  # every successful commit, in order
        self.polls = 0
        self.closed = False
        self.on_commit: Callable[[Mapping[TopicPartition, int]], None] | None = None  # called before a commit
        self.max_idle_sleep_s = max_idle_sleep_s
        self._listener: PartitionListener | None = None
        self._scheduled: list[tuple[int | None, Callable[[], None]]] = []  # (poll number or None = next, action)
        self._failing_polls = 0
        self._failing_commits = 0
        self.unreadable: set[tuple[int, int]] = set()  # (partition, offset) of records the client cannot parse

    # -- filling and scripting --------------------------------------------------------------------------

    def append(
        self,
        value: bytes | None,
        *,
        partition: int = 0,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
        timestamp: int | None = None,
    ) -> Message:
        """Add a message at the end of a partition; its offset is the partition's next."""
        tp = TopicPartition(self.topic, partition)
        log = self.logs[tp]
        ts = time.time_ns() // 1_000_000 if timestamp is None else timestamp
        message = Message(self.topic, partition, len(log), key, value, tuple(headers), ts)
        log.append(message)
        return message

    def append_json(self, obj: Any, *, partition: int = 0, **kwargs: Any) -> Message:
        return self.append(msgspec.json.encode(obj), partition=partition, **kwargs)

    def revoke(self, partitions: Iterable[int], at_poll: int | None = None) -> None:
        """At the next poll (or poll number ``at_poll``), take these partitions away, to another member."""
        self.rebalance(keep=None, revoke=partitions, at_poll=at_poll)

    def rebalance(
        self, keep: Iterable[int] | None, revoke: Iterable[int] | None = None, at_poll: int | None = None
    ) -> None:
        """An eager rebalance at the next poll (or poll ``at_poll``): every assigned partition (or those in
        ``revoke``) is revoked, then those in ``keep`` are assigned again. As with Kafka, a kept partition
        keeps its fetch position, unless the listener handed back a resume offset for it; the offsets handed
        back are committed first (best effort)."""

        def act() -> None:
            gone = set(self.assigned) if revoke is None else {TopicPartition(self.topic, p) for p in revoke}
            gone &= self.assigned
            resume = dict(self._listener.on_revoked(gone)) if self._listener is not None else {}
            if resume:
                with contextlib.suppress(CommitError):  # best effort, as with Kafka
                    self.commit(resume)
            kept = {TopicPartition(self.topic, p) for p in keep or ()} & gone
            for tp in gone - kept:
                self.positions.pop(tp, None)
            for tp in kept & set(resume):
                self.positions[tp] = resume[tp]
            self.assigned -= gone - kept
            if kept and self._listener is not None:
                self._listener.on_assigned(kept)

        self._scheduled.append((at_poll, act))

    def lose(self, partitions: Iterable[int], at_poll: int | None = None) -> None:
        """At the next poll (or poll ``at_poll``), take these partitions away as an eviction does: no commit."""
        tps = {TopicPartition(self.topic, p) for p in partitions}

        def act() -> None:
            self.assigned -= tps
            for tp in tps:
                self.positions.pop(tp, None)
            if self._listener is not None:
                self._listener.on_lost(tps)

        self._scheduled.append((at_poll, act))

    def assign(self, partitions: Iterable[int], at_poll: int | None = None) -> None:
        """At the next poll (or poll ``at_poll``), give these partitions (back), read from their last commit."""
        tps = {TopicPartition(self.topic, p) for p in partitions}

        def act() -> None:
            for tp in tps - self.assigned:
                self.positions[tp] = self.committed.get(tp, 0)
            self.assigned |= tps
            if self._listener is not None:
                self._listener.on_assigned(tps)

        self._scheduled.append((at_poll, act))

    def fail_polls(self, n: int) -> None:
        """The next ``n`` polls raise SourceError (the broker is unreachable)."""
        self._failing_polls = n

    def append_unreadable(self, *, partition: int = 0) -> Message:
        """Add a record that the client cannot parse (as kafka-python a header key that is not UTF-8): a
        poll that reaches it raises UnreadableRecord and moves past it."""
        message = self.append(b"unreadable", partition=partition)
        self.unreadable.add((partition, message.offset))
        return message

    def fail_commits(self, n: int) -> None:
        """The next ``n`` commits raise a retriable CommitError."""
        self._failing_commits = n

    def restart(self) -> None:
        """Forget the member (as after a crash): a new start reads every partition from its last commit."""
        self._listener = None
        self.assigned = set()
        self.positions = {}
        self._scheduled.clear()
        self.closed = False

    def read(self, tp: TopicPartition) -> list[Message]:
        return list(self.logs[tp])

    # -- the Source protocol ----------------------------------------------------------------------------

    def start(self, listener: PartitionListener) -> None:
        self._listener = listener
        self.assign(p.partition for p in self.logs)

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        self.polls += 1
        due = [act for at, act in self._scheduled if at is None or at <= self.polls]
        self._scheduled = [(at, act) for at, act in self._scheduled if not (at is None or at <= self.polls)]
        for act in due:
            act()
        if self._failing_polls:
            self._failing_polls -= 1
            raise SourceError("broker unreachable (scripted)")
        out: list[Message] = []
        for tp in sorted(self.assigned):
            log = self.logs[tp]
            pos = self.positions.get(tp, 0)
            take = log[pos : pos + max_records - len(out)]
            bad = [i for i, m in enumerate(take) if (m.partition, m.offset) in self.unreadable]
            if bad and bad[0] == 0 and not out:  # as kafka-python: the records before it come first
                self.positions[tp] = pos + 1
                raise UnreadableRecord(tp, pos, "CorruptRecordError (scripted)")
            if bad:
                take = take[: bad[0]]
            out.extend(take)
            self.positions[tp] = pos + len(take)
            if len(out) >= max_records or bad:
                break
        if not out:
            time.sleep(min(timeout_s, self.max_idle_sleep_s))
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._failing_commits:
            self._failing_commits -= 1
            raise CommitError("coordinator unreachable (scripted)", retriable=True)
        foreign = set(offsets) - self.assigned
        if foreign:
            raise CommitError(f"not assigned: {sorted(foreign)}", retriable=False)
        if self.on_commit is not None:
            self.on_commit(offsets)
        self.committed.update(offsets)
        self.commits.append(dict(offsets))

    def close(self) -> None:
        """Leave the group as a Kafka consumer does: every partition is revoked (the listener hears it) and
        the offsets it hands back are committed (best effort)."""
        if self._listener is not None and self.assigned:
            resume = dict(self._listener.on_revoked(set(self.assigned)))
            if resume:
                with contextlib.suppress(CommitError):
                    self.commit(resume)
        self.assigned = set()
        self.closed = True

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) - self.positions.get(tp, 0) for tp in sorted(self.assigned)}

    def exhausted(self) -> bool:
        return False  # a topic has no end

    def problem(self) -> str | None:
        return "broker unreachable (scripted)" if self._failing_polls else None


class MemorySink:
    """Keeps acknowledged records per topic. Faults: ``unreachable_flushes`` flushes acknowledge nothing;
    records whose value exceeds ``max_value_bytes``, every record for a topic in ``refused_topics``, and (as
    kafka-python's producer) any record with a header that is not (str, bytes) are refused for good."""

    def __init__(self, *, max_value_bytes: int | None = None, refused_topics: Iterable[str] = ()) -> None:
        self.max_value_bytes = max_value_bytes
        self.refused_topics = set(refused_topics)
        self.sent: list[OutRecord] = []  # every send, resends included
        self.acked: list[OutRecord] = []  # acknowledged, in order
        self.in_flight: list[OutRecord] = []
        self.flushes = 0
        self.unreachable_flushes = 0
        self.closed = False
        self.on_ack: Callable[[list[OutRecord]], None] | None = None

    def send(self, record: OutRecord) -> None:
        self.sent.append(record)
        self.in_flight.append(record)

    def flush(self, timeout_s: float) -> FlushResult:
        self.flushes += 1
        if self.unreachable_flushes:
            self.unreachable_flushes -= 1
            return FlushResult(unfinished=len(self.in_flight))
        failures: list[Failure] = []
        done: list[OutRecord] = []
        for record in self.in_flight:
            if record.topic in self.refused_topics:
                failures.append(Failure(record, True, "TopicAuthorizationFailedError (scripted)"))
            elif not all(isinstance(key, str) and isinstance(value, bytes) for key, value in record.headers):
                failures.append(Failure(record, True, "TypeError: headers must be (str, bytes), as kafka-python's"))
            elif self._too_large(record):
                failures.append(Failure(record, True, "MessageSizeTooLargeError (scripted)"))
            else:
                done.append(record)
        self.in_flight = []
        self.acked.extend(done)
        if self.on_ack is not None:
            self.on_ack(done)
        return FlushResult(0, failures)

    def _too_large(self, record: OutRecord) -> bool:
        limit = self.max_value_bytes
        return limit is not None and record.value is not None and len(record.value) > limit

    def close(self) -> None:
        self.closed = True

    def topic(self, name: str) -> list[OutRecord]:
        """Acknowledged records of one topic, in order."""
        return [r for r in self.acked if r.topic == name]

    def values(self, name: str) -> list[Any]:
        """Acknowledged JSON values of one topic, decoded."""
        return [msgspec.json.decode(r.value) for r in self.topic(name) if r.value is not None]


def headers_dict(record: OutRecord | Message) -> dict[str, bytes]:
    """Headers as a dict (the last non-null value of a repeated key wins)."""
    return {key: value for key, value in record.headers if value is not None}
