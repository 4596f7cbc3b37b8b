"""The daemon's HTTP server: a peer whose request is not complete within the request timeout
(silent, or trickling bytes) is dropped, and peers past the cap are refused at once; none
holds a thread for ever, and the endpoints (Prometheus' scrape, the orchestrator's probes)
answer again after them."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypedDict, Unpack

import pytest

import streamtrk.service.health as health
from streamtrk.client import DIRECT
from streamtrk.service.health import HealthServer, Readiness
from streamtrk.service.telemetry import Metrics


class Limits(TypedDict, total=False):
    """HealthServer's keyword limits."""

    max_connections: int
    request_timeout_s: float


@contextmanager
def serving(
    status: Callable[[], dict] = dict, **limits: Unpack[Limits]
) -> Iterator[tuple[HealthServer, Metrics]]:
    """A ready server started on a free loopback port, ``status`` its /status; closed after."""
    metrics, readiness = Metrics(), Readiness()
    readiness.set("ready")
    server = HealthServer(("127.0.0.1", 0), metrics, readiness, status, list, **limits)
    server.start()
    try:
        yield server, metrics
    finally:
        server.close()


def get(server: HealthServer, path: str = "/healthz") -> int:
    host, port = server.address
    with DIRECT.open(f"http://{host}:{port}{path}", timeout=5) as r:
        return r.status


def dropped(metrics: Metrics, cause: str) -> float | None:
    name = "streamtrk_http_connections_dropped_total"
    return metrics.registry.get_sample_value(name, {"cause": cause})


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``sock`` (end of stream, nothing sent) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def _until_served(server: HealthServer) -> None:
    """Wait until ``server`` answers: connections that held its places have ended."""
    t_end = time.monotonic() + 10
    while True:
        try:
            assert get(server) == 200
            return
        except OSError:
            if time.monotonic() > t_end:
                raise
            time.sleep(0.05)


def test_a_peer_that_sends_no_request_is_closed_after_the_timeout_and_counted() -> None:
    with serving(request_timeout_s=0.5) as (server, metrics):
        with socket.create_connection(server.address) as idle:
            assert get(server) == 200  # answered while the idle peer holds its connection
            assert closed_by_server(idle, within_s=5)
        assert dropped(metrics, "timeout") == 1 and dropped(metrics, "busy") == 0
        assert get(server) == 200


def test_a_peer_that_trickles_its_request_is_closed_at_the_deadline_and_counted() -> None:
    with serving(request_timeout_s=1) as (server, metrics):
        with socket.create_connection(server.address) as slow:
            slow.sendall(b"GET /healthz HTTP/1.0\r\n")
            t0, closed = time.monotonic(), False
            while not closed and time.monotonic() < t0 + 5:  # a byte each 0.2 s: no read waits 1 s
                try:
                    slow.sendall(b"x")
                except OSError:  # reset by the server
                    break
                closed = closed_by_server(slow, within_s=0.2)
            assert time.monotonic() - t0 < 3
        assert dropped(metrics, "timeout") == 1
        assert get(server) == 200


def test_peers_past_the_cap_are_closed_unanswered_and_counted() -> None:
    with serving(max_connections=4, request_timeout_s=60) as (server, metrics), ExitStack() as s:
        # Accepted in the order they connected: these four take the places.
        held = [s.enter_context(socket.create_connection(server.address)) for _ in range(4)]
        with socket.create_connection(server.address) as extra:
            assert closed_by_server(extra, within_s=5)  # not after the 60 s of a timeout
        assert dropped(metrics, "busy") == 1
        for sock in held:
            sock.close()
        _until_served(server)  # the four handlers see their peers go, and free their places
        assert dropped(metrics, "timeout") == 0


@pytest.mark.parametrize("bad", [{"max_connections": 0}, {"request_timeout_s": 0}])
def test_limits_must_be_positive(bad: Limits) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        HealthServer(("127.0.0.1", 0), Metrics(), Readiness(), dict, list, **bad)


def test_a_peer_that_resets_its_connection_leaves_no_traceback_on_stderr(capfd) -> None:
    """A TCP check that closes with a reset (as load balancers' do) is a peer gone, not an
    error of the server: no traceback (which bypasses the log's format) for each one."""
    with serving(max_connections=1) as (server, _):
        for request in (b"", b"GET /metrics HTTP/1.0\r\n\r\n"):
            with socket.create_connection(server.address) as peer:
                peer.sendall(request)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            _until_served(server)
    assert "Traceback" not in capfd.readouterr().err


def test_an_endpoint_that_fails_answers_500_with_the_reason_and_logs_it(capfd, caplog) -> None:
    def status() -> dict:
        raise RuntimeError("the status is broken")

    metrics, readiness = Metrics(), Readiness()
    server = HealthServer(("127.0.0.1", 0), metrics, readiness, status, list)
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            get(server, "/status")
        assert get(server, "/healthz") == 200  # the others still answer
    finally:
        server.close()
    assert failed.value.code == 500  # the error's type and message
    assert failed.value.read() == b"internal error: RuntimeError: the status is broken\n"
    assert "Traceback" not in capfd.readouterr().err
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "/status" in line.getMessage()
    assert line.exc_info and line.exc_info[0] is RuntimeError  # (not None: False is none)


def request(
    server: HealthServer, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, Readiness, list[str]]]:
    """A HealthServer without a daemon: its readiness and its problems set by the test."""
    readiness, found = Readiness(), list[str]()
    server = HealthServer(("127.0.0.1", 0), Metrics(), readiness, lambda: {"a": 1}, lambda: found)
    server.start()
    try:
        yield server, readiness, found
    finally:
        server.close()


def test_readyz_is_200_only_when_ready(served) -> None:
    """Loading, then ready, then draining: a load balancer sends events only while ready."""
    server, readiness, _ = served
    assert request(server, "/readyz")[::2] == (503, b"loading\n")
    readiness.set("ready")
    assert request(server, "/readyz")[::2] == (200, b"ready\n")
    readiness.set("draining")
    assert request(server, "/readyz")[::2] == (503, b"draining\n")


def test_healthz_is_503_naming_each_problem(served) -> None:
    """What the orchestrator restarts a daemon on, each problem said."""
    server, _, found = served
    assert request(server, "/healthz")[::2] == (200, b"ok\n")
    found.extend(["worker: no progress for 301 s", "monitor died"])
    assert request(server, "/healthz")[::2] == (
        503,
        b"worker: no progress for 301 s\nmonitor died\n",
    )


def test_head_answers_the_code_and_length_without_a_body(served) -> None:
    """Load balancers probe with HEAD: the GET's code and length, no body."""
    server, _, _ = served
    for path, code in (("/readyz", 503), ("/healthz", 200), ("/status", 200), ("/metrics", 200)):
        status, headers, body = request(server, path)
        h_status, h_headers, h_body = request(server, path, "HEAD")
        assert (h_status, h_body) == (code, b"") and status == code
        assert int(h_headers["Content-Length"]) == len(body) == int(headers["Content-Length"])


def test_a_query_string_is_ignored_and_an_unknown_path_is_404(served) -> None:
    """Probes that add a query string are answered as without it."""
    server, readiness, _ = served
    readiness.set("ready")
    assert request(server, "/readyz?probe=k8s")[::2] == (200, b"ready\n")
    assert request(server, "/healthz?x")[0] == 200
    assert request(server, "/nothing")[0] == 404
    assert request(server, "/")[0] == 404


def test_an_ipv6_host_is_served() -> None:
    """``http = "[::1]:PORT"``, as documented."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    server = HealthServer(("::1", 0), Metrics(), Readiness(), dict, list)
    server.start()
    try:
        conn = http.client.HTTPConnection("::1", server.address[1], timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        assert server.host_port.startswith("[::1]:")
    finally:
        server.close()


def test_a_peer_that_resets_is_not_logged_as_an_error(served, caplog) -> None:
    """A TCP check ending in a reset (before or after its request) is no error with a
    traceback in the daemon's log (the stderr test could not see the log, captured)."""
    server, _, _ = served
    with caplog.at_level(logging.DEBUG):
        for req in (b"", b"GET /metrics HTTP/1.0\r\n\r\n"):
            with socket.create_connection(server.address) as peer:
                peer.sendall(req)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.3)
        assert request(server, "/healthz")[0] == 200
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_head_sends_no_body_on_the_wire(served) -> None:
    """Read off the socket (http.client throws a HEAD's body away): none is sent."""
    server, _, _ = served
    for path in ("/readyz", "/metrics"):
        with socket.create_connection(server.address, timeout=5) as peer:
            peer.sendall(f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
            data = b""
            while chunk := peer.recv(65536):
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert b"Content-Length: " in head and rest == b""


def test_failing_endpoints_are_logged_with_a_traceback_once_a_while(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ANSWER_LOG_S (shortened here): a scrape that fails every 15 s is one line (with its
    traceback) a minute, the next one saying how many failed meanwhile."""
    monkeypatch.setattr(health, "ANSWER_LOG_S", 0.5)

    def status() -> dict:
        raise RuntimeError("the status is broken")

    with serving(status) as (server, _):
        for _ in range(3):
            with pytest.raises(urllib.error.HTTPError):
                get(server, "/status")
        [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert line.getMessage() == "the HTTP endpoint /status failed"  # the first: no count
        assert line.exc_info is not None
        time.sleep(0.6)
        assert request(server, "/status")[0] == 500
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert said[1:] == ["the HTTP endpoint /status failed (3 failures since the last line)"]


def test_a_server_never_started_closes_at_once() -> None:
    """The daemon closes it on any error after binding, started or not."""
    server = HealthServer(("127.0.0.1", 0), Metrics(), Readiness(), dict, list)
    closer = threading.Thread(target=server.close, daemon=True)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive()


def test_close_lets_an_answer_in_progress_finish_and_waits_no_longer_for_a_silent_peer():
    """A /status answer in progress as the server closes (the daemon exiting) is sent
    whole before close returns (the connection's daemon thread was cut at exit: a scrape
    failed); a peer that sends nothing holds close no longer than ``CLOSE_WAIT_S``."""
    answering, answers = threading.Event(), []

    def slow_status() -> dict[str, int]:
        answering.set()
        time.sleep(0.5)
        return {"a": 1}

    server = HealthServer(("127.0.0.1", 0), Metrics(), Readiness(), slow_status, list)
    server.start()
    url = f"http://{server.host_port}/status"
    scrape = threading.Thread(target=lambda: answers.append(urllib.request.urlopen(url).read()))
    with socket.create_connection(server.address):  # silent all along
        scrape.start()
        assert answering.wait(5)
        t0 = time.monotonic()
        server.close()
        assert time.monotonic() - t0 < health.CLOSE_WAIT_S + 0.5
        assert json.loads(answers[0]) == {"a": 1}  # before close returned
    scrape.join()


def test_a_silent_peer_is_closed_at_the_timeout_not_later() -> None:
    """The read deadline is ``request_timeout_s`` from the connection (not twice that)."""
    with (
        serving(request_timeout_s=1) as (server, _),
        socket.create_connection(server.address) as idle,
    ):
        t0 = time.monotonic()
        assert closed_by_server(idle, within_s=5)
        assert 0.9 < time.monotonic() - t0 < 1.9


def test_metrics_are_served_in_prometheus_text_format(served) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    server, _, _ = served
    assert request(server, "/metrics")[1]["Content-Type"] == CONTENT_TYPE_LATEST


def test_status_is_json_and_says_what_json_cannot_hold_as_text() -> None:
    """``/status`` is ``application/json``; a value JSON has no type for (a path, a
    timestamp) is its text, not a 500."""
    with serving(lambda: {"model": Path("/m/a.pt")}) as (server, _):
        code, headers, body = request(server, "/status")
    assert (code, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == {"model": "/m/a.pt"}


def test_ready_only_when_ready_not_while_draining() -> None:
    """``Readiness.ready`` (the ``streamtrk_ready`` gauge) is True in ``ready`` alone."""
    readiness = Readiness()
    states = []
    for state in ("loading", "ready", "draining"):
        readiness.set(state)
        states.append(readiness.ready)
    assert states == [False, True, False]


def test_an_ipv4_host_port_has_no_brackets() -> None:
    server = HealthServer(("127.0.0.1", 0), Metrics(), Readiness(), dict, list)
    try:
        assert server.host_port == f"127.0.0.1:{server.address[1]}"
    finally:
        server.close()


def test_the_documented_limits() -> None:
    """docs/metrics.md: a request not complete in 10 s, past 32 served at once; the failure
    line at most once a minute."""
    assert (health.REQUEST_TIMEOUT_S, health.MAX_CONNECTIONS, health.ANSWER_LOG_S) == (
        10.0,
        32,
        60.0,
    )


def test_a_request_late_in_its_time_still_gets_the_whole_answer_time() -> None:
    """Sending the answer has ``request_timeout_s`` of its own: a request complete just
    before its deadline, read by a client that pauses past that deadline, is answered
    whole (not cut off with what was left of the request's time)."""
    big = {"x": "a" * 12_000_000}  # more than the sockets' buffers hold
    with serving(lambda: big, request_timeout_s=3) as (server, _), socket.socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        peer.connect(server.address)
        time.sleep(2.0)
        peer.sendall(b"GET /status HTTP/1.0\r\n")  # a read then waits what is left
        time.sleep(0.05)
        peer.sendall(b"\r\n")
        time.sleep(1.5)  # past the request's deadline, within the answer's own time
        peer.settimeout(10)
        data = bytearray()
        while chunk := peer.recv(1 << 20):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) == length


def test_a_peer_that_goes_silent_mid_request_is_closed_at_the_deadline() -> None:
    """A read waits at most what is left of the request's time: a request line begun just
    before the deadline, never finished, is closed at the deadline, not a whole
    ``request_timeout_s`` after its last bytes."""
    with serving(request_timeout_s=2) as (server, metrics):
        with socket.create_connection(server.address) as peer:
            t0 = time.monotonic()
            time.sleep(1.5)
            peer.sendall(b"GET /healthz")  # no end of line: the request is not complete
            assert closed_by_server(peer, within_s=5)
            assert time.monotonic() - t0 < 2.9  # not 3.5 s: 2 s after its last bytes
        assert dropped(metrics, "timeout") == 1


def test_a_burst_of_connections_waits_in_the_listen_backlog() -> None:
    """Connections made faster than they are accepted (here: none yet) wait in the listen
    backlog of 128, rather than retrying their SYNs (a second's wait each)."""
    server = HealthServer(("127.0.0.1", 0), Metrics(), Readiness(), dict, list)
    try:
        with ExitStack() as peers:
            for _ in range(50):
                peers.enter_context(socket.create_connection(server.address, timeout=0.5))
    finally:
        server.close()


def test_a_connection_whose_thread_cannot_start_gives_its_place_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection's thread that fails to start (the process out of threads) is closed
    and its place freed: the next peer is served, not refused as busy."""
    start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def flaky(self: threading.Thread) -> None:
        if failures and self.name == health.HANDLER_THREAD:
            raise failures.pop()
        start(self)

    monkeypatch.setattr(threading.Thread, "start", flaky)
    with serving(max_connections=1) as (server, metrics):
        with socket.create_connection(server.address) as first:
            assert closed_by_server(first, within_s=5)
        assert get(server) == 200
        assert dropped(metrics, "busy") == 0
