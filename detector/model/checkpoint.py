"""Checkpoints: one safetensors file, weights plus JSON metadata; never unpickled.

The file holds everything needed to rebuild and use the model with no outside configuration: format
version, architecture, feature count and names, window length, input normalisation, calibrators and
threshold rules per head, and training metrics. ``version`` (the ``model_version`` of output records) is
the first 16 hex digits of the SHA-256 of the file's bytes. Writers go through :func:`save`, which writes
a temporary file and renames it, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from detector.errors import CheckpointError
from detector.model import calibration
from detector.model.config import NetworkConfig
from detector.model.features import CHANNELS_PER_FEATURE, NORMALISATION, InputStats
from detector.model.network import DetectorNet

FORMAT = "detector-checkpoint"
FORMAT_VERSION = 1
UNCALIBRATED: dict[str, Any] = {"method": "none"}


@dataclass(frozen=True)
class Head:
    """How one head's logits become decisions: calibrator parameters and the threshold with its rule."""

    calibration: dict[str, Any] = field(default_factory=lambda: dict(UNCALIBRATED))
    threshold: float = 0.5
    rule: str = "0.5"


@dataclass(frozen=True)
class Checkpoint:
    """A model and everything that turns its logits into flags. ``version`` is set by save/load."""

    network: NetworkConfig
    state: dict[str, torch.Tensor]
    window_length: int
    feature_names: tuple[str, ...]
    stats: InputStats
    window: Head = Head()
    step: Head | None = None  # present when the per-step head is on
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def calibration_name(self) -> str:
        return str(self.window.calibration.get("method", "none"))

    def build(self) -> DetectorNet:
        """The network with these weights, in eval mode, on the CPU."""
        net = DetectorNet(self.network, self.n_features * CHANNELS_PER_FEATURE)
        net.load_state_dict(self.state)
        return net.eval()

    def with_heads(self, window: Head, step: Head | None) -> Checkpoint:
        return replace(self, window=window, step=step, version="")


def _metadata(ckpt: Checkpoint) -> dict[str, Any]:
    def head(h):
        return None if h is None else {"calibration": h.calibration, "threshold": h.threshold, "rule": h.rule}

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ckpt.network.model_dump(mode="json"),
        "window_length": ckpt.window_length,
        "features": list(ckpt.feature_names),
        "normalisation": {"kind": NORMALISATION, "mean": list(ckpt.stats.mean), "std": list(ckpt.stats.std)},
        "heads": {"window": head(ckpt.window), "step": head(ckpt.step)},
        "training": ckpt.training,
    }


def to_bytes(ckpt: Checkpoint) -> bytes:
    """The file content; deterministic for equal checkpoints."""
    meta = json.dumps(_metadata(ckpt), sort_keys=True, separators=(",", ":"))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in ckpt.state.items()}
    return save_tensors(tensors, metadata={"detector": meta})


def content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save(ckpt: Checkpoint, path: str | Path) -> str:
    """Write atomically (temporary file in the same folder, fsync, rename); return the version."""
    path = Path(path)
    data = to_bytes(ckpt)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return content_version(data)


def _head(raw: Any) -> Head | None:
    if raw is None:
        return None
    calibration.validate(raw["calibration"])
    return Head(calibration=raw["calibration"], threshold=float(raw["threshold"]), rule=str(raw["rule"]))


def from_bytes(data: bytes, name: str = "checkpoint") -> Checkpoint:
    """Parse and validate checkpoint bytes; any defect raises :class:`CheckpointError` with one line."""
    if len(data) < 8:
        raise CheckpointError(f"{name}: not a detector checkpoint (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise CheckpointError(f"{name}: not a detector checkpoint (truncated or not a safetensors file)")
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["detector"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{name}: not a detector checkpoint (no detector metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a detector checkpoint (foreign safetensors file)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: checkpoint format version {meta.get('format_version')!r}, "
            f"this detector reads version {FORMAT_VERSION}"
        )
    try:
        state = load_tensors(data)
        norm = meta["normalisation"]
        if norm["kind"] != NORMALISATION:
            raise ValueError(f"unknown normalisation {norm['kind']!r}")
        ckpt = Checkpoint(
            network=NetworkConfig.model_validate(meta["architecture"]),
            state=state,
            window_length=int(meta["window_length"]),
            feature_names=tuple(str(f) for f in meta["features"]),
            stats=InputStats(tuple(norm["mean"]), tuple(norm["std"])),
            window=_head(meta["heads"]["window"]) or Head(),
            step=_head(meta["heads"]["step"]),
            training=dict(meta.get("training") or {}),
            version=content_version(data),
        )
        if len(ckpt.stats.mean) != ckpt.n_features * CHANNELS_PER_FEATURE:
            raise ValueError("normalisation does not match the feature count")
        ckpt.build()  # weights must fit the architecture
    except CheckpointError:
        raise
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{name}: corrupt detector checkpoint ({first})") from None
    return ckpt


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint file; :class:`CheckpointError` on any defect, including a missing file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror})") from None
    return from_bytes(data, str(path))
