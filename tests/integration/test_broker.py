"""`detector broker`: the embedded broker as a command, started, used over TCP, and stopped by SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.broker import EmbeddedBroker, accepts_connections
from tests.integration.conftest import free_port
from tests.integration.kafka_helpers import cli_child


def _start(port: int) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return cli_child("broker", "--host", "127.0.0.1", "--port", str(port), text=True)


def test_broker_serves_kafka_clients_and_exits_zero_on_sigterm():
    """The broker accepts a produce and a fetch on its port; SIGTERM stops it and the command exits 0."""
    port = free_port()
    with _start(port) as proc:
        deadline = time.monotonic() + 30
        while not accepts_connections("127.0.0.1", port) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        bootstrap = f"127.0.0.1:{port}"
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("hello", b"world").get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        consumer.assign([TopicPartition("hello", p) for p in consumer.partitions_for_topic("hello")])
        consumer.seek_to_beginning()
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = [r.value for batch in consumer.poll(timeout_ms=500).values() for r in batch]
        consumer.close()
        assert got == [b"world"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"broker listening on 127.0.0.1:{port}" in out
    assert not accepts_connections("127.0.0.1", port)


def test_broker_on_a_taken_port_fails_with_one_line():
    """A port already in use is refused up front: one line on stderr and a non-zero exit."""
    with EmbeddedBroker("127.0.0.1", free_port()) as running, _start(running.port) as proc:
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert err.strip().splitlines() == [
        f"detector: cannot start the broker: 127.0.0.1:{running.port} is already in use"
    ]
