"""The command line as a user runs it: generate -> train -> calibrate -> evaluate -> replay --offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main

# The commands the README documents.
DESIGN_COMMANDS = ("serve", "train", "calibrate", "evaluate", "replay", "record", "alerts", "broker", "demo")
OUTPUT_FIELDS = {
    "series_id",
    "window_id",
    "start",
    "end",
    "probability",
    "flag",
    "threshold",
    "model_version",
    "calibration",
    "scored_at",
    "latency_ms",
    "step_probabilities",
    "step_flags",
}


def run(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three recordings from different seeds, a trained, a calibrated checkpoint and an evaluation."""
    d = tmp_path_factory.mktemp("cli")
    paths = {name: d / f"{name}.jsonl" for name in ("train", "calib", "test")}
    for seed, (_, path) in enumerate(paths.items(), start=21):
        assert (
            run(
                "generate",
                "--out",
                path,
                "--seed",
                seed,
                "--series",
                4,
                "--windows",
                20,
                "--features",
                2,
                "--length",
                16,
                "--event-rate",
                0.3,
            )
            == 0
        )
    config = d / "small.yaml"
    config.write_text("train:\n  steps_per_epoch: 10\n  batch_size: 32\n  network:\n    hidden_size: 8\n")
    assert run("train", "--data", paths["train"], "--out", d / "m.ckpt", "--epochs", 5, "--config", config) == 0
    assert (
        run(
            "calibrate",
            "--checkpoint",
            d / "m.ckpt",
            "--data",
            paths["calib"],
            "--method",
            "isotonic",
            "--threshold",
            "max-f1",
            "--out",
            d / "c.ckpt",
        )
        == 0
    )
    assert run("evaluate", "--checkpoint", d / "c.ckpt", "--data", paths["test"], "--out", d / "eval") == 0
    return {**paths, "dir": d, "model": d / "m.ckpt", "calibrated": d / "c.ckpt", "eval": d / "eval"}


def test_evaluate_writes_metrics_and_plots(pipeline):
    """evaluate writes metrics.json with window and step metrics and three PNG plots."""
    metrics = json.loads((pipeline["eval"] / "metrics.json").read_text())
    for level in ("window", "step"):
        for key in ("precision", "recall", "f1", "auprc", "ece", "brier"):
            assert 0.0 <= metrics[level][key] <= 1.0
    assert metrics["calibration"] == "isotonic"
    for name in ("reliability.png", "precision_recall.png", "timeline.png"):
        assert (pipeline["eval"] / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_offline_writes_one_record_per_window_deterministically(pipeline, tmp_path):
    """replay --offline gives one record per input window with the contract fields, byte-identical twice."""
    outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for out in outs:
        assert run("replay", pipeline["test"], "--offline", "--checkpoint", pipeline["calibrated"], "--out", out) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    inputs = [json.loads(line) for line in pipeline["test"].read_text().splitlines()]
    records = [json.loads(line) for line in outs[0].read_text().splitlines()]
    assert [r["window_id"] for r in records] == [w["window_id"] for w in inputs]
    for r in records:
        assert set(r) == OUTPUT_FIELDS
        assert 0.0 <= r["probability"] <= 1.0
        assert r["flag"] == (r["probability"] >= r["threshold"])
        assert len(r["step_probabilities"]) == 16
        assert r["calibration"] == "isotonic"
    assert records[0]["end"] == inputs[0]["start"] + 16 * inputs[0]["step_ms"]


def test_replay_offline_sends_bad_lines_to_a_dead_letter_file(pipeline, tmp_path, capsys):
    """Bad lines are not scored and not lost: they go to OUT.dlq.jsonl with their reason; good ones score."""
    src = tmp_path / "mixed.jsonl"
    good = pipeline["test"].read_text().splitlines()[:5]
    bad = ['{"series_id": "x", "values": [[1, 2]]}', "not json", '{"values": [[1, 2]]}']
    src.write_text("\n".join([good[0], bad[0], good[1], bad[1], good[2], bad[2], *good[3:]]) + "\n")
    out = tmp_path / "scores.jsonl"
    assert run("replay", src, "--offline", "--checkpoint", pipeline["calibrated"], "--out", out) == 0
    assert len(out.read_text().splitlines()) == 5
    dead = [json.loads(line) for line in (tmp_path / "scores.jsonl.dlq.jsonl").read_text().splitlines()]
    assert [(d["line"], d["reason"]) for d in dead] == [
        (2, "bad_shape"),
        (4, "bad_json"),
        (6, "missing_series_id"),
    ]
    assert "3 lines were not valid windows" in capsys.readouterr().out


def test_calibrated_threshold_rules(pipeline, tmp_path):
    """Each threshold rule and calibrator gives a loadable checkpoint with that rule and a threshold in range."""
    from detector.model import checkpoint

    for method, rule in [("platt", "precision:0.9"), ("temperature", "far:0.05"), ("isotonic", "0.5")]:
        out = tmp_path / f"{method}.ckpt"
        assert (
            run(
                "calibrate",
                "--checkpoint",
                pipeline["model"],
                "--data",
                pipeline["calib"],
                "--method",
                method,
                "--threshold",
                rule,
                "--out",
                out,
            )
            == 0
        )
        ck = checkpoint.load(out)
        assert ck.window.rule == rule
        assert ck.calibration_name == method
        assert 0.0 <= ck.window.threshold <= np.nextafter(1.0, 2.0)


def _one_line_error(capsys, code: int, *args) -> str:
    assert run(*args) == code
    err = capsys.readouterr().err.strip()
    assert err
    assert "\n" not in err
    assert "Traceback" not in err
    return err


def test_failures_are_one_line_with_nonzero_exit(pipeline, tmp_path, capsys):
    """Missing files, unreadable recordings, corrupt checkpoints and bad options: one line, exit 2."""
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(1000))
    notjson = tmp_path / "bad.jsonl"
    notjson.write_text("this is not a recording\n")
    cases = [
        ("no such file", "train", "--data", tmp_path / "absent.jsonl", "--out", tmp_path / "x.ckpt"),
        ("bad_json", "train", "--data", notjson, "--out", tmp_path / "x.ckpt"),
        ("is a directory", "train", "--data", tmp_path, "--out", tmp_path / "x.ckpt"),
        (
            "not a detector checkpoint",
            "evaluate",
            "--checkpoint",
            garbage,
            "--data",
            pipeline["test"],
            "--out",
            tmp_path / "e",
        ),
        (
            "no such checkpoint",
            "calibrate",
            "--checkpoint",
            tmp_path / "nope.ckpt",
            "--data",
            pipeline["calib"],
            "--method",
            "platt",
            "--out",
            tmp_path / "o.ckpt",
        ),
        (
            "--threshold",
            "calibrate",
            "--checkpoint",
            pipeline["model"],
            "--data",
            pipeline["calib"],
            "--method",
            "platt",
            "--threshold",
            "bogus",
            "--out",
            tmp_path / "o.ckpt",
        ),
        (
            "--method",
            "calibrate",
            "--checkpoint",
            pipeline["model"],
            "--data",
            pipeline["calib"],
            "--method",
            "magic",
            "--out",
            tmp_path / "o.ckpt",
        ),
        ("--epochs", "train", "--data", pipeline["train"], "--out", tmp_path / "x.ckpt", "--epochs", "zero"),
        ("No such command", "frobnicate"),
        (
            "carries no labels",
            "train",
            "--data",
            pipeline["dir"] / "unlabelled.jsonl",
            "--out",
            tmp_path / "x.ckpt",
        ),
        (
            "not a detector checkpoint",
            "replay",
            pipeline["test"],
            "--offline",
            "--checkpoint",
            garbage,
            "--out",
            tmp_path / "s.jsonl",
        ),
        (
            "no such file",
            "replay",
            tmp_path / "absent.jsonl",
            "--offline",
            "--checkpoint",
            pipeline["calibrated"],
            "--out",
            tmp_path / "s.jsonl",
        ),
    ]
    assert (
        run(
            "generate",
            "--out",
            pipeline["dir"] / "unlabelled.jsonl",
            "--no-labels",
            "--series",
            2,
            "--windows",
            4,
            "--length",
            16,
        )
        == 0
    )
    capsys.readouterr()
    for expected, *args in cases:
        err = _one_line_error(capsys, 2, *args)
        assert expected in err, (args, err)


def test_invalid_setting_names_the_field(pipeline, tmp_path, capsys):
    """A bad value in the config file exits 2 with one line naming the setting."""
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  lr: -1\n")
    err = _one_line_error(
        capsys, 2, "train", "--data", pipeline["train"], "--out", tmp_path / "x.ckpt", "--config", config
    )
    assert "train.lr" in err


def test_console_script_help_and_exit_codes():
    """The installed `detector` script answers --help and exits 2 on a bad option, with one stderr line."""
    exe = Path(sys.executable).with_name("detector")
    ok = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0
    listed = {line.split()[0] for line in ok.stdout.split("Commands:", 1)[1].splitlines() if line.strip()}
    commands = {*DESIGN_COMMANDS, "generate", "inspect"}
    assert commands <= listed, f"missing from --help: {commands - listed}"
    for command in sorted(commands):
        sub = subprocess.run([exe, command, "--help"], capture_output=True, text=True, check=False)
        assert sub.returncode == 0, sub.stderr
        assert f"Usage: detector {command}" in sub.stdout
        bad = subprocess.run([exe, command, "--no-such-option"], capture_output=True, text=True, check=False)
        assert bad.returncode == 2
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "Traceback" not in bad.stderr


def test_a_commands_own_non_zero_exit_reaches_the_shell(monkeypatch):
    # click, when not standalone, returns the code of an `Exit` instead of raising it: main must pass it on.
    import detector.broker

    monkeypatch.setattr(detector.broker, "run_foreground", lambda host, port, say: 5)
    assert main(["broker", "--port", "19999"]) == 5
