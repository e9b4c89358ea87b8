"""``detector serve`` as a child process of the demo: configured only by DETECTOR_* variables, its JSON
log lines in a file, its HTTP endpoints found from that log.

The child runs in its own session (a Ctrl-C at the terminal reaches it only through the demo, as one
SIGTERM) and gets SIGTERM when the demo dies, even by SIGKILL (Linux).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from detector.errors import DetectorError
from detector.processes import ChildProcess, json_log

POLL_S = 0.2


class ServeProcess(ChildProcess):
    """One ``detector serve`` child. ``stop`` may be called any number of times; after it no child is left."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.url: str | None = None
        try:
            super().__init__([sys.executable, "-m", "detector.cli", "serve"], log_path, env)
        except OSError as err:
            raise DetectorError(f"cannot start detector serve: {err.strerror or err}") from None

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines skipped)."""
        return json_log(self.log_path)

    def last_error(self) -> str:
        """The last error-level log line, or the last line, for a one-line report of why it stopped."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in {"error", "critical"}:
                    return str(entry.get("event", line))
        return lines[-1].strip() if lines else "no output"

    def wait_ready(self, timeout_s: float, stopping: Callable[[], bool]) -> bool:
        """Wait until ``/readyz`` answers 200 (broker reached, group joined, model loaded); False when
        ``stopping()`` turned true first. DetectorError when the child exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not stopping():
            if not self.alive:
                raise DetectorError(
                    f"detector serve exited with code {self.process.returncode} before it was ready: "
                    f"{self.last_error()} (log: {self.log_path})"
                )
            if self.url is None:
                found = [e for e in self.log_events() if e.get("event") == "http listening"]
                self.url = str(found[0]["url"]) if found else None
            if self.url is not None and self.get("/readyz") is not None:
                return True
            if time.monotonic() > deadline:
                raise DetectorError(f"detector serve was not ready within {timeout_s:g} s (log: {self.log_path})")
            time.sleep(POLL_S)
        return False

    def get(self, path: str, timeout_s: float = 5.0) -> str | None:
        """The body of a 200 answer from the daemon's HTTP endpoint, else None."""
        if self.url is None:
            return None
        try:
            with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=timeout_s) as answer:
                return answer.read().decode() if answer.status == 200 else None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the daemon finishes its batch, commits, leaves the group), SIGKILL after ``timeout_s``;
        the exit code (negative: killed by that signal)."""
        return super().stop(timeout_s)
