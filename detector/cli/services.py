"""``detector broker|serve|demo``: the processes that run until stopped."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from detector.cli.common import CONTEXT, cli, config_option, read_settings, say, warn
from detector.errors import DetectorError


@cli.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on, and advertise.")
@click.option("--port", type=click.IntRange(1, 65535), default=9092, show_default=True, help="TCP port.")
def broker(host: str, port: int) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, memory storage) until SIGTERM or Ctrl-C.

    For development, the demo and the tests: nothing it holds survives a restart. Point clients at
    HOST:PORT (e.g. DETECTOR_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092).
    """
    from detector.broker import run_foreground

    code = run_foreground(host, port, say=say)
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

    code = run(read_settings(config))
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
    result = run(options, say=say, warn=warn)
    if result.summary is not None:
        say(f"summary ({result.summary.seconds:.0f} s{', interrupted' if result.interrupted else ''}):")
        for line in result.summary.lines():
            say(line)
    say(
        f"artifacts in {result.out}: model.ckpt, stream.jsonl, alerts.jsonl, metrics.txt, summary.json, "
        "serve.log, broker.log"
    )
    if result.left_behind:
        raise DetectorError(f"demo: still running after shutdown: {', '.join(result.left_behind)}")
    if result.interrupted:
        raise click.Abort  # exit 130
    if result.serve_exit:
        raise DetectorError(f"demo: detector serve exited with code {result.serve_exit} (see {result.out}/serve.log)")
