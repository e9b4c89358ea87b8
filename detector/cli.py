"""The ``detector`` command: builds Settings once, dispatches, and maps errors to one line and an exit code.

Exit codes: 0 success; 1 an unexpected failure; 2 bad arguments, settings, files or checkpoints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from detector.errors import ConfigError, DataError, DetectorError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML settings file; DETECTOR_* environment variables override it.",
)


def _settings(config: Path | None, **overrides: Any):
    from detector.settings import load_settings

    return load_settings(config, **overrides)


def _say(text: str) -> None:
    click.echo(text)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="detector", prog_name="detector")
def cli() -> None:
    """Streaming event detection on Kafka telemetry: train, calibrate and evaluate LSTM detectors, score
    recordings with them, and serve them on Kafka.

    `detector demo` runs the whole loop on this machine in about two and a half minutes. Otherwise start
    with `detector generate` for a labelled recording, then `train`, `calibrate`, `evaluate` and
    `replay --offline` (`detector inspect` shows what a checkpoint holds); `detector broker` and
    `detector serve` run the daemon. Every command answers --help.
    """


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Recording to write (.jsonl).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed; different seeds share no series.")
@click.option("--series", type=click.IntRange(1), default=12, show_default=True, help="Number of series.")
@click.option("--windows", type=click.IntRange(1), default=60, show_default=True, help="Windows per series.")
@click.option("--features", type=click.IntRange(1), default=4, show_default=True, help="Features per step (F).")
@click.option("--length", type=click.IntRange(8), default=64, show_default=True, help="Steps per window (T).")
@click.option(
    "--event-rate",
    type=click.FloatRange(0, 1),
    default=0.15,
    show_default=True,
    help="Target share of windows holding an event.",
)
@click.option("--no-labels", is_flag=True, help="Leave labels out (an unlabelled recording, for --inject).")
@click.option(
    "--from-csv",
    type=click.Path(path_type=Path),
    default=None,
    help="Cut a CSV series (timestamp ms, value columns, optional 'label') into windows instead.",
)
@click.option("--series-id", default="csv", show_default=True, help="series_id for --from-csv.")
def generate(
    out: Path,
    seed: int,
    series: int,
    windows: int,
    features: int,
    length: int,
    event_rate: float,
    no_labels: bool,
    from_csv: Path | None,
    series_id: str,
) -> None:
    """Write a recording: generated telemetry with labelled events, or a CSV series cut into windows."""
    from detector import recordings, synth

    if from_csv is not None:
        lines = list(recordings.from_csv(from_csv, series_id, length))
    else:
        params = synth.SynthParams(
            series=series, windows_per_series=windows, features=features, length=length, event_rate=event_rate
        )
        lines = list(synth.generate(seed, params, labels=not no_labels))
    n = _write_recording(out, lines)
    _say(f"wrote {n} windows to {out}")


def _write_recording(out: Path, lines: list[dict]) -> int:
    from detector import recordings

    try:
        return recordings.write(out, lines)
    except OSError as err:
        raise DataError(f"{out}: cannot write ({err.strerror})") from None


@cli.command(context_settings=CONTEXT)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Recording to learn from (.jsonl).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--inject", is_flag=True, help="Ignore labels: learn from synthetic events injected into the data.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Most epochs (default from settings: 40).")
@click.option("--seed", type=int, default=None, help="Random seed (default from settings: 0).")
@config_option
def train(data: Path, out: Path, inject: bool, epochs: int | None, seed: int | None, config: Path | None) -> None:
    """Fit a model on a recording (labelled, or with --inject) and write an uncalibrated checkpoint."""
    from detector import recordings
    from detector.model import checkpoint
    from detector.model.train import train as fit

    overrides = {k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None}
    settings = _settings(config, train=overrides) if overrides else _settings(config)
    windows = recordings.load(data)
    _say(
        f"training on {len(windows)} windows of shape {windows.shape} from {data}"
        f"{' with injected events' if inject else ''}"
    )
    result = fit(windows, settings.train, inject=inject, progress=sys.stdout.isatty())
    version = checkpoint.save(result.checkpoint, out)
    s = result.summary
    v = s["validation"]
    _say(
        f"validation ({s['validation_windows']} windows, {s['validation_positives']} with events, threshold 0.5): "
        f"precision {v['precision']:.3f}  recall {v['recall']:.3f}  F1 {v['f1']:.3f}  AUPRC {v['auprc']:.3f}"
    )
    _say(
        f"{s['epochs']} epochs (best {s['best_epoch']}) in {s['seconds']:.0f} s; "
        f"wrote {out} (model_version {version}); calibrate it next"
    )


@cli.command(context_settings=CONTEXT)
@click.option(
    "--checkpoint",
    "ckpt_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Checkpoint to calibrate.",
)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Held-out labelled recording.")
@click.option(
    "--method",
    type=click.Choice(["platt", "isotonic", "temperature"]),
    required=True,
    help="Calibrator to fit.",
)
@click.option(
    "--threshold",
    "rule",
    default="max-f1",
    show_default=True,
    help="Threshold rule: a number (0.5), max-f1, precision:P or far:R (false-alarm rate).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Calibrated checkpoint to write.")
def calibrate(ckpt_path: Path, data: Path, method: str, rule: str, out: Path) -> None:
    """Fit a calibrator and a threshold rule on held-out labelled data into a new checkpoint."""
    from detector import evaluation, recordings
    from detector.model import checkpoint
    from detector.model.thresholds import parse_rule

    try:
        parse_rule(rule)
    except ValueError as err:
        raise ConfigError(f"--threshold: {err}") from None
    ckpt = checkpoint.load(ckpt_path)
    windows = recordings.load(data, shape=(ckpt.window_length, ckpt.n_features), need_labels=True)
    try:
        calibrated = evaluation.calibrate(ckpt, windows, method, rule)
    except ValueError as err:
        raise DataError(f"{data}: {err}") from None
    version = checkpoint.save(calibrated, out)
    _say(f"{method} calibration on {len(windows)} windows; threshold {rule} = {calibrated.window.threshold:.4f}")
    _say(f"wrote {out} (model_version {version})")


@cli.command(context_settings=CONTEXT)
@click.option("--checkpoint", "ckpt_path", type=click.Path(path_type=Path), required=True, help="Checkpoint to judge.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Labelled recording.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for metrics.json and plots.")
def evaluate(ckpt_path: Path, data: Path, out: Path) -> None:
    """Write metrics.json (precision, recall, F1, AUPRC, ECE, Brier) and PNG plots into a folder."""
    from detector import evaluation, recordings
    from detector.model import checkpoint

    ckpt = checkpoint.load(ckpt_path)
    windows = recordings.load(data, shape=(ckpt.window_length, ckpt.n_features), need_labels=True)
    try:
        metrics = evaluation.evaluate(ckpt, windows, out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as err:
        raise DataError(f"{out}: cannot write ({err.strerror})") from None
    for level in ("window", "step"):
        if level in metrics:
            m = metrics[level]
            _say(
                f"{level:6s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                f"AUPRC {m['auprc']:.3f}  ECE {m['ece']:.3f}  Brier {m['brier']:.3f}"
            )
    _say(f"wrote {out / 'metrics.json'} and plots: {', '.join(metrics['plots'].values())}")


@cli.command(context_settings=CONTEXT)
@click.argument("ckpt_path", metavar="CHECKPOINT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable keys, see the README) instead.")
def inspect(ckpt_path: Path, as_json: bool) -> None:
    """Show what a checkpoint holds: model_version, format, window shape (T steps x F features, with their
    names), network, calibration and threshold of each head, training summary, file size.

    Is this model calibrated, which threshold does it flag at, which windows does it take? `detector
    inspect model.ckpt` answers before you serve it. The file is fully validated, as `serve` does, and
    never unpickled: a missing, truncated, corrupt or foreign file is one line on stderr and exit 2.
    """
    from detector.checkpoint_info import describe, render
    from detector.tools.clients import printable, printable_json

    info = describe(ckpt_path)
    if as_json:
        _say(printable_json(json.dumps(info)))
        return
    for line in render(info):
        _say(printable(line))


def _warn(text: str) -> None:
    click.echo(text, err=True)


def _kafka_settings(config: Path | None, bootstrap_servers: str | None):
    """Settings with ``--bootstrap-servers`` (when given) over kafka.bootstrap_servers."""
    if bootstrap_servers:
        return _settings(config, kafka={"bootstrap_servers": bootstrap_servers})
    return _settings(config)


bootstrap_option = click.option(
    "--bootstrap-servers",
    metavar="HOST:PORT[,...]",
    default=None,
    help="Kafka brokers (default: kafka.bootstrap_servers, DETECTOR_KAFKA__BOOTSTRAP_SERVERS).",
)


@cli.command(context_settings=CONTEXT)
@click.argument("recording", type=click.Path(path_type=Path))
@click.option("--topic", default=None, help="Publish the recording to this topic (keyed by series_id).")
@bootstrap_option
@click.option(
    "--speed",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Pace by the lines' _ts: 1 = as recorded, 2 = twice as fast.",
)
@click.option("--rate", type=click.FloatRange(0, min_open=True), default=None, help="Pace at N windows/s.")
@click.option(
    "--codec",
    type=click.Choice(["json", "f32"]),
    default=None,
    help="json (default): each line as given, less _ts; f32: the binary codec (float32 values, fields in headers).",
)
@click.option("--offline", is_flag=True, help="Score the file without Kafka into --out (JSONL).")
@click.option(
    "--checkpoint",
    "ckpt_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint to score with (--offline; default: model.checkpoint from settings).",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Scores file to write (--offline).")
@click.option(
    "--dlq",
    type=click.Path(path_type=Path),
    default=None,
    help="Where lines that are not valid windows go (default: OUT.dlq.jsonl).",
)
@config_option
def replay(
    recording: Path,
    topic: str | None,
    bootstrap_servers: str | None,
    speed: float | None,
    rate: float | None,
    codec: str | None,
    offline: bool,
    ckpt_path: Path | None,
    out: Path | None,
    dlq: Path | None,
    config: Path | None,
) -> None:
    """Publish a recording to --topic (paced by --speed or --rate, else as fast as possible), or score
    it without Kafka with --offline: one output record per window, deterministic, streaming.

    Publishing prints a final count (windows, seconds, windows/s); a line that is not a JSON object is
    reported with its line number and skipped. Producer: acks=all, idempotent, batched.
    """
    from tqdm import tqdm

    from detector.model import checkpoint
    from detector.offline import score_file
    from detector.scoring import Scorer

    if not offline:
        _replay_to_topic(recording, topic, bootstrap_servers, speed, rate, codec, config, (ckpt_path, out, dlq))
        return
    if topic or bootstrap_servers or speed or rate or codec:
        raise click.UsageError("--topic, --bootstrap-servers, --speed, --rate and --codec publish; not with --offline")
    if out is None:
        raise ConfigError("replay --offline needs --out SCORES.jsonl")
    settings = _settings(config)
    ckpt_path = ckpt_path or settings.model.checkpoint
    if ckpt_path is None:
        raise ConfigError("replay --offline needs --checkpoint (or model.checkpoint in the settings)")
    if not recording.is_file():
        raise DataError(f"{recording}: no such file")
    m = settings.model
    scorer = Scorer(checkpoint.load(ckpt_path), device=m.device, precision=m.precision, cpu_bf16=m.cpu_bf16)
    dlq = dlq or out.with_name(out.name + ".dlq.jsonl")
    with tqdm(total=None, unit="win", desc="scoring", disable=not sys.stdout.isatty(), leave=False) as bar:
        result = score_file(scorer, recording, out, dlq, on_progress=bar.update)
    rate = result.scored / result.seconds if result.seconds else 0.0
    _say(
        f"scored {result.scored} windows ({result.flagged} flagged) in {result.seconds:.1f} s "
        f"({rate:,.0f} windows/s) -> {out}"
    )
    if result.dead_letters:
        _say(f"{result.dead_letters} lines were not valid windows -> {dlq}")


def _replay_to_topic(
    recording: Path,
    topic: str | None,
    bootstrap_servers: str | None,
    speed: float | None,
    rate: float | None,
    codec: str | None,
    config: Path | None,
    offline_only: tuple[Path | None, ...],
) -> None:
    from detector.tools import replay

    if topic is None:
        raise click.UsageError("give --topic T to publish, or --offline --checkpoint M --out F to score")
    if speed is not None and rate is not None:
        raise click.UsageError("--speed and --rate are mutually exclusive")
    if any(offline_only):
        raise click.UsageError("--checkpoint, --out and --dlq go with --offline")
    result = replay.run(
        _kafka_settings(config, bootstrap_servers),
        recording,
        topic,
        codec="f32" if codec == "f32" else "json",
        speed=speed,
        rate=rate,
        warn=_warn,
    )
    _say(result.summary())
    if result.interrupted:
        raise click.Abort  # exit 130
    if result.failed:
        raise DetectorError(f"{topic}: {result.failed} window(s) not delivered")


@cli.command(context_settings=CONTEXT)
@click.option("--topic", required=True, help="Topic to capture.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Recording to write (.jsonl).")
@click.option("--max", "max_records", type=click.IntRange(1), default=None, help="Stop after N records.")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Stop after S seconds without a record; 0 = never (then --max or Ctrl-C).",
)
@click.option("--from-now", is_flag=True, help="Only records produced from now on (default: from the earliest).")
@click.option(
    "--features",
    type=click.IntRange(1),
    default=None,
    help="Binary f32 records: write values as rows of F features (default: a flat list).",
)
@bootstrap_option
@config_option
def record(
    topic: str,
    out: Path,
    max_records: int | None,
    idle_timeout: float,
    from_now: bool,
    features: int | None,
    bootstrap_servers: str | None,
    config: Path | None,
) -> None:
    """Capture a topic into a recording that `replay` publishes again: each value's JSON with `_ts`.

    Reads every partition without a consumer group (the daemon's group is never touched). The file is
    written as records arrive; Ctrl-C or SIGTERM stops it between records and leaves whole lines.
    """
    from detector.tools import record as capture

    result = capture.run(
        _kafka_settings(config, bootstrap_servers),
        topic,
        out,
        max_records=max_records,
        idle_timeout_s=idle_timeout or None,
        from_now=from_now,
        features=features,
        warn=_warn,
    )
    _say(result.summary())


@cli.command(context_settings=CONTEXT)
@click.option(
    "--topic",
    default=None,
    help="Alert topic (default: kafka.alert_topic), or the output topic: then flagged windows are shown.",
)
@click.option(
    "--min-probability",
    type=click.FloatRange(0, 1),
    default=None,
    help="Show RAISED and FLAGGED at this probability or above (and the CLEARED of a RAISED shown).",
)
@click.option("--series", multiple=True, metavar="ID", help="Only this series (repeatable; glob patterns work).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line, as on the topic (for machines).")
@click.option("--from-beginning", is_flag=True, help="Start at the earliest record (default: only new ones).")
@click.option("--max", "max_alerts", type=click.IntRange(1), default=None, help="Stop after N alerts shown.")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Stop after S seconds without a record; 0 = never (until Ctrl-C).",
)
@bootstrap_option
@config_option
def alerts(
    topic: str | None,
    min_probability: float | None,
    series: tuple[str, ...],
    as_json: bool,
    from_beginning: bool,
    max_alerts: int | None,
    idle_timeout: float,
    bootstrap_servers: str | None,
    config: Path | None,
) -> None:
    """Follow alerts as readable lines: time (UTC), series, RAISED/CLEARED/FLAGGED, probability, window,
    model version; colour on a terminal, --json for machines.

    Reads every partition without a consumer group (the daemon's group is never touched). Records that
    are neither alerts nor scored windows are reported on stderr and skipped.
    """
    from detector.tools import alerts as follow

    result = follow.run(
        _kafka_settings(config, bootstrap_servers),
        topic,
        min_probability=min_probability,
        series=series,
        as_json=as_json,
        from_beginning=from_beginning,
        max_alerts=max_alerts,
        idle_timeout_s=idle_timeout or None,
        colour=sys.stdout.isatty(),
        say=_say,
        warn=_warn,
    )
    _warn(result.summary())


@cli.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on, and advertise.")
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True, help="TCP port.")
def broker(host: str, port: int) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until SIGTERM or Ctrl-C.

    For development, the demo and the tests: nothing it holds survives a restart. Point clients at
    HOST:PORT (e.g. DETECTOR_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092).
    """
    from detector.broker import run_foreground

    code = run_foreground(host, port, say=_say)
    if code:
        raise click.exceptions.Exit(code)


@cli.command(context_settings=CONTEXT)
@config_option
def serve(config: Path | None) -> None:
    """Run the scoring daemon: windows from kafka.input_topic -> scores to kafka.output_topic.

    Everything comes from the settings (--config FILE and DETECTOR_* variables; the environment wins);
    model.checkpoint (DETECTOR_MODEL__CHECKPOINT) is required. Bad input goes to kafka.dlq_topic with its
    reason. Offsets are committed only after the outputs are acknowledged (at-least-once). SIGTERM or
    Ctrl-C finishes the batch in hand, commits, leaves the group and exits 0. Logs are JSON lines on
    stderr (console lines on a terminal).

    /metrics, /healthz and /readyz listen on http.host:http.port (default 0.0.0.0:9108). A new file at
    model.checkpoint (checked every reload.poll_seconds) is validated, then swapped in between batches; a
    bad one is refused and the old model keeps serving. Alert transitions go to kafka.alert_topic.
    """
    from detector.serve.daemon import serve as run

    code = run(_settings(config))
    if code:
        raise click.exceptions.Exit(code)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--duration",
    type=click.FloatRange(10, 3600),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="How long the recording plays (its rate is WINDOWS / SECONDS); start-up and shutdown add about 20 s.",
)
@click.option(
    "--windows",
    type=click.IntRange(100, 1_000_000),
    default=2400,
    show_default=True,
    help="Windows in the generated recording (16 series, ~20% with injected events).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the artifacts and logs (default: a new temporary folder, kept and printed).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Broker port; 0 = a free one."
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the daemon's /metrics, /healthz and /readyz; 0 = a free one.",
)
@click.option("--train", is_flag=True, help="Train a fresh model with the bundled model's recipe first (~1 min).")
@click.option(
    "--checkpoint",
    "ckpt_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Serve this checkpoint instead of the bundled model (the recording takes its F and T).",
)
def demo(
    duration: float, windows: int, out: Path | None, port: int, http_port: int, train: bool, ckpt_path: Path | None
) -> None:
    """Run the whole loop on this machine: the embedded broker, a small bundled model, `detector serve`,
    a generated recording with injected events replayed into the input topic, and the alerts as they
    arrive; then a summary (windows scored and flagged, alerts raised, end-to-end windows/s, p50/p99
    latency) and a clean shutdown that leaves no process behind.

    Finishes by itself in about --duration + 20 s (2 min 20 s by default); Ctrl-C stops it early and
    still shuts everything down. Needs no configuration: DETECTOR_* variables are ignored.
    """
    import tempfile

    from detector.demo.run import DemoOptions, run

    if train and ckpt_path is not None:
        raise click.UsageError("--train and --checkpoint are mutually exclusive")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="detector-demo-"))
    options = DemoOptions(
        out=out,
        duration_s=duration,
        windows=windows,
        broker_port=port,
        http_port=http_port,
        checkpoint=ckpt_path,
        train=train,
        colour=sys.stdout.isatty(),
    )
    result = run(options, say=_say, warn=_warn)
    if result.summary is not None:
        _say(f"summary ({result.summary.seconds:.0f} s{', interrupted' if result.interrupted else ''}):")
        for line in result.summary.lines():
            _say(line)
    _say(
        f"artifacts in {result.out}: model.ckpt, stream.jsonl, alerts.jsonl, metrics.txt, summary.json, "
        "serve.log, broker.log"
    )
    if result.left_behind:
        raise DetectorError(f"demo: still running after shutdown: {', '.join(result.left_behind)}")
    if result.interrupted:
        raise click.Abort  # exit 130
    if result.serve_exit:
        raise DetectorError(f"demo: detector serve exited with code {result.serve_exit} (see {result.out}/serve.log)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and a non-zero exit for every expected failure."""
    try:
        # Not standalone: click returns (rather than raises) the code of an `Exit`, a command's non-zero exit.
        code = cli.main(args=argv, prog_name="detector", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        click.echo("detector: interrupted", err=True)
        return 130
    except click.UsageError as err:
        where = f"detector {err.ctx.info_name}" if err.ctx and err.ctx.info_name != "detector" else "detector"
        click.echo(f"{where}: {err.format_message()} (see --help)", err=True)
        return 2
    except click.ClickException as err:
        click.echo(f"detector: {err.format_message()}", err=True)
        return err.exit_code
    except DetectorError as err:
        click.echo(f"detector: {' '.join(str(err).split())}", err=True)
        return err.exit_code
    except KeyboardInterrupt:
        click.echo("detector: interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
