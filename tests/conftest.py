"""Shared fixtures: small generated recordings and tiny trained checkpoints (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector import recordings, synth
from detector.model.config import AugmentConfig, NetworkConfig, TrainConfig
from detector.model.train import train
from detector.windows import WindowSet

SMALL = synth.SynthParams(series=4, windows_per_series=12, features=2, length=16, event_rate=0.3)


def tiny_config(seed: int = 0, event_head: bool = False, **network: object) -> TrainConfig:
    """A training config that runs in well under a second: a few batches of a tiny network."""
    net = NetworkConfig.model_validate({"hidden_size": 8, **network})
    return TrainConfig(
        network=net,
        augment=AugmentConfig(),
        seed=seed,
        epochs=3,
        steps_per_epoch=15,
        lr=1e-2,
        batch_size=32,
        patience=2,
        event_head=event_head,
    )


@pytest.fixture(scope="session")
def small_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    recordings.write(path, synth.generate(11, SMALL))
    return path


@pytest.fixture(scope="session")
def small_data(small_recording: Path) -> WindowSet:
    return recordings.load(small_recording)


@pytest.fixture
def fit_tiny(small_data: WindowSet):
    """Train a tiny model on the small recording with the given network options."""

    def fit(seed: int = 0, event_head: bool = False, **network: object):
        return train(small_data, tiny_config(seed, event_head, **network)).checkpoint

    return fit


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts with the process's torch thread count: `serve` in-process sets it for the whole
    process (one fewer than the CPUs), which would leave every later test training on fewer threads."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _logging_restored():
    """Each test starts with the process's logging set-up: `serve` and `replay --offline` run in-process
    configure structlog and the root logger for the whole process (a handler on that test's stderr)."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    yield
    root.handlers, root.level = handlers, level
    structlog.configure(**config)
