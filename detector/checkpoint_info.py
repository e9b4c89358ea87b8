"""What a checkpoint file holds, as a JSON-safe dict (:func:`describe`) and as lines for a terminal.

:func:`describe` reads a file through the checkpoint loader's full validation (never unpickling anything)
and returns one JSON-safe dict whose keys are stable (README, "Inspect a checkpoint"):

    path                 the file as given
    file_bytes           its size
    model_version        the first 16 hex digits of the SHA-256 of its bytes (what output records carry)
    format, format_version
    normalisation        how the network's inputs are made (features.NORMALISATIONS: ...-v2 measures distance
                         from the long-run context alone, ...-v3 from the nearer of the long-run and recent,
                         ...-v4 adds how far a step goes beyond the series' range)
    window_length        T, steps per window
    n_features, features F and the feature names, in input order
    architecture         the network config as stored (hidden_size, num_layers, pooling, event_types, ...)
    step_scoring         {"distance_anchor": slope, "anchor_floor": bool, "step_hold": rows}: what those
                         settings resolve to for this feature count (0, false and 1 = off)
    parameters           the number of weights
    heads                {"window": HEAD, "step": HEAD or null}, HEAD = {"calibration": method
                         ("none" when uncalibrated), "threshold": number, "rule": the rule that chose it}
    calibrated           whether the window head is calibrated (see the setting model.uncalibrated)
    training             the training summary as stored (epochs, validation metrics, ...); {} when none
    history_series       how many series' history the checkpoint carries (they start warm when served)

A defect of the file raises :class:`~detector.errors.CheckpointError` (one line), as every other reader does.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from detector.model import checkpoint
from detector.model.checkpoint import Head
from detector.model.config import NetworkConfig

UNCALIBRATED_METHOD = checkpoint.UNCALIBRATED["method"]
WIDTH = 100  # of the training lines, which may be long


def describe(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as the dict of the module docstring; CheckpointError on any defect."""
    data = checkpoint.read(path)
    ckpt = checkpoint.from_bytes(data, str(path))
    return {
        "path": str(path),
        "file_bytes": len(data),
        "model_version": ckpt.version,
        "format": checkpoint.FORMAT,
        "format_version": checkpoint.FORMAT_VERSION,  # from_bytes reads no other
        "normalisation": ckpt.stats.kind,
        "window_length": ckpt.window_length,
        "n_features": ckpt.n_features,
        "features": list(ckpt.feature_names),
        "architecture": ckpt.network.model_dump(mode="json"),
        "step_scoring": {
            "distance_anchor": ckpt.network.anchor_for(ckpt.n_features),
            "anchor_floor": ckpt.network.floor_for(ckpt.n_features),
            "step_hold": ckpt.network.hold_for(ckpt.n_features),
        },
        "parameters": sum(t.numel() for t in ckpt.state.values()),
        "heads": {"window": _head(ckpt.window), "step": None if ckpt.step is None else _head(ckpt.step)},
        "calibrated": checkpoint.is_calibrated(ckpt),
        "training": ckpt.training,
        "history_series": 0 if ckpt.history is None else len(ckpt.history),
    }


def _head(head: Head) -> dict[str, Any]:
    return {
        "calibration": str(head.calibration.get("method", UNCALIBRATED_METHOD)),
        "threshold": head.threshold,
        "rule": head.rule,
    }


def render(info: dict[str, Any]) -> list[str]:
    """``describe``'s dict as lines for a terminal."""
    arch = info["architecture"]
    n = arch["num_layers"]
    layers = f"{n} {'bidirectional ' if arch['bidirectional'] else ''}LSTM layer{'s' if n > 1 else ''}"
    heads = [name for name in ("window", "step") if arch[f"{name}_head"]]
    if arch["event_types"]:
        heads.append(f"event-type ({', '.join(arch['event_types'])})")
    lines = [
        f"checkpoint      {info['path']} ({info['file_bytes']:,} bytes)",
        f"model_version   {info['model_version']}",
        f"format          {info['format']} version {info['format_version']}, inputs {info['normalisation']}",
        *_wrapped(
            "windows",
            f"T={info['window_length']} steps x F={info['n_features']} features: " + ", ".join(info["features"]),
        ),
        f"network         {layers} of {arch['hidden_size']} units, {arch['pooling']} pooling, "
        f"dropout {arch['dropout']:g}, {info['parameters']:,} parameters",
        f"heads           {', '.join(heads)}"
        + (f"; binary bottleneck of {arch['binary_bottleneck']}" if arch["binary_bottleneck"] else ""),
    ]
    if arch["step_head"]:
        steps = info["step_scoring"]
        kind = "narrow" if NetworkConfig.model_validate(arch).is_narrow(info["n_features"]) else "wide"
        held = f"held over {steps['step_hold']} steps" if steps["step_hold"] > 1 else "not held"
        floor = " (floored)" if steps["anchor_floor"] else ""
        features = f"{info['n_features']} feature{'s' if info['n_features'] != 1 else ''}"
        lines.append(
            f"steps           distance anchor {steps['distance_anchor']:g}{floor}, {held} (a {kind} model: "
            f"{features}, narrow_max_features {arch['narrow_max_features']})"
        )
    for name, head in info["heads"].items():
        if head is not None:
            lines.append(
                f"{name + ' head':<15} calibration {head['calibration']}, "
                f"threshold {head['threshold']:.4f} (rule {head['rule']})"
            )
    if not info["calibrated"]:
        lines.append("                uncalibrated: its threshold is a placeholder; run `detector calibrate`")
    lines.append(f"history         {info['history_series']:,} series start warm (their training history)")
    lines.extend(_training_lines(info["training"]))
    return lines


def _training_lines(training: dict[str, Any]) -> list[str]:
    """The stored training summary, one line for the scalars and one per nested section (``validation``);
    whatever types the file holds (the loader checks none of them)."""
    if not training:
        return ["training        (no summary stored)"]
    scalars = {k: v for k, v in training.items() if not isinstance(v, dict)}
    lines = _wrapped("training", _pairs(scalars)) if scalars else []
    for key, section in training.items():
        if isinstance(section, dict):
            lines += _wrapped(str(key), _pairs(section))
    return lines


def _wrapped(label: str, text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{label:<15} ", subsequent_indent=" " * 16) or [label]


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {_number(value)}" for key, value in values.items())


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return f"{value:,}"
