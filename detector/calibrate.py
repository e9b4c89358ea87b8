"""Calibrating a checkpoint on a labelled recording through a :class:`Scorer`, so that the calibrators fit the
scores that serving gives (each window placed against its series' earlier windows in the recording's order;
:func:`detector.serve.model_check.build_scorer` builds one from the settings)."""

from __future__ import annotations

import numpy as np

from detector.model import calibration
from detector.model.checkpoint import Checkpoint, Head
from detector.model.context import recording_contexts
from detector.model.thresholds import choose_threshold, parse_rule
from detector.scoring import Scorer
from detector.windows import WindowSet


def _fit_head(method: str, rule_text: str, z: np.ndarray, y: np.ndarray) -> Head:
    params = calibration.fit(method, z, y)
    prob = calibration.apply(params, z)
    return Head(calibration=params, threshold=choose_threshold(parse_rule(rule_text), prob, y), rule=rule_text)


def calibrate(scorer: Scorer, data: WindowSet, method: str, rule: str) -> Checkpoint:
    """A copy of the scorer's checkpoint with calibrators and thresholds fitted on labelled ``data`` (window
    and step heads)."""
    assert data.labels is not None
    parse_rule(rule)  # fail on a bad rule before any work
    contexts = recording_contexts(data, scorer.checkpoint.history)
    z_win, z_step, _ = scorer.logits(data.values, contexts)
    window = _fit_head(method, rule, z_win, data.labels.max(axis=1))
    step = None
    if z_step is not None:
        step = _fit_head(method, rule, z_step.reshape(-1), scorer.checkpoint.step_targets(data.labels).reshape(-1))
    return scorer.checkpoint.with_heads(window, step)
