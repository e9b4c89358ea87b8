"""The ``detector`` command: builds Settings once, dispatches, and maps errors to one line and an exit code.

Exit codes: 0 success; 1 an unexpected failure; 2 bad arguments, settings, files or checkpoints. Commands
live in one module per group (:mod:`~detector.cli.models`, :mod:`~detector.cli.streams`,
:mod:`~detector.cli.services`).
"""

from __future__ import annotations

import click

from detector.cli import models, services, streams  # noqa: F401  (each registers its commands on `cli`)
from detector.cli.common import cli
from detector.errors import DetectorError

__all__ = ["cli", "main"]


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
