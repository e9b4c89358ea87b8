"""`detector serve` and `detector broker` refuse bad settings, arguments and checkpoints with one line and exit 2;
model.uncalibrated decides, at start-up and on reload alike, whether an uncalibrated checkpoint serves."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch

from detector.calibrate import calibrate
from detector.cli import main
from detector.model import checkpoint
from detector.model.train import train
from detector.scoring import Scorer
from detector.serve.reload import CheckpointWatcher, ReloadOutcome
from tests.conftest import tiny_config


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
    """A checkpoint path that does not exist is reported on one line naming the file and the setting, exit 2."""
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(tmp_path / "nope.ckpt"))
    assert main(["serve"]) == 2
    line = _one_line_error(capsys)
    assert f"{tmp_path / 'nope.ckpt'}: no such checkpoint file" in line
    assert "model.checkpoint (DETECTOR_MODEL__CHECKPOINT)" in line


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


# -- the checkpoint a daemon starts with, and the one it reloads --------------------------------------


@pytest.fixture(scope="module")
def models(small_data, tmp_path_factory) -> dict[str, Path]:
    """A tiny model as `detector train` leaves it (uncalibrated) and the same one calibrated."""
    raw = train(small_data, tiny_config(seed=0)).checkpoint
    d = tmp_path_factory.mktemp("serve-models")
    paths = {"raw": d / "raw.ckpt", "calibrated": d / "calibrated.ckpt"}
    checkpoint.save(raw, paths["raw"])
    checkpoint.save(calibrate(Scorer(raw), small_data, "platt", "0.5"), paths["calibrated"])
    return paths


@pytest.fixture
def daemon_env(monkeypatch, tmp_path) -> dict[str, list[object]]:
    """`detector serve` on this machine with loopback HTTP, JSON logs and no Kafka: a call to connect is
    recorded and stops the daemon as if a signal had come first."""
    calls: dict[str, list[object]] = {"connect": []}

    def connect(*args: object, **kwargs: object) -> None:
        calls["connect"].append(args)  # returns None: "stopped before the broker was reached"

    monkeypatch.setattr("detector.serve.daemon.connect", connect)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # process-wide otherwise
    monkeypatch.setattr(sys, "setswitchinterval", lambda interval: None)
    for name, value in {
        "DETECTOR_MODEL__DEVICE": "cpu",
        "DETECTOR_HTTP__HOST": "127.0.0.1",
        "DETECTOR_HTTP__PORT": "0",
        "DETECTOR_LOG__FORMAT": "json",
    }.items():
        monkeypatch.setenv(name, value)
    return calls


def _log(err: str) -> list[dict[str, Any]]:
    entries = []
    for line in err.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return [e for e in entries if isinstance(e, dict)]


def test_serve_refuses_an_uncalibrated_checkpoint_by_default(models, daemon_env, monkeypatch, capsys):
    """A checkpoint straight from `detector train` stops the start with exit 2 and one line that says to
    calibrate it or set model.uncalibrated=warn, before any connection to Kafka."""
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(models["raw"]))
    assert main(["serve"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"detector: {models['raw']}: uncalibrated checkpoint")
    assert "detector calibrate" in line
    assert "model.uncalibrated=warn" in line
    assert daemon_env["connect"] == []


def test_serve_with_uncalibrated_warn_serves_it_with_a_warning(models, daemon_env, monkeypatch, capsys):
    """model.uncalibrated=warn serves an uncalibrated checkpoint: start-up goes on to Kafka, with a WARNING
    naming the file."""
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(models["raw"]))
    monkeypatch.setenv("DETECTOR_MODEL__UNCALIBRATED", "warn")
    assert main(["serve"]) == 0
    assert len(daemon_env["connect"]) == 1
    warnings = [e for e in _log(capsys.readouterr().err) if e.get("level") == "warning"]
    assert [e["checkpoint"] for e in warnings if "uncalibrated" in e["event"]] == [str(models["raw"])]


def test_serve_starts_a_calibrated_checkpoint_without_a_warning(models, daemon_env, monkeypatch, capsys):
    """A calibrated checkpoint serves under the default (refuse) with no word about calibration."""
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(models["calibrated"]))
    assert main(["serve"]) == 0
    assert len(daemon_env["connect"]) == 1
    assert not [e for e in _log(capsys.readouterr().err) if "uncalibrated" in e.get("event", "")]


@pytest.mark.parametrize(("policy", "accepted"), [(None, False), ("refuse", False), ("warn", True)])
def test_reload_follows_model_uncalibrated(policy, accepted, models, daemon_env, monkeypatch, tmp_path, capsys):
    """The daemon's watcher applies model.uncalibrated as start-up does: under refuse (the default) an
    uncalibrated file is rejected saying to calibrate it and the serving model stays; under warn it is
    taken, with a warning."""
    path = tmp_path / "model.ckpt"
    shutil.copyfile(models["calibrated"], path)
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(path))
    if policy is not None:
        monkeypatch.setenv("DETECTOR_MODEL__UNCALIBRATED", policy)
    monkeypatch.setattr(CheckpointWatcher, "start", lambda self: self)  # polled by hand below, not by a thread
    seen: list[tuple[ReloadOutcome | None, Scorer | None]] = []

    def run(settings, scorer, metrics, health, watcher: CheckpointWatcher) -> int:
        os.replace(shutil.copyfile(models["raw"], tmp_path / "new.tmp"), path)
        seen.append((watcher.poll_once(), watcher.take()))
        return 0

    monkeypatch.setattr("detector.serve.daemon._run", run)
    assert main(["serve"]) == 0
    ((outcome, taken),) = seen
    assert outcome is not None
    assert outcome.accepted is accepted
    assert (taken is not None) is accepted
    uncalibrated_warnings = [e for e in _log(capsys.readouterr().err) if "uncalibrated" in e.get("event", "")]
    if accepted:
        assert [e["level"] for e in uncalibrated_warnings] == ["warning"]
    else:
        assert outcome.stage == "load"
        assert "detector calibrate" in (outcome.reason or "")
        assert "model.uncalibrated=warn" in (outcome.reason or "")


def test_serve_with_a_checkpoint_in_a_missing_folder_names_the_setting(daemon_env, tmp_path, monkeypatch, capsys):
    """model.checkpoint inside a folder that does not exist: one line naming the setting, its variable and
    the missing folder, exit 2, before any connection to Kafka."""
    missing = tmp_path / "no-such-volume"
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(missing / "detector.ckpt"))
    assert main(["serve"]) == 2
    line = _one_line_error(capsys)
    assert "model.checkpoint (DETECTOR_MODEL__CHECKPOINT)" in line
    assert f"{missing} does not exist" in line
    assert daemon_env["connect"] == []


def test_serve_with_a_checkpoint_that_is_a_folder_names_the_setting(daemon_env, tmp_path, monkeypatch, capsys):
    """model.checkpoint naming a folder, not a file: one line naming the setting, exit 2, no connection."""
    monkeypatch.setenv("DETECTOR_MODEL__CHECKPOINT", str(tmp_path))
    assert main(["serve"]) == 2
    line = _one_line_error(capsys)
    assert "model.checkpoint (DETECTOR_MODEL__CHECKPOINT)" in line
    assert str(tmp_path) in line
    assert daemon_env["connect"] == []
