"""The daemon's HTTP server: a peer whose request is not complete within the request timeout
(silent, or trickling bytes) is dropped, and peers past the cap are refused at once; none
holds a thread for ever, and the endpoints (Prometheus' scrape, the orchestrator's probes)
answer again after them."""

from __future__ import annotations

import logging
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TypedDict, Unpack

import pytest

from streamtrk.client import DIRECT
from streamtrk.service.health import HealthServer, Readiness
from streamtrk.service.telemetry import Metrics


class Limits(TypedDict, total=False):
    """HealthServer's keyword limits."""

    max_connections: int
    request_timeout_s: float


@contextmanager
def serving(**limits: Unpack[Limits]) -> Iterator[tuple[HealthServer, Metrics]]:
    metrics, readiness = Metrics(), Readiness()
    readiness.set("ready")
    server = HealthServer(("127.0.0.1", 0), metrics, readiness, dict, list, **limits)
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
    assert failed.value.code == 500
    assert "the status is broken" in failed.value.read().decode()
    assert "Traceback" not in capfd.readouterr().err
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "/status" in line.getMessage() and line.exc_info is not None
