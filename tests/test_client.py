"""Producer -> Consumer over real TCP sockets."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from needs import no_ipv6_loopback

from streamtrk.client import (
    REFUSAL_EVENTS,
    Consumer,
    Producer,
    terminate,
    wait_listening,
    wait_ready,
)
from streamtrk.event import Event, Hits
from streamtrk.service.auth import start_authenticator
from streamtrk.wire import DEFAULT_LIMITS, Limits, WireError, encode_tracks
from streamtrk.wire.curve import create_certificates


def make_event(rng: np.random.Generator, event: int) -> Event:
    n = int(rng.integers(0, 300))
    cols = {k: rng.normal(0, 100, n).astype(dt) for k, dt in Hits.DTYPES.items()}
    cols |= {k: rng.integers(0, 50, n).astype(np.int32) for k in ("volume_id", "layer_id")}
    cols["module_id"] = rng.integers(0, 50, n).astype(np.int32)
    cols["hit_id"] = rng.permutation(n).astype(np.int64) + 1
    return Event(run=9, event=event, hits=Hits(**cols))


def test_send_and_receive_events() -> None:
    rng = np.random.default_rng(3)
    events = [make_event(rng, i) for i in range(50)]
    with (
        Consumer("tcp://127.0.0.1:*", bind=True, rcvhwm=100) as consumer,
        Producer(consumer.endpoint, sndhwm=100) as producer,
    ):
        assert consumer.endpoint.startswith("tcp://127.0.0.1:")
        assert consumer.socket.getsockopt(zmq.RCVHWM) == 100
        assert producer.socket.getsockopt(zmq.SNDHWM) == 100
        assert producer.socket.getsockopt(zmq.LINGER) == 1000
        for i, ev in enumerate(events):  # every third one compact (wire version 5)
            deadline = float(i + 1) if i % 2 else None
            msg_id = 1000 + i if i % 4 else None
            assert producer.send_event(ev, deadline, compact=i % 3 == 0, msg_id=msg_id)
        for i, ev in enumerate(events):
            msg = consumer.recv(timeout_ms=5000)
            assert msg is not None, f"event {i} not received"
            assert msg.deadline_ms == (float(i + 1) if i % 2 else None)
            assert msg.msg_id == (1000 + i if i % 4 else None)
            assert msg.version == (5 if i % 3 == 0 and len(ev.hits) else 2)
            back = msg.to_event()
            assert (back.run, back.event) == (ev.run, ev.event)
            assert back.hits.equals(ev.hits)
        assert consumer.recv(timeout_ms=10) is None


def test_frames_and_malformed_messages() -> None:
    with (
        Consumer("tcp://127.0.0.1:*", bind=True) as consumer,
        Producer(consumer.endpoint) as producer,
    ):
        reply = encode_tracks(1, 2, np.arange(3), None, status="error", reason="timeout")
        assert producer.send_frames(reply, timeout_ms=1000)
        msg = consumer.recv(timeout_ms=5000)
        assert msg is not None and msg.to_reply().reason == "timeout"
        assert producer.send_frames([b"\xc1"])
        with pytest.raises(WireError, match="not_msgpack"):
            consumer.recv(timeout_ms=5000)
        assert producer.send_frames([b"raw", b"frames"])
        frames = consumer.recv_frames(timeout_ms=5000)
        assert frames is not None and [f.bytes for f in frames] == [b"raw", b"frames"]
        assert consumer.recv_frames(timeout_ms=10) is None


def test_a_frame_that_cannot_be_sent_sends_none_of_its_message() -> None:
    """A bad frame raises before the message's first frame leaves: a message sent in part
    would take the next message's frames into it, and that event would get no reply."""
    with (
        Consumer("tcp://127.0.0.1:*", bind=True) as consumer,
        Producer(consumer.endpoint) as producer,
    ):
        with pytest.raises(ValueError, match="contiguous"):
            producer.send_frames([b"head", np.arange(10.0)[::2]], timeout_ms=1000)
        with pytest.raises(ValueError, match="at least one frame"):
            producer.send_frames([], timeout_ms=1000)
        assert producer.send_frames([b"next", b"message"], timeout_ms=1000)
        frames = consumer.recv_frames(timeout_ms=5000)
        assert frames is not None and [f.bytes for f in frames] == [b"next", b"message"]
        assert consumer.recv_frames(timeout_ms=10) is None


def test_threads_sharing_a_producer_and_a_consumer_keep_messages_whole() -> None:
    """Two threads sending through one producer interleaved their messages' frames (a
    ZeroMQ socket is not thread-safe): events lost or refused, every send said sent."""
    n, switch = 200, sys.getswitchinterval()
    with (
        Consumer("tcp://127.0.0.1:*", bind=True, rcvhwm=0) as consumer,
        Producer(consumer.endpoint, sndhwm=0) as producer,
    ):

        def send(tag: bytes) -> None:
            for i in range(n):
                assert producer.send_frames([tag, *(b"%d" % i for _ in range(8))])

        got: list[list[bytes]] = []

        def receive() -> None:
            while (frames := consumer.recv_frames(timeout_ms=500)) is not None:
                got.append([f.bytes for f in frames])

        sys.setswitchinterval(1e-6)  # threads switch between any two frames
        try:
            threads = [threading.Thread(target=send, args=(tag,)) for tag in (b"a", b"b")]
            threads += [threading.Thread(target=receive) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(switch)
    assert sorted(got) == sorted([tag, *[b"%d" % i] * 8] for tag in (b"a", b"b") for i in range(n))


def test_a_timeout_counts_the_wait_for_another_thread_s_turn() -> None:
    """A thread receiving without a timeout holds the consumer: another's receive within
    100 ms returns None after about that (it waited for the lock as long as the first)."""
    with (
        Consumer("tcp://127.0.0.1:*", bind=True) as consumer,
        Producer(consumer.endpoint) as producer,
    ):
        waiting = threading.Thread(target=consumer.recv_frames)  # until a message comes
        waiting.start()
        time.sleep(0.2)  # it holds the turn
        t0 = time.monotonic()
        assert consumer.recv_frames(timeout_ms=100) is None
        assert time.monotonic() - t0 < 1.0
        assert producer.send_frames([b"end"], timeout_ms=1000)
        waiting.join(5)
        assert not waiting.is_alive()


def test_a_producer_that_exits_after_sending_loses_nothing_it_sent() -> None:
    """Closing waits for the queued messages to leave (up to ``linger_ms``): a producer
    process that sends and exits at once does not drop what its socket still held. The
    child has exited before anything is read: all it sent left on its close, held by the
    consumer's queue (its high-water mark above the count)."""
    n, size = 200, 100_000  # 20 MB: far more than the TCP buffers between the two
    with Consumer("tcp://127.0.0.1:*", bind=True, rcvhwm=2 * n) as consumer:
        script = (
            "import sys\nfrom streamtrk.client import Producer\n"
            "with Producer(sys.argv[1], linger_ms=30_000) as producer:\n"
            f"    for i in range({n}):\n"
            f"        assert producer.send_frames([i.to_bytes(4, 'big'), bytes({size})])\n"
        )
        child = subprocess.Popen([sys.executable, "-c", script, consumer.endpoint])
        assert child.wait(60) == 0
        received: list[int] = []
        while len(received) < n and (frames := consumer.recv_frames(timeout_ms=5000)):
            received.append(int.from_bytes(frames[0].bytes, "big"))
    assert received == list(range(n))


def test_a_frame_larger_than_any_message_is_not_received() -> None:
    """A consumer bound where anyone may connect must not hold a peer's oversized frame in
    memory: libzmq drops the connection (ZMQ_MAXMSGSIZE), and the next peer is heard."""
    limits = Limits(max_header_bytes=1024, max_hits=100, max_tracks=10, max_particles=50)
    assert limits.max_frame_bytes == 1024 and DEFAULT_LIMITS.max_frame_bytes == 8_000_000
    with Consumer("tcp://127.0.0.1:*", bind=True, limits=limits) as consumer:
        assert consumer.socket.getsockopt(zmq.MAXMSGSIZE) == 1024
        with Producer(consumer.endpoint, linger_ms=2000) as big:
            assert big.send_frames([b"h", bytes(1025)], timeout_ms=1000)
        assert consumer.recv_frames(timeout_ms=500) is None
        with Producer(consumer.endpoint, linger_ms=2000) as fits:
            assert fits.send_frames([b"h", bytes(1024)], timeout_ms=1000)
            frames = consumer.recv_frames(timeout_ms=5000)
        assert frames is not None and len(frames[1].bytes) == 1024


def test_a_negative_timeout_waits_for_the_message() -> None:
    """As pyzmq's poll: a negative ``timeout_ms`` waits as long as it takes (it returned
    None at once)."""
    with (
        Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as consumer,
        Producer(consumer.endpoint, linger_ms=2000) as producer,
    ):
        later = threading.Timer(0.3, lambda: producer.send_frames([b"late"], timeout_ms=5000))
        later.start()
        frames = consumer.recv_frames(timeout_ms=-1)
        later.join()
    assert frames is not None and [f.bytes for f in frames] == [b"late"]


def test_send_times_out_without_peer() -> None:
    with Producer("tcp://127.0.0.1:1", sndhwm=1, linger_ms=0) as producer:
        sent = [producer.send_frames([b"x"], timeout_ms=50) for _ in range(5)]
    assert sent[0] and not all(sent)  # queued up to the high-water mark, then refused


def test_a_consumer_decodes_within_its_own_limits() -> None:
    with (
        Consumer("tcp://127.0.0.1:*", bind=True, limits=Limits(max_hits=5)) as consumer,
        Producer(consumer.endpoint) as producer,
    ):
        event = make_event(np.random.default_rng(1), 0)
        assert len(event.hits) > 5 and producer.send_event(event)
        with pytest.raises(WireError, match="too_many_hits"):
            consumer.recv(timeout_ms=5000)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        # named as the command's options too: replay, record and farm show this message
        ({"curve_key": "own.key_secret"}, "CURVE needs both .*--curve-key.*--curve-server-key"),
        ({"curve_server_key": "daemon.key"}, "CURVE needs both"),
        (
            {"curve_key": "a", "curve_server_key": "b", "curve_secret_key": "c"},
            "a CURVE client or a CURVE server, not both",
        ),
        # its own context: no authenticator there (no client admitted), or one that its
        # close, terminating the context, waited for without end
        ({"curve_secret_key": "server.key_secret"}, "give context="),
    ],
)
def test_curve_settings_that_do_not_make_one_role_are_refused(keys, match) -> None:
    with pytest.raises(ValueError, match=match):
        Producer("tcp://127.0.0.1:1", **keys)


def test_wait_listening_reads_the_listening_record(tmp_path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(
        "not json\n"
        + json.dumps({"time": "t", "level": "INFO", "logger": "x", "message": "loading"})
        + "\n"
        + json.dumps({"time": "t", "message": "listening", "input": "tcp://127.0.0.1:5", "http": 7})
        + "\n"
    )
    assert wait_listening(log, 5) == {"input": "tcp://127.0.0.1:5", "http": "7"}
    assert wait_listening(tmp_path / "none.log", 0.1) is None
    log.write_bytes(b"\xe2\x82 cut in a character\n" + log.read_bytes())  # a log being written
    assert wait_listening(log, 5) == {"input": "tcp://127.0.0.1:5", "http": "7"}


def test_wait_ready_keeps_to_its_timeout_against_a_silent_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        host, port = server.getsockname()
        t0 = time.monotonic()
        assert not wait_ready(f"{host}:{port}", 0.5)
        assert time.monotonic() - t0 < 1.9  # not the 2 s of one whole HTTP timeout


def test_wait_ready_polls_past_what_is_not_http() -> None:
    """Something else on the port answers garbage, twice, then the daemon is ready: polled
    past, no exception, ready."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        answers = [b"SSH-2.0-OpenSSH\r\n\r\n"] * 2 + [b"HTTP/1.0 200 OK\r\n\r\nready\n"]

        def serve() -> None:
            server.settimeout(10)
            for answer in answers:
                conn, _ = server.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        host, port = server.getsockname()
        assert wait_ready(f"{host}:{port}", 10.0) is True
        thread.join(5)
        assert not thread.is_alive()  # all three answers were asked for


def test_terminate_kills_a_process_that_outlasts_its_timeout() -> None:
    deaf = (  # flush: without PYTHONUNBUFFERED the line would wait in the pipe's buffer
        "import signal, time; signal.signal(15, signal.SIG_IGN)\nprint(flush=True)\ntime.sleep(60)"
    )
    with subprocess.Popen([sys.executable, "-c", deaf], stdout=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stdout.readline()  # SIGTERM ignored now
        assert terminate(process, 0.2) == -signal.SIGKILL
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as process:
        assert terminate(process, 30) == -signal.SIGTERM


def test_a_monitored_socket_reports_its_first_connection_and_closes_its_monitor() -> None:
    from zmq.utils.monitor import recv_monitor_message

    with Consumer(
        "tcp://127.0.0.1:*", bind=True, linger_ms=0, monitor_events=zmq.EVENT_ACCEPTED
    ) as c:
        assert c.monitor is not None
        with Producer(c.endpoint, linger_ms=0) as p:
            assert p.monitor is None
            assert c.monitor.poll(10_000)
            assert recv_monitor_message(c.monitor)["event"] == zmq.EVENT_ACCEPTED
    assert c.monitor.closed and c.socket.closed  # and its own context ended: close returned


def test_a_closed_endpoint_says_so_instead_of_a_socket_error() -> None:
    with Producer("tcp://127.0.0.1:*", bind=True) as producer:
        pass
    with Consumer("tcp://127.0.0.1:*", bind=True) as consumer:
        pass
    event = make_event(np.random.default_rng(0), 1)
    with pytest.raises(ValueError, match=r"Producer \(tcp://127.0.0.1:\*\) is closed"):
        producer.send_event(event, timeout_ms=10)
    with pytest.raises(ValueError, match=r"Consumer \(tcp://127.0.0.1:\*\) is closed"):
        consumer.recv(timeout_ms=10)
    with pytest.raises(ValueError, match="is closed"):
        _ = producer.endpoint
    with pytest.raises(ValueError, match="is closed"):  # not pyzmq's "Operation not supported"
        consumer.refusal()
    producer.close()  # a second close is harmless


@pytest.mark.parametrize("endpoint", ["tcp://dist-host.invalid:5555", "tcp://192.0.2.1:5555"])
def test_binding_another_hosts_address_says_so(endpoint: str) -> None:
    """libzmq says only "No such device" (a host name) or "Cannot assign requested address"
    (another host's IP: 192.0.2.1 is a documentation address, never this host's)."""
    with pytest.raises(OSError, match=rf"^cannot bind {endpoint}: .*another host's is one to"):
        Producer(endpoint, bind=True)
    with pytest.raises(OSError, match="another host's"):
        Consumer(endpoint, bind=True)


def _connect_after(
    go: threading.Event, endpoint: str, consumers: list[Consumer]
) -> threading.Thread:
    """A thread connecting a Consumer to ``endpoint`` 0.3 s after ``go`` is set (or after
    10 s without it)."""

    def connect() -> None:
        go.wait(10)
        time.sleep(0.3)
        consumers.append(Consumer(endpoint, linger_ms=0))

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    return thread


def test_a_send_waits_for_a_peer_up_to_its_timeout_or_for_ever() -> None:
    """A bound producer has nowhere to queue a message until a peer connects: a send waits
    for one up to ``timeout_ms`` (then False, nothing sent), or for ever without it."""
    event = make_event(np.random.default_rng(2), 7)
    consumers: list[Consumer] = []
    with (
        Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as patient,
        Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as blocking,
    ):
        go = [threading.Event(), threading.Event()]
        threads = [
            _connect_after(g, p.endpoint, consumers)
            for g, p in zip(go, (patient, blocking), strict=True)
        ]
        try:
            assert not patient.send_event(event, timeout_ms=50)  # no peer: nothing queued
            go[0].set()
            assert patient.send_event(event, timeout_ms=20_000)  # sent once the peer is there
            go[1].set()
            assert blocking.send_frames([b"blocking"])  # no timeout: waits as long as it takes
            for thread in threads:
                thread.join(30)
            assert len(consumers) == 2
            msg = consumers[0].recv(timeout_ms=10_000)
            assert msg is not None and msg.to_event().hits.equals(event.hits)
            assert consumers[0].recv_frames(timeout_ms=200) is None  # the refused send never went
            frames = consumers[1].recv_frames(timeout_ms=10_000)
            assert frames is not None and [f.bytes for f in frames] == [b"blocking"]
        finally:
            for g in go:
                g.set()
            for consumer in consumers:
                consumer.close()


def test_defaults_are_those_documented() -> None:
    """High-water marks of 1000 messages, a linger of 1 s, the default wire limits (their
    largest frame as ZMQ_MAXMSGSIZE), connecting rather than binding, no monitor; events
    sent as wire version 2 without a deadline."""
    with (
        Consumer("tcp://127.0.0.1:*", bind=True) as bound,
        Producer(bound.endpoint) as producer,
        Producer("tcp://127.0.0.1:*", bind=True) as bound_producer,
        Consumer(bound_producer.endpoint) as consumer,
    ):
        assert producer.socket.getsockopt(zmq.SNDHWM) == 1000
        assert consumer.socket.getsockopt(zmq.RCVHWM) == 1000
        assert [s.getsockopt(zmq.LINGER) for s in (producer.socket, consumer.socket)] == [1000] * 2
        assert consumer.limits is DEFAULT_LIMITS
        assert consumer.socket.getsockopt(zmq.MAXMSGSIZE) == DEFAULT_LIMITS.max_frame_bytes
        assert producer.monitor is None and consumer.monitor is None
        assert producer.refusal() is None and consumer.refusal() is None  # nothing to read
        assert producer.send_frames([b"to the bound consumer"], timeout_ms=5000)
        assert bound_producer.send_frames([b"to the connected consumer"], timeout_ms=5000)
        got = [c.recv_frames(timeout_ms=5000) for c in (bound, consumer)]
        assert [[f.bytes for f in fs or []] for fs in got] == [
            [b"to the bound consumer"],
            [b"to the connected consumer"],
        ]
        event = make_event(np.random.default_rng(4), 2)
        assert len(event.hits) and producer.send_event(event)
        msg = bound.recv(timeout_ms=5000)
        assert msg is not None and msg.version == 2 and msg.deadline_ms is None


def test_a_linger_given_is_the_socket_s() -> None:
    with (
        Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as consumer,
        Producer(consumer.endpoint, linger_ms=-1) as producer,
    ):
        assert consumer.socket.getsockopt(zmq.LINGER) == 0
        assert producer.socket.getsockopt(zmq.LINGER) == -1


def test_a_socket_ends_only_a_context_of_its_own() -> None:
    """Closing ends the context a socket made for itself; one it was given (the ZAP
    authenticator's, say) is left to its owner, still usable."""
    ctx: zmq.Context[Any] = zmq.Context()
    try:  # one socket at a time: closing would hang on the other if it ended the context
        with Producer("tcp://127.0.0.1:*", bind=True, context=ctx) as producer:
            assert producer.socket.context is ctx
        with Consumer("tcp://127.0.0.1:1", context=ctx) as consumer:
            assert consumer.socket.context is ctx
        assert producer.socket.closed and consumer.socket.closed and not ctx.closed
        ctx.socket(zmq.PUSH).close()
    finally:
        ctx.term()
    with Producer("tcp://127.0.0.1:*", bind=True) as producer:
        own = producer.socket.context
        assert own is not ctx and not own.closed
    assert own.closed


def test_binding_an_address_in_use_raises_zmqs_own_error() -> None:
    """Only another host's address gets the OSError that says so; a port in use is libzmq's
    EADDRINUSE as it is."""
    with (
        Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as first,
        pytest.raises(zmq.ZMQError) as error,
    ):
        Consumer(first.endpoint, bind=True)
    assert error.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(no_ipv6_loopback() is not None, reason=str(no_ipv6_loopback()))
def test_ipv6_endpoints_get_ipv6_sockets() -> None:
    with (
        Consumer("tcp://[::1]:*", bind=True) as consumer,
        Producer(consumer.endpoint) as producer,
    ):
        assert consumer.endpoint.startswith("tcp://[::1]:")
        assert consumer.socket.getsockopt(zmq.IPV6) == producer.socket.getsockopt(zmq.IPV6) == 1
        assert producer.send_frames([b"over ::1"], timeout_ms=5000)
        frames = consumer.recv_frames(timeout_ms=5000)
        assert frames is not None and [f.bytes for f in frames] == [b"over ::1"]


def _refusal(endpoint: Producer, timeout_s: float = 10.0) -> str | None:
    """The first refusal ``endpoint`` reports within ``timeout_s``, or None."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if (cause := endpoint.refusal()) is not None:
            return cause
        time.sleep(0.02)
    return None


def _curve_server(keys: Path, ctx: zmq.Context[Any]) -> Consumer:
    """A Consumer bound as CURVE server on ``ctx`` with the certificate ``server`` of ``keys``."""
    return Consumer(
        "tcp://127.0.0.1:*",
        bind=True,
        linger_ms=0,
        curve_secret_key=keys / "server.key_secret",
        context=ctx,
    )


def _alice(keys: Path, endpoint: str) -> Producer:
    """A CURVE client to ``endpoint`` with the certificate ``alice`` of ``keys``, expecting
    the server ``server``, its refusals monitored."""
    return Producer(
        endpoint,
        linger_ms=0,
        curve_key=keys / "alice.key_secret",
        curve_server_key=keys / "server.key",
        monitor_events=REFUSAL_EVENTS,
    )


def _curve_producer(keys: Path, ctx: zmq.Context[Any]) -> Producer:
    """A Producer bound as CURVE server on ``ctx`` with the certificate ``server`` of
    ``keys``."""
    return Producer(
        "tcp://127.0.0.1:*",
        bind=True,
        linger_ms=0,
        curve_secret_key=keys / "server.key_secret",
        context=ctx,
    )


def _curve_reader(endpoint: str, keys: Path, limits: Limits = DEFAULT_LIMITS) -> Consumer:
    """A Consumer connected to ``endpoint`` as the CURVE client ``alice`` of ``keys``."""
    return Consumer(
        endpoint,
        linger_ms=0,
        limits=limits,
        curve_key=keys / "alice.key_secret",
        curve_server_key=keys / "server.key",
    )


def test_a_curve_server_takes_frames_up_to_its_limit_and_times_out_past_one(
    tmp_path: Path,
) -> None:
    """libzmq checks ZMQ_MAXMSGSIZE against a frame as encrypted, 33 bytes longer: a frame
    of the limit was dropped with its connection (an event of max_hits hits was never
    answered); one byte more is. And a connection dropped mid-message leaves a CURVE
    server the client's ZAP credential: a poll reported it, and ``recv_frames`` then
    blocked past its timeout, until another message came."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    (tmp_path / "allowed").mkdir()
    shutil.copy(tmp_path / "alice.key", tmp_path / "allowed")
    limits = Limits(max_header_bytes=1024, max_hits=100, max_tracks=10, max_particles=50)
    ctx: zmq.Context[Any] = zmq.Context()
    auth = start_authenticator(ctx, tmp_path / "allowed")
    alice, server_key = tmp_path / "alice.key_secret", tmp_path / "server.key"

    def client() -> Producer:
        return Producer(
            consumer.endpoint, linger_ms=2000, curve_key=alice, curve_server_key=server_key
        )

    try:
        with Consumer(
            "tcp://127.0.0.1:*", bind=True, linger_ms=0, limits=limits, context=ctx,
            curve_secret_key=tmp_path / "server.key_secret",
        ) as consumer:  # fmt: skip
            with client() as fits:
                assert fits.send_frames([b"h", bytes(1024)], timeout_ms=5000)
                frames = consumer.recv_frames(timeout_ms=10_000)
            assert frames is not None and len(frames[1].bytes) == 1024
            with client() as big:
                assert big.send_frames([b"h", bytes(1025)], timeout_ms=5000)
            got: list[Any] = []
            reader = threading.Thread(target=lambda: got.append(consumer.recv_frames(2000)))
            reader.start()
            reader.join(20)
            if stuck := reader.is_alive():  # let go before its socket closes (libzmq aborts)
                with client() as unblock:
                    unblock.send_frames([b"h"], timeout_ms=5000)
                reader.join(20)
            assert not stuck and got == [None]
    finally:
        auth.stop()
        ctx.term()


def test_a_curve_server_admits_no_client_while_no_authenticator_answers(tmp_path: Path) -> None:
    """libzmq admits any CURVE client where no ZAP handler answers: before the
    authenticator starts, and after it stops (a daemon's last replies linger in its socket
    at exit, and a peer may connect again meanwhile). Servers enforce their ZAP domain:
    refused then, even a key the directory allows."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    (tmp_path / "allowed").mkdir()
    shutil.copy(tmp_path / "alice.key", tmp_path / "allowed")
    ctx: zmq.Context[Any] = zmq.Context()

    def heard_alice(consumer: Consumer) -> bool:
        with Producer(
            consumer.endpoint,
            linger_ms=0,
            curve_key=tmp_path / "alice.key_secret",
            curve_server_key=tmp_path / "server.key",
        ) as alice:
            assert alice.send_frames([b"alice"], timeout_ms=5000)
            return consumer.recv_frames(timeout_ms=2000) is not None

    try:
        with _curve_server(tmp_path, ctx) as consumer:
            assert not heard_alice(consumer)  # no authenticator yet
            auth = start_authenticator(ctx, tmp_path / "allowed")
            assert heard_alice(consumer)
            auth.stop()
            assert not heard_alice(consumer)  # none any more
    finally:
        ctx.term()


def test_only_a_curve_client_whose_key_is_allowed_gets_through(tmp_path: Path) -> None:
    """A Consumer bound as CURVE server (``curve_secret_key``) on the context its ZAP
    authenticator runs on hears the allowed client; the one refused learns it from
    :meth:`refusal`, the allowed one no refusal; one given another server key is hung up on
    (counted, not a refusal: libzmq tries again)."""
    for name in ("server", "alice", "mallory"):
        create_certificates(tmp_path, name)
    (tmp_path / "allowed").mkdir()
    shutil.copy(tmp_path / "alice.key", tmp_path / "allowed")

    def client(name: str, server: str = "server") -> Producer:
        return Producer(
            consumer.endpoint,
            linger_ms=0,
            curve_key=tmp_path / f"{name}.key_secret",
            curve_server_key=tmp_path / f"{server}.key",
            monitor_events=REFUSAL_EVENTS,
        )

    ctx: zmq.Context[Any] = zmq.Context()
    auth = start_authenticator(ctx, tmp_path / "allowed")
    try:
        with _curve_server(tmp_path, ctx) as consumer:
            with client("mallory") as mallory:
                assert mallory.send_frames([b"mallory"], timeout_ms=5000)
                assert _refusal(mallory) == "auth"
            with client("alice") as alice:
                assert alice.send_frames([b"alice"], timeout_ms=5000)
                frames = consumer.recv_frames(timeout_ms=10_000)
                assert frames is not None and [f.bytes for f in frames] == [b"alice"]
                assert alice.refusal() is None
            assert alice.shook and not alice.hung_up
            with client("alice", server="mallory") as misled:  # a rotated server key
                assert misled.send_frames([b"lost"], timeout_ms=5000)
                assert _refusal(misled, timeout_s=1.0) is None
                assert misled.hung_up >= 2 and not misled.shook
        with (
            _curve_producer(tmp_path, ctx) as server,
            _curve_reader(server.endpoint, tmp_path) as reader,
        ):  # the other way round: a producer serves, a consumer is the client
            assert server.send_frames([b"to alice"], timeout_ms=10_000)
            frames = reader.recv_frames(timeout_ms=10_000)
            assert frames is not None and [f.bytes for f in frames] == [b"to alice"]
    finally:
        auth.stop()
        ctx.term()


def test_handshakes_hung_up_until_a_server_answers_are_no_refusal(tmp_path: Path) -> None:
    """A proxy that accepts and hangs up (its daemon not up yet), then the daemon on that
    port: the CURVE client's hang-ups are counted while they last and cleared by the
    handshake that succeeds; the message gets through, and no refusal is said."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    proxy = socket.create_server(("127.0.0.1", 0))
    port = proxy.getsockname()[1]
    hangups = threading.Event()

    def hang_up() -> None:
        proxy.settimeout(0.1)
        while not hangups.is_set():
            with contextlib.suppress(TimeoutError):
                proxy.accept()[0].close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    with _alice(tmp_path, f"tcp://127.0.0.1:{port}") as client:
        assert client.send_frames([b"held"], timeout_ms=5000)  # queued for the connection
        t_end = time.monotonic() + 30
        while client.hung_up < 3:
            assert client.refusal() is None and time.monotonic() < t_end
            time.sleep(0.05)
        hangups.set()
        thread.join()
        proxy.close()
        ctx: zmq.Context[Any] = zmq.Context()
        (tmp_path / "allowed").mkdir()
        shutil.copy(tmp_path / "alice.key", tmp_path / "allowed")
        auth = start_authenticator(ctx, tmp_path / "allowed")
        try:
            with Consumer(
                f"tcp://127.0.0.1:{port}",
                bind=True,
                linger_ms=0,
                curve_secret_key=tmp_path / "server.key_secret",
                context=ctx,
            ) as daemon:
                frames = daemon.recv_frames(timeout_ms=30_000)
                assert frames is not None and [f.bytes for f in frames] == [b"held"]
                assert _refusal(client, timeout_s=1.0) is None
                assert client.shook and client.hung_up == 0
        finally:
            auth.stop()
            ctx.term()


def test_wait_ready_gives_up_once_its_process_has_exited() -> None:
    """``process`` exited: False, even from a port that answers 200 (another daemon's)."""

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            address = f"127.0.0.1:{server.server_address[1]}"
            with subprocess.Popen([sys.executable, "-c", "pass"]) as exited:
                exited.wait()
                assert wait_ready(address, 10.0, exited) is False
            with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
                try:
                    ready = wait_ready(address, 10.0, running)
                finally:
                    running.kill()
            assert ready is True
        finally:
            server.shutdown()


def test_wait_listening_gives_up_once_its_process_has_exited(tmp_path: Path) -> None:
    """``process`` exited before its log says ``listening``: None, though the record comes
    later (here, once the call has returned); a running process's record is read, without
    the log's own fields and past JSON lines that are not records."""
    log = tmp_path / "daemon.log"
    record = {"time": "t", "level": "INFO", "logger": "streamtrk", "message": "listening"}
    returned = threading.Event()

    def write_later() -> None:
        returned.wait(5)
        log.write_text("42\n[]\n" + json.dumps({**record, "http": "127.0.0.1:9"}) + "\n")

    writer = threading.Thread(target=write_later, daemon=True)
    writer.start()
    with subprocess.Popen([sys.executable, "-c", "pass"]) as exited:
        exited.wait()
        assert wait_listening(log, 30, exited) is None
    returned.set()
    writer.join(10)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            listening = wait_listening(log, 30, running)
        finally:
            running.kill()
    assert listening == {"http": "127.0.0.1:9"}


def test_a_receive_waits_up_to_its_timeout() -> None:
    """A message that comes 2 s into a 10 s ``timeout_ms`` is received."""
    with Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as consumer:

        def send_later() -> None:
            time.sleep(2)
            with Producer(consumer.endpoint, linger_ms=5000) as producer:
                reply = encode_tracks(1, 2, np.arange(3), None, status="error", reason="late")
                producer.send_frames(reply)

        thread = threading.Thread(target=send_later, daemon=True)
        thread.start()
        msg = consumer.recv(timeout_ms=10_000)
        thread.join(10)
    assert msg is not None and msg.to_reply().reason == "late"


def test_wait_ready_polls_past_answers_other_than_200() -> None:
    """503 (not ready) and 204 are polled past like a silent connection (no answer within
    the 2 s one request may take): only 200 is ready."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        answers = [
            None,
            b"HTTP/1.0 503 Service Unavailable\r\n\r\n",
            b"HTTP/1.0 204 No Content\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nready\n",
        ]
        held: list[socket.socket] = []

        def serve() -> None:
            server.settimeout(30)
            for answer in answers:
                conn, _ = server.accept()
                conn.recv(4096)
                if answer is None:  # held open, unanswered, until the end
                    held.append(conn)
                    continue
                with conn:
                    conn.sendall(answer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        host, port = server.getsockname()
        try:
            assert wait_ready(f"{host}:{port}", 30.0) is True
            thread.join(5)
            assert not thread.is_alive()  # all four answers were asked for
        finally:
            for conn in held:
                conn.close()


def test_wait_ready_reaches_the_daemon_whatever_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``http_proxy`` (common on clusters and CI) would take the loopback probe to the proxy
    (here nothing listens there): ``wait_ready`` asks the daemon's port directly."""
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # built afresh, as in a new process
    with _ready_once() as address:
        assert wait_ready(address, 5.0) is True


@contextlib.contextmanager
def _ready_once() -> Iterator[str]:
    """The HOST:PORT of a server that answers one request "ready" (a daemon's /readyz)."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def serve() -> None:
            server.settimeout(30)
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nready\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        host, port = server.getsockname()
        yield f"{host}:{port}"
        thread.join(5)


def test_a_producer_holds_nothing_a_peer_sends_it() -> None:
    """A Producer (and so a forwarder's back, a replay's input) is send-only: one
    inbound message of at most MAX_INBOUND_BYTES; a larger one drops that peer."""
    from streamtrk.wire.sockets import MAX_INBOUND_BYTES

    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        assert producer.socket.getsockopt(zmq.RCVHWM) == 1
        assert producer.socket.getsockopt(zmq.MAXMSGSIZE) == MAX_INBOUND_BYTES


@contextlib.contextmanager
def _hanging_up_proxy() -> Iterator[tuple[int, list[int]]]:
    """A loopback port that takes each connection and closes it at once (a proxy whose
    daemon is not up yet): yields the port and the count of connections taken so far."""
    proxy = socket.create_server(("127.0.0.1", 0))
    stop, accepted = threading.Event(), [0]

    def hang_up() -> None:
        proxy.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                proxy.accept()[0].close()
                accepted[0] += 1

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        yield proxy.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        proxy.close()


def test_a_plain_client_counts_no_curve_handshake_hung_up() -> None:
    """``hung_up`` counts CURVE handshakes (replay/record then say "CURVE handshakes
    were hung up on" with the CURVE hint): a client without CURVE hung up on by a proxy
    whose daemon is not up yet counts none."""
    with (
        _hanging_up_proxy() as (port, accepted),
        Producer(f"tcp://127.0.0.1:{port}", linger_ms=0, monitor_events=REFUSAL_EVENTS) as client,
    ):
        assert client.send_frames([b"held"], timeout_ms=5000)
        t_end = time.monotonic() + 10
        while accepted[0] < 4 and time.monotonic() < t_end:
            assert client.refusal() is None
            time.sleep(0.05)
        time.sleep(0.2)
        assert client.refusal() is None
        assert accepted[0] >= 4 and client.hung_up == 0


def test_one_refusal_call_counts_every_hang_up_waiting(tmp_path: Path) -> None:
    """``refusal`` reads the monitor to its end (record and replay call it once more at the
    end): the CURVE hang-ups that piled up since the last call are all counted by one call."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    with (
        _hanging_up_proxy() as (port, accepted),
        _alice(tmp_path, f"tcp://127.0.0.1:{port}") as client,
    ):
        assert client.send_frames([b"held"], timeout_ms=5000)
        t_end = time.monotonic() + 30
        while accepted[0] < 5 and time.monotonic() < t_end:
            time.sleep(0.05)
        time.sleep(0.3)  # the last hang-up's event reaches the monitor
        assert client.refusal() is None
        assert client.hung_up >= 4 and not client.shook


def test_a_zero_timeout_receive_returns_at_once() -> None:
    """``timeout_ms=0`` is a look, not a wait for ever (only None or negative waits)."""
    with Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as consumer:
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.append(consumer.recv_frames(0)), daemon=True)
        reader.start()
        reader.join(5)
        stuck = reader.is_alive()
        if stuck:  # let the reader go before its socket closes
            with Producer(consumer.endpoint, linger_ms=2000) as p:
                p.send_frames([b"unblock"], timeout_ms=5000)
            reader.join(10)
        assert not stuck and got == [None]


def test_a_curve_client_consumer_takes_frames_up_to_its_limit(tmp_path: Path) -> None:
    """A Consumer that is a CURVE *client* (replay's and record's reading a CURVE daemon's
    output) allows for the 33 bytes of encryption too: a reply frame of its limit arrives."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    (tmp_path / "allowed").mkdir()
    shutil.copy(tmp_path / "alice.key", tmp_path / "allowed")
    limits = Limits(max_header_bytes=1024, max_hits=100, max_tracks=10, max_particles=50)
    ctx: zmq.Context[Any] = zmq.Context()
    auth = start_authenticator(ctx, tmp_path / "allowed")
    try:
        with (
            _curve_producer(tmp_path, ctx) as server,
            _curve_reader(server.endpoint, tmp_path, limits) as reader,
        ):
            assert server.send_frames([b"h", bytes(1024)], timeout_ms=10_000)
            frames = reader.recv_frames(timeout_ms=10_000)
            assert frames is not None and len(frames[1].bytes) == 1024
    finally:
        auth.stop()
        ctx.term()


class _TakenBack:
    """Stands in for a CURVE server's socket whose poll reports a message that a dropped
    connection took back (``recv`` then finds none): the first poll reports it after
    ``first_ms`` (past its own timeout when that is longer, as a poll on a busy host may
    return late), later ones at once (``again``) or never. A negative timeout would wait
    for ever; polling on past the caller's timeout would spin for ever."""

    closed = False

    def __init__(self, first_ms: float, timeout_ms: int, again: bool = False) -> None:
        self.first_ms, self.again, self.polls = first_ms, again, 0
        self.asked: list[int] = []  # each poll's timeout, as asked
        self.t_end = time.monotonic() + timeout_ms / 1000 + 1.0

    def poll(self, timeout: int, flags: int) -> int:
        assert timeout >= 0, f"poll({timeout}) waits for ever"
        assert time.monotonic() < self.t_end, "polled on past the timeout"
        self.polls += 1
        self.asked.append(timeout)
        if self.polls == 1:
            time.sleep(self.first_ms / 1000)
            return zmq.POLLIN
        if self.again:
            return zmq.POLLIN
        time.sleep(timeout / 1000)
        return 0

    def recv_multipart(self, flags: int = 0, copy: bool = True) -> list[Any]:
        raise zmq.Again()


@pytest.mark.parametrize(
    ("first_ms", "again"),
    [
        (600, False),  # taken back mid-way: the next poll waits what is left, not all again
        (1020, False),  # the first poll returned late: no poll of a negative (endless) timeout
        (0, True),  # reported on every poll: None at the timeout, not a spin without end
    ],
)
def test_a_message_taken_back_does_not_stretch_the_timeout(first_ms: float, again: bool) -> None:
    with Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as consumer:
        fake = _TakenBack(first_ms, 1000, again)
        real, consumer.socket = consumer.socket, fake  # type: ignore[assignment]
        try:
            t0 = time.monotonic()
            assert consumer.recv_frames(timeout_ms=1000) is None
            # By the polls asked for, not the clock: after the first (1 s asked, answered
            # after first_ms) they ask what is left of the 1 s, never the whole 1 s again
            # (1.6 s in all) nor a negative (endless) wait; reported on every poll, they
            # count down to 0 and it gives up there.
            assert fake.asked[0] == 1000 and min(fake.asked) >= 0, fake.asked
            if again:
                assert fake.asked == sorted(fake.asked, reverse=True), fake.asked
                assert fake.asked[-1] == 0, fake.asked
            else:
                assert sum(fake.asked[1:]) <= max(0, 1000 - first_ms), fake.asked
            # The clock only as a backstop, below the 2 s at which the fake says a spin
            assert time.monotonic() - t0 < 1.9
        finally:
            consumer.socket = real


def test_terminate_sends_the_signal_it_is_given() -> None:
    """``sig`` (SIGINT for a daemon run in a terminal, say), not always SIGTERM."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as process:
        assert terminate(process, 30, signal.SIGUSR1) == -signal.SIGUSR1


def test_wait_listening_reads_the_record_of_a_process_that_has_exited_since(tmp_path: Path) -> None:
    """The record was written before the process exited: it is the answer, not None."""
    log = tmp_path / "daemon.log"
    log.write_text(json.dumps({"message": "listening", "http": "127.0.0.1:9"}) + "\n")
    with subprocess.Popen([sys.executable, "-c", "pass"]) as exited:
        exited.wait()
        assert wait_listening(log, 5, exited) == {"http": "127.0.0.1:9"}


class _Full:
    """Stands in for a socket whose poll says writable but whose send finds the queue
    full (its only peer gone in between); a send within a timeout must not block there."""

    closed = False

    def poll(self, timeout: int, flags: int) -> int:
        return zmq.POLLOUT

    def send_multipart(self, frames: Any, flags: int = 0, copy: bool = True) -> None:
        assert flags & zmq.NOBLOCK, "a send within a timeout would block"
        raise zmq.Again()


def test_a_send_that_finds_the_queue_full_says_it_was_not_sent() -> None:
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        real, producer.socket = producer.socket, _Full()  # type: ignore[assignment]
        try:
            assert producer.send_frames([b"x"], timeout_ms=100) is False
        finally:
            producer.socket = real


def test_a_curve_client_of_a_server_without_curve_is_refused_for_the_handshake(
    tmp_path: Path,
) -> None:
    """No common mechanism (CURVE on the client's side only) is a failed handshake, not a
    key refused: ``refusal`` says ``handshake`` (replay's and record's hint differ)."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    with (
        Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as plain,
        _alice(tmp_path, plain.endpoint) as client,
    ):
        client.send_frames([b"x"], timeout_ms=100)
        t_end, said = time.monotonic() + 30, None
        while said is None and time.monotonic() < t_end:
            said = client.refusal()
            time.sleep(0.05)
        assert said == "handshake"


def test_a_refusal_is_said_though_a_handshake_succeeded_after_it(tmp_path: Path) -> None:
    """A client connected to two servers, refused by one and then admitted by the other
    before it next asks: :meth:`refusal` says the refusal (a later event does not hide it),
    and that a handshake succeeded."""
    for name in ("server", "alice"):
        create_certificates(tmp_path, name)
    for folder, keys in (("allowed", ["alice.key"]), ("nobody", [])):
        (tmp_path / folder).mkdir()
        for key in keys:
            shutil.copy(tmp_path / key, tmp_path / folder)
    admitting: zmq.Context[Any] = zmq.Context()
    refusing: zmq.Context[Any] = zmq.Context()
    auths = [
        start_authenticator(admitting, tmp_path / "allowed"),
        start_authenticator(refusing, tmp_path / "nobody"),
    ]
    try:
        with (
            _curve_server(tmp_path, admitting) as good,
            _curve_server(tmp_path, refusing) as bad,
            _alice(tmp_path, bad.endpoint) as alice,
        ):
            assert alice.monitor is not None and alice.monitor.poll(10_000)  # refused
            alice.socket.connect(good.endpoint)
            for _ in range(20):  # round robin: some go to the refused connection's queue
                assert alice.send_frames([b"alice"], timeout_ms=5000)
                if good.recv_frames(timeout_ms=500) is not None:  # admitted
                    break
            else:
                pytest.fail("the admitting server heard nothing")
            time.sleep(0.2)  # the monitor's events of both, in that order
            assert alice.refusal() == "auth" and alice.shook
    finally:
        for auth in auths:
            auth.stop()
        admitting.term()
        refusing.term()


def test_wait_ready_of_a_process_started_under_a_proxy_reaches_the_daemon() -> None:
    """``http_proxy`` set when the process starts (a cluster's login environment), before
    ``streamtrk.client`` is imported: the probe still goes to the daemon's port directly,
    not to the proxy (here nothing listens there)."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env |= {"http_proxy": "http://127.0.0.1:1", "HTTP_PROXY": "http://127.0.0.1:1"}
    probe = (
        "import sys; from streamtrk.client import wait_ready; "
        "sys.exit(not wait_ready(sys.argv[1], 5.0))"
    )
    with _ready_once() as address:
        done = subprocess.run([sys.executable, "-c", probe, address], env=env, timeout=60)
        assert done.returncode == 0
