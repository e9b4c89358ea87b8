"""Integration fixtures: one embedded broker per session on a free port (real Tansu over TCP), fresh
4-partition topics per test, a checkpoint made by `detector train`, and `detector serve` subprocesses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detector.broker import EmbeddedBroker, free_port
from detector.cli import main
from tests.integration.kafka_helpers import (
    AdvertisedBroker,
    Daemon,
    RefusingPath,
    Topics,
    create_topics,
    serve_env,
)

T, F = 64, 4  # the window shape of the served model (acceptance: F=4, T=64)
MEASUREMENTS: list[str] = []  # printed at the end of the run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("serving measurements (this machine)")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker("127.0.0.1", free_port(), output=log) as running:
        yield running


@pytest.fixture
def topics(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> Topics:
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60] + "-" + uuid.uuid4().hex[:6]
    made = Topics(
        input=f"{base}.in", output=f"{base}.out", dlq=f"{base}.dlq", group=f"{base}.group", alerts=f"{base}.alerts"
    )
    create_topics(broker.bootstrap_servers, [made.input, made.output, made.dlq, made.alerts])
    return made


def train_small_model(folder: Path, data_seed: int, *train_args: str) -> Path:
    """``folder/model.ckpt``: a small model trained for one epoch by `detector train` (with ``train_args``)
    on a recording of F=4, T=64 windows that `detector generate` made with ``data_seed``."""
    data, model, config = folder / "train.jsonl", folder / "model.ckpt", folder / "small.yaml"
    assert main(["generate", "--out", str(data), "--seed", str(data_seed), "--series", "4", "--windows", "30",
                 "--features", str(F), "--length", str(T)]) == 0  # fmt: skip
    config.write_text("train:\n  steps_per_epoch: 3\n  batch_size: 32\n  network:\n    hidden_size: 16\n")
    assert main(["train", "--data", str(data), "--out", str(model), "--epochs", "1", "--config", str(config),
                 *train_args]) == 0  # fmt: skip
    return model


@pytest.fixture(scope="session")
def model_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained by `detector train` on a generated recording of F=4, T=64 windows."""
    return train_small_model(tmp_path_factory.mktemp("model"), 7)


@pytest.fixture
def start_daemon(
    broker: EmbeddedBroker, topics: Topics, model_checkpoint: Path, tmp_path: Path
) -> Iterator[Callable[..., Daemon]]:
    """Start `detector serve` on this test's topics; extra DETECTOR_* variables as keyword arguments."""
    started: list[Daemon] = []

    def start(bootstrap: str | None = None, **extra: str) -> Daemon:
        env = serve_env(bootstrap or broker.bootstrap_servers, topics, model_checkpoint, **extra)
        daemon = Daemon(env, tmp_path / f"serve-{len(started)}.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[RefusingPath]:
    """A broker of this test's own, reachable only through a RefusingPath (its bootstrap_servers): the test
    chooses which clients' records it refuses. Nothing is refused until it says so."""
    path = RefusingPath("127.0.0.1", free_port())
    try:
        with AdvertisedBroker("127.0.0.1", path.target[1], path.port, output=tmp_path / "refusing-broker.log"):
            yield path
    finally:
        path.close()
