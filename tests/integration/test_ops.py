"""Operating `detector serve` on the embedded broker over TCP: checkpoint hot reload (a good file is swapped
in, a bad one is refused while the old model keeps serving), the HTTP endpoints, and alert transitions."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from detector.broker import EmbeddedBroker
from detector.cli import main
from detector.model import checkpoint
from detector.serve.metrics import METRIC_NAMES
from tests.integration.conftest import F, T, free_port, train_small_model
from tests.integration.kafka_helpers import Daemon, TopicReader, Topics, create_topics, produce, read_to_end
from tests.sample_windows import encode, window


def get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for_status(url: str, status: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    last: tuple[int, str] | None = None
    while time.monotonic() < deadline:
        try:
            last = get(url)
        except OSError as err:
            last = (-1, repr(err))
        if last[0] == status:
            return last[1]
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer {status} within {timeout_s} s; last answer: {last}")


def samples(metrics_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
    }


def families(metrics_text: str) -> set[str]:
    return {line.split()[2] for line in metrics_text.splitlines() if line.startswith("# TYPE ")}


def produce_windows(bootstrap: str, topic: str, phase: str, n: int) -> set[str]:
    windows = [window(f"{phase}-{i % 10}", i, T, F) for i in range(n)]
    produce(bootstrap, topic, [(w["series_id"].encode(), *encode(w)) for w in windows])
    return {w["window_id"] for w in windows}


def read_phase(reader: TopicReader, expected: set[str], timeout_s: float = 120) -> dict[str, set[str]]:
    """window_id -> the model versions that scored it, for the windows of one phase."""
    reader.read_until(lambda rs: expected <= {r.json()["window_id"] for r in rs}, timeout_s)
    versions: dict[str, set[str]] = {}
    for record in reader.records:
        r = record.json()
        if r["window_id"] in expected:
            versions.setdefault(r["window_id"], set()).add(r["model_version"])
    return versions


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another small model of the same shape (a different seed, so a different version)."""
    return train_small_model(tmp_path_factory.mktemp("model-b"), 8, "--seed", "5")


def rename_into_place(content: bytes, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, target)


def test_hot_reload_swaps_a_good_checkpoint_and_refuses_a_bad_one(
    broker: EmbeddedBroker, topics: Topics, start_daemon, model_checkpoint: Path, second_checkpoint: Path, tmp_path
):
    """1,000 windows per phase: A serves; B renamed into place serves the next windows; random bytes renamed
    into place are refused (counted), B keeps serving, the daemon stays up, and no window is lost."""
    served = tmp_path / "serving.ckpt"
    shutil.copyfile(model_checkpoint, served)
    version_a = checkpoint.load(served).version
    version_b = checkpoint.load(second_checkpoint).version
    assert version_a != version_b
    daemon: Daemon = start_daemon(DETECTOR_MODEL__CHECKPOINT=str(served), DETECTOR_RELOAD__POLL_SECONDS="1")
    url = daemon.url()
    daemon.wait_for_log("partitions assigned", timeout_s=90)
    reader = TopicReader(broker.bootstrap_servers, topics.output)

    phase_a = produce_windows(broker.bootstrap_servers, topics.input, "a", 1000)
    versions = read_phase(reader, phase_a)
    assert set(versions) == phase_a
    assert {v for vs in versions.values() for v in vs} == {version_a}

    rename_into_place(second_checkpoint.read_bytes(), served)
    daemon.wait_for_log("serving a new model", timeout_s=30)
    phase_b = produce_windows(broker.bootstrap_servers, topics.input, "b", 1000)
    versions = read_phase(reader, phase_b)
    assert set(versions) == phase_b
    assert {v for vs in versions.values() for v in vs} == {version_b}

    rename_into_place(os.urandom(64 * 1024), served)
    rejected = daemon.wait_for_log("checkpoint rejected; the serving model stays", timeout_s=30)
    assert rejected["stage"] == "load"
    phase_c = produce_windows(broker.bootstrap_servers, topics.input, "c", 1000)
    versions = read_phase(reader, phase_c)
    assert set(versions) == phase_c
    assert {v for vs in versions.values() for v in vs} == {version_b}

    time.sleep(2.5)  # two more polls of the same bad file: it is not tried again
    assert daemon.alive
    assert len([e for e in daemon.logs() if e.get("event") == "checkpoint rejected; the serving model stays"]) == 1
    metrics = samples(get(url + "/metrics")[1])
    assert metrics[("detector_reloads_total", (("result", "rejected"),))] == 1
    assert metrics[("detector_reloads_total", (("result", "ok"),))] == 1
    assert metrics[("detector_model_info", (("version", version_b),))] == 1
    trained: set[str] = set()
    for path in (model_checkpoint, second_checkpoint):
        history = checkpoint.load(path).history
        assert history is not None
        trained |= set(history.series)
    # ten series per phase, each with its history, and those the two models were trained on (warm from them)
    assert metrics[("detector_series_held", ())] == 30 + len(trained)
    assert {r.json()["window_id"] for r in reader.records} == phase_a | phase_b | phase_c
    assert daemon.terminate(timeout_s=15) == 0


def test_health_readiness_and_metrics_while_serving_and_while_the_broker_is_down(
    topics: Topics, start_daemon, tmp_path: Path
):
    """/healthz and /readyz answer 200 while serving and /metrics has every family; with the broker gone
    /readyz answers 503 with a reason while /healthz stays 200; with the broker back, ready again."""
    port = free_port()
    with EmbeddedBroker("127.0.0.1", port, output=tmp_path / "broker.log") as own:
        create_topics(own.bootstrap_servers, [topics.input, topics.output, topics.dlq, topics.alerts])
        daemon: Daemon = start_daemon(bootstrap=own.bootstrap_servers)
        url = daemon.url()
        expected = produce_windows(own.bootstrap_servers, topics.input, "h", 200)
        TopicReader(own.bootstrap_servers, topics.output).read_until(
            lambda rs: expected <= {r.json()["window_id"] for r in rs}, 120
        )
        assert get(url + "/healthz")[0] == 200
        ready = wait_for_status(url + "/readyz", 200, 30)
        assert "ready" in ready
        status, text = get(url + "/metrics")
        assert status == 200
        assert set(METRIC_NAMES) <= families(text)
        values = samples(text)
        assert values[("detector_windows_scored_total", ())] == 200  # one member, no restart: each once
        assert values[("detector_windows_consumed_total", ())] == 200
        deadline = time.monotonic() + 15  # lag is known once a fetch response has carried a high watermark
        while not any(name == "detector_consumer_lag_messages" for name, _ in values):
            assert time.monotonic() < deadline, "no consumer lag reported"
            time.sleep(0.5)
            values = samples(get(url + "/metrics")[1])
        assert values[("detector_end_to_end_latency_seconds_count", ())] == 200
        own.process.kill()  # type: ignore[union-attr]
        own.wait()

    reason = wait_for_status(url + "/readyz", 503, 45)
    assert "broker" in reason or "coordinator" in reason, reason
    assert get(url + "/healthz")[0] == 200
    assert daemon.alive

    with EmbeddedBroker("127.0.0.1", port, output=tmp_path / "broker-2.log") as back:
        create_topics(back.bootstrap_servers, [topics.input, topics.output, topics.dlq, topics.alerts])
        wait_for_status(url + "/readyz", 200, 90)
        assert daemon.terminate(timeout_s=15) == 0


def test_alert_transitions_reach_the_alert_topic(
    broker: EmbeddedBroker, topics: Topics, start_daemon, model_checkpoint: Path, tmp_path: Path
):
    """A model that flags every window (threshold 0): each series is raised once, after `raise_after` windows."""
    base = checkpoint.load(model_checkpoint)
    flag_all = tmp_path / "flag-all.ckpt"
    checkpoint.save(base.with_heads(dataclasses.replace(base.window, threshold=0.0, rule="0"), base.step), flag_all)
    daemon: Daemon = start_daemon(DETECTOR_MODEL__CHECKPOINT=str(flag_all), DETECTOR_ALERTS__RAISE_AFTER="4")
    daemon.wait_for_log("partitions assigned", timeout_s=90)
    produce_windows(broker.bootstrap_servers, topics.input, "al", 60)  # 10 series x 6 windows, in order
    reader = TopicReader(broker.bootstrap_servers, topics.alerts)
    reader.read_count(10, timeout_s=60)
    assert daemon.terminate(timeout_s=15) == 0
    alerts = read_to_end(reader, broker.bootstrap_servers, topics.alerts, timeout_s=60)
    values = [a.json() for a in alerts]
    assert sorted(v["series_id"] for v in values) == [f"al-{i}" for i in range(10)]
    assert {v["state"] for v in values} == {"raised"}
    assert all(a.key == a.json()["series_id"].encode() for a in alerts)
    assert set(values[0]) == {"series_id", "state", "window_id", "probability", "since", "model_version"}


def test_a_recording_captured_by_record_replays_to_the_same_window_ids(
    broker: EmbeddedBroker, topics: Topics, start_daemon, tmp_path: Path
):
    """Windows scored live, captured from the input topic with `record`, published again with `replay`:
    the daemon's output for the replayed copy carries exactly the same window_ids."""
    bootstrap = broker.bootstrap_servers
    daemon: Daemon = start_daemon()
    live = produce_windows(bootstrap, topics.input, "rec", 300)
    reader = TopicReader(bootstrap, topics.output)
    reader.read_until(lambda rs: live <= {r.json()["window_id"] for r in rs}, 120)
    first_pass = len(reader.records)

    rec = tmp_path / "captured.jsonl"
    assert main(["record", "--topic", topics.input, "--out", str(rec), "--max", "300", "--idle-timeout", "10",
                 "--bootstrap-servers", bootstrap]) == 0  # fmt: skip
    assert len(rec.read_text().splitlines()) == 300
    assert main(["replay", str(rec), "--topic", topics.input, "--bootstrap-servers", bootstrap]) == 0

    reader.read_count(first_pass + 300, timeout_s=120)
    assert daemon.terminate(timeout_s=15) == 0
    replayed = [r.json()["window_id"] for r in read_to_end(reader, bootstrap, topics.output, 60)[first_pass:]]
    assert sorted(replayed) == sorted(live)
