"""The daemon's health: liveness (the loop makes progress) and readiness (broker reached, group joined,
model loaded, output acknowledged), what ``/healthz`` and ``/readyz`` answer; set and read from any thread.

Liveness holds while the last beat is at most ``stale_after_s`` old: a loop that beats on every iteration,
its retry loops included, counts as alive while idle or retrying, and one stuck that long does not.
Readiness holds only while every part holds; each part that does not gives its reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Health:
    """Liveness (the loop beats) and readiness (broker, group, model, output delivered); safe to share
    between threads.

    A new ``Health`` counts as alive (its creation is the first beat) and not ready.
    """

    def __init__(self, stale_after_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be > 0")
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._last_beat = clock()
        self._lock = threading.Lock()
        self._broker: str | None = "broker not connected yet"  # None = fine, else why not
        self._group: str | None = "consumer group not joined yet"
        self._model_version: str | None = None
        self._delivery: str | None = None  # None = output is acknowledged, else why not

    def beat(self) -> None:
        """The loop made progress. Cheap enough to call on every iteration."""
        self._last_beat = self._clock()

    def set_broker(self, reachable: bool, reason: str = "") -> None:
        with self._lock:
            self._broker = None if reachable else f"broker unreachable{': ' + reason if reason else ''}"

    def set_group(self, joined: bool, reason: str = "") -> None:
        with self._lock:
            self._group = None if joined else f"consumer group not joined{': ' + reason if reason else ''}"

    def set_delivery(self, flowing: bool, reason: str = "") -> None:
        """Whether output is being acknowledged; while it is not (retried), the member is not ready."""
        with self._lock:
            self._delivery = None if flowing else f"output delivery stalled{': ' + reason if reason else ''}"

    def set_model(self, version: str | None) -> None:
        """The version now serving, or None when no model is loaded."""
        with self._lock:
            self._model_version = version

    def liveness(self) -> tuple[bool, str]:
        """(alive, one line): alive while the last beat is at most ``stale_after_s`` old."""
        age = self._clock() - self._last_beat
        if age <= self.stale_after_s:
            return True, f"ok: last progress {age:.1f} s ago"
        return False, f"stalled: no progress for {age:.1f} s (limit {self.stale_after_s:g} s)"

    def readiness(self) -> tuple[bool, str]:
        """(ready, one line): ready when the broker is reachable, the group joined, a model loaded and
        output is not stalled."""
        with self._lock:
            reasons = [r for r in (self._broker, self._group, self._delivery) if r is not None]
            if self._model_version is None:
                reasons.append("no model loaded")
            version = self._model_version
        if reasons:
            return False, "not ready: " + "; ".join(reasons)
        return True, f"ready: model {version}"
