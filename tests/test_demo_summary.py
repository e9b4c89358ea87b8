"""The demo's closing figures from a /metrics scrape: counters, alert transitions and latency quantiles."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from detector.demo.summary import histogram_quantile, summarise
from detector.serve.metrics import PrometheusObserver


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    """As Prometheus' histogram_quantile: linear inside the bucket that holds the rank, from 0 for the first."""
    buckets = [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 100.0)]) == pytest.approx(0.1)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_summary_reads_the_daemons_own_metrics() -> None:
    """Scored, flagged, dead letters, alert transitions and p50/p99 come from a real observer's scrape;
    windows/s is scored over the span of the outputs' scored_at."""
    observer = PrometheusObserver(clock=lambda: 0.0)
    observer.scored(windows=100, flagged=7, seconds=0.01, latencies_ms=[20.0] * 50 + [80.0] * 50)
    observer.batch_done(messages=101, seconds=0.02)
    observer.dead_letter("bad_json")
    observer.alert_transitions(raised=2, cleared=1)
    text = generate_latest(observer.registry).decode()
    summary = summarise(text, published=101, scored_at=[1_000, 3_000, 11_000], seconds=30.0)
    assert (summary.scored, summary.flagged, summary.dead_letters) == (100, 7, 1)
    assert (summary.raised, summary.cleared) == (2, 1)
    assert summary.windows_per_s == pytest.approx(10.0)
    assert 0.01 <= summary.latency_p50_s <= 0.025
    assert 0.05 <= summary.latency_p99_s <= 0.1
    assert any("alerts raised       2" in line for line in summary.lines())


def test_summary_without_a_scrape_says_what_it_lacks() -> None:
    """No scrape: the daemon's figures are unknown (shown as ?), the demo's own counts remain."""
    summary = summarise(None, published=10, scored_at=[], seconds=5.0)
    assert (summary.scored, summary.windows_per_s, summary.latency_p50_s) == (None, None, None)
    assert any("windows scored      ?" in line for line in summary.lines())
