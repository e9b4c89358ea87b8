"""The one error root of detector, and its hierarchy.

    DetectorError                  anything detector raises on purpose; the CLI prints it on one line
    ├── ConfigError                an invalid setting or option (CLI exit 2)
    ├── DataError                  a recording or CSV that cannot be read or does not fit (CLI exit 2)
    │   └── WindowError            one window that fails validation; carries a stable ``reason`` code
    ├── CheckpointError            a checkpoint that is missing, truncated, foreign or of another version
    │   └── CheckpointRejected     one that failed the check before serving; carries the ``stage`` that failed
    ├── TrainingError              training cannot proceed (no windows, no positives to learn from, ...)
    └── BrokerError                the embedded broker cannot start (no binary, port taken, died early)

Decode failures on the serving path are not raised through the loop: they become dead-letter data.
"""

from __future__ import annotations

from typing import Literal

RejectionStage = Literal["load", "shape", "scorer", "probe"]


class DetectorError(Exception):
    """Base of every error detector raises on purpose; ``str(err)`` is a one-line reason."""

    exit_code = 1


class ConfigError(DetectorError):
    """An invalid setting or command-line option."""

    exit_code = 2


class DataError(DetectorError):
    """A data file that is missing, unreadable, or whose content does not fit what was asked."""

    exit_code = 2


class WindowError(DataError):
    """One input window that fails validation.

    ``reason`` is a short stable code (``bad_json``, ``bad_shape``, ...) used for dead-letter headers and
    metrics; ``str(err)`` is the human detail.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class CheckpointError(DetectorError):
    """A checkpoint that cannot be used: missing, truncated, not a detector checkpoint, or another version."""

    exit_code = 2


class CheckpointRejected(CheckpointError):
    """A checkpoint refused before it serves, at start-up or on reload.

    ``stage`` is the step that failed: ``load`` (not a valid checkpoint), ``shape`` (not the serving window
    shape), ``scorer`` (cannot run on the configured device) or ``probe`` (scores a fixed batch to
    non-finite probabilities or ones outside [0, 1]); ``str(err)`` is one line naming the file.
    """

    def __init__(self, stage: RejectionStage, reason: str) -> None:
        super().__init__(reason)
        self.stage: RejectionStage = stage


class TrainingError(DetectorError):
    """Training cannot proceed with the data or options given."""

    exit_code = 2


class BrokerError(DetectorError):
    """The embedded broker cannot be started: its binary is missing, its port is taken, or it died."""

    exit_code = 1
