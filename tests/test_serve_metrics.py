"""Prometheus metrics: every family in METRIC_NAMES is exposed, fed by the Observer hooks, in its own registry."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.testing import capture_logs

from detector.codec import REASONS
from detector.serve.messages import TopicPartition
from detector.serve.metrics import METRIC_NAMES, PrometheusObserver
from detector.serve.observer import safe


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def families(text: str) -> dict[str, list[Sample]]:
    """Samples of a scrape by exposed family name (the name in its `# TYPE` line: counters end in _total)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        out[name] = list(family.samples)
    return out


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` with exactly these labels."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def feed(obs: PrometheusObserver, clock: FakeClock) -> None:
    """One known history through every hook, the Observer ones via safe() as the runner calls them."""
    runner_side = safe(obs)
    runner_side.consumed(7)
    runner_side.consumed(3)
    runner_side.dead_letter("bad_json")
    runner_side.dead_letter("bad_json")
    runner_side.dead_letter("oversize")
    clock.now = 100.0
    runner_side.scored(4, 1, 0.02, [100.0, 250.0, 40.0, 1900.0])
    clock.now = 100.5  # acknowledged 0.5 s after scoring
    runner_side.committed({TopicPartition("windows", 0): 11})
    runner_side.batch_done(7, 0.6)
    runner_side.scored(3, 2, 0.003, [10.0, 20.0, 30.0])
    runner_side.batch_done(3, 0.01)  # acknowledged at once (clock unchanged)
    runner_side.delivery_retry(2, 1)
    runner_side.dropped_on_revoke(5)
    obs.set_consumer_lag({TopicPartition("windows", 0): 12, TopicPartition("windows", 3): 0})
    obs.model_loaded("aaaa")
    obs.model_loaded("bbbb")
    obs.reloaded("ok")
    obs.reloaded("rejected")
    obs.reloaded("rejected")
    obs.alert_transitions(raised=2, cleared=1)
    obs.delivery_stalled(12.5)
    obs.output_dropped(2)
    obs.unreadable_record()


def test_every_family_is_exposed_with_the_values_fed():
    """A scrape after a known history has every METRIC_NAMES family, each with the values fed in."""
    clock = FakeClock()
    obs = PrometheusObserver(clock=clock)
    feed(obs, clock)
    scrape = families(generate_latest(obs.registry).decode())
    assert set(METRIC_NAMES) <= set(scrape)

    assert value(scrape["detector_windows_consumed_total"], "detector_windows_consumed_total") == 10
    assert value(scrape["detector_windows_scored_total"], "detector_windows_scored_total") == 7
    assert value(scrape["detector_windows_flagged_total"], "detector_windows_flagged_total") == 3
    dlq = scrape["detector_dead_letters_total"]
    assert value(dlq, "detector_dead_letters_total", reason="bad_json") == 2
    assert value(dlq, "detector_dead_letters_total", reason="oversize") == 1

    batch = scrape["detector_batch_size_messages"]
    assert value(batch, "detector_batch_size_messages_count") == 2
    assert value(batch, "detector_batch_size_messages_sum") == 10
    assert value(batch, "detector_batch_size_messages_bucket", le="4.0") == 1  # the batch of 3
    assert value(batch, "detector_batch_size_messages_bucket", le="8.0") == 2

    inference = scrape["detector_inference_seconds"]
    assert value(inference, "detector_inference_seconds_count") == 2
    assert value(inference, "detector_inference_seconds_sum") == pytest.approx(0.023)

    # first batch: 0.1, 0.25, 0.04, 1.9 s to scoring + 0.5 s to the ack; second: 0.01, 0.02, 0.03 s
    latency = scrape["detector_end_to_end_latency_seconds"]
    assert value(latency, "detector_end_to_end_latency_seconds_count") == 7
    assert value(latency, "detector_end_to_end_latency_seconds_sum") == pytest.approx(0.6 + 0.75 + 0.54 + 2.4 + 0.06)
    assert value(latency, "detector_end_to_end_latency_seconds_bucket", le="0.05") == 3
    assert value(latency, "detector_end_to_end_latency_seconds_bucket", le="0.5") == 3
    assert value(latency, "detector_end_to_end_latency_seconds_bucket", le="1.0") == 6
    assert value(latency, "detector_end_to_end_latency_seconds_bucket", le="2.5") == 7

    lag = scrape["detector_consumer_lag_messages"]
    assert value(lag, "detector_consumer_lag_messages", topic="windows", partition="0") == 12
    assert value(lag, "detector_consumer_lag_messages", topic="windows", partition="3") == 0

    assert [(s.labels, s.value) for s in scrape["detector_model_info"]] == [({"version": "bbbb"}, 1.0)]

    reloads = scrape["detector_reloads_total"]
    assert value(reloads, "detector_reloads_total", result="ok") == 1
    assert value(reloads, "detector_reloads_total", result="rejected") == 2

    assert value(scrape["detector_commits_total"], "detector_commits_total") == 1
    assert value(scrape["detector_delivery_retries_total"], "detector_delivery_retries_total") == 1
    assert value(scrape["detector_dropped_on_revoke_total"], "detector_dropped_on_revoke_total") == 5
    alerts = scrape["detector_alert_transitions_total"]
    assert value(alerts, "detector_alert_transitions_total", state="raised") == 2
    assert value(alerts, "detector_alert_transitions_total", state="cleared") == 1
    assert value(scrape["detector_delivery_stalled_seconds"], "detector_delivery_stalled_seconds") == 12.5
    assert value(scrape["detector_output_dropped_total"], "detector_output_dropped_total") == 2
    assert value(scrape["detector_unreadable_records_total"], "detector_unreadable_records_total") == 1


def test_metric_names_are_exactly_the_registered_families_and_follow_prometheus_naming():
    """METRIC_NAMES lists each registered family once (no drift), snake_case with the detector_ prefix and
    base units: counters end in _total, durations in _seconds."""
    obs = PrometheusObserver()
    registered = {}
    for family in obs.registry.collect():
        if family.name.endswith("_created"):
            continue
        registered[family.name + "_total" if family.type == "counter" else family.name] = family.type
    assert sorted(METRIC_NAMES) == sorted(registered)
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    for name, kind in registered.items():
        assert re.fullmatch(r"detector_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        if "latency" in name or "inference" in name:
            assert name.endswith("_seconds"), name


def test_series_that_exist_before_any_event():
    """Reload results, alert states and every dead-letter reason read 0 from the start (so rate() works); no
    model version is shown before one is loaded."""
    scrape = families(generate_latest(PrometheusObserver().registry).decode())
    for reason in REASONS:
        assert value(scrape["detector_dead_letters_total"], "detector_dead_letters_total", reason=reason) == 0
    assert value(scrape["detector_reloads_total"], "detector_reloads_total", result="ok") == 0
    assert value(scrape["detector_reloads_total"], "detector_reloads_total", result="rejected") == 0
    assert value(scrape["detector_alert_transitions_total"], "detector_alert_transitions_total", state="raised") == 0
    assert scrape["detector_model_info"] == []


def test_lag_of_partitions_no_longer_owned_is_removed():
    """set_consumer_lag replaces the whole set: a revoked partition stops being reported."""
    obs = PrometheusObserver()
    obs.set_consumer_lag({TopicPartition("windows", 0): 5, TopicPartition("windows", 1): 9})
    obs.set_consumer_lag({TopicPartition("windows", 1): 4})
    lag = families(generate_latest(obs.registry).decode())["detector_consumer_lag_messages"]
    assert [(s.labels["partition"], s.value) for s in lag] == [("1", 4.0)]


def test_registries_are_separate_and_not_global():
    """Two observers count apart, and neither registers in prometheus_client's global registry."""
    first, second = PrometheusObserver(), PrometheusObserver()
    first.consumed(5)
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("detector_windows_consumed_total") == 5
    assert second.registry.get_sample_value("detector_windows_consumed_total") == 0
    assert REGISTRY.get_sample_value("detector_windows_consumed_total") is None


def test_a_failing_metric_never_raises_and_is_logged_once(monkeypatch):
    """A metrics failure is swallowed and logged once per method; the other metrics keep working."""

    class Broken:
        def inc(self, amount: float = 1) -> None:
            raise RuntimeError("exporter broke")

    obs = PrometheusObserver()
    monkeypatch.setattr(obs, "windows_consumed", Broken())
    with capture_logs() as logs:
        obs.consumed(1)
        obs.consumed(1)
        obs.reloaded("maybe")  # not a result label: refused without raising
        obs.dead_letter("bad_json")
    failures = [(e["method"], e["log_level"]) for e in logs if e["event"] == "metrics update failed"]
    assert failures == [("consumed", "error"), ("reloaded", "error")]
    assert obs.registry.get_sample_value("detector_reloads_total", {"result": "ok"}) == 0
    assert obs.registry.get_sample_value("detector_dead_letters_total", {"reason": "bad_json"}) == 1


def test_a_batch_never_acknowledged_adds_no_latency():
    """Latencies wait for batch_done: a batch scored but not delivered (stop with output unacknowledged)
    is not counted, and does not leak into the next batch."""
    clock = FakeClock()
    obs = PrometheusObserver(clock=clock)
    obs.scored(2, 0, 0.01, [100.0, 100.0])  # never acknowledged
    obs.scored(1, 0, 0.01, [300.0])
    clock.now += 0.2
    obs.batch_done(1, 0.3)
    reg = obs.registry
    assert reg.get_sample_value("detector_end_to_end_latency_seconds_count") == 1
    assert reg.get_sample_value("detector_end_to_end_latency_seconds_sum") == pytest.approx(0.5)


def test_the_checkpoint_rejected_gauge_reads_the_watcher_at_every_scrape():
    """detector_checkpoint_rejected follows the function it watches, scrape by scrape."""
    obs = PrometheusObserver()
    state = [False]
    obs.watch_checkpoint(lambda: state[0])

    def scraped() -> float:
        scrape = families(generate_latest(obs.registry).decode())
        return value(scrape["detector_checkpoint_rejected"], "detector_checkpoint_rejected")

    assert scraped() == 0
    state[0] = True
    assert scraped() == 1


def test_the_series_held_gauge_reads_the_runner_at_every_scrape():
    """detector_series_held follows the count it watches, scrape by scrape."""
    obs = PrometheusObserver()
    held = [0]
    obs.watch_series(lambda: held[0])

    def scraped() -> float:
        scrape = families(generate_latest(obs.registry).decode())
        return value(scrape["detector_series_held"], "detector_series_held")

    assert scraped() == 0
    held[0] = 1234
    assert scraped() == 1234
