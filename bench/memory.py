"""Peak memory of `detector serve` under a stream of maximum-size messages, against the same daemon on
ordinary windows, on the embedded broker in one run.

Three drains of a pre-filled topic, each by a fresh daemon, peak RSS (VmHWM) of the daemon process:

- ``small``: ordinary windows (a few KB each): the daemon's footprint at rest;
- ``max_size``: every message exactly ``limits.max_message_bytes`` (1 MiB): half valid windows padded with an
  extra field (scored), half not JSON (dead letters, whose 1 MiB values go to the DLQ);
- ``max_size_gzip``: the same messages produced gzip-compressed (the client inflates each batch).

Targets (TARGETS below): ``max_size`` and ``max_size_gzip`` peak RSS at most ``LIMIT_MB`` (what the runner may
hold by design: read-ahead bounded by bytes, one batch under way, the client's fetch buffer and the producer's
buffer, over the footprint at rest). Prints each target as `target NAME: VALUE <= LIMIT: met` (or NOT MET);
figures and targets in bench/out/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from harness import GroupWatch, create_topics, daemon_env, default_checkpoint, json_records, serve, windows
from targets import Target, report

from detector.broker import EmbeddedBroker

OUT = Path(__file__).resolve().parent / "out"
F, T = 4, 64
MAX_BYTES = 1_048_576  # limits.max_message_bytes, the default
LIMIT_MB = 1024.0
# Every target this bench checks, by figure; where each is stated.
_STATED = "docs/operations.md, Memory (checks its peak RSS against 1 GiB); bench/RESULTS.md, Memory"
TARGETS = {
    "max_size_peak_rss_mb": Target("<=", LIMIT_MB, "MB", _STATED),
    "max_size_gzip_peak_rss_mb": Target("<=", LIMIT_MB, "MB", _STATED),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_size_records(n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``n`` messages of exactly MAX_BYTES: even ones valid windows with padding, odd ones not JSON."""
    out = []
    for i, w in enumerate(windows(n, F, T)):
        key = w["series_id"].encode()
        if i % 2:
            out.append((key, b"<" * MAX_BYTES, []))
            continue
        base = msgspec.json.encode({**w, "padding": ""})
        padded = msgspec.json.encode({**w, "padding": "x" * (MAX_BYTES - len(base))})
        assert len(padded) == MAX_BYTES
        out.append((key, padded, []))
    return out


def fill(bootstrap: str, topic: str, records: list, compression: str | None) -> None:
    """The harness's fill, with batches and requests large enough for maximum-size messages."""
    harness.fill(bootstrap, topic, records, batch_size=2 * MAX_BYTES, compression_type=compression,
                 max_request_size=4 * MAX_BYTES)  # fmt: skip


def drain_peak(bootstrap: str, ckpt: Path, topic: str, n: int, run: str, logs: Path) -> tuple[float, float]:
    """A fresh daemon drains ``n`` messages of ``topic``: (its peak RSS in MB, seconds to commit them all)."""
    create_topics(bootstrap, [f"{run}.out", f"{run}.dlq", f"{run}.alerts"])
    daemon = serve(daemon_env(bootstrap, ckpt, topic, run), logs / f"{run}.log")
    watch = GroupWatch(bootstrap, f"{run}.group")
    began = time.monotonic()
    try:
        while watch.committed() < n:
            if daemon.process.poll() is not None or time.monotonic() - began > 600:
                raise SystemExit(f"bench: the daemon of {run} did not drain its input:\n{daemon.tail()}")
            time.sleep(0.5)
        seconds = time.monotonic() - began
    finally:
        daemon.stop()
        watch.close()
    return daemon.peak_rss_mb, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="maximum-size messages in each stream")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "logs"
    logs.mkdir(exist_ok=True)
    ckpt = default_checkpoint(OUT / "bench.ckpt", F, T)
    n = args.messages
    big = max_size_records(n)
    print(f"bench-memory: {n} messages of {MAX_BYTES} bytes (half valid, half dead letters); {os.cpu_count()} cores")
    results: dict[str, object] = {}
    peaks: dict[str, float] = {}
    with EmbeddedBroker("127.0.0.1", free_port(), output=logs / "memory-broker.log") as broker:
        bs = broker.bootstrap_servers
        create_topics(bs, ["mem.small", "mem.big", "mem.gzip"])
        fill(bs, "mem.small", json_records(windows(4 * n, F, T)), None)
        fill(bs, "mem.big", big, None)
        fill(bs, "mem.gzip", big, "gzip")
        for name, topic, count in (("small", "mem.small", 4 * n), ("max_size", "mem.big", n),
                                   ("max_size_gzip", "mem.gzip", n)):  # fmt: skip
            peak, seconds = drain_peak(bs, ckpt, topic, count, f"mem-{name}", logs)
            results[f"{name}_peak_rss_mb"] = peaks[name] = round(peak, 1)
            results[f"{name}_seconds"] = round(seconds, 1)
            print(f"  {name:14s} peak RSS {peak:7.1f} MB  ({count} messages drained in {seconds:.1f} s)")
    for name in ("max_size", "max_size_gzip"):
        print(f"  {name}: {peaks[name] - peaks['small']:+.0f} MB over ordinary windows")
    results["targets"] = report(TARGETS, results, prefix="  ")
    (OUT / "memory.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
