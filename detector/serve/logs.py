"""structlog set-up for the daemon: JSON lines when the output is not a terminal, readable console lines
when it is (``log.format`` overrides), at ``log.level``. kafka-python's own records (standard logging)
go through the same renderer, at ERROR or above unless the level is ``debug``: its warnings repeat many
times a second while a broker is away, and the daemon logs its own retries.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

from detector.settings import LogSettings


def configure_logging(settings: LogSettings, stream: IO[str] | None = None) -> str:
    """Route structlog and standard logging to ``stream`` (default stderr); returns the format chosen."""
    stream = stream or sys.stderr
    isatty = bool(getattr(stream, "isatty", lambda: False)())
    fmt = settings.resolved_format(isatty)
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=isatty)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(level if level <= logging.DEBUG else max(level, logging.ERROR))
    return fmt
