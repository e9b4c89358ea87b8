"""Hot reload: a new checkpoint is validated off the hot path and taken once; bad files are rejected once
each, the serving model stays, and nothing is retried while the file is unchanged."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from detector.model import checkpoint
from detector.model.checkpoint import Checkpoint
from detector.model.train import train
from detector.scoring import Scorer
from detector.serve.metrics import PrometheusObserver
from detector.serve.model_check import probe_batch
from detector.serve.reload import CheckpointWatcher, ReloadOutcome
from detector.settings import ModelSettings
from tests.conftest import tiny_config

WARN = ModelSettings(device="cpu", uncalibrated="warn")  # the models here come straight from training
REFUSE = ModelSettings(device="cpu")


@pytest.fixture(scope="module")
def base(small_data) -> Checkpoint:
    return train(small_data, tiny_config(seed=0)).checkpoint


def variant(ckpt: Checkpoint, threshold: float) -> Checkpoint:
    """The same network with another threshold: a different file, hence a different version."""
    return ckpt.with_heads(dataclasses.replace(ckpt.window, threshold=threshold, rule=str(threshold)), ckpt.step)


def replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def version_of(data: bytes) -> str:
    return checkpoint.content_version(data)


def accepted(outcome: ReloadOutcome | None) -> bool | None:
    """Whether new content was accepted; None when the poll tried nothing."""
    return None if outcome is None else outcome.accepted


class Recorder:
    """on_result that keeps every outcome."""

    def __init__(self) -> None:
        self.outcomes: list[ReloadOutcome] = []

    def __call__(self, outcome: ReloadOutcome) -> None:
        self.outcomes.append(outcome)


@pytest.fixture
def model_file(tmp_path: Path, base: Checkpoint) -> tuple[Path, str]:
    """A checkpoint file in place, and its version (the model serving at start)."""
    path = tmp_path / "model.ckpt"
    return path, checkpoint.save(variant(base, 0.5), path)


def watcher_for(path: Path, serving: str | None, recorder: Recorder, **kwargs) -> CheckpointWatcher:
    """A fast-polling watcher; the models here come straight from training, so uncalibrated ones pass."""
    model = ModelSettings(
        device="cpu", uncalibrated=kwargs.pop("uncalibrated", "warn"), cpu_bf16=kwargs.pop("cpu_bf16", False)
    )
    return CheckpointWatcher(path, 0.05, (16, 2), model, recorder, serving_version=serving, **kwargs)


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_a_new_checkpoint_is_validated_then_taken_once(model_file, base):
    """The serving content is not reloaded; a new file is validated and take() hands it over exactly once."""
    path, serving = model_file
    recorder = Recorder()
    watcher = watcher_for(path, serving, recorder)
    assert watcher.poll_once() is None
    assert watcher.take() is None
    new_version = checkpoint.save(variant(base, 0.7), path)
    outcome = watcher.poll_once()
    assert outcome == ReloadOutcome(str(path), new_version, True)
    assert outcome.result == "ok"
    scorer = watcher.take()
    assert scorer is not None
    assert scorer.version == new_version != serving
    assert scorer.checkpoint.window.threshold == pytest.approx(0.7)
    assert watcher.take() is None
    assert watcher.serving_version == new_version
    assert watcher.poll_once() is None
    assert recorder.outcomes == [outcome]


def _garbage(base: Checkpoint) -> bytes:
    return np.random.default_rng(1).bytes(4096)


def _truncated(base: Checkpoint) -> bytes:
    data = checkpoint.to_bytes(variant(base, 0.6))
    return data[: len(data) * 2 // 3]


def _wrong_shape(base: Checkpoint) -> bytes:
    return checkpoint.to_bytes(dataclasses.replace(base, window_length=32))


def _nan_weights(base: Checkpoint) -> bytes:
    state = {name: torch.full_like(tensor, float("nan")) for name, tensor in base.state.items()}
    return checkpoint.to_bytes(dataclasses.replace(base, state=state))


@pytest.mark.parametrize(
    ("make", "stage", "reason"),
    [
        (_garbage, "load", "not a detector checkpoint"),
        (_truncated, "load", "checkpoint"),
        (_wrong_shape, "shape", "32 steps x 2 features"),
        (_nan_weights, "probe", "non-finite"),
    ],
    ids=["garbage", "truncated", "wrong-shape", "nan-weights"],
)
def test_a_bad_file_is_rejected_once_and_the_old_model_stays(model_file, base, make, stage, reason):
    """Each bad file is rejected at its step with a reason, counted once, not retried while unchanged (even
    on full re-hash polls), never handed to the loop; a later good file is taken."""
    path, serving = model_file
    recorder = Recorder()
    metrics = PrometheusObserver()

    def on_result(outcome: ReloadOutcome) -> None:
        recorder(outcome)
        metrics.reloaded(outcome.result)

    watcher = CheckpointWatcher(path, 0.05, (16, 2), WARN, on_result, serving_version=serving, full_check_every=1)
    data = make(base)
    replace_atomically(path, data)
    with capture_logs() as logs:
        outcome = watcher.poll_once()
        for _ in range(3):
            assert watcher.poll_once() is None
    assert outcome is not None
    assert (outcome.accepted, outcome.result, outcome.stage, outcome.version) == (
        False,
        "rejected",
        stage,
        version_of(data),
    )
    assert reason in (outcome.reason or "")
    rejected = [e for e in logs if e["event"] == "checkpoint rejected; the serving model stays"]
    assert len(rejected) == 1
    assert (rejected[0]["stage"], rejected[0]["reason"], rejected[0]["serving_version"]) == (
        stage,
        outcome.reason,
        serving,
    )
    assert watcher.take() is None
    assert watcher.serving_version == serving
    assert recorder.outcomes == [outcome]
    assert metrics.registry.get_sample_value("detector_reloads_total", {"result": "rejected"}) == 1

    good = checkpoint.save(variant(base, 0.8), path)
    assert watcher.poll_once() == ReloadOutcome(str(path), good, True)
    scorer = watcher.take()
    assert scorer is not None
    assert scorer.version == good
    assert metrics.registry.get_sample_value("detector_reloads_total", {"result": "ok"}) == 1
    assert metrics.registry.get_sample_value("detector_reloads_total", {"result": "rejected"}) == 1


def test_a_half_written_file_is_never_served(model_file, base):
    """A writer that does not rename: its partial file is rejected, the completed one is then taken."""
    path, serving = model_file
    recorder = Recorder()
    watcher = watcher_for(path, serving, recorder)
    data = checkpoint.to_bytes(variant(base, 0.65))
    with path.open("wb") as f:
        f.write(data[: len(data) // 2])
    assert accepted(watcher.poll_once()) is False
    assert watcher.take() is None
    with path.open("wb") as f:
        f.write(data)
    assert watcher.poll_once() == ReloadOutcome(str(path), version_of(data), True)
    scorer = watcher.take()
    assert scorer is not None
    assert scorer.version == version_of(data)


def test_the_file_back_at_the_serving_version_drops_the_waiting_one(model_file, base):
    """If the file returns to the serving content before the loop took the new one, the file wins."""
    path, serving = model_file
    serving_bytes = path.read_bytes()
    watcher = watcher_for(path, serving, Recorder())
    checkpoint.save(variant(base, 0.9), path)
    assert accepted(watcher.poll_once()) is True
    replace_atomically(path, serving_bytes)
    assert watcher.poll_once() is None
    assert watcher.take() is None
    assert watcher.serving_version == serving


def test_a_missing_file_is_logged_once_and_not_counted(tmp_path, base):
    """No file: one warning however many polls, no outcome; once it appears it is tried; gone again, one
    more warning."""
    path = tmp_path / "later.ckpt"
    recorder = Recorder()
    watcher = watcher_for(path, "0" * 16, recorder)
    with capture_logs() as logs:
        for _ in range(5):
            assert watcher.poll_once() is None
        version = checkpoint.save(variant(base, 0.55), path)
        assert watcher.poll_once() == ReloadOutcome(str(path), version, True)
        path.unlink()
        for _ in range(3):
            assert watcher.poll_once() is None
    events = [e["event"] for e in logs]
    assert events.count("checkpoint file cannot be read; the serving model stays") == 2
    assert events.count("checkpoint file readable again") == 1
    assert [e["reason"] for e in logs if e["event"].startswith("checkpoint file cannot be read")] == [
        "missing",
        "missing",
    ]
    assert [o.result for o in recorder.outcomes] == ["ok"]


def test_the_background_thread_picks_up_changes_and_leaves_bad_content_alone(model_file, base):
    """Started, the watcher finds a renamed-in checkpoint by itself, rejects random bytes once across many
    polls, and stops on close()."""
    path, serving = model_file
    recorder = Recorder()
    watcher = watcher_for(path, serving, recorder).start()
    try:
        new_version = checkpoint.save(variant(base, 0.75), path)
        scorer = wait_for(watcher.take)
        assert isinstance(scorer, Scorer)
        assert scorer.version == new_version
        replace_atomically(path, np.random.default_rng(2).bytes(1000))
        wait_for(lambda: any(not o.accepted for o in recorder.outcomes))
        polls = watcher.polls
        wait_for(lambda: watcher.polls >= polls + 4)
        assert [o.result for o in recorder.outcomes] == ["ok", "rejected"]
        assert watcher.take() is None
        assert watcher.serving_version == new_version
    finally:
        watcher.close()
    polls = watcher.polls
    time.sleep(0.15)
    assert watcher.polls == polls


def test_a_failing_callback_does_not_stop_the_reload(model_file, base):
    """on_result raising is logged; the validated scorer is still handed over."""
    path, serving = model_file

    def explode(outcome: ReloadOutcome) -> None:
        raise RuntimeError("metrics down")

    watcher = CheckpointWatcher(path, 0.05, (16, 2), WARN, on_result=explode, serving_version=serving)
    version = checkpoint.save(variant(base, 0.45), path)
    with capture_logs() as logs:
        assert accepted(watcher.poll_once()) is True
    assert "reload callback failed" in [e["event"] for e in logs]
    scorer = watcher.take()
    assert scorer is not None
    assert scorer.version == version


def test_the_probe_batch_is_fixed_finite_and_varied():
    """The probe is the same every time, finite, of the serving shape, and not a batch of identical windows."""
    first, again = probe_batch(12, 16, 2), probe_batch(12, 16, 2)
    assert first.shape == (12, 16, 2)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert np.all(np.isfinite(first))
    assert len({w.tobytes() for w in first}) == 12


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_a_reloaded_model_scores_in_the_precision_of_the_one_it_replaces(model_file, base, monkeypatch, cpu_bf16):
    """The watcher builds new scorers as the daemon built the first: model.cpu_bf16 carries over a swap."""
    monkeypatch.setattr("detector.scoring.cpu_has_bf16", lambda: True)
    path, serving = model_file
    watcher = watcher_for(path, serving, Recorder(), cpu_bf16=cpu_bf16)
    checkpoint.save(variant(base, 0.6), path)
    assert accepted(watcher.poll_once()) is True
    scorer = watcher.take()
    assert scorer is not None
    assert scorer.precision == ("bf16" if cpu_bf16 else "fp32")


def test_rejected_holds_while_the_bad_file_stays_and_clears_on_a_good_one_or_a_roll_back(model_file, base):
    """``rejected`` (the detector_checkpoint_rejected gauge) stays True while the rejected content stays in the
    file, and turns False when the file validates or goes back to the serving version."""
    path, serving = model_file
    serving_bytes = path.read_bytes()
    watcher = watcher_for(path, serving, Recorder())
    assert watcher.rejected is False
    replace_atomically(path, b"not a checkpoint")
    assert accepted(watcher.poll_once()) is False
    for _ in range(3):  # polled again and again: the same content is not tried again, the state holds
        watcher.poll_once()
        assert watcher.rejected is True
    replace_atomically(path, serving_bytes)  # the roll-back
    watcher.poll_once()
    assert watcher.rejected is False
    replace_atomically(path, b"bad again")
    watcher.poll_once()
    assert watcher.rejected is True
    checkpoint.save(variant(base, 0.8), path)
    assert accepted(watcher.poll_once()) is True
    assert watcher.rejected is False
