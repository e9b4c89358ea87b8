"""``detector demo``: the whole loop on this machine, end to end, then everything shut down.

In order: a model (the bundled one, a fresh one with ``train``, or a given checkpoint) -> a generated
labelled recording, its series interleaved as live telemetry -> the embedded broker on loopback -> four
topics -> ``detector serve`` as a child process -> the recording replayed into the input topic at a steady
rate that spans ``duration_s`` while the alert topic is followed and shown as it arrives -> the daemon's
``/metrics`` scraped for the summary -> SIGTERM to the daemon, the broker stopped, and a check that no
process and no port is left.

A SIGINT or SIGTERM at any point stops the stream, shuts everything down the same way and reports what
was done (``DemoResult.interrupted``). Artifacts and logs stay in ``options.out``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from kafka import TopicPartition

from detector import recordings, synth
from detector.broker import CLIENT_SETTINGS, EmbeddedBroker, accepts_connections, free_port
from detector.demo.model import build, bundled_path
from detector.demo.serve_process import ServeProcess
from detector.demo.summary import DemoSummary, summarise
from detector.errors import CheckpointError, DataError, DetectorError
from detector.model import checkpoint
from detector.processes import StopSignals
from detector.settings import Settings, load_settings, settings_env
from detector.tools import alerts
from detector.tools.clients import close_quietly, create_topics, make_consumer, make_producer, poll_in_order
from detector.tools.replay import Pacer, ReplayResult, publish

HOST = "127.0.0.1"
SERIES = 16  # the stream's series; windows are spread over them
STREAM_SEED = 3  # the model was trained and calibrated on seeds 101 and 102
EVENT_RATE = 0.2  # share of windows holding an injected event
PARTITIONS = 4
READY_TIMEOUT_S = 120.0  # serve: import torch, load the model, reach the broker, join the group
DRAIN_TIMEOUT_S = 30.0  # after the replay, how long to wait for the outputs of the last windows
SETTLE_S = 1.0  # after the last output, how long alerts of the same batches may still come in
PROGRESS_EVERY_S = 20.0
POLL_S = 0.2


@dataclass(frozen=True)
class DemoTopics:
    input: str = "demo.windows"
    output: str = "demo.scores"
    dlq: str = "demo.windows.dlq"
    alerts: str = "demo.alerts"
    group: str = "detector-demo"

    def all(self) -> list[str]:
        return [self.input, self.output, self.dlq, self.alerts]


@dataclass(frozen=True)
class DemoOptions:
    """What ``detector demo`` was asked for; ``out`` receives the artifacts and logs."""

    out: Path
    duration_s: float = 120.0  # how long the replay lasts; start-up and the drain of the last outputs add to it
    windows: int = 2400
    broker_port: int = 0  # 0 = a free port
    http_port: int = 0  # the daemon's /metrics; 0 = a free port
    checkpoint: Path | None = None  # serve this model instead of the bundled one
    train: bool = False  # train a fresh model with the bundled recipe first
    colour: bool = False
    topics: DemoTopics = field(default_factory=DemoTopics)


@dataclass
class DemoResult:
    """How the demo ended. ``left_behind`` names what did not stop (empty: nothing is left)."""

    out: Path
    summary: DemoSummary | None = None
    interrupted: bool = False
    serve_exit: int | None = None
    left_behind: list[str] = field(default_factory=list)


class _Scored(msgspec.Struct):
    scored_at: int = 0


_scored = msgspec.json.Decoder(_Scored)


def prepare_model(options: DemoOptions, say: Callable[[str], None]) -> Path:
    """The checkpoint the daemon serves, copied (or trained) into the artifacts folder."""
    target = options.out / "model.ckpt"
    if options.train:
        build(target, say=say)
        return target
    source = options.checkpoint or bundled_path()
    if not source.is_file():
        if options.checkpoint is not None:
            raise CheckpointError(f"{source}: no such file")
        raise DetectorError(f"the bundled demo model {source} is missing; reinstall detector or use --train")
    checkpoint.load(source)  # refuse a bad file here, with its own message, rather than in the daemon's log
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return target


def write_stream(path: Path, windows: int, features: int, length: int) -> tuple[int, int]:
    """A generated labelled recording of ``windows`` windows over ``SERIES`` series, interleaved in time
    (window w of every series, then w + 1) as live telemetry arrives; (windows, windows with an event)."""
    params = synth.SynthParams(
        series=SERIES,
        windows_per_series=math.ceil(windows / SERIES),
        features=features,
        length=length,
        event_rate=EVENT_RATE,
    )
    lines = sorted(synth.generate(STREAM_SEED, params), key=lambda line: int(line["start"]))[:windows]
    recordings.write(path, lines)
    return len(lines), sum(1 for line in lines if any(line["labels"]))


def serve_env(
    base: Mapping[str, str], settings: Settings, topics: DemoTopics, model: Path, http_port: int
) -> dict[str, str]:
    """The daemon's whole configuration as DETECTOR_* variables; the caller's own DETECTOR_* are dropped."""
    return settings_env(
        base,
        kafka={
            "bootstrap_servers": settings.kafka.bootstrap_servers,
            "input_topic": topics.input,
            "output_topic": topics.output,
            "dlq_topic": topics.dlq,
            "alert_topic": topics.alerts,
            "group_id": topics.group,
            **CLIENT_SETTINGS,  # the embedded broker's group timings and fetch wait
        },
        model={"checkpoint": model},
        http={"host": HOST, "port": http_port},
        log={"format": "json", "level": "info"},
    )


def run(
    options: DemoOptions,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    environ: Mapping[str, str] | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring). ``environ`` is passed on to the daemon, less DETECTOR_*."""
    started = time.monotonic()
    result = DemoResult(options.out)
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{options.out}: cannot create ({err.strerror})") from None

    def step(text: str) -> None:
        say(f"[{time.monotonic() - started:6.1f}s] {text}")

    step(f"artifacts and logs go to {options.out}")
    broker: EmbeddedBroker | None = None
    serve: ServeProcess | None = None
    with StopSignals(exit_on_second=False) as stop:
        try:
            model = prepare_model(options, step)
            ckpt = checkpoint.load(model)
            how = "trained just now" if options.train else "given" if options.checkpoint else "bundled"
            step(
                f"model {ckpt.version} ({how}): LSTM hidden {ckpt.network.hidden_size}, F={ckpt.n_features}, "
                f"T={ckpt.window_length}, {ckpt.calibration_name} calibration, threshold {ckpt.window.threshold:.3f}"
            )
            stream = options.out / "stream.jsonl"
            total, with_events = write_stream(stream, options.windows, ckpt.n_features, ckpt.window_length)
            step(f"recording: {total:,} windows over {SERIES} series, {with_events:,} with injected events -> {stream}")
            if stop():
                result.interrupted = True
                return result
            broker = EmbeddedBroker(HOST, options.broker_port or free_port(HOST), output=options.out / "broker.log")
            broker.start()
            settings = load_settings(
                environ={}, kafka={"bootstrap_servers": broker.bootstrap_servers, "client_id": "detector-demo"}
            )
            create_topics(settings, options.topics.all(), PARTITIONS)
            step(
                f"broker on {broker.bootstrap_servers} (embedded Tansu, memory storage); "
                f"topics {', '.join(options.topics.all())} ({PARTITIONS} partitions)"
            )
            env = serve_env(
                os.environ if environ is None else environ, settings, options.topics, model, options.http_port
            )
            serve = ServeProcess(env, options.out / "serve.log")
            step(f"detector serve starting (pid {serve.pid}; log {serve.log_path})")
            if not serve.wait_ready(READY_TIMEOUT_S, stop):
                result.interrupted = True
                return result
            step(f"detector serve ready: {serve.url}/metrics, /healthz, /readyz")
            rate = total / options.duration_s
            step(f"replaying {total:,} windows into {options.topics.input} at {rate:,.1f} windows/s "
                 f"(about {options.duration_s:g} s); alerts as they arrive:")  # fmt: skip
            replayed, scored_at = _stream(settings, options, stream, rate, serve, stop, step, warn)
            result.interrupted = replayed.interrupted or stop()
            metrics_text = serve.get("/metrics")
            if metrics_text is not None:
                (options.out / "metrics.txt").write_text(metrics_text)
            else:
                warn("could not scrape the daemon's /metrics; the summary lacks its figures")
            result.summary = summarise(metrics_text, replayed.published, scored_at, time.monotonic() - started)
            (options.out / "summary.json").write_text(json.dumps(result.summary.as_dict(), indent=2) + "\n")
        finally:
            _shut_down(result, serve, broker, step)
    return result


def _shut_down(
    result: DemoResult, serve: ServeProcess | None, broker: EmbeddedBroker | None, step: Callable[[str], None]
) -> None:
    """Stop the daemon (SIGTERM: batch finished, offsets committed, group left), then the broker; note
    anything that survived in ``result.left_behind``."""
    if serve is None and broker is None:
        return
    words = []
    if serve is not None:
        result.serve_exit = serve.stop()
        words.append(f"detector serve exited {result.serve_exit}")
        if serve.alive:
            result.left_behind.append(f"detector serve (pid {serve.pid})")
    if broker is not None:
        broker.stop()
        words.append("broker stopped")
        if broker.running:
            result.left_behind.append("the broker")
        if accepts_connections(broker.host, broker.port, timeout_s=0.2):
            result.left_behind.append(f"something still listens on {broker.bootstrap_servers}")
    words.append("nothing left running" if not result.left_behind else "LEFT: " + ", ".join(result.left_behind))
    step("; ".join(words))


def _stream(
    settings: Settings,
    options: DemoOptions,
    stream: Path,
    rate: float,
    serve: ServeProcess,
    stop: Callable[[], bool],
    step: Callable[[str], None],
    warn: Callable[[str], None],
) -> tuple[ReplayResult, list[int]]:
    """Replay ``stream`` (a thread) while following the alert and output topics here; returns the replay's
    result and the ``scored_at`` of every output read back. Alerts are shown as they come and kept in
    ``alerts.jsonl``."""
    topics = options.topics
    producer = make_producer(settings, "demo-replay")
    consumer = make_consumer(settings, "demo-follow")
    done = threading.Event()
    abort = threading.Event()  # the main thread gave up: the replay stops too
    outcome: list[ReplayResult | BaseException] = []

    def stopping() -> bool:
        return stop() or abort.is_set()

    def replay() -> None:
        try:
            outcome.append(
                publish(stream, topics.input, producer, pacer=Pacer(rate=rate), stopping=stopping, warn=warn)
            )
        except BaseException as err:  # handed to the main thread
            outcome.append(err)
        finally:
            done.set()

    scored_at: list[int] = []
    shown = 0
    thread = threading.Thread(target=replay, name="demo-replay", daemon=True)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (topics.alerts, topics.output)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        with (options.out / "alerts.jsonl").open("w") as kept:
            thread.start()
            next_progress = time.monotonic() + PROGRESS_EVERY_S
            drain_until: float | None = None  # set when the replay is over
            all_in_at: float | None = None  # when every published window had come back
            while not stop():
                records = poll_in_order(consumer, f"reading {topics.alerts}", POLL_S)
                for r in records:
                    if r.topic == topics.output:
                        try:
                            scored_at.append(_scored.decode(r.value).scored_at)
                        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
                            warn(f"skipped an output record that is not JSON at {r.topic}/{r.partition}@{r.offset}")
                        continue
                    try:
                        alert = alerts.parse(r.value, r.timestamp)
                    except alerts.NotAnAlert as err:
                        warn(f"skipped a malformed alert at {r.topic}/{r.partition}@{r.offset}: {err}")
                        continue
                    if alert is not None:
                        shown += 1
                        step("  " + alerts.human_line(alert, options.colour))
                        kept.write(alerts.json_line(alert) + "\n")
                now = time.monotonic()
                if not serve.alive:
                    raise DetectorError(
                        f"detector serve exited with code {serve.process.returncode} during the demo: "
                        f"{serve.last_error()} (log: {serve.log_path})"
                    )
                if now >= next_progress:
                    step(f"  ... {len(scored_at):,} windows scored so far, {shown} alert transitions")
                    next_progress = now + PROGRESS_EVERY_S
                if done.is_set():
                    published = outcome[0].published if isinstance(outcome[0], ReplayResult) else 0
                    drain_until = drain_until or now + DRAIN_TIMEOUT_S
                    if len(scored_at) >= published:
                        all_in_at = all_in_at or now
                        if now - all_in_at >= SETTLE_S:
                            break
                    elif now >= drain_until:
                        warn(f"only {len(scored_at):,} of {published:,} windows came back within {DRAIN_TIMEOUT_S:g} s")
                        break
    finally:
        if thread.is_alive():
            abort.set()
            thread.join(timeout=70.0)  # publish flushes for up to 60 s
        close_quietly(producer)
        close_quietly(consumer)
    if not outcome:
        raise DetectorError("the replay did not finish")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    step(f"replay: {outcome[0].summary()}")
    return outcome[0], scored_at
