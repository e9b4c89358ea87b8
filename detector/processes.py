"""Process life: child processes tied to this one, stopped SIGTERM first, their JSON logs read back; and
SIGTERM / SIGINT handling for this process.

:func:`start_child` runs a child in its own session (a Ctrl-C at the terminal reaches it only through this
process) that gets SIGTERM when this process dies, even by SIGKILL (Linux); :class:`ChildProcess` is such a
child with its output in a log file. :func:`stop_process` stops any child the same way: SIGTERM, then
SIGKILL after a grace. :func:`json_log` reads a JSON log back. :class:`StopSignals` turns SIGTERM and
SIGINT into a stop request for the life of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A ``preexec_fn``: the child gets SIGTERM when the process that started it dies, even by SIGKILL
    (Linux; elsewhere it does nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_child(
    argv: Sequence[str], output: IO[bytes] | None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdin from /dev/null and stdout and stderr to ``output`` (None: this process's
    own), in its own session, tied to this process by :func:`die_with_parent` on Linux. Raises OSError when
    it cannot be run."""
    return subprocess.Popen(
        argv,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=True,  # a Ctrl-C at the terminal reaches the child only through us
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )


def stop_process(process: subprocess.Popen[Any], timeout_s: float) -> int:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout_s``; returns once it has exited, with
    its exit code (negative: killed by that signal). A process that has already exited is only reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


class ChildProcess:
    """One child of :func:`start_child` (raises OSError likewise) whose output goes to ``output``: a file path
    (appended to, and closed once the child is stopped), an open file, or None (this process's own).
    :meth:`stop` may be called any number of times; after it no child is left."""

    def __init__(
        self, argv: Sequence[str], output: Path | IO[bytes] | None, env: Mapping[str, str] | None = None
    ) -> None:
        self._log: IO[bytes] | None = None
        if isinstance(output, Path):
            output = self._log = output.open("ab")
        try:
            self.process = start_child(argv, output, env)
        except OSError:
            self._close_log()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float) -> int:
        """:func:`stop_process`, then the log file closed; the exit code (negative: killed by that signal)."""
        code = stop_process(self.process, timeout_s)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def json_log(path: Path) -> list[dict[str, Any]]:
    """The lines of a log file that are JSON objects, in order; every other line is skipped."""
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


class StopSignals:
    """SIGTERM and SIGINT handlers for the life of a ``with`` block; the previous handlers come back on exit.

    Each signal sets ``received`` (the last one handled) and calls the ``on_stop`` callbacks, which run in a
    signal handler and should only set flags or pass the signal on. With ``exit_on_second`` (the default) a
    second signal instead exits the process at once with code 128 + N, running nothing more. The instance
    is also a ``stopping()`` callable: true once a signal came. Outside the main thread, where Python
    handles no signals, nothing is installed.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, *, exit_on_second: bool = True) -> None:
        self.exit_on_second = exit_on_second
        self.received: int | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __call__(self) -> bool:
        return self.requested

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` at each signal from now on, and at once when one already came."""
        self._callbacks.append(callback)
        if self.requested:
            callback()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.exit_on_second and self.received is not None:
            os._exit(128 + signum)  # the operator insists: no clean-up
        self.received = signum
        for callback in self._callbacks:
            callback()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
