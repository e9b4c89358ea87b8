"""Test-side Kafka plumbing for the integration tests: topics, producing, reading a topic back, and the
daemon as a subprocess configured only by DETECTOR_* variables. All of it talks TCP to a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.broker import CLIENT_ENV
from detector.settings import load_settings
from detector.tools import clients

PARTITIONS = 4


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str
    alerts: str = ""  # alert transitions; empty = off


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = PARTITIONS) -> None:
    """Create the topics that do not exist yet, with the product's own admin helper (the embedded broker
    also creates a topic on first use, with 4 partitions as well)."""
    clients.create_topics(load_settings(environ={"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap}), names, partitions)


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> int:
    """Produce (key, value, headers) records with a batching kafka-python producer; returns the count."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks="all")
    n = 0
    try:
        for key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers)
            n += 1
        producer.flush(60)
    finally:
        producer.close(10)
    return n


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def json(self) -> Any:
        return json.loads(self.value) if self.value is not None else None

    def header(self, name: str) -> bytes | None:
        return dict(self.headers).get(name)


class TopicReader:
    """Reads a whole topic from the beginning, without a group, and keeps what it has read."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[Record] = []

    def poll(self, timeout_s: float = 0.5) -> list[Record]:
        new = []
        for batch in self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=5000).values():
            for r in batch:
                new.append(Record(r.partition, r.offset, r.key, r.value, list(r.headers or [])))
        self.records.extend(new)
        return new

    def read_until(self, done: Callable[[list[Record]], bool], timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            self.poll()
        return self.records

    def read_count(self, n: int, timeout_s: float, settle_s: float = 0.0) -> list[Record]:
        """Read until ``n`` records are in, then on for ``settle_s`` to catch any extra ones."""
        self.read_until(lambda records: len(records) >= n, timeout_s)
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            self.poll(0.2)
        return self.records

    def close(self) -> None:
        self.consumer.close()


def serve_env(bootstrap: str, topics: Topics, checkpoint: Path, **extra: str) -> dict[str, str]:
    """The daemon's whole configuration, as DETECTOR_* variables (names from DESIGN.md)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env.update(
        {
            "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "DETECTOR_KAFKA__INPUT_TOPIC": topics.input,
            "DETECTOR_KAFKA__OUTPUT_TOPIC": topics.output,
            "DETECTOR_KAFKA__DLQ_TOPIC": topics.dlq,
            "DETECTOR_KAFKA__GROUP_ID": topics.group,
            "DETECTOR_KAFKA__ALERT_TOPIC": topics.alerts,
            **CLIENT_ENV,
            "DETECTOR_MODEL__CHECKPOINT": str(checkpoint),
            "DETECTOR_MODEL__DEVICE": "cpu",
            "DETECTOR_LOG__FORMAT": "json",
            "DETECTOR_HTTP__HOST": "127.0.0.1",
            "DETECTOR_HTTP__PORT": "0",  # any free port: `Daemon.url` reads the one chosen from the log
            **extra,
        }
    )
    return env


class Daemon:
    """``detector serve`` as a child process; its JSON log lines go to a file that the test can search."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "detector.cli", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
        return lines

    def wait_for_log(self, event: str, timeout_s: float, count: int = 1) -> dict[str, Any]:
        """The ``count``-th log line with this event; fails when the daemon exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [entry for entry in self.logs() if entry.get("event") == event]
            if len(found) >= count:
                return found[count - 1]
            if not self.alive:
                raise AssertionError(f"daemon exited ({self.process.returncode}) before {event!r}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} in the daemon's log within {timeout_s} s:\n{self.tail()}")

    def url(self, timeout_s: float = 30.0) -> str:
        """Where the daemon's HTTP endpoints listen (from its "http listening" log line)."""
        return str(self.wait_for_log("http listening", timeout_s)["url"])

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self, timeout_s: float) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        self.process.wait()
        self._log.close()

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        self._log.close()
        return code
