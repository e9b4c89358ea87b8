"""Plumbing for bench/e2e.py: data, topics, the daemon as a child process, paced input, reading topics back.

Everything talks TCP to the embedded broker; nothing here measures anything by itself.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from detector import synth
from detector.broker import CLIENT_SETTINGS
from detector.codec import encode_f32
from detector.model.checkpoint import Checkpoint, save
from detector.model.config import NetworkConfig
from detector.model.features import InputStats, input_channels
from detector.model.network import DetectorNet
from detector.processes import json_log, stop_process
from detector.settings import load_settings, settings_env
from detector.tools import clients

PARTITIONS = 4


def median3(measure: Callable[[], float], runs: int = 3) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def random_checkpoint(
    features: int, length: int, seed: int = 0, version: str = "", network: NetworkConfig | None = None
) -> Checkpoint:
    """The default architecture (or ``network``) with random weights (speed does not depend on them)."""
    torch.manual_seed(seed)
    network = network or NetworkConfig()
    channels = input_channels(features)
    return Checkpoint(
        network=network,
        state=DetectorNet(network, channels).state_dict(),
        window_length=length,
        feature_names=tuple(f"f{i}" for i in range(features)),
        stats=InputStats((0.0,) * channels, (1.0,) * channels),
        training={"bench_seed": seed},
        version=version,
    )


def default_checkpoint(
    path: Path, features: int, length: int, seed: int = 0, network: NetworkConfig | None = None
) -> Path:
    """:func:`random_checkpoint`, saved to ``path``."""
    save(random_checkpoint(features, length, seed, network=network), path)
    return path


def windows(n: int, features: int, length: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` generated input windows (no labels), as the recordings and producers in the wild send them."""
    per_series = 200
    params = synth.SynthParams(
        series=-(-n // per_series), windows_per_series=per_series, features=features, length=length
    )
    return list(synth.generate(seed, params, labels=False))[:n]


Record = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


def json_records(lines: Iterable[dict[str, Any]]) -> list[Record]:
    enc = msgspec.json.Encoder()
    return [(ln["series_id"].encode(), enc.encode(ln), []) for ln in lines]


def f32_records(lines: Iterable[dict[str, Any]]) -> list[Record]:
    out = []
    for ln in lines:
        value, headers = encode_f32(ln)
        out.append((ln["series_id"].encode(), value, headers))
    return out


def create_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Create the topics (PARTITIONS each) that do not exist yet, with the product's own admin helper."""
    clients.create_topics(load_settings(environ={"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap}), names, PARTITIONS)


def fill(bootstrap: str, topic: str, records: list[Record], **options: Any) -> None:
    """Produce ``records`` as fast as a batching producer can, and wait for every acknowledgement;
    ``options`` override or add KafkaProducer options (compression, larger batches)."""
    defaults = {"linger_ms": 20, "batch_size": 512 * 1024, "acks": "all", "metrics_enabled": False}
    producer = KafkaProducer(bootstrap_servers=bootstrap, **{**defaults, **options})
    try:
        for key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush(120)
    finally:
        producer.close(10)


def read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 120.0) -> list[Any]:
    """The first ``n`` records of ``topic`` (all partitions, from the beginning, no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, metrics_enabled=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=10_000).values():
                out.extend(batch)
    finally:
        consumer.close()
    if len(out) < n:
        raise SystemExit(f"bench: only {len(out)} of {n} records on {topic} after {timeout_s:.0f} s")
    return out


class GroupWatch:
    """Reads a consumer group's committed offsets (one admin connection, reused)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.group = group

    def committed(self) -> int:
        """Sum of the committed offsets over all partitions (0 before the first commit)."""
        offsets = self.admin.list_group_offsets(self.group).get(self.group, {})
        return sum(max(0, meta.offset) for meta in offsets.values())

    def close(self) -> None:
        self.admin.close()


def daemon_env(bootstrap: str, checkpoint: Path, input_topic: str, run: str, **extra: str) -> dict[str, str]:
    """The daemon's whole configuration, as DETECTOR_* variables; topics and group named after ``run``;
    ``extra`` DETECTOR_* variables added last."""
    env = settings_env(
        os.environ,
        kafka={
            "bootstrap_servers": bootstrap,
            "input_topic": input_topic,
            "output_topic": f"{run}.out",
            "dlq_topic": f"{run}.dlq",
            "alert_topic": f"{run}.alerts",
            "group_id": f"{run}.group",
            **CLIENT_SETTINGS,
        },
        model={"checkpoint": checkpoint, "uncalibrated": "warn"},  # random weights: speed, not accuracy
        http={"port": 0},
        log={"format": "json", "level": "info"},
    )
    return {**env, **extra}


def peak_rss_mb(pid: int) -> float | None:
    """The process's own peak RSS (VmHWM) in MB, or None once it is gone.

    Not ``ru_maxrss`` from ``wait4``: Linux carries the high-water mark of the address space a child had
    before ``exec`` (a copy of this big parent) into it, so a small child would read as large as its parent.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples a process's VmHWM every 0.1 s until it exits; ``peak_mb`` is the last (largest) value."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_mb = 0.0

    def run(self) -> None:
        while (value := peak_rss_mb(self.pid)) is not None:
            self.peak_mb = max(self.peak_mb, value)
            time.sleep(0.1)


@dataclass
class Child:
    """A child process (``detector serve`` or the passthrough) whose output goes to a log file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] = field(init=False)
    peak_rss_mb: float = 0.0

    def __post_init__(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._rss = RssSampler(self.process.pid)
        self._rss.start()

    def events(self) -> list[dict[str, Any]]:
        return json_log(self.log_path)

    def wait_for(self, event: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in self.events():
                if entry.get("event") == event:
                    return entry
            if self.process.poll() is not None:
                raise SystemExit(f"bench: {self.args[-1]} exited before {event!r}:\n{self.tail()}")
            time.sleep(0.05)
        raise SystemExit(f"bench: no {event!r} within {timeout_s} s:\n{self.tail()}")

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait (SIGKILL after ``timeout_s``), and keep the child's own peak RSS."""
        stop_process(self.process, timeout_s)
        self._rss.join(1)
        self.peak_rss_mb = self._rss.peak_mb
        self._log.close()


def serve(env: dict[str, str], log_path: Path) -> Child:
    return Child([sys.executable, "-m", "detector.cli", "serve"], env, log_path)


class PacedProducer(threading.Thread):
    """Sends ``records`` at ``rate`` per second (in 2 ms steps), each stamped with its send time; keeps
    window_id -> send time (epoch ms) for the latency measurement."""

    def __init__(self, bootstrap: str, topic: str, records: list[Record], ids: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=1, acks="all", metrics_enabled=False, batch_size=256 * 1024
        )
        self.topic, self.records, self.ids, self.rate = topic, records, ids, rate
        self.sent_ms: dict[str, int] = {}
        self.started_ms = 0
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        self.started_ms = time.time_ns() // 1_000_000
        i = 0
        while i < len(self.records):
            due = min(len(self.records), int((time.monotonic() - t0) * self.rate) + 1)
            while i < due:
                key, value, headers = self.records[i]
                now_ms = time.time_ns() // 1_000_000
                self.sent_ms[self.ids[i]] = now_ms
                self.producer.send(self.topic, key=key, value=value, headers=headers, timestamp_ms=now_ms)
                i += 1
            time.sleep(0.002)
        self.producer.flush(60)
        self.producer.close(10)
        self.done.set()


class Observer(threading.Thread):
    """Reads ``topic`` as records arrive and notes, per window_id, when it was first seen (epoch ms)."""

    def __init__(self, bootstrap: str, topic: str, window_id: Callable[[bytes], str]) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            metrics_enabled=False,
            fetch_max_wait_ms=CLIENT_SETTINGS["fetch_max_wait_ms"],
        )
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.window_id = window_id
        self.seen_ms: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            batches = self.consumer.poll(timeout_ms=20, max_records=5000)
            now_ms = time.time_ns() // 1_000_000
            for batch in batches.values():
                for r in batch:
                    self.seen_ms.setdefault(self.window_id(r.value), now_ms)
        self.consumer.close()


def window_id_of(value: bytes) -> str:
    return str(_id_decoder.decode(value).window_id)


class _Id(msgspec.Struct):
    window_id: str | int


_id_decoder = msgspec.json.Decoder(_Id)


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    started = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - started
    end.append(time.perf_counter())
