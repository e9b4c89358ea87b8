"""Kafka clients for the tools, built from the daemon's settings (connection and security shared with
``detector.kafka_clients``), plus what every tool needs: reading a whole topic without a consumer group
until SIGINT/SIGTERM asks it to stop, polling it in time order, turning whatever one bad record or line
raises into that input's own error and reporting the first few, and making text that came off a topic or
out of a file safe to print on a terminal.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerr
from kafka.admin import KafkaAdminClient, NewTopic

from detector.errors import ConfigError, DetectorError, WindowError
from detector.kafka_clients import BATCH_BYTES, client_config
from detector.processes import StopSignals
from detector.settings import Settings

LINGER_MS = 10  # a replay is bulk: a little more batching than the daemon's 5 ms
MAX_BLOCK_MS = 15_000  # a send waiting for topic metadata or for buffer room before the replay gives up
TOPIC_POLL_S = 0.5  # how often a missing topic is looked up again
SHOWN_PROBLEMS = 20  # bad records or lines reported one by one; the rest only counted

# What a terminal acts on instead of showing: C0 controls, DEL and C1 controls (escape sequences, carriage
# returns, bells), the Unicode bidi marks and overrides that reorder what is shown, and the line and
# paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _unreachable(settings: Settings, err: BaseException) -> DetectorError:
    detail = " ".join(str(err).split()) or type(err).__name__
    return DetectorError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({detail})")


def _config(settings: Settings, client_id: str) -> dict[str, Any]:
    return {**client_config(settings), "client_id": f"{settings.kafka.client_id}-{client_id}"}


_Client = TypeVar("_Client")


def _connect(settings: Settings, client: Callable[..., _Client], **config: Any) -> _Client:
    """``client(**config)``; ConfigError when the client rejects the settings, DetectorError (one line)
    when no broker answers."""
    try:
        return client(**config)
    except kerr.KafkaConfigurationError as err:
        raise ConfigError(f"kafka settings rejected by the client: {err}") from None
    except (kerr.KafkaError, OSError) as err:
        raise _unreachable(settings, err) from None


def make_producer(settings: Settings, client_id: str) -> KafkaProducer:
    """An acks=all, idempotent, batching producer; DetectorError (one line) when no broker answers."""
    return _connect(
        settings,
        KafkaProducer,
        **_config(settings, client_id),
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        batch_size=BATCH_BYTES,
        max_block_ms=MAX_BLOCK_MS,
    )


def make_consumer(settings: Settings, client_id: str) -> KafkaConsumer:
    """A consumer outside any group (``group_id=None``): it commits nothing and disturbs no group."""
    return _connect(
        settings,
        KafkaConsumer,
        **_config(settings, client_id),
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
    )


def create_topics(settings: Settings, names: Iterable[str], partitions: int = 4, replication: int = 1) -> list[str]:
    """Create the topics that do not exist yet; the names created. Existing ones are left as they are."""
    # the admin client takes the connection and security settings, not the consumer/producer-only ones
    config = {k: v for k, v in _config(settings, "admin").items() if k in KafkaAdminClient.DEFAULT_CONFIG}
    admin = _connect(settings, KafkaAdminClient, **config)
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


def poll_in_order(consumer: KafkaConsumer, what: str, timeout_s: float, max_records: int | None = None) -> list[Any]:
    """One poll's records in :func:`in_time_order`; a client error as DetectorError
    ``"<what>: <ErrorType>: <message>"``."""
    try:
        return in_time_order(consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records))
    except kerr.KafkaError as err:
        raise DetectorError(f"{what}: {type(err).__name__}: {err}") from None


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

    def fresh(self, records: list[Any]) -> list[Any]:
        """The records of the poll just made less the stale ones (it notes first high watermarks, as
        :meth:`after_poll` does); call it after every poll."""
        self.after_poll(list(self.consumer.assignment()))
        return [r for r in records if not self.stale(r)]


@dataclass(frozen=True)
class TopicReading:
    """What :func:`reading_topic` yields: the consumer, the partitions assigned to it, the embedded broker's
    stale tail to drop when it started from the end (else None), and the stop that SIGINT/SIGTERM set."""

    consumer: KafkaConsumer
    partitions: list[TopicPartition]
    stale: StaleTail | None
    stopping: StopSignals


@contextlib.contextmanager
def reading_topic(
    settings: Settings,
    client_id: str,
    topic: str,
    *,
    from_end: bool,
    wait_s: float | None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[TopicReading | None]:
    """A consumer outside any group (:func:`make_consumer`) assigned every partition of ``topic`` (at its
    beginning, or its end: :func:`assign_topic`, which waits ``wait_s`` for the topic), with SIGINT and SIGTERM
    handled for the block as a stop request (a second signal is not special). Yields None when a signal
    came before the topic was assigned. The consumer is closed on the way out."""
    since_ms = int(time.time() * 1000)
    consumer = make_consumer(settings, client_id)
    try:
        with StopSignals(exit_on_second=False) as stop:
            tps = assign_topic(consumer, topic, from_end=from_end, wait_s=wait_s, stopping=stop, on_wait=on_wait)
            stale = StaleTail(consumer, since_ms) if from_end else None
            yield None if tps is None else TopicReading(consumer, tps, stale, stop)
    finally:
        close_quietly(consumer)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def errors_as(error: type[Exception]) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A decorator for a function that reads one record or line: whatever it raises (an ``Exception``; an
    interrupt passes) comes out as ``error`` with the reason, so one bad input never stops a tool. ``error``
    itself passes as it is, a :class:`WindowError` becomes ``error("<reason>: <detail>")`` and anything
    else ``error("<ExceptionType>: <message>")`` (e.g. a RecursionError for JSON nested too deep)."""

    def decorate(read: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(read)
        def reading(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return read(*args, **kwargs)
            except error:
                raise
            except WindowError as err:
                raise error(f"{err.reason}: {err.detail}") from None
            except Exception as err:  # the input's fault, not ours
                raise error(f"{type(err).__name__}: {err}") from None

        return reading

    return decorate


class Problems:
    """Reports bad records or lines to ``warn``: the first ``SHOWN_PROBLEMS`` one by one, then once
    ``further`` (what happens to the rest), then nothing. ``count`` counts them all."""

    def __init__(self, warn: Callable[[str], None], further: str) -> None:
        self.warn = warn
        self.further = further
        self.count = 0

    def __call__(self, text: str) -> None:
        self.count += 1
        if self.count <= SHOWN_PROBLEMS:
            self.warn(text)
        elif self.count == SHOWN_PROBLEMS + 1:
            self.warn(self.further)


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
