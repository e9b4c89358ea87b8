"""`detector serve` under faults, against the embedded broker over TCP: SIGKILL mid-stream loses no window;
a broker that is down at start is waited for."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

from kafka import KafkaProducer

from detector.broker import EmbeddedBroker
from tests.integration.conftest import MEASUREMENTS, F, T, free_port
from tests.integration.kafka_helpers import TopicReader, Topics, create_topics, produce
from tests.integration.test_ops import wait_for_status
from tests.sample_windows import encode, window


def test_sigkill_three_times_mid_stream_loses_no_window(broker: EmbeddedBroker, topics: Topics, start_daemon):
    """20,000 windows streamed while the daemon is SIGKILLed three times and restarted: every window_id is on
    the output topic; a window scored twice carries the same window_id, series and start both times."""
    windows = [window(f"line-{i % 20}", i, T, F) for i in range(20_000)]
    expected = {w["window_id"] for w in windows}

    def stream() -> None:  # ~35 s of input, half JSON and half binary f32
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20, batch_size=256 * 1024)
        for start in range(0, len(windows), 500):
            for i, w in enumerate(windows[start : start + 500], start=start):
                value, headers = encode(w, binary=i % 2 == 1)
                producer.send(topics.input, key=w["series_id"].encode(), value=value, headers=headers)
            producer.flush()
            time.sleep(0.8)
        producer.close()

    began = time.monotonic()
    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    daemon = start_daemon()
    reader = TopicReader(broker.bootstrap_servers, topics.output)
    seen: dict[str, set[tuple[str, int]]] = defaultdict(set)
    kills = []

    def read_until(n_distinct: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(seen) < n_distinct and time.monotonic() < deadline:
            for record in reader.poll():
                r = record.json()
                seen[r["window_id"]].add((r["series_id"], r["start"]))

    for threshold in (2_000, 7_000, 12_000):
        read_until(threshold, timeout_s=120)
        assert len(seen) >= threshold, f"only {len(seen)} windows scored before kill {len(kills) + 1}:\n{daemon.tail()}"
        daemon.process.kill()
        daemon.wait(timeout_s=10)
        kills.append((len(seen), producer.is_alive()))
        daemon = start_daemon()
    assert kills[0][1], "the first kill came after the stream had ended"
    producer.join(timeout=120)
    read_until(len(expected), timeout_s=240)

    assert set(seen) == expected, f"{len(expected - set(seen))} windows missing"
    assert all(len(versions) == 1 for versions in seen.values())
    duplicates = len(reader.records) - len(expected)
    MEASUREMENTS.append(
        f"SIGKILL x3 ({len(expected)} windows; kills at (scored, still streaming) {kills}): all present, "
        f"{duplicates} re-scored after the kills, {time.monotonic() - began:.0f} s"
    )
    assert daemon.terminate(timeout_s=15) == 0


def test_a_broker_down_at_start_or_lost_while_running_is_waited_for(topics: Topics, start_daemon, tmp_path: Path):
    """With no broker at start the daemon logs retries and keeps running; once the broker is up it serves.
    When that broker dies and a new one comes up on the same address, the daemon serves again."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    daemon = start_daemon(bootstrap=bootstrap)
    retry = daemon.wait_for_log("broker unreachable; retrying", timeout_s=60)
    assert retry["bootstrap_servers"] == bootstrap
    daemon.wait_for_log("broker unreachable; retrying", timeout_s=60, count=2)  # still retrying, still alive
    url = daemon.url()

    for life in range(2):  # the broker comes up; then it is killed, and a fresh one (memory storage) comes up
        with EmbeddedBroker("127.0.0.1", port, output=tmp_path / f"broker-{life}.log") as late:
            create_topics(late.bootstrap_servers, [topics.input, topics.output, topics.dlq])
            windows = [window(f"life-{life}", i, T, F) for i in range(50)]
            produce(late.bootstrap_servers, topics.input, [(w["series_id"].encode(), *encode(w)) for w in windows])
            expected = {w["window_id"] for w in windows}
            reader = TopicReader(late.bootstrap_servers, topics.output)
            records = reader.read_until(lambda rs, want=expected: {r.json()["window_id"] for r in rs} >= want, 120)
            assert {r.json()["window_id"] for r in records} == expected  # duplicates allowed after the loss
            if life == 0:
                assert daemon.wait_for_log("connected", timeout_s=1)["attempts"] >= 2
                late.process.kill()  # type: ignore[union-attr]
                late.wait()
                wait_for_status(url + "/readyz", 503, timeout_s=45)  # it has seen the broker go
                assert daemon.alive
            else:
                assert daemon.terminate(timeout_s=15) == 0
