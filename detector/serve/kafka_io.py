"""KafkaSource and KafkaSink on kafka-python: the only module of the daemon that imports a Kafka client.

Consumer: a group member with manual commits (``enable_auto_commit=False``), session and heartbeat from
the settings. Producer: ``acks=all``, idempotent, batched (``linger_ms``, ``batch_size``). Both reconnect
on their own with a backoff capped at a few seconds; :func:`connect` retries their creation until the
broker answers, so a daemon started before its broker waits for it instead of exiting.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import structlog
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka import TopicPartition as KafkaTopicPartition
from kafka import errors as kerr
from kafka.future import Future

from detector.errors import ConfigError
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
from detector.settings import Settings, env_name

RECONNECT_BACKOFF_MAX_MS = 2000  # kafka-python's default (30 s) would leave a daemon idle long after a broker is back
BOOTSTRAP_TIMEOUT_MS = 5000  # one connection attempt of `connect`; it retries
LINGER_MS = 5
BATCH_BYTES = 256 * 1024  # per partition; a flush sends what is there without waiting for linger_ms
COMMIT_TIMEOUT_MS = 10_000
# The longest single wait in kafka-python's poll. Its consumer (3.0.12) sleeps min(poll timeout, retry_backoff_ms
# = 100 ms) when it sees no fetch in flight, and it can see none while a finished fetch's records wait in its
# buffer (the IO thread drops the done future before the poll looks): those records then wait the whole
# sleep. It struck a few times a second at 3,000 windows/s, each time holding ~20 windows for 100 ms; polled in
# steps of 10 ms, such a sleep costs at most 10 ms. (retry_backoff_ms itself paces ~25 retry paths.) Only while
# partitions are assigned: during a group join, short polls make kafka-python spin on timeouts, ~3,000 a second,
# and the garbage they leave (exceptions and their frames) later cost a 150 ms collection in the middle of serving.
POLL_STEP_MS = 10
CLOSE_TIMEOUT_S = 3.0  # leaving the group and draining the producer, when the broker is slow or gone
# Refusals of one record that sending it again cannot cure: over a size limit, malformed, or for a topic this
# client may not write to. (Faults of the producer itself, such as a fenced or out-of-sequence idempotent
# producer, are not among them: a new producer cures those.)
PERMANENT = (
    kerr.MessageSizeTooLargeError,
    kerr.RecordListTooLargeError,
    kerr.InvalidRecordError,
    kerr.TopicAuthorizationFailedError,
    kerr.InvalidTopicError,
)
# Bounds on what one fetch response holds (compressed), so that what the client buffers is bounded: at most
# FETCH_MAX_BYTES in all and MAX_PARTITION_FETCH_BYTES per partition (a larger first batch still comes whole,
# so that a partition always makes progress). Decompression happens in the client, unbounded: see the
# operations guide on the compression trust boundary.
FETCH_MAX_BYTES = 16 * 1024 * 1024
MAX_PARTITION_FETCH_BYTES = 1024 * 1024
# The group moved on: these offsets belong to another member now and must not be committed again.
GROUP_MOVED_ON = (kerr.CommitFailedError, kerr.IllegalGenerationError, kerr.UnknownMemberIdError)

log = structlog.get_logger("detector.serve")


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security settings shared by every Kafka client (the daemon's and the tools').

    Raises ConfigError, naming the setting, for what kafka-python would only report at each connection
    attempt, indistinguishable from an unreachable broker: a SASL mechanism without its user or password,
    and a TLS file (CA, client certificate, key) that cannot be read or loaded, or a key that does not
    match its certificate or cannot be decrypted with ``kafka.ssl_password``.
    """
    k = settings.kafka
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in k.bootstrap_servers.split(",") if s.strip()],
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "metrics_enabled": False,  # kafka-python's own metrics cost CPU on every record; ours come later
    }
    if k.sasl_mechanism is not None:
        for name in ("sasl_username", "sasl_password"):
            if getattr(k, name) is None:
                env = env_name(f"kafka.{name}")
                raise ConfigError(
                    f"kafka.{name} ({env} or {env}_FILE) is required by sasl_mechanism {k.sasl_mechanism}"
                )
        config["sasl_mechanism"] = k.sasl_mechanism
        config["sasl_plain_username"] = k.sasl_username
        config["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    password = k.ssl_password.get_secret_value() if k.ssl_password else None
    tls = {
        key: value
        for key, value in [
            ("ssl_cafile", k.ssl_cafile),
            ("ssl_certfile", k.ssl_certfile),
            ("ssl_keyfile", k.ssl_keyfile),
            ("ssl_password", password),
        ]
        if value is not None
    }
    _check_tls_files(tls)
    return config | tls


def _check_tls_files(tls: Mapping[str, str]) -> None:
    """Load the TLS files as kafka-python will, so that a bad one is a ConfigError now."""
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if name in tls:
            try:
                with open(tls[name], "rb"):
                    pass
            except OSError as err:
                raise ConfigError(
                    f"kafka.{name} ({env_name('kafka.' + name)}): cannot read {tls[name]}: {err.strerror or err}"
                ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if "ssl_cafile" in tls:
        try:
            context.load_verify_locations(tls["ssl_cafile"])
        except ssl.SSLError as err:
            raise ConfigError(
                f"kafka.ssl_cafile ({env_name('kafka.ssl_cafile')}): {tls['ssl_cafile']} holds no usable "
                f"PEM CA certificate: {err.reason or err}"
            ) from None
    if "ssl_certfile" in tls:
        password = tls.get("ssl_password", "")  # never None: OpenSSL would prompt on the terminal for it
        try:
            context.load_cert_chain(tls["ssl_certfile"], tls.get("ssl_keyfile"), password=lambda: password)
        except ssl.SSLError as err:
            raise ConfigError(
                f"kafka.ssl_certfile, kafka.ssl_keyfile ({env_name('kafka.ssl_certfile')}, "
                f"{env_name('kafka.ssl_keyfile')}): cannot load {tls['ssl_certfile']} with the key "
                f"{tls.get('ssl_keyfile')}: {err.reason or err} (not PEM, a key of another certificate, "
                "or an encrypted key without its kafka.ssl_password)"
            ) from None


def make_consumer(settings: Settings) -> KafkaConsumer:
    k = settings.kafka
    return KafkaConsumer(
        **client_config(settings),
        group_id=k.group_id,
        enable_auto_commit=False,
        auto_offset_reset=k.auto_offset_reset,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=k.heartbeat_interval_ms,
        max_poll_records=settings.batch.max_size,
        fetch_max_wait_ms=k.fetch_max_wait_ms,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES,
        allow_auto_create_topics=False,
    )


def make_producer(settings: Settings) -> KafkaProducer:
    # Room for a dead letter of any message up to twice the input limit; a larger one is refused by the
    # client (MessageSizeTooLarge) and its fallback, without the value, goes to the DLQ instead.
    max_request = max(8 * 1024 * 1024, 2 * settings.limits.max_message_bytes + 64 * 1024)
    return KafkaProducer(
        **client_config(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=LINGER_MS,
        batch_size=BATCH_BYTES,
        max_request_size=max_request,
        max_block_ms=BOOTSTRAP_TIMEOUT_MS,  # a send waiting for metadata of an unreachable cluster
    )


def connect(
    settings: Settings, stopping: Callable[[], bool], backoff_s: tuple[float, float] = (0.5, 5.0)
) -> tuple[KafkaConsumer, KafkaProducer] | None:
    """Create the consumer and the producer, retrying with backoff while the broker is unreachable.

    Returns None when ``stopping()`` turns true first. A configuration kafka-python rejects is a
    ConfigError; every other failure is taken as transient and retried, with a log line each time.
    """
    consumer: KafkaConsumer | None = None
    delay, attempt = backoff_s[0], 0
    while not stopping():
        attempt += 1
        try:
            if consumer is None:
                consumer = make_consumer(settings)
            producer = make_producer(settings)
        except kerr.KafkaConfigurationError as err:
            raise ConfigError(f"kafka settings rejected by the client: {err}") from err
        except (kerr.KafkaError, OSError) as err:
            log.warning(
                "broker unreachable; retrying",
                bootstrap_servers=settings.kafka.bootstrap_servers,
                attempt=attempt,
                error=_error(err),
                retry_in_s=delay,
            )
            end = time.monotonic() + delay
            while not stopping() and time.monotonic() < end:
                time.sleep(0.1)
            delay = min(backoff_s[1], delay * 2)
            continue
        log.info("connected", bootstrap_servers=settings.kafka.bootstrap_servers, attempts=attempt)
        return consumer, producer
    if consumer is not None:
        consumer.close(autocommit=False, timeout_ms=int(CLOSE_TIMEOUT_S * 1000))
    return None


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
            log.warning("commit before revocation failed", error=_error(err))

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
                raise SourceError(_error(err)) from err
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
            return SourceError(_error(err))
        offset = self.consumer.position(tp, timeout_ms=COMMIT_TIMEOUT_MS)
        if offset is None:
            return SourceError(_error(err))
        self.consumer.seek(tp, offset + 1)
        self._next[tp] = offset + 1
        return UnreadableRecord(TopicPartition(tp.topic, tp.partition), offset, _error(err))

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
            raise CommitError(_error(err), retriable=False) from err
        except kerr.KafkaError as err:
            raise CommitError(_error(err), retriable=True) from err

    def close(self) -> None:
        """Leave the group (the partitions move to the other members at once) and disconnect."""
        try:
            self.consumer.close(autocommit=False, timeout_ms=int(CLOSE_TIMEOUT_S * 1000))
        except kerr.KafkaError as err:
            log.warning("consumer close failed", error=_error(err))


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
            self._failures.append(Failure(record, True, _error(err)))
        except (TypeError, ValueError) as err:  # kafka-python's own checks of the record: sending it again fails too
            self._failures.append(Failure(record, True, _error(err)))
        except kerr.KafkaError as err:  # metadata of an unreachable cluster, a full buffer, ...
            self._blocked = _error(err)
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
                failures.append(Failure(record, isinstance(err, PERMANENT), _error(err)))
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
                log.warning("producer close failed", error=_error(err))
        self._failed_flushes = 0
        self._progress_at = time.monotonic()
        try:
            self.producer = self.new_producer()
        except (kerr.KafkaError, OSError, ConfigError) as err:  # e.g. a TLS file being replaced: retried
            log.warning("new producer not created yet; retrying", error=_error(err))

    def close(self) -> None:
        if self.producer is None:
            return
        try:
            self.producer.close(timeout=CLOSE_TIMEOUT_S)
        except kerr.KafkaError as err:
            log.warning("producer close failed", error=_error(err))
