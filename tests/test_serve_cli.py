"""`detector serve` and `detector broker` refuse bad settings and arguments with one line and exit 2."""

from __future__ import annotations

import logging
import os

import pytest
import structlog

from detector.cli import main


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    for name in [n for n in os.environ if n.startswith("DETECTOR_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("detector")]
    assert len(lines) == 1, err
    return lines[0]


def test_serve_without_a_checkpoint_exits_2(capsys):
    """No model.checkpoint: one line naming the setting and its variable, exit 2, before any connection."""
    assert main(["serve"]) == 2
    line = _one_line_error(capsys)
    assert "model.checkpoint" in line
    assert "DETECTOR_MODEL__CHECKPOINT" in line


def test_serve_with_a_missing_checkpoint_file_exits_2(tmp_path, capsys, monkeypatch):
    """A checkpoint path that does not exist is reported on one line, exit 2."""
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(tmp_path / "nope.ckpt"))
    assert main(["serve"]) == 2
    assert "nope.ckpt" in _one_line_error(capsys)


def test_serve_with_an_invalid_setting_exits_2(capsys, monkeypatch):
    """An invalid DETECTOR_* value names the field, exit 2."""
    monkeypatch.setenv("DETECTOR_BATCH__MAX_SIZE", "0")
    assert main(["serve"]) == 2
    assert "DETECTOR_BATCH__MAX_SIZE" in _one_line_error(capsys)


@pytest.mark.parametrize("argv", [["broker", "--port", "0"], ["broker", "--port", "x"], ["serve", "--nope"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    """Bad flags give one line pointing at --help and exit 2."""
    assert main(argv) == 2
    assert "see --help" in _one_line_error(capsys)
