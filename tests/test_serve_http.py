"""The operations HTTP server, over real requests: /metrics, /healthz, /readyz, 404, failures and close."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from detector.errors import ConfigError
from detector.serve.health import Health
from detector.serve.http import OpsServer
from detector.serve.messages import TopicPartition
from detector.serve.metrics import METRIC_NAMES, PrometheusObserver
from tests.test_serve_metrics import FakeClock, families, value


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(stale_after_s=30, clock=clock)


@pytest.fixture
def metrics() -> PrometheusObserver:
    return PrometheusObserver()


@pytest.fixture
def server(metrics: PrometheusObserver, health: Health) -> Iterator[OpsServer]:
    with OpsServer("127.0.0.1", 0, metrics.registry, health) as srv:
        yield srv


def test_metrics_endpoint_serves_every_family_with_its_values(server, metrics):
    """GET /metrics answers Prometheus text with every METRIC_NAMES family and the values fed."""
    metrics.consumed(4)
    metrics.dead_letter("bad_shape")
    metrics.set_consumer_lag({TopicPartition("windows", 2): 17})
    metrics.model_loaded("0123456789abcdef")
    metrics.reloaded("rejected")
    status, content_type, body = get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    scrape = families(body)
    assert set(METRIC_NAMES) <= set(scrape)
    assert value(scrape["detector_windows_consumed_total"], "detector_windows_consumed_total") == 4
    dlq = scrape["detector_dead_letters_total"]
    assert value(dlq, "detector_dead_letters_total", reason="bad_shape") == 1
    lag = scrape["detector_consumer_lag_messages"]
    assert value(lag, "detector_consumer_lag_messages", topic="windows", partition="2") == 17
    assert value(scrape["detector_model_info"], "detector_model_info", version="0123456789abcdef") == 1
    assert value(scrape["detector_reloads_total"], "detector_reloads_total", result="rejected") == 1


def test_healthz_follows_the_loops_beat(server, health, clock):
    """/healthz is 200 while the last beat is recent, 503 once it is older than the limit, 200 after a beat."""
    health.beat()
    assert get(server.url + "/healthz")[0] == 200
    clock.now += 31
    status, content_type, body = get(server.url + "/healthz")
    assert (status, content_type) == (503, "text/plain; charset=utf-8")
    assert "no progress for 31.0 s" in body
    health.beat()
    assert get(server.url + "/healthz")[0] == 200


def test_readyz_needs_broker_group_and_model(server, health):
    """/readyz is 503 naming every missing condition, and 200 only when all three hold."""
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert "broker not connected yet" in body
    assert "consumer group not joined yet" in body
    assert "no model loaded" in body
    health.set_model("abc")
    health.set_broker(True)
    status, _, body = get(server.url + "/readyz")
    assert status == 503
    assert body.strip() == "not ready: consumer group not joined yet"
    health.set_group(True)
    assert get(server.url + "/readyz")[:1] == (200,)
    health.set_broker(False, "NoBrokersAvailable")
    status, _, body = get(server.url + "/readyz")
    assert (status, body.strip()) == (503, "not ready: broker unreachable: NoBrokersAvailable")
    assert get(server.url + "/healthz")[0] == 200  # not ready is not dead: the loop keeps retrying


def test_unknown_paths_are_404_and_query_strings_are_ignored(server):
    """Only the three endpoints exist; a query string does not change the route."""
    assert get(server.url + "/")[0] == 404
    assert get(server.url + "/metrics/extra")[0] == 404
    assert get(server.url + "/healthz?verbose=1")[0] == 200


def test_a_failing_scrape_is_a_500_and_the_server_keeps_serving(health):
    """A collector that raises answers 500; the server thread survives and answers the next request."""

    class Exploding(Collector):
        def collect(self):
            raise RuntimeError("collector broke")

    registry = CollectorRegistry()
    registry.register(Exploding())
    with OpsServer("127.0.0.1", 0, registry, health) as srv:
        assert get(srv.url + "/metrics")[0] == 500
        assert get(srv.url + "/metrics")[0] == 500
        assert get(srv.url + "/healthz")[0] == 200


def test_access_logs_are_silent(server, capfd):
    """Requests write nothing to stdout or stderr."""
    get(server.url + "/healthz")
    get(server.url + "/nowhere")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_close_releases_the_port(metrics, health):
    """After close() nothing answers on the port and it can be bound again; close() twice is harmless."""
    srv = OpsServer("127.0.0.1", 0, metrics.registry, health).start()
    port = srv.port
    assert port > 0
    assert get(srv.url + "/healthz")[0] == 200
    srv.close()
    srv.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_a_taken_port_fails_at_start_naming_the_setting(metrics, health):
    """Binding a port in use raises ConfigError naming DETECTOR_HTTP__PORT, before any loop runs."""
    with (
        OpsServer("127.0.0.1", 0, metrics.registry, health) as first,
        pytest.raises(ConfigError, match="DETECTOR_HTTP__PORT"),
    ):
        OpsServer("127.0.0.1", first.port, metrics.registry, health)


def connect(srv: OpsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes or resets ``sock`` within ``within_s`` (reading and dropping what it sends)."""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_idle_connections_hold_no_threads_and_healthz_still_answers(server):
    """200 connections that send nothing leave the thread count bounded and /healthz answered at once."""
    assert get(server.url + "/healthz")[0] == 200
    before = threading.active_count()
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(server)) for _ in range(200)]
        status, _, body = get(server.url + "/healthz")
        assert status == 200
        assert body.startswith("ok")
        assert threading.active_count() <= before + 2
        assert len(idle) == 200


def test_a_slow_loris_client_is_cut_off_within_the_request_limit(metrics, health):
    """A client sending its request a byte every 50 ms, each well within the limit, is disconnected once the
    whole-request limit (0.5 s) has passed."""
    with OpsServer("127.0.0.1", 0, metrics.registry, health, request_timeout_s=0.5) as srv, connect(srv) as sock:
        request = iter(b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 8000)
        deadline = time.monotonic() + 10  # generous, for a loaded machine
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(bytes([next(request)]))
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            else:
                closed = closed_by_server(sock, within_s=0.05)
        assert closed


def test_a_client_that_does_not_read_its_response_is_cut_off(health):
    """A response the client does not take (an 8 MB scrape, a 4 KB receive window) is reset after the limit."""

    class Huge(Collector):
        def collect(self):
            family = GaugeMetricFamily("huge", "a scrape far larger than the socket buffers", labels=["x"])
            family.add_metric(["x" * 8_000_000], 1.0)
            yield family

    registry = CollectorRegistry()
    registry.register(Huge())
    with OpsServer("127.0.0.1", 0, registry, health, request_timeout_s=0.5) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            poller = select.poll()
            poller.register(sock, select.POLLERR | select.POLLHUP | select.POLLRDHUP)
            deadline = time.monotonic() + 10  # the limit is 0.5 s (plus rendering); 10 s for a loaded machine
            events = 0
            while not events & (select.POLLERR | select.POLLHUP) and time.monotonic() < deadline:
                events = dict(poller.poll(100)).get(sock.fileno(), 0)
            assert events & (select.POLLERR | select.POLLHUP)
        assert get(srv.url + "/healthz")[0] == 200


def test_at_the_connection_limit_the_longest_idle_client_makes_room(metrics, health):
    """With every slot held by idle clients, a new request evicts the oldest idle one and is answered."""
    with (
        OpsServer("127.0.0.1", 0, metrics.registry, health, max_connections=4) as srv,
        contextlib.ExitStack() as stack,
    ):
        idle = [stack.enter_context(connect(srv)) for _ in range(4)]
        assert get(srv.url + "/healthz")[0] == 200
        assert closed_by_server(idle[0], within_s=10)
        assert not closed_by_server(idle[-1], within_s=0.2)


def test_an_oversized_request_head_is_refused(server):
    """Headers past 8 KiB get 431 and the connection is closed: a request's memory is bounded."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.0 431 ")


def test_head_is_answered_without_a_body_and_other_methods_are_405(server):
    """HEAD gets the GET headers and no body; POST is refused with 405 and Allow."""
    request = urllib.request.Request(server.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""
    request = urllib.request.Request(server.url + "/healthz", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    with info.value as err:
        assert err.code == 405
        assert err.headers["Allow"] == "GET, HEAD"


def test_close_drops_the_connections_still_open(metrics, health):
    """close() returns with every client connection closed, a half-sent request included."""
    srv = OpsServer("127.0.0.1", 0, metrics.registry, health).start()
    with connect(srv) as idle, connect(srv) as partial:
        partial.sendall(b"GET /healthz HT")
        assert get(srv.url + "/healthz")[0] == 200  # both are accepted by now: the server takes them in order
        srv.close()
        assert closed_by_server(idle, within_s=5)  # 5 s: generous, and half the old per-read timeout
        assert closed_by_server(partial, within_s=5)
