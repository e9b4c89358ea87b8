"""The learning-rate schedule: by batches, and by the wall-clock cap when that runs out first."""

from __future__ import annotations

import math

import pytest

from detector.model import train as train_module
from detector.model.train import Schedule, train
from tests.conftest import tiny_config


def test_the_factor_warms_up_over_the_first_tenth_then_decays_to_a_ten_thousandth():
    s = Schedule(total_batches=100, max_seconds=0)
    factors = [s(b) for b in range(101)]
    assert factors[0] == pytest.approx(1 / 25)
    assert factors[10] == pytest.approx(1.0)
    assert factors[100] == pytest.approx(1e-4)
    assert factors[:11] == sorted(factors[:11])
    assert factors[10:] == sorted(factors[10:], reverse=True)
    assert s(500) == pytest.approx(1e-4)  # past the planned batches it stays at the end


def test_the_clock_drives_the_factor_when_it_runs_ahead_of_the_batches(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(train_module.time, "monotonic", lambda: now[0])
    s = Schedule(total_batches=10_000, max_seconds=100)
    assert s(0) == pytest.approx(1 / 25)  # the first call starts the clock
    now[0] += 50
    halfway = 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.4 / 0.9))
    assert s(1) == pytest.approx(halfway)
    now[0] += 50
    assert s(2) == pytest.approx(1e-4)  # the cap is spent: annealed, though few batches ran
    assert Schedule(total_batches=10, max_seconds=100)(9) == pytest.approx(Schedule(10, 0)(9))  # batches ahead


def test_training_of_exactly_ten_batches_runs(small_data):
    """Ten batches in all (which OneCycleLR's 10% warm-up turned into a division by zero) train."""
    config = tiny_config().model_copy(update={"epochs": 1, "steps_per_epoch": 10})
    result = train(small_data, config)
    assert result.summary["epochs"] == 1
