"""``/metrics``, ``/healthz`` and ``/readyz`` on a small HTTP server beside the loop, bounded against slow clients.

``/healthz`` answers from :meth:`Health.liveness <detector.serve.health.Health.liveness>` and ``/readyz``
from its ``readiness`` (200, else 503 with the reasons as plain text); ``/metrics`` renders the registry.

What a caller may rely on: the server never touches the loop (it only reads ``Health`` and the registry),
a failing request is answered 500 and logged once, access logs are silent, no client holds more than a
socket for a few seconds (see :class:`OpsServer`), and ``close()`` stops its threads and releases the port.
The only exception raised is at construction, when the address cannot be bound (``ConfigError``, naming the
setting), before the loop starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import structlog
from prometheus_client import CollectorRegistry, generate_latest

from detector.errors import ConfigError
from detector.serve.health import Health

TEXT = "text/plain; charset=utf-8"
# The classic text format, which every Prometheus version parses (our names are plain ASCII). Spelled out:
# prometheus_client >= 0.22 names its 1.0.0 format CONTENT_TYPE_LATEST.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


MAX_CONNECTIONS = 64  # open at once; at the limit a new one evicts the longest wait for a request to arrive
REQUEST_TIMEOUT_S = 5.0  # for a whole request to arrive, and again for its whole response to be taken
MAX_REQUEST_BYTES = 8192  # request line and headers: requests here have no body
RENDER_THREADS = 2  # /metrics renders off the event loop, so a slow collector never delays /healthz
ACCEPT_RETRY_S = 0.1  # after a failed accept (the process out of file descriptors): no busy loop
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets, leaving the kernel nothing to send


class OpsServer:
    """The operations endpoints on ``host:port`` (port 0 = any free port; see :attr:`port`).

    Slow or hostile clients cost a socket each, never a thread, and are bounded in number and time: one
    thread runs an event loop that reads every request and writes every response, answering /healthz and
    /readyz itself, and at most ``RENDER_THREADS`` more render /metrics. At most ``max_connections`` are
    open: at the limit a new connection evicts the one that has waited longest for its request to arrive,
    or is closed at once when all of them are being answered. A request (line and headers, at most
    ``MAX_REQUEST_BYTES``, else 431) must arrive whole within ``request_timeout_s`` and its response be
    taken within ``request_timeout_s`` more, else the connection is reset. One request per connection
    (HTTP/1.0, ``Connection: close``); GET and HEAD only (else 405).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # an IPv6 address such as "::"
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=128)
        except OSError as err:
            raise ConfigError(
                f"cannot listen on {host}:{port} for /metrics, /healthz, /readyz "
                f"(http.host / http.port, DETECTOR_HTTP__HOST / DETECTOR_HTTP__PORT): {err.strerror or err}"
            ) from None
        self._sock.setblocking(False)
        self.host = host
        self._registry = registry
        self._health = health
        self._timeout = request_timeout_s
        self._max_connections = max_connections
        self._render = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="detector-http-render")
        self._failed: set[str] = set()  # endpoints whose failure is logged already
        self._open: set[asyncio.Task[bool]] = set()
        self._reading: dict[socket.socket, asyncio.Task[bool]] = {}  # open, still reading; oldest first
        self._stop: Callable[[], object] | None = None  # set by start()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port (the one chosen by the system when 0 was asked for)."""
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"

    def start(self) -> OpsServer:
        """Serve from a daemon thread; returns self. Calling it twice is a no-op."""
        if self._thread is None and not self._closed:
            loop = asyncio.new_event_loop()
            serving = loop.create_task(self._accept())
            self._stop = functools.partial(loop.call_soon_threadsafe, serving.cancel)
            self._thread = threading.Thread(target=self._run, args=(loop, serving), name="detector-http", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, drop every open connection and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None or self._stop is None:
            self._sock.close()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self._stop()
            self._thread.join(timeout=5)
        self._render.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> OpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, loop: asyncio.AbstractEventLoop, serving: asyncio.Task[None]) -> None:
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(serving)
            loop.run_until_complete(_drop_connections())
        finally:
            self._sock.close()
            loop.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError:  # out of file descriptors, or a connection reset before accepted: try again
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if not self._make_room():
                _close(conn, reset=True)
                continue
            task = loop.create_task(self._connection(conn))
            task.add_done_callback(functools.partial(self._forget, conn))
            self._open.add(task)
            self._reading[conn] = task
            await asyncio.sleep(0)  # the new connection reads what has arrived before the next is accepted

    def _make_room(self) -> bool:
        """Whether a new connection fits, after evicting the longest wait for a request if it must."""
        if len(self._open) < self._max_connections:
            return True
        if not self._reading:
            return False
        oldest = self._reading.pop(next(iter(self._reading)))
        self._open.discard(oldest)
        oldest.cancel()
        return True

    async def _connection(self, conn: socket.socket) -> bool:
        """Read one request and answer it; whether the whole response was handed to the kernel in time."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                head = await _read_head(loop, conn)
            self._reading.pop(conn, None)
            if head is None:  # the client left without asking
                return True
            response = await self._respond(head)
            async with asyncio.timeout(self._timeout):
                await loop.sock_sendall(conn, response)
        except (TimeoutError, OSError):  # too slow, or gone
            return False
        return True

    def _forget(self, conn: socket.socket, task: asyncio.Task[bool]) -> None:
        """Close a connection however its task ended: gracefully once answered, else with a reset."""
        self._reading.pop(conn, None)
        self._open.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            structlog.get_logger("detector.serve.http").error("http connection failed", error=repr(error))
        _close(conn, reset=task.cancelled() or error is not None or not task.result())

    async def _respond(self, head: bytes) -> bytes:
        """The whole response to a request head (400, 405 and 431 included)."""
        if len(head) > MAX_REQUEST_BYTES:
            return _response(431, b"request header fields too large\n")
        parts = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, b"bad request\n")
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        content_type = TEXT
        try:
            if path == "/metrics":
                async with asyncio.timeout(self._timeout):
                    body = await asyncio.get_running_loop().run_in_executor(
                        self._render, generate_latest, self._registry
                    )
                status, content_type = 200, METRICS_CONTENT_TYPE
            elif path == "/healthz":
                alive, line = self._health.liveness()
                status, body = (200 if alive else 503), (line + "\n").encode()
            elif path == "/readyz":
                ready, line = self._health.readiness()
                status, body = (200 if ready else 503), (line + "\n").encode()
            else:
                status, body = 404, b"not found: try /metrics, /healthz or /readyz\n"
        except Exception as err:  # only the three endpoints run code that can fail: the set stays small
            if path not in self._failed:
                self._failed.add(path)
                structlog.get_logger("detector.serve.http").error("http request failed", path=path, error=repr(err))
            status, body, content_type = 500, b"internal error\n", TEXT
        return _response(status, b"" if method == "HEAD" else body, content_type, length=len(body))


async def _drop_connections() -> None:
    """Cancel every other task of the loop, the connections, and wait for them: their sockets are closed."""
    connections = asyncio.all_tasks() - {asyncio.current_task()}
    for task in connections:
        task.cancel()
    await asyncio.gather(*connections, return_exceptions=True)


async def _read_head(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes | None:
    """The request up to the blank line after its headers; longer than ``MAX_REQUEST_BYTES`` when it does not
    end within them; None when the client closes first."""
    head = bytearray()
    while True:
        chunk = await loop.sock_recv(conn, MAX_REQUEST_BYTES + 1 - len(head))
        if not chunk:
            return None
        start = max(0, len(head) - 3)  # the blank line may straddle two reads
        head += chunk
        for end in (b"\r\n\r\n", b"\n\n"):
            if (found := head.find(end, start)) >= 0:
                return bytes(head[: found + len(end)])
        if len(head) > MAX_REQUEST_BYTES:
            return bytes(head)


def _response(status: int, body: bytes, content_type: str = TEXT, length: int | None = None, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nCache-Control: no-store\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    return head.encode("ascii") + body


def _close(conn: socket.socket, reset: bool) -> None:
    if reset:
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    conn.close()
