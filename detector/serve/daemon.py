"""``detector serve``: settings -> logging -> HTTP -> checkpoint (+ watcher) -> Kafka clients -> the runner.

Around the runner: ``/metrics``, ``/healthz`` and ``/readyz`` on ``http.host:http.port`` from the start (not
ready until the broker is reached, the group joined and the model loaded); a watcher of
``model.checkpoint`` whose validated new versions the runner swaps in between batches; alert transitions
to ``kafka.alert_topic`` (empty: none).

SIGTERM or SIGINT asks the runner to stop (the batch in hand is finished, delivered and committed); the
consumer then leaves its group and the process exits 0. A second signal exits at once (code 128 + N),
committing nothing more: what was not committed is consumed again by the next owner.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import IO

import structlog
import torch

from detector import __version__
from detector.alerting import AlertTracker
from detector.cpus import available_cpus
from detector.errors import CheckpointError, ConfigError
from detector.kafka_clients import connect, make_producer
from detector.model import checkpoint
from detector.processes import StopSignals
from detector.scoring import Scorer, resolve_device
from detector.serve.health import Health
from detector.serve.http import OpsServer
from detector.serve.kafka_io import KafkaSink, KafkaSource
from detector.serve.logs import configure_logging
from detector.serve.metrics import PrometheusObserver
from detector.serve.model_check import validated_scorer
from detector.serve.reload import CheckpointWatcher, ReloadOutcome
from detector.serve.runner import Runner, RunnerConfig
from detector.settings import Settings, masked, security_warnings


def load_scorer(settings: Settings) -> Scorer:
    """The first model, checked as every reload is (:func:`validated_scorer`, with ``model.uncalibrated``),
    and warm. Raises :class:`ConfigError` for a missing setting, a ``model.checkpoint`` that cannot be read
    (missing, in a folder that does not exist, not a file: one line naming the setting) or a device this
    machine lacks, and ``CheckpointRejected`` with its stage for a file that fails the check (an uncalibrated
    one under ``refuse`` included). Connects to nothing."""
    m = settings.model
    if m.checkpoint is None:
        raise ConfigError("serve needs a checkpoint: set model.checkpoint (DETECTOR_MODEL__CHECKPOINT)")
    try:
        data = checkpoint.read(m.checkpoint)
    except CheckpointError as err:
        folder = m.checkpoint.parent
        missing = "" if folder.is_dir() else f" (its folder {folder} does not exist)"
        raise ConfigError(f"setting model.checkpoint (DETECTOR_MODEL__CHECKPOINT): {err}{missing}") from None
    try:
        resolve_device(m.device)
    except ValueError as err:  # cuda asked for on a machine without one
        raise ConfigError(f"invalid setting model.device (DETECTOR_MODEL__DEVICE): {err}") from None
    torch.set_num_threads(m.cpu_threads or max(1, available_cpus() - 1))
    return validated_scorer(data, str(m.checkpoint), m)


# How long a thread may hold the GIL while another waits for it. A thread that comes back for the GIL in short
# hops (the scoring thread around its graph, kafka-python's IO thread) waits up to this long per hop while the
# serving loop runs Python, so it is set well below Python's default of 5 ms.
GIL_SWITCH_INTERVAL_S = 0.0005


def freeze_startup_heap() -> int:
    """Move every object alive now (torch, the model, the Kafka clients) out of the cyclic collector's
    reach, once start-up is done; returns how many there were. Python's full collections otherwise walk
    all of them each time, holding the GIL throughout (the serving loop waits). Later garbage is collected as
    before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def serve(settings: Settings, log_stream: IO[str] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code (0 after a clean stop). The first checkpoint and
    every reloaded one pass the same check, ``model.uncalibrated`` included (:func:`load_scorer`); a first
    one that fails raises before anything connects to Kafka."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    configure_logging(settings.log, log_stream)
    log = structlog.get_logger("detector.serve")
    log.info("starting", detector_version=__version__, pid=os.getpid(), settings=masked(settings))
    for warning in security_warnings(settings):
        log.warning("insecure kafka settings", detail=warning)
    metrics = PrometheusObserver()
    health = Health()
    with OpsServer(settings.http.host, settings.http.port, metrics.registry, health) as ops:
        log.info("http listening", url=ops.url, endpoints=["/metrics", "/healthz", "/readyz"])
        scorer = load_scorer(settings)
        _log_model(log, settings, scorer)
        health.set_model(scorer.version)
        metrics.model_loaded(scorer.version)

        def reloaded(outcome: ReloadOutcome) -> None:
            metrics.reloaded(outcome.result)

        watcher = CheckpointWatcher(
            settings.model.checkpoint or "",
            settings.reload.poll_seconds,
            scorer.shape,
            settings.model,
            on_result=reloaded,
            serving_version=scorer.version,
        ).start()
        metrics.watch_checkpoint(lambda: watcher.rejected)
        try:
            return _run(settings, scorer, metrics, health, watcher)
        finally:
            watcher.close()


def _run(
    settings: Settings, scorer: Scorer, metrics: PrometheusObserver, health: Health, watcher: CheckpointWatcher
) -> int:
    log = structlog.get_logger("detector.serve")
    with StopSignals() as signals:

        def stopping() -> bool:
            health.beat()  # waiting for the broker is not a stall
            return signals.requested

        health.set_broker(False, f"connecting to {settings.kafka.bootstrap_servers}")
        clients = connect(settings, stopping=stopping)
        if clients is None:
            log.info("stopped before the broker was reached")
            return 0
        consumer, producer = clients
        source = KafkaSource(consumer, settings.kafka.input_topic)
        sink = KafkaSink(lambda: make_producer(settings), producer)
        alerts = AlertTracker(settings.alerts.raise_after, settings.alerts.clear_after)
        runner = Runner(
            source,
            sink,
            scorer,
            RunnerConfig.from_settings(settings),
            observer=metrics,
            health=health,
            reloads=watcher.take,
            alerts=alerts,
        )
        signals.on_stop(runner.request_stop)
        metrics.watch_series(lambda: runner.series_held)
        log.info(
            "serving",
            input_topic=settings.kafka.input_topic,
            output_topic=settings.kafka.output_topic,
            alert_topic=settings.kafka.alert_topic or None,
            group_id=settings.kafka.group_id,
        )
        frozen = freeze_startup_heap()
        log.debug("start-up heap frozen", objects=frozen)
        try:
            counts = runner.run()
        finally:
            health.set_group(False, "stopping")
            source.close()
            sink.close()
        log.info("stopped", signal=signals.received, **counts.summary())
    return 0


def _log_model(log: structlog.typing.FilteringBoundLogger, settings: Settings, scorer: Scorer) -> None:
    ck = scorer.checkpoint
    log.info(
        "model loaded",
        model_version=scorer.version,
        checkpoint=str(settings.model.checkpoint),
        window_length=ck.window_length,
        features=ck.n_features,
        calibration=ck.calibration_name,
        threshold=float(ck.window.threshold),
        step_head=ck.step is not None,
        device=str(scorer.device),
        precision=scorer.precision,
        cpu_threads=torch.get_num_threads(),
    )
    if settings.model.cpu_bf16 and scorer.device.type == "cpu" and scorer.precision != "bf16":
        log.warning(
            "model.cpu_bf16 asked for, but this CPU has no native bfloat16 (AVX512-BF16 or AMX); scoring in fp32"
        )
