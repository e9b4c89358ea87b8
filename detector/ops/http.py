"""``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded HTTP server beside the loop.

How the loop is meant to call it:

- The daemon builds one :class:`Health` and one ``OpsServer(settings.http.host, settings.http.port,
  metrics.registry, health)``, calls ``start()`` before connecting to the broker and ``close()`` after the
  runner has returned.
- Liveness: the runner calls ``health.beat()`` once per loop iteration (top of the ``while`` in
  ``Runner.run``; it polls at least every ``idle_poll_s``, so an idle loop still beats) and inside its
  retry loops (e.g. on the ``delivery_retry`` hook); ``connect`` beats while it retries. ``/healthz``
  answers 503 once no beat has come for ``stale_after_s``.
- Readiness: ``health.set_broker(True)`` after a successful poll, ``set_broker(False, reason)`` when a poll
  raises ``SourceError`` (and before the first connection); ``set_group(True)`` from
  ``Runner.on_assigned`` (even with no partitions: the member has joined), ``set_group(False, reason)``
  from ``on_lost`` and on close; ``set_model(version)`` once a scorer is loaded and on every swap.
  ``/readyz`` answers 200 only when all three hold, else 503 with the reasons as plain text.

What a caller may rely on: the server never touches the loop (it only reads ``Health`` and the registry),
a failing request is answered 500 and logged once, access logs are silent, and ``close()`` stops the
thread and releases the port. The only exception raised is at construction, when the address cannot be
bound (``ConfigError``, naming the setting), before the loop starts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest

from detector.errors import ConfigError

TEXT = "text/plain; charset=utf-8"
# The classic text format, which every Prometheus version parses (our names are plain ASCII). Spelled out:
# prometheus_client >= 0.22 names its 1.0.0 format CONTENT_TYPE_LATEST.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Health:
    """Liveness (the loop beats) and readiness (broker, group, model); safe to share between threads.

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

    def beat(self) -> None:
        """The loop made progress. Cheap enough to call on every iteration."""
        self._last_beat = self._clock()

    def set_broker(self, reachable: bool, reason: str = "") -> None:
        with self._lock:
            self._broker = None if reachable else f"broker unreachable{': ' + reason if reason else ''}"

    def set_group(self, joined: bool, reason: str = "") -> None:
        with self._lock:
            self._group = None if joined else f"consumer group not joined{': ' + reason if reason else ''}"

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
        """(ready, one line): ready when the broker is reachable, the group joined and a model loaded."""
        with self._lock:
            reasons = [r for r in (self._broker, self._group) if r is not None]
            if self._model_version is None:
                reasons.append("no model loaded")
            version = self._model_version
        if reasons:
            return False, "not ready: " + "; ".join(reasons)
        return True, f"ready: model {version}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds up close()
    registry: CollectorRegistry
    health: Health
    failed: set[str]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its request
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, generate_latest(self.server.registry), METRICS_CONTENT_TYPE)
            elif path == "/healthz":
                alive, line = self.server.health.liveness()
                self._send(200 if alive else 503, (line + "\n").encode())
            elif path == "/readyz":
                ready, line = self.server.health.readiness()
                self._send(200 if ready else 503, (line + "\n").encode())
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to answer
        except Exception as err:
            if path not in self.server.failed:
                self.server.failed.add(path)
                structlog.get_logger("detector.ops.http").error("http request failed", path=path, error=repr(err))
            with contextlib.suppress(OSError):
                self._send(500, b"internal error\n")

    def _send(self, status: int, body: bytes, content_type: str = TEXT) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs off: probes every few seconds would drown the daemon's own lines."""


class OpsServer:
    """The operations endpoints on ``host:port`` (port 0 = any free port; see :attr:`port`)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        server_class = _Server6 if ":" in host else _Server  # an IPv6 address such as "::"
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {host}:{port} for /metrics, /healthz, /readyz "
                f"(http.host / http.port, DETECTOR_HTTP__HOST / DETECTOR_HTTP__PORT): {err.strerror or err}"
            ) from None
        self._server.registry = registry
        self._server.health = health
        self._server.failed = set()
        self.host = host
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port (the one chosen by the system when 0 was asked for)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"

    def start(self) -> OpsServer:
        """Serve from a daemon thread; returns self. Calling it twice is a no-op."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="detector-http", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> OpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
