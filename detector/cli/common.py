"""What every command of the ``detector`` CLI shares: the group, the options used by several commands,
settings loading and output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML settings file; DETECTOR_* environment variables override it.",
)


def read_settings(config: Path | None, **overrides: Any):
    """Settings from ``config`` (YAML, optional) under DETECTOR_* variables, under ``overrides``."""
    from detector.settings import load_settings

    return load_settings(config, **overrides)


def say(text: str) -> None:
    """A line for the user on stdout."""
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


def warn(text: str) -> None:
    """A line for the user on stderr."""
    click.echo(text, err=True)


def kafka_settings(config: Path | None, bootstrap_servers: str | None):
    """Settings with ``--bootstrap-servers`` (when given) over kafka.bootstrap_servers."""
    if bootstrap_servers:
        return read_settings(config, kafka={"bootstrap_servers": bootstrap_servers})
    return read_settings(config)


bootstrap_option = click.option(
    "--bootstrap-servers",
    metavar="HOST:PORT[,...]",
    default=None,
    help="Kafka brokers (default: kafka.bootstrap_servers, DETECTOR_KAFKA__BOOTSTRAP_SERVERS).",
)
