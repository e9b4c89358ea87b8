"""Checkpoints: one safetensors file, weights plus JSON metadata; never unpickled.

The file holds everything needed to rebuild and use the model with no outside configuration: format
version, architecture, feature count and names, window length, input normalisation, calibrators and
threshold rules per head, and training metrics. ``version`` (the ``model_version`` of output records) is
the first 16 hex digits of the SHA-256 of the file's bytes. Writers go through :func:`save`, which writes
a temporary file and renames it, so a reader never sees half a checkpoint.

A file is checked against these limits from its header alone, before any weight is read or any network
built (the shapes an architecture implies come from torch's meta device, which allocates nothing), so a
small file cannot make a reader allocate more than the limits allow:

    header             at most MAX_HEADER_BYTES (4 MiB) of JSON
    window_length      1 to MAX_WINDOW_LENGTH (4096) steps
    features           1 to MAX_FEATURES (256), and window_length x features at most MAX_WINDOW_VALUES (65,536)
    parameters         at most MAX_PARAMETERS (25 million: 100 MB in float32) implied by the architecture
    weights            exactly the tensor names and shapes the architecture implies
    thresholds         probabilities in [0, 1], or THRESHOLD_MAX, just above 1, to flag nothing (both heads)
    series history     at most MAX_HISTORY_BYTES (64 MiB) of block summaries, consistent and finite
    normalisation      one of features.NORMALISATIONS; finite means, finite positive standard deviations,
                       5 per feature and 1 more
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from detector.errors import CheckpointError
from detector.model import calibration
from detector.model.config import NetworkConfig
from detector.model.context import BLOCK_ROWS, HISTORY_BLOCKS, HistoryState, state_bytes, upgraded_blocks
from detector.model.features import NORMALISATIONS, InputStats, input_channels
from detector.model.network import DetectorNet, hold
from detector.model.thresholds import FLAG_NOTHING

FORMAT = "detector-checkpoint"
# 2: inputs carry the series' history (normalisation window-robust-diff-history-v2; v3 since the recent
# context, which changes the inputs and not the layout of the file; v4 since the range, whose history blocks
# hold 5 summaries instead of 3: the normalisation names which, and an older reader refuses a v4 file by it)
FORMAT_VERSION = 2
UNCALIBRATED: dict[str, Any] = {"method": "none"}

MAX_HEADER_BYTES = 4 << 20
MAX_WINDOW_LENGTH = 4096
MAX_FEATURES = 256
MAX_WINDOW_VALUES = 65_536
MAX_PARAMETERS = 25_000_000
MAX_HISTORY_BYTES = 64 << 20
HISTORY = "history."  # tensor names of the series history start with this
# Thresholds compare with probabilities in [0, 1]; the one value above 1 is what a precision or false-alarm
# rule picks when no threshold meets its target, so that nothing is flagged.
THRESHOLD_MAX = FLAG_NOTHING


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
    # The series history the training recording left (detector.model.context): serving starts from it.
    history: HistoryState | None = None
    version: str = ""

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def calibration_name(self) -> str:
        return str(self.window.calibration.get("method", "none"))

    def build(self) -> DetectorNet:
        """The network with these weights, in eval mode, on the CPU."""
        net = DetectorNet(self.network, input_channels(self.n_features))
        net.load_state_dict(self.state)
        return net.eval()

    def step_targets(self, labels: np.ndarray) -> np.ndarray:
        """Per-step 0/1 labels (N, T) -> what this model's step probabilities estimate: the labels held over
        the model's step hold (``NetworkConfig.hold_for``), as in training."""
        held = hold(torch.from_numpy(np.asarray(labels, dtype=np.float32)), self.network.hold_for(self.n_features))
        return held.numpy().astype(np.int8)

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
        "normalisation": {"kind": ckpt.stats.kind, "mean": list(ckpt.stats.mean), "std": list(ckpt.stats.std)},
        "heads": {"window": head(ckpt.window), "step": head(ckpt.step)},
        "training": ckpt.training,
        "history": None if ckpt.history is None else {"series": list(ckpt.history.series)},
    }


def to_bytes(ckpt: Checkpoint) -> bytes:
    """The file content; deterministic for equal checkpoints."""
    meta = json.dumps(_metadata(ckpt), sort_keys=True, separators=(",", ":"))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in ckpt.state.items()}
    if ckpt.history is not None:
        history = ckpt.history
        arrays = {
            "blocks": history.blocks[:, :, : summary_rows(ckpt.stats.kind)],  # as its normalisation keeps them
            "partial": history.partial,
            "counts": history.counts,
        }
        for name, array in arrays.items():
            tensors[HISTORY + name] = torch.from_numpy(np.ascontiguousarray(array))
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


def _head(raw: Any, which: str) -> Head | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("calibration"), dict):
        raise ValueError(f"{which} head is not an object with a calibration")
    calibration.validate(raw["calibration"])
    threshold = raw["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"{which} head threshold {threshold!r} is not a number")
    if not (math.isfinite(threshold) and 0.0 <= threshold <= THRESHOLD_MAX):
        raise ValueError(f"{which} head threshold {threshold!r} is not a probability in [0, 1]")
    return Head(calibration=raw["calibration"], threshold=float(threshold), rule=str(raw["rule"]))


def _count(value: Any, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{what} {value!r} is not an integer from 1 to {limit}")
    return value


def _numbers(values: Any, what: str, count: int, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != count:
        raise ValueError(f"normalisation {what} does not hold {count} numbers (one per input channel)")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"normalisation {what} holds a value that is not a finite number")
    if positive and min(values) <= 0:
        raise ValueError(f"normalisation {what} holds a value <= 0")
    return tuple(float(v) for v in values)


def summary_rows(normalisation: str) -> int:
    """How many summaries per block the history of a checkpoint of ``normalisation`` holds."""
    return NORMALISATIONS[normalisation].summaries


def _history_header(raw: Any, header: dict[str, Any], n_features: int, summaries: int) -> tuple[str, ...] | None:
    """The series of the history the header declares (None: none), once its tensors' names, types and
    shapes are those of a HistoryState of that many series (``summaries`` per block) within
    MAX_HISTORY_BYTES in the file (from the header alone, before anything is read)."""
    names = {name for name in header if name.startswith(HISTORY)}
    if raw is None:
        if names:
            raise ValueError(f"tensors {sorted(names)} without a history")
        return None
    series = raw.get("series") if isinstance(raw, dict) else None
    if not isinstance(series, list) or not all(isinstance(x, str) for x in series):
        raise ValueError("history series is not a list of strings")
    s = len(series)
    expected = {
        HISTORY + "blocks": ("F64", [s, HISTORY_BLOCKS, summaries, n_features]),
        HISTORY + "partial": ("F64", [s, BLOCK_ROWS, n_features]),
        HISTORY + "counts": ("I64", [s, 3]),
    }
    if names != expected.keys():
        raise ValueError(f"history tensors {sorted(names)}, expected {sorted(expected)}")
    for name, (dtype, shape) in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != dtype or entry.get("shape") != shape:
            raise ValueError(f"history tensor {name} is not {dtype} of shape {shape}")
    size = state_bytes(s, n_features, summaries)
    if size > MAX_HISTORY_BYTES:
        raise ValueError(f"a history of {size:,} bytes, the limit is {MAX_HISTORY_BYTES:,}")
    return tuple(series)


def _weight_shapes(network: NetworkConfig, in_channels: int) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes the architecture implies; nothing is allocated (the meta device)."""
    with torch.device("meta"):
        net = DetectorNet(network, in_channels)
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def _check_weights(header: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> None:
    """ValueError unless the header's tensors are exactly those of ``expected``, within MAX_PARAMETERS."""
    parameters = sum(math.prod(shape) for shape in expected.values())
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"the architecture has {parameters:,} parameters, the limit is {MAX_PARAMETERS:,}")
    found: dict[str, Any] = {}
    for name, entry in header.items():
        if name != "__metadata__" and not name.startswith(HISTORY):
            found[name] = entry.get("shape") if isinstance(entry, dict) else None
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            raise ValueError(f"weights lack {name!r}, which the architecture needs")
        if name not in expected:
            raise ValueError(f"weights hold {name!r}, which the architecture does not have")
        shape = found[name]
        if not isinstance(shape, list) or tuple(shape) != expected[name]:
            raise ValueError(f"weights {name!r} of shape {shape!r}, the architecture needs {list(expected[name])}")


def _header(data: bytes, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The safetensors header and the detector metadata, read within MAX_HEADER_BYTES."""
    if len(data) < 8:
        raise CheckpointError(f"{name}: not a detector checkpoint (only {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise CheckpointError(f"{name}: not a detector checkpoint (truncated or not a safetensors file)")
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{name}: not a detector checkpoint (a header of {header_len:,} bytes, the limit is {MAX_HEADER_BYTES:,})"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["detector"])
    except RecursionError:
        raise CheckpointError(f"{name}: not a detector checkpoint (metadata nested too deeply)") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{name}: not a detector checkpoint (no detector metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not a detector checkpoint (foreign safetensors file)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: checkpoint format version {meta.get('format_version')!r}, "
            f"this detector reads version {FORMAT_VERSION}"
        )
    return header, meta


def _architecture(raw: Any) -> Any:
    """A stored architecture in today's terms: one written before a scoring setting existed was trained
    without it (no distance slope, no floor under it, no step hold for either kind of model), and
    ``distance_anchor_max_features`` is now ``narrow_max_features`` (before the step hold, `train` stored
    slope 0 in wider models itself)."""
    if not isinstance(raw, dict):
        return raw
    arch = {"distance_anchor": 0.0, "anchor_floor": False, "step_hold": 1, "narrow_step_hold": 1, **raw}
    if "distance_anchor_max_features" in arch:
        arch.setdefault("narrow_max_features", arch.pop("distance_anchor_max_features"))
    return arch


def from_bytes(data: bytes, name: str = "checkpoint") -> Checkpoint:
    """Parse and validate checkpoint bytes; any defect raises :class:`CheckpointError` with one line.

    The limits of the module docstring are checked before any weight is read or any network built.
    """
    header, meta = _header(data, name)
    try:
        network = NetworkConfig.model_validate(_architecture(meta["architecture"]))
        window_length = _count(meta["window_length"], "window_length", MAX_WINDOW_LENGTH)
        features = meta["features"]
        if not isinstance(features, list):
            raise ValueError("features is not a list of names")
        n_features = _count(len(features), "feature count", MAX_FEATURES)
        if window_length * n_features > MAX_WINDOW_VALUES:
            raise ValueError(
                f"windows of {window_length} x {n_features} values, the limit is {MAX_WINDOW_VALUES:,} values"
            )
        norm = meta["normalisation"]
        if not isinstance(norm["kind"], str) or norm["kind"] not in NORMALISATIONS:
            raise ValueError(
                f"normalisation {repr(norm['kind'])[:80]}, this detector reads "
                f"{' or '.join(map(repr, NORMALISATIONS))} (train the model again)"
            )
        channels = input_channels(n_features)
        mean, std = _numbers(norm["mean"], "mean", channels), _numbers(norm["std"], "std", channels, True)
        stats = InputStats(mean, std, norm["kind"])
        heads = meta["heads"]
        window, step = _head(heads["window"], "window"), _head(heads["step"], "step")
        _check_weights(header, _weight_shapes(network, channels))
        history_series = _history_header(meta.get("history"), header, n_features, summary_rows(stats.kind))
        tensors = load_tensors(data)
        history = None
        if history_series is not None:
            blocks, partial, counts = (tensors.pop(HISTORY + name).numpy() for name in ("blocks", "partial", "counts"))
            history = HistoryState(history_series, upgraded_blocks(blocks), partial, counts)
            history.check()
        ckpt = Checkpoint(
            network=network,
            state=tensors,
            window_length=window_length,
            feature_names=tuple(str(f) for f in features),
            stats=stats,
            window=window or Head(),
            step=step,
            training=dict(meta.get("training") or {}),
            history=history,
            version=content_version(data),
        )
        ckpt.build()  # the weights load into the network
    except CheckpointError:
        raise
    except (SafetensorError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{name}: corrupt detector checkpoint ({first})") from None
    return ckpt


def read(path: str | Path) -> bytes:
    """The file's bytes; :class:`CheckpointError` with one line when it is missing or unreadable."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror})") from None


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint file; :class:`CheckpointError` on any defect, including a missing file."""
    return from_bytes(read(path), str(path))


def is_calibrated(ckpt: Checkpoint) -> bool:
    """Whether the window head has a calibrator (``detector calibrate`` fitted one)."""
    return ckpt.calibration_name != UNCALIBRATED["method"]
