"""The socket monitor thread: connections counted as they open and close, refusals apart
from peers that only leave; a death is visible (``died``, and so ``/healthz``)."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Mapping
from typing import Any

import pytest
import zmq
from live_daemon import wait_for

from streamtrk.service.monitor import (
    DISCONNECT_LOG_S,
    RECONNECT_AFTER_S,
    Reconnects,
    SocketMonitor,
)
from streamtrk.service.telemetry import Metrics


def test_a_monitor_reads_on_past_an_event_it_fails_to_handle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """libzmq's I/O thread waits once a monitor is a few thousand events behind, and the
    sockets' traffic with it (a new producer's message stopped coming after 768 probes of
    a monitor that had died on an event): an event ``handle`` fails on is logged, at most
    once a minute, and the thread reads on."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        monitor = SocketMonitor({"input": pull}, Metrics())

        failed: list[int] = []

        def broken(socket: str, message: Mapping[str, Any]) -> None:
            failed.append(message["event"])
            raise RuntimeError("monitor bug")

        monitor.handle = broken  # type: ignore[method-assign]
        monitor.start()
        for _ in range(1500):  # 3,000 events at least, none handled
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        with ctx.socket(zmq.PUSH) as producer:
            producer.setsockopt(zmq.LINGER, 0)
            producer.connect(f"tcp://127.0.0.1:{port}")
            producer.send(b"still served")
            assert pull.poll(10_000) and pull.recv() == b"still served"
        assert monitor.is_alive() and not monitor.died and monitor.error is None
        said = [r for r in caplog.records if r.name == "streamtrk.service.monitor"]
        assert [r.getMessage() for r in said] == [
            "the socket monitor could not handle a connection event (1 since the last line): "
            "monitor bug"
        ]
        wait_for(lambda: len(failed) >= 2 * 1500)  # read, then stopped
        monitor.stop()
        assert not monitor.died
        said = [r for r in caplog.records if r.name == "streamtrk.service.monitor"]
        more = re.fullmatch(
            r"the socket monitor could not handle (\d+) more events since the last line",
            said[-1].getMessage(),
        )  # the rest, said once the thread stops (or once their line is due)
        assert more is not None and int(more[1]) == len(failed) - 1
    finally:
        pull.close(linger=0)
        ctx.term()


def test_a_monitor_that_dies_says_so_and_one_stopped_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading its events failing ends the thread: ``died``, its error kept, and
    ``on_failure`` told (the daemon drains and exits 1); one stopped has not died."""
    import streamtrk.service.monitor as monitor_module

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    told: list[SocketMonitor] = []
    try:
        pull.bind("tcp://127.0.0.1:*")
        monitor = SocketMonitor({"input": pull}, Metrics(), on_failure=told.append)
        # not started yet (read through bool(): mypy would keep `not monitor.died` for good, and
        # take the thread's setting it below for unreachable)
        assert not bool(monitor.died)

        def unreadable(socket: zmq.Socket, flags: int = 0) -> dict:
            raise zmq.ZMQError(zmq.ETERM)

        monkeypatch.setattr(monitor_module, "recv_monitor_message", unreadable)
        monitor.start()
        push.connect(pull.getsockopt_string(zmq.LAST_ENDPOINT))  # an event to read
        monitor.join(30)
        assert monitor.died and told == [monitor]
        assert isinstance(monitor.error, zmq.ZMQError)

        stopped = SocketMonitor({"output": push}, Metrics())
        stopped.start()
        stopped.stop()
        assert not stopped.is_alive() and not stopped.died
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_connections_are_those_open_whatever_peers_come_and_go() -> None:
    """Two producers stay connected while a TCP port probe (a handshake 'failed' with no
    detail) and a peer of the wrong socket type (no handshake event from libzmq) come and
    go: neither is a refused handshake (the probe counted as one), both are counted as
    closed, and the count is 2 again once they have gone (it went down by one for each
    such peer, without end); then 0."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    peers = [ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)]
    metrics = Metrics()

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, {"socket": "input", **labels}) or 0.0

    port = pull.bind_to_random_port("tcp://127.0.0.1")
    monitor = SocketMonitor({"input": pull}, metrics)
    monitor.start()
    try:
        for peer in peers:
            peer.connect(f"tcp://127.0.0.1:{port}")
        wait_for(lambda: value("streamtrk_connections") == 2)
        socket.create_connection(("127.0.0.1", port)).close()
        wait_for(lambda: value("streamtrk_disconnects_total", cause="closed") == 1)
        wrong = ctx.socket(zmq.PUB)  # dropped by libzmq, and reconnecting while it lives
        wrong.connect(f"tcp://127.0.0.1:{port}")
        wait_for(lambda: value("streamtrk_disconnects_total", cause="closed") >= 2)
        wrong.close(linger=0)
        wait_for(lambda: value("streamtrk_connections") == 2)
        time.sleep(0.3)  # anything still to come from the closed peer
        assert value("streamtrk_connections") == 2
        for cause in ("auth", "handshake"):
            assert value("streamtrk_auth_failures_total", cause=cause) == 0
        closed = value("streamtrk_disconnects_total", cause="closed")
        for peer in peers:
            peer.close(linger=0)
        wait_for(lambda: value("streamtrk_connections") == 0)
        assert value("streamtrk_disconnects_total", cause="closed") == closed + 2
    finally:
        monitor.stop()
        for peer in peers:
            peer.close(linger=0)
        pull.close(linger=0)
        ctx.term()


@pytest.mark.parametrize(("curve", "events"), [(False, 2), (True, 3)], ids=["plain", "curve"])
def test_a_port_probe_costs_a_plain_socket_two_events(curve: bool, events: int) -> None:
    """A TCP probe's handshake failure (no detail) is a refusal on a CURVE socket only: a
    plain socket's monitor is not sent it (a third of a probe flood's events, which the
    thread read and left)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    if curve:
        pull.curve_secretkey = zmq.curve_keypair()[1]
        pull.curve_server = True
    metrics = Metrics()
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    monitor = SocketMonitor({"input": pull}, metrics)
    handled: list[int] = []
    handle = monitor.handle

    def counted(socket: str, message: Mapping[str, Any]) -> None:
        handled.append(message["event"])
        handle(socket, message)

    monitor.handle = counted  # type: ignore[method-assign]
    monitor.start()
    try:
        for _ in range(5):
            socket.create_connection(("127.0.0.1", port)).close()
        cause = "handshake" if curve else "closed"
        labels = {"socket": "input", "cause": cause}
        wait_for(
            lambda: metrics.registry.get_sample_value("streamtrk_disconnects_total", labels) == 5
        )
        time.sleep(0.2)  # anything still to come
        assert len(handled) == 5 * events
    finally:
        monitor.stop()
        pull.close(linger=0)
        ctx.term()


def test_on_a_curve_socket_a_peer_hanging_up_in_its_handshake_is_refused() -> None:
    """A client without CURVE may see the mismatch first and hang up: libzmq reports that
    as it reports a TCP probe. On a CURVE socket it counts as a refused handshake (the
    operator's sign of a client without CURVE); on a plain one (above) as closed."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.curve_secretkey = zmq.curve_keypair()[1]
    pull.curve_server = True
    metrics = Metrics()
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    monitor = SocketMonitor({"input": pull}, metrics)
    monitor.start()
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        labels = {"socket": "input", "cause": "handshake"}
        wait_for(lambda: metrics.registry.get_sample_value("streamtrk_disconnects_total", labels))
        assert metrics.registry.get_sample_value("streamtrk_auth_failures_total", labels) == 1
        assert metrics.registry.get_sample_value("streamtrk_connections", {"socket": "input"}) == 0
    finally:
        monitor.stop()
        pull.close(linger=0)
        ctx.term()


def test_a_curve_client_given_another_server_key_counts_refused_handshakes() -> None:
    """A forwarder's socket facing the daemons is a CURVE client: a daemon whose server key
    is not the one it was given hangs up in each handshake, a refusal (as the daemon
    counts it), not a peer that closed."""
    ctx = zmq.Context()
    server, client = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    server.curve_secretkey = zmq.curve_keypair()[1]
    server.curve_server = True
    client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
    client.curve_serverkey = zmq.curve_keypair()[0]  # not the server's
    metrics = Metrics()
    port = server.bind_to_random_port("tcp://127.0.0.1")
    monitor = SocketMonitor({"back": client}, metrics)
    monitor.start()
    try:
        client.connect(f"tcp://127.0.0.1:{port}")
        labels = {"socket": "back", "cause": "handshake"}
        wait_for(lambda: metrics.registry.get_sample_value("streamtrk_disconnects_total", labels))
        assert metrics.registry.get_sample_value("streamtrk_auth_failures_total", labels)
        closed = {"socket": "back", "cause": "closed"}
        assert not metrics.registry.get_sample_value("streamtrk_disconnects_total", closed)
    finally:
        monitor.stop()
        for sock in (client, server):
            sock.close(linger=0)
        ctx.term()


class _Watched:
    """A PULL socket bound on loopback, its started SocketMonitor; stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.metrics = Metrics()
        self.port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.monitor = SocketMonitor({"input": self.pull}, self.metrics)
        self.monitor.start()

    def connect_and_close(self, times: int) -> None:
        for _ in range(times):
            socket.create_connection(("127.0.0.1", self.port)).close()

    def closed(self) -> float:
        labels = {"socket": "input", "cause": "closed"}
        value = self.metrics.registry.get_sample_value("streamtrk_disconnects_total", labels)
        return value or 0.0

    def stop(self) -> None:
        self.monitor.stop()
        self.pull.close(linger=0)
        self.ctx.term()


def test_a_flood_of_connections_logs_a_line_a_while_each_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A port scanner (or a peer that reconnects in a loop) gets a line at most once a
    ``DISCONNECT_LOG_S`` per socket and cause; the lines count those since the line before,
    and the rest of a burst that stopped is said once its line is due. The metric counts
    each."""
    monkeypatch.setattr("streamtrk.service.monitor.DISCONNECT_LOG_S", 2.0)
    w = _Watched()

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "streamtrk.service.monitor"]

    try:
        with caplog.at_level("INFO", logger="streamtrk.service.monitor"):
            w.connect_and_close(30)
            wait_for(lambda: w.closed() == 30)
            wait_for(lambda: sum(r.fields["since"] for r in lines()) == 30, timeout=10)  # type: ignore[attr-defined]
            w.connect_and_close(1)
            wait_for(lambda: w.closed() == 31)
            time.sleep(0.3)  # a line for it, were one due
    finally:
        w.stop()
    said = [r.getMessage() for r in lines()]
    assert said[0] == "connection on input ended (closed)", said
    assert said[-1].endswith("more connections on input ended (closed) since the last line")
    assert 2 <= len(said) <= 4, said


def test_connections_held_back_are_said_when_the_monitor_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = _Watched()
    with caplog.at_level("INFO", logger="streamtrk.service.monitor"):
        try:
            w.connect_and_close(3)
            wait_for(lambda: w.closed() == 3)
        finally:
            w.stop()  # the monitor's last lines logged while captured
    said = [r.getMessage() for r in caplog.records if r.name == "streamtrk.service.monitor"]
    assert said[-2:] == [
        "connection on input ended (closed)",
        "2 more connections on input ended (closed) since the last line",
    ], said


def test_connecting_again_is_logged_once_a_while_however_often(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A distributor without CURVE refuses a daemon's handshake every second for as long as
    it runs: each reconnection is made, one line a ``DISCONNECT_LOG_S`` says so."""
    from streamtrk.service.monitor import Reconnects

    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.0)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    endpoint = "tcp://127.0.0.1:9"  # nothing listens: connect() only queues the attempt
    try:
        reconnects = Reconnects()
        with caplog.at_level(logging.INFO, logger="streamtrk.service.monitor"):
            for _ in range(5):
                reconnects.request("input")
                reconnects.apply("input", push, endpoint)
        lines = [r for r in caplog.records if "again" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert push.getsockopt_string(zmq.LAST_ENDPOINT) == endpoint
    finally:
        push.close(linger=0)
        ctx.term()


class _Connects:
    """A stand-in socket that records the reconnections made on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def disconnect(self, endpoint: str) -> None:
        self.calls.append(("disconnect", endpoint))

    def connect(self, endpoint: str) -> None:
        self.calls.append(("connect", endpoint))


def test_a_connection_given_up_is_made_again_once_when_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused handshake's reconnection waits ``RECONNECT_AFTER_S`` (a peer refusing at
    once is not hammered), replaces the connection libzmq gave up (no second one to the
    endpoint), and is made once per request: a connection that works is left alone."""
    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.5)
    endpoint = "tcp://127.0.0.1:9"
    sock = _Connects()
    reconnects = Reconnects()
    reconnects.request("input")
    reconnects.apply("input", sock, endpoint)  # type: ignore[arg-type]
    assert sock.calls == []  # not due yet
    time.sleep(0.55)
    for _ in range(3):  # the polls after it
        reconnects.apply("input", sock, endpoint)  # type: ignore[arg-type]
    assert sock.calls == [("disconnect", endpoint), ("connect", endpoint)]


def test_a_second_request_does_not_put_off_the_reconnection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.5)
    sock = _Connects()
    reconnects = Reconnects()
    reconnects.request("input")
    time.sleep(0.3)
    reconnects.request("input")  # asked again before the first was made
    time.sleep(0.25)
    reconnects.apply("input", sock, "tcp://127.0.0.1:9")  # type: ignore[arg-type]
    assert ("connect", "tcp://127.0.0.1:9") in sock.calls


def _event(event: int, fd: int = 0) -> dict[str, object]:
    return {"event": event, "value": fd, "endpoint": b"tcp://127.0.0.1:1"}


def _monitor(
    curve: bool = False, reconnects: Reconnects | None = None
) -> tuple[zmq.Context, zmq.Socket, SocketMonitor, Metrics]:
    """A monitor, not started, of a PUSH socket (``handle`` fed events by hand)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    if curve:
        sock.curve_secretkey = zmq.curve_keypair()[1]
        sock.curve_server = True
    metrics = Metrics()
    return ctx, sock, SocketMonitor({"output": sock}, metrics, reconnects), metrics


def _close(ctx: zmq.Context, sock: zmq.Socket, monitor: SocketMonitor) -> None:
    for mon in monitor.monitors.values():
        mon.close(linger=0)
    sock.close(linger=0)
    ctx.term()


def test_a_connecting_socket_is_connected_from_its_connect_to_its_end() -> None:
    """``connected`` (the emit thread's "a consumer is there", in connect mode) and the
    gauge follow EVENT_CONNECTED as EVENT_ACCEPTED, by descriptor, from 0 at the start."""
    ctx, sock, monitor, metrics = _monitor()
    try:
        gauge = lambda: metrics.registry.get_sample_value(  # noqa: E731
            "streamtrk_connections", {"socket": "output"}
        )
        assert gauge() == 0 and not monitor.connected("output")
        monitor.handle("output", _event(zmq.EVENT_CONNECTED, 7))
        monitor.handle("output", _event(zmq.EVENT_ACCEPTED, 8))
        assert gauge() == 2 and monitor.connected("output")
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 7))
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 99))  # never counted open
        assert gauge() == 1 and monitor.connected("output")
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 8))
        assert gauge() == 0 and not monitor.connected("output")
    finally:
        _close(ctx, sock, monitor)


def test_only_a_protocol_refusal_asks_for_a_reconnection() -> None:
    """libzmq retries a connection refused for its key (``auth``) itself: only a protocol
    refusal, which it gives up, is connected again by the daemon."""
    reconnects = Reconnects()
    ctx, sock, monitor, _ = _monitor(curve=True, reconnects=reconnects)
    try:
        monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_AUTH))
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 5))
        assert reconnects._at == {}
        monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))
        assert list(reconnects._at) == ["output"]
    finally:
        _close(ctx, sock, monitor)


def test_a_connection_ended_before_its_handshake_is_made_again() -> None:
    """A peer of another socket type (a distributor started with --from and --to swapped):
    libzmq ends the connection with no handshake event and never connects again; a
    connecting socket's connection that ends before its handshake succeeded is refused
    ("handshake") and connected again. One that shook hands is closed, as before."""
    reconnects = Reconnects()
    ctx, sock, monitor, metrics = _monitor(reconnects=reconnects)
    try:
        monitor.handle("output", _event(zmq.EVENT_CONNECTED, 7))
        monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_SUCCEEDED))
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 7))
        assert reconnects._at == {}
        monitor.handle("output", _event(zmq.EVENT_CONNECTED, 8))
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 8))
        assert list(reconnects._at) == ["output"]
        for cause in ("closed", "handshake"):
            labels = {"socket": "output", "cause": cause}
            assert metrics.registry.get_sample_value("streamtrk_disconnects_total", labels) == 1
        labels = {"socket": "output", "cause": "handshake"}
        assert metrics.registry.get_sample_value("streamtrk_auth_failures_total", labels) == 1
    finally:
        _close(ctx, sock, monitor)


def test_refusals_are_warnings_and_their_lines_apart_from_closed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connections ending ``closed`` are said at INFO; refusals are warnings, with a
    throttle of their own (a flood of port probes does not hide a refused key)."""
    ctx, sock, monitor, _ = _monitor(curve=True)
    try:
        with caplog.at_level(logging.INFO, logger="streamtrk.service.monitor"):
            monitor.handle("output", _event(zmq.EVENT_ACCEPTED, 5))
            monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 5))
            monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_AUTH))
            monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 6))
            monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))
            monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 7))
        said = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "streamtrk.service.monitor"
        ]
        assert said == [
            (logging.INFO, "connection on output ended (closed)"),
            (logging.WARNING, "connection on output ended (auth)"),
            (logging.WARNING, "connection on output ended (handshake)"),
        ]
    finally:
        _close(ctx, sock, monitor)


def test_refusals_in_flight_end_in_their_order() -> None:
    """Two refusals reported before their disconnections: each disconnection takes the
    oldest cause."""
    ctx, sock, monitor, metrics = _monitor(curve=True)
    try:
        monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_AUTH))
        monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL))
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 5))
        value = lambda cause: metrics.registry.get_sample_value(  # noqa: E731
            "streamtrk_disconnects_total", {"socket": "output", "cause": cause}
        )
        assert (value("auth"), value("handshake")) == (1, 0)
    finally:
        _close(ctx, sock, monitor)


def test_a_peer_leaving_in_its_handshake_is_closed_on_a_plain_socket() -> None:
    """HANDSHAKE_FAILED_NO_DETAIL is a refusal on a CURVE socket only (a client without
    CURVE that saw the mismatch); on a plain one, a TCP probe that closed."""
    for curve, cause in ((False, "closed"), (True, "handshake")):
        ctx, sock, monitor, metrics = _monitor(curve=curve)
        try:
            monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL))
            monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 5))
            labels = {"socket": "output", "cause": cause}
            assert metrics.registry.get_sample_value("streamtrk_disconnects_total", labels) == 1
        finally:
            _close(ctx, sock, monitor)


def test_a_single_reconnection_line_counts_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.0)
    reconnects = Reconnects()
    with caplog.at_level(logging.INFO, logger="streamtrk.service.monitor"):
        reconnects.request("input")
        reconnects.apply("input", _Connects(), "tcp://127.0.0.1:9")  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "connecting the input to tcp://127.0.0.1:9 again (its handshake was refused)"
    ]


def test_the_documented_periods() -> None:
    """docs/operations.md, docs/farm-topology.md: a connection libzmq gave up is made again
    a second later; ended connections are logged at most once a minute per socket and cause."""
    assert (RECONNECT_AFTER_S, DISCONNECT_LOG_S) == (1.0, 60.0)


def test_a_disconnection_line_names_the_peer_s_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The operator sees where an ended connection was (the ``endpoint`` field), and the
    socket, cause and count."""
    ctx, sock, monitor, _ = _monitor()
    try:
        with caplog.at_level(logging.INFO, logger="streamtrk.service.monitor"):
            monitor.handle("output", _event(zmq.EVENT_ACCEPTED, 5))
            monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 5))
        [line] = [r for r in caplog.records if r.name == "streamtrk.service.monitor"]
        assert line.fields == {  # type: ignore[attr-defined]
            "socket": "output",
            "cause": "closed",
            "since": 1,
            "endpoint": "tcp://127.0.0.1:1",
        }
    finally:
        _close(ctx, sock, monitor)


def test_a_connecting_socket_s_peer_going_away_after_its_handshake_is_closed() -> None:
    """In connect mode the monitor hears a handshake succeed from libzmq itself: a peer that
    shook hands and then went away ended its connection ``closed``, not refused, and is not
    connected again by the daemon (libzmq does that)."""
    reconnects = Reconnects()
    ctx, sock, monitor, metrics = _monitor(reconnects=reconnects)
    peer = ctx.socket(zmq.PULL)
    peer.bind("tcp://127.0.0.1:*")
    endpoint = peer.getsockopt_string(zmq.LAST_ENDPOINT)
    monitor.start()
    sample = lambda name, cause: metrics.registry.get_sample_value(  # noqa: E731
        name, {"socket": "output", "cause": cause}
    )
    try:
        sock.connect(endpoint)
        sock.send(b"x")
        assert peer.poll(5000) and peer.recv() == b"x"  # the handshake done
        peer.close(linger=0)
        wait_for(lambda: sample("streamtrk_disconnects_total", "closed") == 1, timeout=5)
        assert sample("streamtrk_disconnects_total", "handshake") == 0
        assert sample("streamtrk_auth_failures_total", "handshake") == 0
        assert reconnects._at == {}
    finally:
        monitor.stop()
        sock.close(linger=0)
        peer.close(linger=0)
        ctx.term()


def test_a_connecting_socket_s_refused_key_is_one_refusal_and_no_reconnection() -> None:
    """A connection refused for its key ends with that refusal alone: not counted again as
    ended before its handshake (``handshake``), nor connected again by the daemon (libzmq
    retries it itself)."""
    reconnects = Reconnects()
    ctx, sock, monitor, metrics = _monitor(curve=True, reconnects=reconnects)
    try:
        monitor.handle("output", _event(zmq.EVENT_CONNECTED, 7))
        monitor.handle("output", _event(zmq.EVENT_HANDSHAKE_FAILED_AUTH))
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 7))
        failures = lambda cause: metrics.registry.get_sample_value(  # noqa: E731
            "streamtrk_auth_failures_total", {"socket": "output", "cause": cause}
        )
        assert (failures("auth"), failures("handshake")) == (1, 0)
        assert reconnects._at == {}
    finally:
        _close(ctx, sock, monitor)


def test_a_disconnection_before_any_connection_event_is_closed() -> None:
    """A connection the monitor did not see made (made before it started) that ends is
    ``closed``: not taken for one ended before its handshake, nor connected again."""
    reconnects = Reconnects()
    ctx, sock, monitor, metrics = _monitor(reconnects=reconnects)
    try:
        monitor.handle("output", _event(zmq.EVENT_DISCONNECTED, 7))
        labels = {"socket": "output", "cause": "closed"}
        assert metrics.registry.get_sample_value("streamtrk_disconnects_total", labels) == 1
        assert reconnects._at == {}
    finally:
        _close(ctx, sock, monitor)


def test_every_cause_s_series_is_there_at_0_from_the_start() -> None:
    """``closed`` too, as each refusal's cause: ``rate()`` and ``increase()`` see the first
    disconnection of each, not a series that begins at 1."""
    ctx, sock, monitor, metrics = _monitor()
    try:
        for cause in ("closed", "auth", "handshake"):
            labels = {"socket": "output", "cause": cause}
            assert metrics.registry.get_sample_value("streamtrk_disconnects_total", labels) == 0
    finally:
        _close(ctx, sock, monitor)
