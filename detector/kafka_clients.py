"""The Kafka edge: every kafka-python client detector makes is configured here, and kafka-python's errors are
mapped to detector's here. :func:`client_config` is the connection and security part every client shares.

Consumer: a group member with manual commits (``enable_auto_commit=False``), session and heartbeat from the
settings, fetches bounded in bytes. Producer: ``acks=all``, idempotent, batched (``linger_ms``,
``batch_size``). Both reconnect on their own with a backoff capped at a few seconds; :func:`connect` retries
their creation until the broker answers, so a daemon started before its broker waits for it instead of
exiting. Errors: :data:`PERMANENT` (a record refused for good), :data:`GROUP_MOVED_ON` (a commit that must not
be retried), :func:`error_text` (any error as one line); a configuration the client rejects is a
:class:`~detector.errors.ConfigError`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr

from detector.errors import ConfigError
from detector.retry import Backoff
from detector.settings import Settings, env_name

RECONNECT_BACKOFF_MAX_MS = 2000  # kafka-python's default (30 s) would leave a daemon idle long after a broker is back
BOOTSTRAP_TIMEOUT_MS = 5000  # one connection attempt of `connect`; it retries
LINGER_MS = 5
BATCH_BYTES = 256 * 1024  # per partition; a flush sends what is there without waiting for linger_ms
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


def error_text(err: BaseException) -> str:
    """A client error as one line of at most 300 characters: its type and message."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security settings shared by every Kafka client detector makes.

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
    backoff, attempt = Backoff(*backoff_s), 0
    while not stopping():
        attempt += 1
        try:
            if consumer is None:
                consumer = make_consumer(settings)
            producer = make_producer(settings)
        except kerr.KafkaConfigurationError as err:
            raise ConfigError(f"kafka settings rejected by the client: {err}") from err
        except (kerr.KafkaError, OSError) as err:
            delay = backoff.next()
            log.warning(
                "broker unreachable; retrying",
                bootstrap_servers=settings.kafka.bootstrap_servers,
                attempt=attempt,
                error=error_text(err),
                retry_in_s=delay,
            )
            end = time.monotonic() + delay
            while not stopping() and time.monotonic() < end:
                time.sleep(0.1)
            continue
        log.info("connected", bootstrap_servers=settings.kafka.bootstrap_servers, attempts=attempt)
        return consumer, producer
    if consumer is not None:
        consumer.close(autocommit=False, timeout_ms=int(CLOSE_TIMEOUT_S * 1000))
    return None
