"""Test-side Kafka plumbing for the integration tests: topics, producing, reading a topic back, and the
daemon as a subprocess configured only by DETECTOR_* variables. All of it talks TCP to a real broker."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector.broker import CLIENT_SETTINGS, EmbeddedBroker
from detector.processes import json_log, stop_process
from detector.settings import load_settings, settings_env
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
    return produce_to(bootstrap, topic, ((None, key, value, headers) for key, value, headers in records))


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int = -1  # the broker timestamp (epoch ms): for a producer's record, when it was sent

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
                new.append(Record(r.partition, r.offset, r.key, r.value, list(r.headers or []), r.timestamp))
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
    """The daemon's whole configuration, as DETECTOR_* variables; ``extra`` DETECTOR_* variables added last."""
    env = settings_env(
        os.environ,
        kafka={
            "bootstrap_servers": bootstrap,
            "input_topic": topics.input,
            "output_topic": topics.output,
            "dlq_topic": topics.dlq,
            "group_id": topics.group,
            "alert_topic": topics.alerts,
            **CLIENT_SETTINGS,
        },
        # the tests serve models straight from `detector train`
        model={"checkpoint": checkpoint, "device": "cpu", "uncalibrated": "warn"},
        log={"format": "json"},
        http={"host": "127.0.0.1", "port": 0},  # any free port: `Daemon.url` reads the one chosen from the log
    )
    return {**env, **extra}


@contextlib.contextmanager
def cli_child(*argv: str, env: dict[str, str] | None = None, text: bool = False) -> Iterator[subprocess.Popen]:
    """``detector *argv`` as a child process with its stdout and stderr piped; killed on the way out when it
    is still running (a test that failed midway)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "detector.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


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
        return json_log(self.log_path)

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
        """SIGTERM; the exit code (SIGKILL, and -9, when it has not exited within ``timeout_s``)."""
        code = stop_process(self.process, timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
        self.process.wait()
        self._log.close()

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        self._log.close()
        return code


# -- additions for the reliability tests -------------------------------------------------------------------


def produce_to(
    bootstrap: str, topic: str, records: Iterable[tuple[int | None, bytes | None, bytes | None, list]]
) -> int:
    """Produce (partition, key, value, headers) records, each to the partition it names (None: the one the
    producer's partitioner picks) with a batching kafka-python producer; returns the count."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024, acks="all")
    n = 0
    try:
        for partition, key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers, partition=partition)
            n += 1
        producer.flush(60)
    finally:
        producer.close(10)
    return n


def end_offsets(bootstrap: str, topic: str, partitions: int = PARTITIONS, timeout_s: float = 30.0) -> dict[int, int]:
    """Per partition, the offset the next record produced to it will get: the high watermark of a fetch
    response. (The embedded broker answers a ListOffsets for the latest offset with the base offset of the
    partition's last record batch, so ``KafkaConsumer.end_offsets`` falls short there.)"""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=CLIENT_SETTINGS["fetch_max_wait_ms"]
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        consumer.assign(tps)
        consumer.seek_to_end(*tps)  # at or before the end: a fetch from there is small and carries the watermark
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps):
            assert time.monotonic() < deadline, f"{topic}: no high watermark from the broker within {timeout_s} s"
            consumer.poll(timeout_ms=100)
        return {tp.partition: consumer.highwater(tp) for tp in tps}
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = PARTITIONS) -> dict[int, int | None]:
    """Per partition, the offset ``group`` has committed (None: nothing); reads them without joining it."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def read_to_end(reader: TopicReader, bootstrap: str, topic: str, timeout_s: float) -> list[Record]:
    """Read on until ``reader`` holds every record the topic has now (fails when time runs out): once the
    producers are stopped, what it then holds is exactly what is on the topic."""
    ends = end_offsets(bootstrap, topic)

    def done(records: list[Record]) -> bool:
        got = dict.fromkeys(ends, 0)
        for r in records:
            got[r.partition] = max(got[r.partition], r.offset + 1)
        return all(got[p] >= end for p, end in ends.items())

    reader.read_until(done, timeout_s)
    assert done(reader.records), f"{topic}: read {len(reader.records)} records, the topic ends at {ends}"
    return reader.records


def wait_for_entry(daemon: Daemon, what: str, match: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict:
    """The first log line of ``daemon`` for which ``match`` is true; fails when it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [entry for entry in daemon.logs() if match(entry)]
        if found:
            return found[0]
        if not daemon.alive:
            raise AssertionError(f"daemon exited ({daemon.process.returncode}) before {what}:\n{daemon.tail()}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} in the daemon's log within {timeout_s} s:\n{daemon.tail()}")


class RefusingPath:
    """A TCP path to a broker that refuses Produce requests from chosen Kafka client ids: it closes the
    connection instead of passing such a request on, so their records never reach the broker and the
    client keeps retrying. Every other request (fetches, commits, group membership), and every request of
    other clients, goes through untouched. It reads only the request header (size, api key, client id).
    """

    PRODUCE = 0  # the Produce request's api key

    def __init__(self, broker_host: str, broker_port: int) -> None:
        self.target = (broker_host, broker_port)
        self.refused: set[str] = set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="refusing-path", daemon=True).start()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def refuse_produce(self, client_id: str) -> None:
        self.refused.add(client_id)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while (size := self._read(client, 4)) is not None:
                frame = self._read(client, struct.unpack(">i", size)[0])
                if frame is None:
                    break
                api_key = struct.unpack(">h", frame[:2])[0]
                id_len = struct.unpack(">h", frame[8:10])[0]
                client_id = frame[10 : 10 + id_len].decode("utf-8", "replace") if id_len >= 0 else ""
                if api_key == self.PRODUCE and client_id in self.refused:
                    break
                upstream.sendall(size + frame)
        except OSError:
            pass
        self._close(client, upstream)

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()
        with self._lock:
            self._close(*self._sockets)


class AdvertisedBroker(EmbeddedBroker):
    """An embedded broker that listens on its port but advertises another one (where a RefusingPath listens),
    so that clients reach it only through that path once they have read its metadata."""

    def __init__(self, host: str, port: int, advertised_port: int, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self.advertised_port = advertised_port

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--advertised-listener-url") + 1] = f"tcp://{self.host}:{self.advertised_port}"
        return argv
