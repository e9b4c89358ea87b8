"""What may be committed, per partition: the one place that decides it.

The runner reports every message it consumes (:meth:`CommitTracker.consumed`, in the order the source
hands them out) and every batch whose records the sink has acknowledged (:meth:`CommitTracker.delivered`,
batches in the order they were consumed). From that alone the tracker answers, per partition, the offset
a reader may resume from without missing anything:

- after a delivered batch: the offset after its last message of the partition (every earlier message of
  the partition was delivered before it, as batches are delivered in order);
- with nothing delivered since the partition was assigned: the offset of the first message consumed, which
  is where this member started reading (so a commit there skips nothing).

What a caller may rely on: no offset the tracker returns lies past a message that was consumed and not
delivered, whatever happened since (a batch abandoned on stop, an exception in the loop, a revocation
while a batch was in flight). Offsets of partitions that were revoked or lost are forgotten.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from detector.serve.messages import Message, TopicPartition


class CommitTracker:
    """Per partition: the first offset consumed, the end of what is delivered, the last commit made."""

    def __init__(self) -> None:
        self._first: dict[TopicPartition, int] = {}  # the first offset consumed since assignment
        self._delivered: dict[TopicPartition, int] = {}  # the offset after the last delivered message
        self._committed: dict[TopicPartition, int] = {}  # the last offset committed (acknowledged by the source)
        self._consumed_end: dict[TopicPartition, int] = {}  # the offset after the last message consumed

    def consumed(self, messages: Iterable[Message]) -> None:
        """These messages were handed out by the source, in order."""
        first, end = self._first, self._consumed_end
        for message in messages:
            if message.tp not in first:
                first[message.tp] = message.offset
            end[message.tp] = message.offset + 1

    def delivered(self, messages: Iterable[Message]) -> dict[TopicPartition, int]:
        """Every record produced for these messages is acknowledged: the offsets to commit for them."""
        ends: dict[TopicPartition, int] = {}
        for message in messages:
            end = message.offset + 1
            if end > ends.get(message.tp, -1):
                ends[message.tp] = end
        for tp, end in ends.items():
            if end > self._delivered.get(tp, -1):
                self._delivered[tp] = end
        return {tp: self._delivered[tp] for tp in ends}

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """The source has committed these offsets."""
        self._committed.update(offsets)

    def resume(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Per partition among these with a message consumed since it was assigned: the offset to resume from
        (and to commit before the partition goes), never past a message consumed and not delivered. A
        partition whose work is all committed is left out only when nothing of it was consumed beyond."""
        resume: dict[TopicPartition, int] = {}
        for tp in partitions:
            offset = self._delivered.get(tp, self._first.get(tp))
            if offset is None:
                continue
            if offset != self._committed.get(tp) or self._consumed_end.get(tp, offset) > offset:
                resume[tp] = offset
        return resume

    def forget(self, partitions: Collection[TopicPartition]) -> None:
        """These partitions are no longer this member's: their history is dropped."""
        for tp in partitions:
            self._first.pop(tp, None)
            self._delivered.pop(tp, None)
            self._committed.pop(tp, None)
            self._consumed_end.pop(tp, None)
