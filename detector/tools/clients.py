"""Kafka clients for the tools, built from the daemon's settings (connection and security shared with
``detector.serve.kafka_io``), plus the three things every tool needs: assigning a whole topic without a
consumer group, stopping cleanly on SIGINT/SIGTERM, and making text that came off a topic or out of a
file safe to print on a terminal.
"""

from __future__ import annotations

import contextlib
import heapq
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerr
from kafka.admin import KafkaAdminClient, NewTopic

from detector.errors import ConfigError, DetectorError
from detector.serve.kafka_io import BATCH_BYTES, client_config
from detector.settings import Settings

LINGER_MS = 10  # a replay is bulk: a little more batching than the daemon's 5 ms
MAX_BLOCK_MS = 15_000  # a send waiting for topic metadata or for buffer room before the replay gives up
TOPIC_POLL_S = 0.5  # how often a missing topic is looked up again

# What a terminal acts on instead of showing: C0 controls, DEL and C1 controls (escape sequences, carriage
# returns, bells), the Unicode bidi marks and overrides that reorder what is shown, and the line and
# paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _unreachable(settings: Settings, err: BaseException) -> DetectorError:
    detail = " ".join(str(err).split()) or type(err).__name__
    return DetectorError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({detail})")


def _config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {**client_config(settings), "client_id": f"{settings.kafka.client_id}-{client_id}"}


def make_producer(settings: Settings, client_id: str) -> KafkaProducer:
    """An acks=all, idempotent, batching producer; DetectorError (one line) when no broker answers."""
    try:
        return KafkaProducer(
            **_config(settings, client_id),
            acks="all",
            enable_idempotence=True,
            linger_ms=LINGER_MS,
            batch_size=BATCH_BYTES,
            max_block_ms=MAX_BLOCK_MS,
        )
    except kerr.KafkaConfigurationError as err:
        raise ConfigError(f"kafka settings rejected by the client: {err}") from None
    except (kerr.KafkaError, OSError) as err:
        raise _unreachable(settings, err) from None


def make_consumer(settings: Settings, client_id: str) -> KafkaConsumer:
    """A consumer outside any group (``group_id=None``): it commits nothing and disturbs no group."""
    try:
        return KafkaConsumer(
            **_config(settings, client_id),
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
        )
    except kerr.KafkaConfigurationError as err:
        raise ConfigError(f"kafka settings rejected by the client: {err}") from None
    except (kerr.KafkaError, OSError) as err:
        raise _unreachable(settings, err) from None


def create_topics(settings: Settings, names: Iterable[str], partitions: int = 4, replication: int = 1) -> list[str]:
    """Create the topics that do not exist yet; the names created. Existing ones are left as they are."""
    # the admin client takes the connection and security settings, not the consumer/producer-only ones
    config = {k: v for k, v in _config(settings, "admin").items() if k in KafkaAdminClient.DEFAULT_CONFIG}
    try:
        admin = KafkaAdminClient(**config)
    except kerr.KafkaConfigurationError as err:
        raise ConfigError(f"kafka settings rejected by the client: {err}") from None
    except (kerr.KafkaError, OSError) as err:
        raise _unreachable(settings, err) from None
    created = []
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
            except kerr.TopicAlreadyExistsError:
                continue
            except kerr.KafkaError as err:
                raise DetectorError(f"cannot create topic {name}: {type(err).__name__}: {err}") from None
            created.append(name)
    finally:
        close_quietly(admin)
    return created


def assign_topic(
    consumer: KafkaConsumer,
    topic: str,
    *,
    from_end: bool,
    wait_s: float | None,
    stopping: Callable[[], bool],
    on_wait: Callable[[str], None] | None = None,
) -> list[TopicPartition] | None:
    """Assign every partition of ``topic`` at its beginning (or its end, ``from_end``).

    A topic that does not exist yet is looked up again until it does, for at most ``wait_s`` seconds
    (None: for ever, and ``on_wait`` hears once that it is waiting) and then ConfigError. Returns None when
    ``stopping()`` turns true first. Positions are resolved here, so a record produced after this returns
    is never skipped by a lazy "end".
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    told = False
    while True:
        try:
            partitions = consumer.partitions_for_topic(topic)
        except kerr.KafkaError as err:
            raise DetectorError(f"cannot read the metadata of topic {topic}: {err}") from None
        if partitions:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise ConfigError(f"topic {topic} does not exist (waited {wait_s:g} s)")
        if on_wait is not None and not told and deadline is None:
            on_wait(f"waiting for topic {topic} to exist")
            told = True
        if stopping():
            return None
        time.sleep(TOPIC_POLL_S)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if from_end:
        consumer.seek_to_end(*tps)
    else:
        consumer.seek_to_beginning(*tps)
    try:
        for tp in tps:
            consumer.position(tp)
    except kerr.KafkaError as err:
        raise DetectorError(f"cannot look up the offsets of topic {topic}: {err}") from None
    return tps


def in_time_order(batches: Mapping[Any, list[Any]]) -> list[Any]:
    """The records of one poll, partitions interleaved by timestamp; each partition keeps its own order
    (a series' records stay in offset order even where their timestamps go back)."""
    return list(heapq.merge(*batches.values(), key=lambda record: record.timestamp))


class StaleTail:
    """Drops what a consumer placed at the end (``seek_to_end``) is wrongly handed by the embedded broker.

    Tansu answers ListOffsets(latest) with the last batch's base offset + 1 rather than the high
    watermark, so "the end" lies inside the last batch and the rest of that batch follows as if new.
    This drops, per partition, the records below the high watermark of the first fetch response that
    were produced before ``since_ms``. On a broker that answers right, that range holds only records
    produced while the consumer started, whose timestamps are not before ``since_ms``: nothing is lost.
    """

    def __init__(self, consumer: KafkaConsumer, since_ms: int) -> None:
        self.consumer = consumer
        self.since_ms = since_ms
        self._first_highwater: dict[TopicPartition, int] = {}

    def stale(self, record: Any) -> bool:
        tp = TopicPartition(record.topic, record.partition)
        if tp not in self._first_highwater:
            highwater = self.consumer.highwater(tp)
            self._first_highwater[tp] = -1 if highwater is None else highwater
        return record.offset < self._first_highwater[tp] and 0 <= record.timestamp < self.since_ms

    def after_poll(self, tps: list[TopicPartition]) -> None:
        """Note the first high watermark of each partition as soon as a fetch response brought it."""
        for tp in tps:
            if tp not in self._first_highwater and (highwater := self.consumer.highwater(tp)) is not None:
                self._first_highwater[tp] = highwater


class StopFlag:
    """Set by SIGINT or SIGTERM while installed (main thread only; elsewhere it only reads ``set``).

    The tools check it between records, so that a file is never left half-written and what was sent is
    flushed. A second signal is not special: the tools stop within a poll interval.
    """

    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.set = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every character a terminal would act on (C0, DEL, C1, bidi marks and overrides, line
    and paragraph separators) written as a ``\\xNN`` or ``\\uNNNN`` escape, and nothing else changed: one
    line, whatever ``text`` holds. Longer than ``limit`` characters: its first ``limit``, then ``...``."""
    if limit is None or len(text) <= limit:
        return _UNSAFE.sub(_escape, text)
    return _UNSAFE.sub(_escape, text[:limit]) + "..."


def printable_json(text: str) -> str:
    """JSON text with the characters :func:`printable` escapes written as ``\\uNNNN``: still valid JSON that
    parses to the same value (outside strings JSON holds none of them), and safe to print on a terminal."""
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def close_quietly(client: KafkaConsumer | KafkaProducer | KafkaAdminClient, timeout_s: float = 5.0) -> None:
    """Close a client; a failure to close is not the user's problem once the work is done."""
    with contextlib.suppress(Exception):
        if isinstance(client, KafkaProducer):
            client.close(timeout=timeout_s)
        else:
            client.close()
