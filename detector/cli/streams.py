"""``detector replay|record|alerts``: recordings and topics, and scoring a recording without Kafka."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from detector.cli.common import CONTEXT, bootstrap_option, cli, config_option, kafka_settings, read_settings, say, warn
from detector.errors import ConfigError, DataError, DetectorError


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

    from detector.cpus import available_cpus
    from detector.model import checkpoint
    from detector.serve.files import score_file
    from detector.serve.logs import configure_logging
    from detector.serve.model_check import build_scorer

    if not offline:
        _replay_to_topic(recording, topic, bootstrap_servers, speed, rate, codec, config, (ckpt_path, out, dlq))
        return
    if topic or bootstrap_servers or speed or rate or codec:
        raise click.UsageError("--topic, --bootstrap-servers, --speed, --rate and --codec publish; not with --offline")
    if out is None:
        raise ConfigError("replay --offline needs --out SCORES.jsonl")
    settings = read_settings(config)
    ckpt_path = ckpt_path or settings.model.checkpoint
    if ckpt_path is None:
        raise ConfigError("replay --offline needs --checkpoint (or model.checkpoint in the settings)")
    if not recording.is_file():
        raise DataError(f"{recording}: no such file")
    # Dead letters are logged (at most one line per reason every few seconds) to stderr; progress is not.
    level = settings.log.level if settings.log.level in ("warning", "error") else "warning"
    configure_logging(settings.log.model_copy(update={"level": level}))
    scorer = build_scorer(checkpoint.load(ckpt_path), settings.model)
    dlq = dlq or out.with_name(out.name + ".dlq.jsonl")
    started = time.monotonic()
    with tqdm(total=None, unit="win", desc="scoring", disable=not sys.stdout.isatty(), leave=False) as bar:
        counts = score_file(
            scorer,
            recording,
            out,
            dlq,
            threads=available_cpus(),
            max_message_bytes=settings.limits.max_message_bytes,
            on_scored=bar.update,
        )
    seconds = time.monotonic() - started
    rate = counts.scored / seconds if seconds else 0.0
    say(
        f"scored {counts.scored} windows ({counts.flagged} flagged) in {seconds:.1f} s ({rate:,.0f} windows/s) -> {out}"
    )
    dead = sum(counts.dead_letters.values())
    if dead:
        say(f"{dead} lines were not valid windows -> {dlq}")


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
        kafka_settings(config, bootstrap_servers),
        recording,
        topic,
        codec="f32" if codec == "f32" else "json",
        speed=speed,
        rate=rate,
        warn=warn,
    )
    say(result.summary())
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
        kafka_settings(config, bootstrap_servers),
        topic,
        out,
        max_records=max_records,
        idle_timeout_s=idle_timeout or None,
        from_now=from_now,
        features=features,
        warn=warn,
    )
    say(result.summary())


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
        kafka_settings(config, bootstrap_servers),
        topic,
        min_probability=min_probability,
        series=series,
        as_json=as_json,
        from_beginning=from_beginning,
        max_alerts=max_alerts,
        idle_timeout_s=idle_timeout or None,
        colour=sys.stdout.isatty(),
        say=say,
        warn=warn,
    )
    warn(result.summary())
