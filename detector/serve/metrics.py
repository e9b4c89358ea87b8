"""Every Prometheus metric of detector, defined once, and the observer that feeds them.

:class:`PrometheusObserver` implements :class:`~detector.serve.observer.Observer`: each hook counts or
observes what its name and its metric's help say, once per call. ``set_consumer_lag({tp: lag})`` takes the lag
of every partition owned now (partitions left out are removed); ``model_loaded(version)`` leaves that version
the only one that reads 1. Beyond the protocol, ``reloaded(result)`` and ``watch_checkpoint(rejected)`` feed
the reload metrics. ``registry`` holds every family, for ``/metrics``.

What a caller may rely on: no method raises (a failure is logged once per method and swallowed), any method
may be called from any thread except ``scored`` and ``batch_done`` (below), each instance has its own
``CollectorRegistry`` (never the global one, so several can coexist), and the families exposed are exactly
:data:`METRIC_NAMES` (documented in docs/reference.md).

End-to-end latency, per window: the latency given to ``scored`` (from the input record's broker timestamp to
scoring; a 0 is observed as 0) plus the time from that ``scored`` to the next ``batch_done``. So a batch's
``batch_done`` is to come once its output is acknowledged, after its ``scored`` and from the same thread.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Concatenate, ParamSpec

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from detector.codec import REASONS

if TYPE_CHECKING:  # only a type here: importing this module needs nothing of detector.serve
    from detector.serve.messages import TopicPartition

# The family names as a scrape shows them in its `# TYPE` lines (counters with `_total`; a histogram's
# samples add `_bucket`, `_sum`, `_count`). Dashboards and alert rules rely on these: keep them stable.
METRIC_NAMES: tuple[str, ...] = (
    "detector_windows_consumed_total",
    "detector_windows_scored_total",
    "detector_windows_flagged_total",
    "detector_dead_letters_total",
    "detector_batch_size_messages",
    "detector_inference_seconds",
    "detector_end_to_end_latency_seconds",
    "detector_consumer_lag_messages",
    "detector_model_info",
    "detector_reloads_total",
    "detector_commits_total",
    "detector_delivery_retries_total",
    "detector_dropped_on_revoke_total",
    "detector_alert_transitions_total",
    "detector_delivery_stalled_seconds",
    "detector_output_dropped_total",
    "detector_unreadable_records_total",
    "detector_checkpoint_rejected",
    "detector_series_held",
)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RELOAD_RESULTS = ("ok", "rejected")
ALERT_STATES = ("raised", "cleared")

_P = ParamSpec("_P")


def _never_raises(
    method: Callable[Concatenate[PrometheusObserver, _P], None],
) -> Callable[Concatenate[PrometheusObserver, _P], None]:
    """A metrics failure must never reach the loop: log it once per method, then stay quiet."""

    @functools.wraps(method)
    def safe(self: PrometheusObserver, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as err:
            if method.__name__ not in self._failed:
                self._failed.add(method.__name__)
                self._log.error("metrics update failed", method=method.__name__, error=repr(err))

    return safe


class PrometheusObserver:
    """An :class:`~detector.serve.observer.Observer` that feeds Prometheus, plus lag, model and reloads.

    ``clock`` (monotonic seconds) is only used to time the span from scoring to acknowledgement.
    """

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: set[str] = set()
        self._log = structlog.get_logger("detector.serve.metrics")
        self._pending_latency: tuple[float, list[float]] | None = None  # (scored at, seconds), until batch_done
        self._lag_partitions: set[tuple[str, str]] = set()
        self._model_version: str | None = None
        r = self.registry
        self.windows_consumed = Counter(
            "detector_windows_consumed", "Input messages consumed (valid or not).", registry=r
        )
        self.windows_scored = Counter("detector_windows_scored", "Windows scored by the model.", registry=r)
        self.windows_flagged = Counter(
            "detector_windows_flagged", "Scored windows whose probability reached the threshold.", registry=r
        )
        self.dead_letters = Counter(
            "detector_dead_letters", "Input messages sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "detector_batch_size_messages",
            "Messages per completed micro-batch (dead letters included).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "detector_inference_seconds",
            "Time to score the valid windows of one batch (normalise, forward, calibrate, threshold), without"
            " decoding or building output records.",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "detector_end_to_end_latency_seconds",
            "From the input record's broker timestamp to the acknowledgement of its output record.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag_messages",
            "Messages on the partition not yet consumed by this member (high watermark - position).",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "detector_model_info",
            "The serving model: 1 for its version (checkpoint content hash).",
            ["version"],
            registry=r,
        )
        self.reloads = Counter(
            "detector_reloads", "New checkpoint files tried, by result (ok, rejected).", ["result"], registry=r
        )
        self.commits = Counter("detector_commits", "Offset commits that succeeded.", registry=r)
        self.delivery_retries = Counter(
            "detector_delivery_retries", "Waits for output acknowledgements that had to be retried.", registry=r
        )
        self.revoked_unscored = Counter(
            "detector_dropped_on_revoke",
            "Consumed, unscored messages dropped because their partition was revoked (re-read by the new owner).",
            registry=r,
        )
        self.alert_transitions_total = Counter(
            "detector_alert_transitions", "Alert transitions produced, by state.", ["state"], registry=r
        )
        self.delivery_stalled_seconds = Gauge(
            "detector_delivery_stalled_seconds",
            "How long output has waited for the broker's acknowledgement (retried); 0 while it flows.",
            registry=r,
        )
        self.output_dropped_total = Counter(
            "detector_output_dropped",
            "Records the broker refused for good whose replacement (dead letter) it refused too.",
            registry=r,
        )
        self.unreadable_records_total = Counter(
            "detector_unreadable_records",
            "Input records the Kafka client could not parse, skipped (see the logs for partition and offset).",
            registry=r,
        )
        self.checkpoint_rejected = Gauge(
            "detector_checkpoint_rejected",
            "1 while the checkpoint file holds content that the reload rejected (the previous model serves).",
            registry=r,
        )
        self.series_held = Gauge(
            "detector_series_held",
            "Series whose recent history is held in memory (within limits.history_mib).",
            registry=r,
        )
        # Series that exist from the start, so that rate() and absent() work before the first event.
        for reason in REASONS:
            self.dead_letters.labels(reason=reason)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)
        for state in ALERT_STATES:
            self.alert_transitions_total.labels(state=state)

    # -- the Observer protocol ----------------------------------------------------------------------------

    @_never_raises
    def consumed(self, messages: int) -> None:
        self.windows_consumed.inc(max(0, messages))

    @_never_raises
    def dead_letter(self, reason: str) -> None:
        self.dead_letters.labels(reason=reason).inc()

    @_never_raises
    def scored(self, windows: int, flagged: int, seconds: float, latencies_ms: Sequence[float]) -> None:
        self.windows_scored.inc(max(0, windows))
        self.windows_flagged.inc(max(0, flagged))
        self.inference_seconds.observe(max(0.0, seconds))
        # one batch is scored once; its latencies wait for the acknowledgement (batch_done)
        self._pending_latency = (self._clock(), [ms / 1000.0 for ms in latencies_ms])

    @_never_raises
    def batch_done(self, messages: int, seconds: float) -> None:
        self.batch_size.observe(max(0, messages))
        pending, self._pending_latency = self._pending_latency, None
        if pending is not None:
            scored_at, latencies = pending
            since_scored = max(0.0, self._clock() - scored_at)
            for latency in latencies:
                self.end_to_end_latency.observe(max(0.0, latency + since_scored))

    @_never_raises
    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.inc()

    @_never_raises
    def delivery_retry(self, unfinished: int, failures: int) -> None:
        self.delivery_retries.inc()

    @_never_raises
    def dropped_on_revoke(self, messages: int) -> None:
        self.revoked_unscored.inc(max(0, messages))

    @_never_raises
    def delivery_stalled(self, seconds: float) -> None:
        self.delivery_stalled_seconds.set(max(0.0, seconds))

    @_never_raises
    def output_dropped(self, records: int) -> None:
        self.output_dropped_total.inc(max(0, records))

    @_never_raises
    def unreadable_record(self) -> None:
        self.unreadable_records_total.inc()

    # -- the rest of the Observer protocol, and the reload metrics ----------------------------------------

    @_never_raises
    def set_consumer_lag(self, lags: Mapping[TopicPartition, int]) -> None:
        """The lag of every partition this member owns now; partitions not given are removed."""
        with self._lock:
            current = {(str(topic), str(partition)) for topic, partition in lags}
            for gone_topic, gone_partition in self._lag_partitions - current:
                self.consumer_lag.remove(gone_topic, gone_partition)
            for (topic, partition), lag in lags.items():
                self.consumer_lag.labels(topic=str(topic), partition=str(partition)).set(max(0, lag))
            self._lag_partitions = current

    @_never_raises
    def model_loaded(self, version: str) -> None:
        """``version`` serves from now on; only it reads 1 in ``detector_model_info``."""
        with self._lock:
            self.model_info.labels(version=version).set(1)
            if self._model_version is not None and self._model_version != version:
                self.model_info.remove(self._model_version)
            self._model_version = version

    @_never_raises
    def watch_checkpoint(self, rejected: Callable[[], bool]) -> None:
        """``detector_checkpoint_rejected`` reads ``rejected()`` at every scrape (a watcher's ``rejected``)."""
        self.checkpoint_rejected.set_function(lambda: float(rejected()))

    @_never_raises
    def watch_series(self, held: Callable[[], int]) -> None:
        """``detector_series_held`` reads ``held()`` at every scrape (the runner's ``series_held``)."""
        self.series_held.set_function(lambda: float(held()))

    @_never_raises
    def reloaded(self, result: str) -> None:
        """One new checkpoint file tried: ``ok`` (validated, handed to the loop) or ``rejected``."""
        if result not in RELOAD_RESULTS:
            raise ValueError(f"reload result {result!r} is not one of {RELOAD_RESULTS}")
        self.reloads.labels(result=result).inc()

    @_never_raises
    def alert_transitions(self, raised: int, cleared: int) -> None:
        self.alert_transitions_total.labels(state="raised").inc(max(0, raised))
        self.alert_transitions_total.labels(state="cleared").inc(max(0, cleared))
