"""Hot reload: a new checkpoint file is loaded and validated off the hot path, then taken between batches.

Use: build it with the serving model's shape and the ``model`` settings, ``start()`` it, call ``take()``
between batches, ``close()`` it when done.

What a caller may rely on:

- ``take()`` hands over a validated new scorer (or None), to be used from the next batch on; it never
  blocks on a load: loading, validating and probing run on the watcher's own thread.

- The file is read once into bytes; those same bytes are hashed (SHA-256), parsed and validated, so a file
  replaced mid-read is never half-served (writers replace it atomically by rename; a non-atomic writer's
  half-written file fails validation and its completed content is tried at the next poll).
- A cheap ``stat`` check skips unchanged files between polls, but the content hash decides what is new:
  every ``full_check_every`` polls the file is hashed even when its ``stat`` looks unchanged.
- A new file must pass :func:`detector.serve.model_check.validated_scorer`, the check the first model passed
  at start-up, with the serving shape (T, F) expected and the daemon's ``model.uncalibrated`` (under
  ``refuse``, the default, an uncalibrated file is rejected). Only then is it offered to ``take()``;
  ``on_result`` hears ``ok``.
- A file that fails any stage is rejected: logged with the stage and reason, ``on_result`` hears
  ``rejected`` (once per distinct content), the old model keeps serving, and the same content (same hash)
  is never tried again until the file changes. A missing or unreadable file is logged once (again only
  after it has been readable in between), never counted as a rejection.
- Content equal to the serving version is not reloaded; if the file goes back to the serving version
  while a validated newer one waits to be taken, that one is dropped (the file on disk wins).
- ``on_result`` is called from the watcher's thread; an exception in it is logged and ignored.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from detector.errors import CheckpointRejected, RejectionStage
from detector.model import checkpoint
from detector.scoring import Scorer
from detector.serve.model_check import PROBE_SIZE, validated_scorer
from detector.settings import ModelSettings


@dataclass(frozen=True)
class ReloadOutcome:
    """What became of one new checkpoint content: accepted (offered to ``take()``) or rejected, and why."""

    path: str
    version: str  # the content version (model_version) of the bytes tried
    accepted: bool
    stage: RejectionStage | None = None  # the step that failed, for a rejection
    reason: str | None = None  # one line, for a rejection

    @property
    def result(self) -> Literal["ok", "rejected"]:
        """The ``result`` label of ``detector_reloads_total``."""
        return "ok" if self.accepted else "rejected"


class CheckpointWatcher:
    """Watches one checkpoint file; see the module docstring for what callers may rely on."""

    def __init__(
        self,
        path: str | Path,
        poll_seconds: float,
        expected_shape: tuple[int, int],
        model: ModelSettings,
        on_result: Callable[[ReloadOutcome], None] | None = None,
        *,
        serving_version: str | None = None,
        probe_size: int = PROBE_SIZE,
        full_check_every: int = 12,
    ) -> None:
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be > 0")
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self.expected_shape = (int(expected_shape[0]), int(expected_shape[1]))
        self.model = model
        self.on_result = on_result
        self.full_check_every = max(1, full_check_every)
        self.probe_size = probe_size
        self._log = structlog.get_logger("detector.serve.reload")
        self._lock = threading.Lock()  # _pending and _serving_version, shared with the loop's take()
        self._poll_lock = threading.Lock()  # one poll at a time
        self._pending: Scorer | None = None
        self._serving_version = serving_version
        self._stat_key: tuple[int, ...] | None = None
        self._last_digest: str | None = None
        self._polls = 0
        self._unreadable: str | None = None  # the last "cannot read" reason logged, until readable again
        self._rejected = False  # the file's content is the one last rejected
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_errors: set[str] = set()

    @property
    def serving_version(self) -> str | None:
        """The version the loop serves, as far as the watcher knows (updated by ``take()``)."""
        with self._lock:
            return self._serving_version

    @property
    def rejected(self) -> bool:
        """Whether the file holds content that was rejected: True from a rejection until the file holds
        content that validates or that equals the serving version (a roll-back)."""
        return self._rejected

    @property
    def polls(self) -> int:
        """How many polls have run (for tests and debugging)."""
        return self._polls

    # -- the loop's side ----------------------------------------------------------------------------------

    def take(self) -> Scorer | None:
        """The validated scorer waiting to be swapped in, once; None when there is none. Never blocks long."""
        with self._lock:
            scorer, self._pending = self._pending, None
            previous = self._serving_version
            if scorer is not None:
                self._serving_version = scorer.version
        if scorer is not None:
            self._log.info("model swapped in", model_version=scorer.version, previous_version=previous)
        return scorer

    # -- the watcher's side -------------------------------------------------------------------------------

    def start(self) -> CheckpointWatcher:
        """Poll on a daemon thread (first poll at once, then every ``poll_seconds``); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="detector-reload", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop polling; waits up to ``timeout`` for a validation in progress to finish. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as err:  # never let the watcher die; log each distinct fault once
                if repr(err) not in self._thread_errors:
                    self._thread_errors.add(repr(err))
                    self._log.error("checkpoint watch failed", path=str(self.path), error=repr(err))
            self._stop.wait(self.poll_seconds)

    def poll_once(self) -> ReloadOutcome | None:
        """Check the file once; the outcome when new content was tried, else None. Thread-safe."""
        with self._poll_lock:
            self._polls += 1
            try:
                st = os.stat(self.path)
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if key == self._stat_key and self._polls % self.full_check_every != 0:
                    return None
                data = self.path.read_bytes()
            except OSError as err:
                self._cannot_read(err)
                return None
            if self._unreadable is not None:
                self._log.info("checkpoint file readable again", path=str(self.path))
                self._unreadable = None
            self._stat_key = key
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._last_digest:
                return None
            self._last_digest = digest
            version = checkpoint.content_version(data)
            with self._lock:
                if version == self._serving_version:
                    self._rejected = False
                    if self._pending is not None:
                        self._log.info(
                            "checkpoint file back at the serving version; dropping the one not yet swapped in",
                            model_version=version,
                            dropped_version=self._pending.version,
                        )
                        self._pending = None
                    return None
            outcome = self._try(data, version)
            self._rejected = not outcome.accepted
        self._report(outcome)
        return outcome

    def _cannot_read(self, err: OSError) -> None:
        reason = "missing" if isinstance(err, FileNotFoundError) else (err.strerror or type(err).__name__)
        self._stat_key = None  # read it again as soon as it is back
        if reason != self._unreadable:
            self._unreadable = reason
            self._log.warning(
                "checkpoint file cannot be read; the serving model stays",
                path=str(self.path),
                reason=reason,
                serving_version=self.serving_version,
            )

    def _try(self, data: bytes, version: str) -> ReloadOutcome:
        try:
            scorer = validated_scorer(
                data, str(self.path), self.model, expected_shape=self.expected_shape, probe_size=self.probe_size
            )
        except CheckpointRejected as rejected:
            return ReloadOutcome(str(self.path), version, False, rejected.stage, str(rejected))
        with self._lock:
            self._pending = scorer
        return ReloadOutcome(str(self.path), version, True)

    def _report(self, outcome: ReloadOutcome) -> None:
        if outcome.accepted:
            self._log.info(
                "checkpoint validated; it takes over between batches",
                path=outcome.path,
                model_version=outcome.version,
                serving_version=self.serving_version,
            )
        else:
            self._log.warning(
                "checkpoint rejected; the serving model stays",
                path=outcome.path,
                model_version=outcome.version,
                stage=outcome.stage,
                reason=outcome.reason,
                serving_version=self.serving_version,
            )
        if self.on_result is not None:
            try:
                self.on_result(outcome)
            except Exception as err:
                self._log.error("reload callback failed", error=repr(err))
