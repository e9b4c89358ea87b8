"""The daemon's logging: JSON lines off a terminal, every message-level line with topic, partition, offset
and series_id, and kafka-python's records rendered the same way."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from detector.serve.logs import configure_logging
from detector.settings import LogSettings


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kafka_level = logging.getLogger("kafka").level
    yield
    root.handlers, root.level = handlers, level
    logging.getLogger("kafka").setLevel(kafka_level)
    structlog.reset_defaults()


def test_json_lines_off_a_terminal_with_message_fields(restore_logging):
    """Not a TTY and no format set: one JSON object per line, with level, timestamp and the bound fields."""
    stream = io.StringIO()
    assert configure_logging(LogSettings(), stream) == "json"
    log = structlog.get_logger("detector.serve")
    log.warning("dead letter", topic="windows", partition=2, offset=17, series_id="pump-7", reason="bad_json")
    log.debug("not shown at info")
    logging.getLogger("kafka.conn").error("connection to %s lost", "broker-1")
    logging.getLogger("kafka.conn").warning("chatter below error")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    dead, kafka = lines
    assert {k: dead[k] for k in ("event", "topic", "partition", "offset", "series_id", "level")} == {
        "event": "dead letter",
        "topic": "windows",
        "partition": 2,
        "offset": 17,
        "series_id": "pump-7",
        "level": "warning",
    }
    assert dead["timestamp"].endswith("Z")
    assert (kafka["event"], kafka["logger"], kafka["level"]) == ("connection to broker-1 lost", "kafka.conn", "error")


def test_console_format_when_asked(restore_logging):
    """log.format=console gives readable lines, not JSON."""
    stream = io.StringIO()
    assert configure_logging(LogSettings(format="console", level="debug"), stream) == "console"
    structlog.get_logger("detector.serve").debug("batch scored", windows=3)
    text = stream.getvalue()
    assert "batch scored" in text
    assert "windows=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
