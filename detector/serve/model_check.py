"""The one check a checkpoint passes before it serves: at start-up and at every hot reload, the same way.

:func:`validated_scorer` takes a file's bytes to a scorer ready to serve, or raises
:class:`~detector.errors.CheckpointRejected` naming the stage that failed:

    load     the bytes parse as a checkpoint within its limits, thresholds included
             (:func:`detector.model.checkpoint.from_bytes`); and, checked last so that any other defect is
             named first, its window head is calibrated, unless the caller lets an uncalibrated one through
             (``uncalibrated="warn"``: the ``model.uncalibrated`` setting)
    shape    it takes windows of the expected (T, F), when one is expected (on reload: the serving model's)
    scorer   a scorer builds on the configured device and precision
    probe    a fixed batch of varied windows scores to finite window and step probabilities in [0, 1]

A scorer it returns has already scored a batch, so it is warm before its first real one. An uncalibrated
checkpoint it lets through is logged at WARNING each time (at start-up, and on every reload to one).
"""

from __future__ import annotations

import numpy as np
import structlog

from detector.errors import CheckpointError, CheckpointRejected
from detector.model import checkpoint
from detector.scoring import Scorer
from detector.settings import ModelSettings

PROBE_SIZE = 8


def build_scorer(ckpt: checkpoint.Checkpoint, model: ModelSettings) -> Scorer:
    """A scorer for ``ckpt`` as the ``model`` settings ask (device, precision, ``cpu_bf16``): the one place
    where settings become a scorer, for every command that scores. Raises what :class:`Scorer` raises (a
    device this machine lacks: ValueError)."""
    return Scorer(ckpt, device=model.device, precision=model.precision, cpu_bf16=model.cpu_bf16)


def probe_batch(n: int, length: int, features: int) -> np.ndarray:
    """A fixed batch (n, T, F) of distinct finite windows: flat, noise around a huge offset, noise, a random
    walk, a sine with a spike, a level shift, tiny noise, a ramp; repeated with an offset beyond eight."""
    rng = np.random.default_rng(20240601)
    shape = (length, features)
    t = np.arange(length, dtype=np.float64)[:, None]
    kinds = [
        lambda: np.zeros(shape),
        lambda: 1e6 + rng.normal(0.0, 1.0, shape),
        lambda: rng.normal(0.0, 1.0, shape),
        lambda: np.cumsum(rng.normal(0.0, 1.0, shape), axis=0),
        lambda: np.sin(t / 3.0) + 0.1 * rng.normal(0.0, 1.0, shape) + (t == length // 2) * 25.0,
        lambda: (t >= length // 2) * 8.0 + 0.1 * rng.normal(0.0, 1.0, shape),
        lambda: 1e-6 * rng.normal(0.0, 1.0, shape),
        lambda: np.broadcast_to(t, shape) * 0.5,
    ]
    windows = [kinds[i % len(kinds)]() + 10.0 * (i // len(kinds)) for i in range(n)]
    return np.stack(windows).astype(np.float32)


def validated_scorer(
    data: bytes,
    name: str,
    model: ModelSettings,
    *,
    expected_shape: tuple[int, int] | None = None,
    probe_size: int = PROBE_SIZE,
) -> Scorer:
    """A scorer for checkpoint bytes that passed every stage, built by :func:`build_scorer` from ``model``,
    or :class:`CheckpointRejected` (one line starting with ``name``). Never raises anything else for any
    content of ``data``.

    ``model.uncalibrated``: ``refuse`` rejects a checkpoint whose window head is uncalibrated at stage
    ``load``, saying to calibrate it; ``warn`` lets it through and logs a WARNING."""
    try:
        ckpt = checkpoint.from_bytes(data, name=name)
    except CheckpointError as err:
        raise CheckpointRejected("load", _one_line(err)) from None
    except Exception as err:  # not raised by contract, and just as fatal to this file
        raise CheckpointRejected("load", f"{name}: corrupt detector checkpoint ({_one_line(err)})") from None
    shape = (ckpt.window_length, ckpt.n_features)
    if expected_shape is not None and shape != tuple(expected_shape):
        raise CheckpointRejected(
            "shape",
            f"{name}: checkpoint takes windows of {shape[0]} steps x {shape[1]} features, "
            f"the serving model (and the topic) {expected_shape[0]} x {expected_shape[1]}",
        )
    try:
        scorer = build_scorer(ckpt, model)
    except Exception as err:
        where = model.device
        raise CheckpointRejected("scorer", f"{name}: cannot build a scorer on {where}: {_one_line(err)}") from None
    try:
        scores = scorer.score(probe_batch(probe_size, *shape))
    except Exception as err:
        raise CheckpointRejected("probe", f"{name}: scoring the probe batch failed: {_one_line(err)}") from None
    for what, values in (
        ("window logits", scores.window_logit),
        ("probabilities", scores.probability),
        ("step probabilities", scores.step_probability),
    ):
        if values is not None and not np.all(np.isfinite(values)):
            raise CheckpointRejected("probe", f"{name}: the probe batch scored to non-finite {what}")
    for what, values in (("probabilities", scores.probability), ("step probabilities", scores.step_probability)):
        if values is not None and not np.all((values >= 0.0) & (values <= 1.0)):
            raise CheckpointRejected("probe", f"{name}: the probe batch scored to {what} outside [0, 1]")
    if checkpoint.is_calibrated(ckpt):
        return scorer
    if model.uncalibrated != "warn":
        raise CheckpointRejected(
            "load",
            f"{name}: uncalibrated checkpoint (its threshold is a placeholder): run `detector calibrate` on it, "
            "or set model.uncalibrated=warn (DETECTOR_MODEL__UNCALIBRATED=warn) to serve it anyway",
        )
    structlog.get_logger("detector.serve.model_check").warning(
        "serving an uncalibrated checkpoint (model.uncalibrated=warn): its probabilities are not calibrated "
        "and its threshold is a placeholder; run `detector calibrate` on it",
        checkpoint=name,
        model_version=scorer.version,
    )
    return scorer


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
