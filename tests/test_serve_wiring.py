"""What the runner tells the world around it: health, model swaps from a watcher, alert transitions on their
topic (delivered before the commit), consumer lag, and Prometheus metrics fed through the observer."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import structlog
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from detector.alerting import AlertTracker
from detector.model import checkpoint
from detector.scoring import Scorer
from detector.serve.daemon import _log_model, load_scorer
from detector.serve.fakes import MemorySink, MemorySource
from detector.serve.health import Health
from detector.serve.messages import TopicPartition
from detector.serve.metrics import METRIC_NAMES, PrometheusObserver
from detector.serve.runner import Runner
from detector.settings import load_settings
from tests.test_serve_runner import OUT, TOPIC, config, fill, window
from tests.test_serve_runner import other_scorer as other_scorer  # fixtures
from tests.test_serve_runner import scorer as scorer

ALERTS = "alerts"


def with_threshold(base: Scorer, threshold: float, tmp_path) -> Scorer:
    """The same model, flagging every window (threshold 0) or none (threshold above 1)."""
    ck = base.checkpoint
    changed = ck.with_heads(dataclasses.replace(ck.window, threshold=threshold, rule=str(threshold)), ck.step)
    path = tmp_path / f"t{threshold}.ckpt"
    checkpoint.save(changed, path)
    return Scorer(checkpoint.load(path), "cpu")


def test_health_follows_the_loop_the_group_and_the_model(scorer: Scorer) -> None:
    source, sink, health = MemorySource(TOPIC), MemorySink(), Health()
    assert health.readiness()[0] is False
    fill(source, scorer, 20)
    runner = Runner(source, sink, scorer, config(), health=health)
    runner.run(idle_timeout_s=0.1)
    ready, line = health.readiness()
    assert ready, line
    assert scorer.version in line
    runner.on_lost([TopicPartition(TOPIC, 0)])
    ready, line = health.readiness()
    assert not ready
    assert "group" in line


def test_a_broker_fault_makes_the_daemon_not_ready_until_polls_succeed(scorer: Scorer) -> None:
    source, sink, health = MemorySource(TOPIC), MemorySink(), Health()
    source.fail_polls(3)
    seen: list[tuple[bool, str]] = []

    class Watching(Health):
        def set_broker(self, reachable: bool, reason: str = "") -> None:
            super().set_broker(reachable, reason)
            seen.append((reachable, reason))

    health = Watching()
    runner = Runner(source, sink, scorer, config(status_every_s=0.0), health=health)
    runner.run(idle_timeout_s=0.2)
    assert (False, "broker unreachable (scripted)") in seen
    assert seen[-1] == (True, "")
    assert health.readiness()[0]


def test_a_scorer_from_the_watcher_is_swapped_in_between_batches(scorer: Scorer, other_scorer: Scorer) -> None:
    source, sink = MemorySource(TOPIC), MemorySink()
    # asked at the first status tick, then before each batch: the third batch finds the new model
    offered: list[Scorer | None] = [None, None, None, other_scorer]

    def take() -> Scorer | None:
        return offered.pop(0) if offered else None

    for i in range(10 * 8):
        source.append_json(window(scorer, i, series="s-0"), partition=0)
    runner = Runner(source, sink, scorer, config(max_batch=8, status_every_s=1e9), reloads=take)
    runner.run(max_messages=80)
    versions = [r["model_version"] for r in sink.values(OUT)]
    assert len(versions) == 80
    # whole batches per model: 2 batches of A, then B for the rest
    assert versions == [scorer.version] * 16 + [other_scorer.version] * 64
    assert runner.counts.models == [scorer.version, other_scorer.version]


def test_an_idle_loop_swaps_so_the_model_metric_is_current(scorer: Scorer, other_scorer: Scorer) -> None:
    source, sink, health = MemorySource(TOPIC), MemorySink(), Health()
    offered = [other_scorer]
    runner = Runner(
        source,
        sink,
        scorer,
        config(status_every_s=0.0),
        health=health,
        reloads=lambda: offered.pop() if offered else None,
    )
    runner.run(idle_timeout_s=0.1)
    assert runner.scorer is other_scorer
    assert other_scorer.version in health.readiness()[1]


def test_alert_transitions_go_to_their_topic_before_the_commit(scorer: Scorer, tmp_path) -> None:
    always = with_threshold(scorer, 0.0, tmp_path)
    source, sink = MemorySource(TOPIC), MemorySink()
    for i in range(5):
        source.append_json(window(scorer, i, series="s-0"), partition=0, key=b"s-0")
    delivered_at_commit: list[int] = []
    source.on_commit = lambda offsets: delivered_at_commit.append(len(sink.values(ALERTS)))
    runner = Runner(
        source, sink, always, config(max_batch=5, alert_topic=ALERTS), alerts=AlertTracker(raise_after=3, clear_after=2)
    )
    runner.run(max_messages=5)
    alerts = sink.values(ALERTS)
    assert [(a["series_id"], a["state"], a["window_id"]) for a in alerts] == [("s-0", "raised", "s-0/2")]
    assert alerts[0]["since"] == 0  # the start of the first of the three flagged windows
    assert alerts[0]["model_version"] == always.version
    assert delivered_at_commit == [1]
    assert [r.key for r in sink.topic(ALERTS)] == [b"s-0"]
    assert runner.counts.alerts_raised == 1


def test_clean_windows_clear_a_raised_alert(scorer: Scorer, tmp_path) -> None:
    always, never = with_threshold(scorer, 0.0, tmp_path), with_threshold(scorer, checkpoint.THRESHOLD_MAX, tmp_path)
    source, sink = MemorySource(TOPIC), MemorySink()
    offered: list[Scorer] = [never]
    tracker = AlertTracker(raise_after=2, clear_after=2)
    for i in range(9):  # batches decoded after the first delivery (the second or third: pipelined) are clean
        source.append_json(window(scorer, i, series="s-0"), partition=0)
    runner = Runner(
        source,
        sink,
        always,
        config(max_batch=3, alert_topic=ALERTS, status_every_s=1e9),
        alerts=tracker,
        reloads=lambda: None if len(sink.values(OUT)) < 3 else (offered.pop() if offered else None),
    )
    runner.run(max_messages=9)
    assert [a["state"] for a in sink.values(ALERTS)] == ["raised", "cleared"]
    assert not tracker.is_raised("s-0")


def test_without_an_alert_topic_no_alerts_are_produced(scorer: Scorer, tmp_path) -> None:
    source, sink = MemorySource(TOPIC), MemorySink()
    fill(source, scorer, 12, partitions=1)
    runner = Runner(source, sink, with_threshold(scorer, 0.0, tmp_path), config(), alerts=AlertTracker(1, 1))
    runner.run(max_messages=12)
    assert sink.values(ALERTS) == []
    assert len(sink.values(OUT)) == 12


def test_prometheus_metrics_are_fed_by_the_loop(scorer: Scorer, tmp_path) -> None:
    always = with_threshold(scorer, 0.0, tmp_path)
    source, sink, metrics = MemorySource(TOPIC), MemorySink(), PrometheusObserver()
    fill(source, scorer, 40)
    source.append(b"{not json", partition=1)
    source.append(b"[1, 2]", partition=2)
    runner = Runner(
        source,
        sink,
        always,
        config(status_every_s=0.0, alert_topic=ALERTS),
        observer=metrics,
        alerts=AlertTracker(raise_after=3, clear_after=5),
    )
    runner.run(max_messages=42)
    runner.run(idle_timeout_s=0.05)  # one more status tick after the batch: lag is now 0 everywhere
    families, samples = scrape(metrics)
    assert set(METRIC_NAMES) <= families
    value = {(n, tuple(sorted(lab.items()))): v for n, lab, v in samples}
    assert value[("detector_windows_consumed_total", ())] == 42
    assert value[("detector_windows_scored_total", ())] == 40
    assert value[("detector_windows_flagged_total", ())] == 40
    assert sum(v for (n, _), v in value.items() if n == "detector_dead_letters_total") == 2
    assert value[("detector_model_info", (("version", always.version),))] == 1
    assert value[("detector_alert_transitions_total", (("state", "raised"),))] == 4  # one per series
    lags = {labels["partition"]: v for n, labels, v in samples if n == "detector_consumer_lag_messages"}
    assert lags == {"0": 0, "1": 0, "2": 0, "3": 0}
    assert value[("detector_end_to_end_latency_seconds_count", ())] == 40


def test_lag_counts_what_is_not_yet_consumed(scorer: Scorer) -> None:
    source = MemorySource(TOPIC, partitions=2)
    fill(source, scorer, 10, partitions=2)
    lags: list[dict[TopicPartition, int]] = []

    class Lag(PrometheusObserver):
        def set_consumer_lag(self, l: Any) -> None:  # noqa: E741
            lags.append(dict(l))

    runner = Runner(source, MemorySink(), scorer, config(max_batch=4, read_ahead=1, status_every_s=0.0), observer=Lag())
    runner.run(max_messages=10)
    runner.run(idle_timeout_s=0.05)
    totals = [sum(seen.values()) for seen in lags if seen]
    assert totals[0] > 0
    assert totals == sorted(totals, reverse=True)  # consumed, never re-read here
    assert lags[-1] == {TopicPartition(TOPIC, 0): 0, TopicPartition(TOPIC, 1): 0}


def scrape(metrics: PrometheusObserver) -> tuple[set[str], list[tuple[str, dict[str, str], float]]]:
    """The family names as `# TYPE` lines show them, and every sample."""
    text = generate_latest(metrics.registry).decode()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    samples = [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    return families, samples


def test_the_start_up_heap_leaves_the_collector_and_a_replaced_model_is_still_freed() -> None:
    """``serve`` freezes what start-up left alive, so Python's full collections stop walking torch, the
    model and the clients with the loop stopped (80-135 ms each before). What is frozen is gone from the
    collector's generations; garbage made later, and a frozen model dropped at a hot swap, are still freed."""
    import gc
    import weakref

    from detector.serve.daemon import freeze_startup_heap

    class Node:
        pass

    alive = Node()
    alive.me = alive  # type: ignore[attr-defined]  # a cycle alive at start-up
    model = Node()
    gone = weakref.ref(model)
    try:
        frozen = freeze_startup_heap()
        assert frozen > 1000  # torch alone leaves far more than this
        assert not any(o is alive for o in gc.get_objects())
        model = None  # a swap drops the model the daemon started with: its reference count frees it
        assert gone() is None
        cycle = Node()
        cycle.me = cycle  # type: ignore[attr-defined]
        later = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("precision", "cpu_bf16", "native_bf16", "runs", "warned"),
    [
        ("bf16", False, True, "fp32", False),  # model.precision is CUDA's: the CPU stays fp32, as documented
        ("fp32", True, True, "bf16", False),
        ("fp32", True, False, "fp32", True),  # asked for, not available here: said so
    ],
)
def test_the_daemon_says_which_precision_it_scores_in(
    precision, cpu_bf16, native_bf16, runs, warned, scorer, tmp_path, monkeypatch
):
    """The "model loaded" line names the precision in use; cpu_bf16 on a CPU without it adds a warning."""
    monkeypatch.setattr("detector.scoring.cpu_has_bf16", lambda: native_bf16)
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # load_scorer's, process-wide otherwise
    path = tmp_path / "m.ckpt"
    checkpoint.save(scorer.checkpoint, path)
    model = {"checkpoint": path, "device": "cpu", "precision": precision, "cpu_bf16": cpu_bf16, "uncalibrated": "warn"}
    settings = load_settings(environ={}, model=model)
    served = load_scorer(settings)
    with capture_logs() as logs:
        _log_model(structlog.get_logger("detector.serve"), settings, served)
    assert torch.get_num_threads() == threads
    loaded = [line for line in logs if line["event"] == "model loaded"]
    assert loaded[0]["precision"] == runs
    warnings = [line["event"] for line in logs if line["log_level"] == "warning"]
    assert len(warnings) == int(warned)
    assert all("cpu_bf16" in w for w in warnings)
