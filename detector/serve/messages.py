"""What flows through the runner, and the two small protocols it is written against.

A :class:`Source` hands out input messages and takes offset commits; a :class:`Sink` takes output records
and says when the broker has acknowledged them. Kafka implements both in ``kafka_io``; ``fakes`` holds
in-memory ones. Nothing here imports a Kafka client.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Message:
    """One input record as consumed: where it came from, its bytes, and its broker timestamp (epoch ms)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()  # a header's value may be null
    timestamp: int = -1  # epoch ms; -1 when the record has none

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce. When the broker refuses it for good (e.g. too large), ``fallback`` is sent
    instead; without one, the input message it was made from (``source``) goes to the DLQ."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()
    fallback: OutRecord | None = field(default=None, repr=False)
    source: Message | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Failure:
    """A record the sink could not deliver. ``permanent``: sending the same bytes again cannot succeed."""

    record: OutRecord
    permanent: bool
    error: str


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What a flush achieved. ``unfinished``: still in flight (the sink keeps tracking them); ``failures``:
    given back to the caller, who decides whether to send them again."""

    unfinished: int = 0
    failures: Sequence[Failure] = ()

    @property
    def complete(self) -> bool:
        """Every record sent since the last complete flush is acknowledged."""
        return self.unfinished == 0 and not self.failures


class CommitError(Exception):
    """A commit that did not happen. ``retriable`` False: the group moved on (the partitions have a new
    owner), so these offsets must not be committed again."""

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class SourceError(Exception):
    """A transient fault while polling (broker unreachable, request timed out): back off and poll again."""


class UnreadableRecord(SourceError):
    """The client could not parse the record at ``offset`` of ``tp`` (e.g. a header key that is not UTF-8).
    The source has already moved past it: poll again at once; the record is lost to this consumer."""

    def __init__(self, tp: TopicPartition, offset: int, error: str) -> None:
        super().__init__(f"unreadable record at {tp.topic}/{tp.partition} offset {offset}: {error}")
        self.tp = tp
        self.offset = offset
        self.error = error


class PartitionListener(Protocol):
    """Told about rebalances by the source, from inside :meth:`Source.poll` (or ``close``)."""

    def on_revoked(self, partitions: Collection[TopicPartition]) -> Mapping[TopicPartition, int]:
        """These partitions are about to go. Returns, per partition with unfinished work, the offset where
        that work starts (everything before it is delivered). The source commits these offsets before the
        partitions go (best effort: a failure means duplicates, not loss), and a partition that stays with
        this member (Kafka keeps its fetch position through a rebalance) is read again from there."""
        ...

    def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """These partitions are already gone (the member was evicted); nothing of theirs can be committed,
        and should they come back they are read from the last commit."""
        ...

    def on_assigned(self, partitions: Collection[TopicPartition]) -> None: ...


class Source(Protocol):
    """Input messages in offset order per partition, and the commits of how far they are done.

    ``poll`` may call the listener (a rebalance) before it returns; after ``on_revoked`` no message of
    those partitions is returned until they are assigned again, and then from the offset ``on_revoked``
    returned for them (or, without one, from the fetch position they had: the rebalance skips nothing).
    """

    def start(self, listener: PartitionListener) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first; SourceError."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) or raise CommitError."""
        ...

    def close(self) -> None:
        """Leave the group and release the connection; nothing is committed here."""
        ...

    def lag(self) -> Mapping[TopicPartition, int]:
        """Per assigned partition, the messages on the broker not yet returned by ``poll`` (where known).
        Cheap and local: no request to the broker."""
        ...

    def problem(self) -> str | None:
        """Why the broker (the group's coordinator) cannot be reached now, as far as the client knows; None
        when it can. Cheap and local."""
        ...

    def exhausted(self) -> bool:
        """True once a bounded source (a file) has handed out its last message; a stream never is."""
        ...


class Sink(Protocol):
    """Output records, produced asynchronously and acknowledged by :meth:`flush`."""

    def send(self, record: OutRecord) -> None:
        """Hand a record over; never raises for a delivery fault (the next flush reports it)."""
        ...

    def flush(self, timeout_s: float) -> FlushResult:
        """Wait up to ``timeout_s`` for every record sent so far; failures are handed back, not resent."""
        ...

    def close(self) -> None: ...
