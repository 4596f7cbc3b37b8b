"""The emit thread: replies with their tracks and ids, counted; the internal fallback; drops
and linger at the drain deadline; a dead emitter counts what it leaves."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any

import numpy as np
import pytest
import zmq
from live_daemon import wait_for

from streamtrk.event import TRACK_PARAM_DTYPES, Tracks
from streamtrk.service.emit import Emitter
from streamtrk.service.job import Reply
from streamtrk.service.monitor import Reconnects
from streamtrk.service.telemetry import Metrics
from streamtrk.wire import decode
from streamtrk.wire.codec import ModelId


def test_a_reply_that_cannot_be_encoded_is_sent_as_internal() -> None:
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        push.bind("inproc://emit-test")
        pull.connect("inproc://emit-test")
        metrics = Metrics()
        emitter = Emitter(push, queue.Queue(), metrics, lambda: True, linger_ms=0)
        # Track parameters lack 'chi2' and friends: encoding refuses the tracks.
        bad = Tracks(np.array([0, 2]), np.array([0, 1]), {"pt": np.ones(1, np.float32)})
        metrics.inflight.inc()
        emitter.emit(Reply(7, 42, 0.0, {"gnn": 0.5}, hit_ids=np.arange(3), tracks=bad))
        assert pull.poll(5000)
        reply = decode(pull.recv_multipart()).to_reply()
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    assert (reply.run, reply.event, reply.status, reply.reason) == (7, 42, "error", "internal")
    assert len(reply) == 0 and reply.timings["gnn"] == 0.5 and "encode" in reply.timings
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1
    assert value("streamtrk_events_completed_total", {"status": "error"}) == 1
    assert value("streamtrk_hits_total") == 0  # answered without its tracks
    assert value("streamtrk_inflight_events") == 0


def test_a_reply_queued_just_before_upstream_finishes_is_sent() -> None:
    # The worker queues its last reply, then says it is done; the emitter may have found the
    # queue empty just before: it must still send that reply before it exits.
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    replies: queue.Queue[Reply] = queue.Queue()
    last = Reply(7, 43, 0.0, {}, reason="deadline")
    queued: list[Reply] = []

    def upstream_done() -> bool:  # called once the queue was found empty
        if not queued:
            replies.put(last)
            queued.append(last)
        return True

    try:
        push.bind("inproc://emit-race")
        pull.connect("inproc://emit-race")
        metrics = Metrics()
        metrics.inflight.inc()
        emitter = Emitter(push, replies, metrics, upstream_done, linger_ms=1000)
        emitter.start()
        emitter.join(30)
        assert not emitter.is_alive()
        assert pull.poll(5000), "the last reply was never sent"
        reply = decode(pull.recv_multipart()).to_reply()
    finally:
        pull.close(linger=0)
        ctx.term()
    assert (reply.event, reply.reason) == (43, "deadline")


_ADDR = itertools.count()


def _tracks(n: int = 2) -> Tracks:
    offsets = np.arange(0, 2 * n + 1, 2)
    params = {k: np.ones(n, dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    return Tracks(offsets, np.arange(2 * n), params)


class Rig:
    def __init__(self, peer: bool = True, linger_ms: int = 0, done: Any = lambda: True) -> None:
        self.ctx = zmq.Context()
        self.addr = f"inproc://emit-test-{next(_ADDR)}"
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.bind(self.addr)
        self.pull: zmq.Socket[Any] | None = None
        if peer:
            self.connect()
        self.metrics = Metrics()
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.emitter = Emitter(self.push, self.replies, self.metrics, done, linger_ms=linger_ms)

    def connect(self) -> None:
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.connect(self.addr)

    def recv(self, timeout_ms: int = 5000):
        assert self.pull is not None, "no peer connected"
        assert self.pull.poll(timeout_ms), "no reply was sent"
        return decode(self.pull.recv_multipart())

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})

    def close(self) -> None:
        for s in (self.push, self.pull):
            if s is not None:
                s.close(linger=0)
        self.ctx.term()


@pytest.fixture
def rig(closed_after):
    return lambda **kw: closed_after(Rig(**kw))


def test_a_sent_reply_carries_its_tracks_msg_id_and_is_counted(rig) -> None:
    r = rig()
    r.metrics.inflight.inc()
    t_recv = time.perf_counter() - 0.002
    r.emitter.emit(
        Reply(1, 2, t_recv, {"gnn": 0.1}, hit_ids=np.arange(10, 14), tracks=_tracks(2), msg_id=99)
    )
    msg = r.recv()
    reply = msg.to_reply()
    assert (reply.status, reply.msg_id, len(reply)) == ("ok", 99, 2)
    assert list(reply.to_tracks(np.arange(10, 14)).hit_index) == [0, 1, 2, 3]
    assert "encode" in reply.timings
    assert r.value("streamtrk_events_completed_total", {"status": "ok"}) == 1
    assert r.value("streamtrk_tracks_total") == 2
    assert r.value("streamtrk_hits_total") == 4
    assert r.value("streamtrk_stage_seconds_count", {"stage": "encode"}) == 1
    assert r.value("streamtrk_event_latency_seconds_count") == 1
    assert 0.002 <= r.value("streamtrk_event_latency_seconds_sum") < 5
    assert r.value("streamtrk_inflight_events") == 0
    assert r.emitter.dropped == 0
    r.metrics.inflight.inc()
    r.emitter.emit(Reply(1, 3, t_recv, {}, reason="deadline"))  # no tracks: none counted
    assert r.recv().to_reply().reason == "deadline"
    assert r.value("streamtrk_tracks_total") == 2
    assert r.value("streamtrk_hits_total") == 4


def test_an_error_reply_that_cannot_be_encoded_is_not_counted_twice(rig) -> None:
    r = rig()
    r.metrics.inflight.inc()
    r.emitter.emit(Reply(1, 2, 0.0, {}, tracks=_tracks(1), reason="deadline", msg_id=5))
    reply = r.recv().to_reply()
    assert (reply.reason, reply.msg_id) == ("internal", 5)
    assert r.value("streamtrk_events_rejected_total", {"reason": "internal"}) == 0
    assert r.value("streamtrk_internal_errors_total", {"cause": "encode"}) == 1
    r.metrics.inflight.inc()
    r.emitter.emit(
        Reply(
            1,
            3,
            0.0,
            {},
            tracks=_tracks(1).__class__(
                np.array([0, 2]), np.array([0, 1]), {"pt": np.ones(1, np.float32)}
            ),
            msg_id=6,
        )
    )
    assert r.recv().to_reply().msg_id == 6
    assert r.value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1


def test_a_dead_emitter_drops_and_counts_every_reply_left(rig) -> None:
    r = rig()
    for event in range(3):
        r.metrics.inflight.inc()
        r.replies.put(Reply(1, event, 0.0, {}, reason="deadline"))

    def boom(reply: Reply) -> None:
        raise RuntimeError("send failed")

    r.emitter.emit = boom
    r.emitter.start()
    r.emitter.join(10)
    assert not r.emitter.is_alive()
    assert isinstance(r.emitter.error, RuntimeError)
    assert r.emitter.dropped == 3
    assert r.value("streamtrk_inflight_events") == 0


def test_the_emitter_waits_for_upstream_before_exiting(rig) -> None:
    done = threading.Event()
    r = rig(done=done.is_set)
    r.emitter.start()
    time.sleep(0.35)  # a few empty polls while upstream still works
    r.metrics.inflight.inc()
    r.replies.put(Reply(1, 9, 0.0, {}, reason="deadline"))
    done.set()
    r.emitter.join(10)
    assert r.recv().to_reply().event == 9


def test_has_work_is_a_reply_waiting(rig) -> None:
    r = rig()
    assert not r.emitter.has_work()
    r.replies.put(Reply(1, 9, 0.0, {}, reason="deadline"))
    assert r.emitter.has_work()


def test_in_a_drain_the_linger_is_what_is_left_of_it(rig) -> None:
    r = rig(linger_ms=1000)
    assert r.emitter._linger() == 1000  # closing outside a drain (the thread failed)
    r.emitter.give_up_at = time.perf_counter() + 0.5
    got = r.emitter._linger()
    assert int((r.emitter.give_up_at - time.perf_counter()) * 1000) <= got <= 500  # what is left
    r.emitter.give_up_at = time.perf_counter() + 60
    assert 59_000 < r.emitter._linger() <= 60_000
    r.emitter.give_up_at = time.perf_counter() - 1
    assert r.emitter._linger() == 0


def test_replies_queued_for_a_slow_consumer_go_out_until_the_drain_ends() -> None:
    """Over TCP, twenty 4 MB replies handed to ZeroMQ for a consumer that starts reading
    1.5 s after the emitter closed its socket: all arrive, within the drain (4 s left),
    not only those ZeroMQ had passed on when ``linger_ms`` (1 s) ran out (2 of 20)."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.connect(f"tcp://127.0.0.1:{push.bind_to_random_port('tcp://127.0.0.1')}")
    replies: queue.Queue[Reply] = queue.Queue()
    hits = np.arange(200_000, dtype=np.int64)  # a MU=200 event's, in 20,000 tracks
    params = {k: np.zeros(20_000, dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    tracks = Tracks(np.arange(0, len(hits) + 1, 10), hits, params)
    for event in range(20):
        replies.put(Reply(1, event, 0.0, {}, hit_ids=hits, tracks=tracks))
    emitter = Emitter(push, replies, Metrics(), lambda: True, linger_ms=1000)
    try:
        time.sleep(0.2)  # connected
        emitter.give_up_at = time.perf_counter() + 4
        emitter.start()
        emitter.join(30)
        assert not emitter.is_alive() and emitter.dropped == 0  # all handed to ZeroMQ
        time.sleep(1.5)
        got = []
        while pull.poll(1000):
            got.append(decode(pull.recv_multipart()).to_reply().event)
    finally:
        pull.close(linger=0)
        ctx.term()
    assert got == list(range(20))


def _emit_in_thread(r: Rig, reply: Reply) -> threading.Thread:
    t = threading.Thread(target=r.emitter.emit, args=(reply,), daemon=True)
    t.start()
    return t


def test_past_the_drain_deadline_an_unsendable_reply_is_dropped_and_counted(rig) -> None:
    r = rig(peer=False)
    r.emitter.give_up_at = time.perf_counter() - 0.01
    r.metrics.inflight.inc()
    t = _emit_in_thread(r, Reply(1, 2, 0.0, {}, hit_ids=np.arange(3), tracks=_tracks(1)))
    t.join(5)
    assert not t.is_alive(), "the reply was never given up"
    assert r.emitter.dropped == 1
    assert not r.value("streamtrk_events_completed_total", {"status": "ok"})
    assert not r.value("streamtrk_hits_total") and not r.value("streamtrk_tracks_total")
    assert r.value("streamtrk_inflight_events") == 0


def test_without_a_drain_deadline_a_reply_waits_for_a_consumer(rig) -> None:
    r = rig(peer=False)
    r.metrics.inflight.inc()
    t = _emit_in_thread(r, Reply(1, 2, 0.0, {}, reason="deadline"))
    time.sleep(0.3)
    assert t.is_alive(), "the reply was not waiting for a consumer"
    r.connect()
    t.join(5)
    assert not t.is_alive()
    assert r.recv().to_reply().event == 2 and r.emitter.dropped == 0


def test_a_dead_emitter_connects_nothing_again_while_it_drops_what_comes(
    rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connect mode: a handshake refused just before the emitter died asks for its socket to
    connect again; once due, that must not touch the closed socket (the thread would then
    take no more replies, and upstream would block on a full queue)."""
    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.2)
    done = threading.Event()
    r = rig(done=done.is_set)
    reconnects = Reconnects()
    r.emitter.reconnect = lambda: reconnects.apply("output", r.push, r.addr)
    r.metrics.inflight.inc()
    r.replies.put(Reply(1, 0, 0.0, {}, reason="deadline"))

    def boom(reply: Reply) -> None:
        reconnects.request("output")  # the monitor saw the handshake refused
        raise RuntimeError("send failed")

    r.emitter.emit = boom
    r.emitter.start()
    time.sleep(0.5)  # the reconnection is due while the dead emitter drops what comes
    for event in (1, 2):
        r.metrics.inflight.inc()
        r.replies.put(Reply(1, event, 0.0, {}, reason="deadline"))
    done.set()
    r.emitter.join(10)
    assert not r.emitter.is_alive()
    assert isinstance(r.emitter.error, RuntimeError)
    assert r.emitter.dropped == 3 and r.replies.empty()
    assert r.value("streamtrk_inflight_events") == 0


def test_hits_counted_are_all_the_event_s_not_only_those_on_tracks(rig) -> None:
    """``streamtrk_hits_total``: hits of the events answered (docs/metrics.md; the rules
    divide received bytes and throughput by it), noise hits on no track included."""
    r = rig()
    r.metrics.inflight.inc()
    r.emitter.emit(Reply(1, 2, 0.0, {}, hit_ids=np.arange(100, 106), tracks=_tracks(2)))
    assert r.recv().to_reply().ok
    assert r.value("streamtrk_tracks_total") == 2
    assert r.value("streamtrk_hits_total") == 6  # 4 on the tracks, 2 on none


def test_past_the_drain_deadline_the_replies_left_are_given_up_at_once(rig) -> None:
    """No consumer at the drain's end: each reply left is dropped without a poll's wait (30
    replies waiting 100 ms each would overrun the drain by 3 s, the emitter then still
    alive at exit and its replies said unsent)."""
    r = rig(peer=False)
    for event in range(30):
        r.metrics.inflight.inc()
        r.replies.put(Reply(1, event, 0.0, {}, reason="deadline"))
    r.emitter.give_up_at = time.perf_counter() - 0.01
    t0 = time.perf_counter()
    r.emitter.start()
    r.emitter.join(10)
    assert not r.emitter.is_alive()
    assert time.perf_counter() - t0 < 1.5
    assert r.emitter.dropped == 30 and r.value("streamtrk_inflight_events") == 0


def _connect_mode(r: Rig, connected: list[bool]) -> None:
    r.emitter.connected = lambda: connected[0]


def test_replies_sent_while_a_consumer_was_connected_are_not_counted_dropped_at_close(
    rig,
) -> None:
    """Connect mode: a reply taken with a consumer connected has gone to it; one that then
    leaves before the socket closes takes none of them with it."""
    r = rig()
    connected = [True]
    _connect_mode(r, connected)
    for event in range(3):
        r.metrics.inflight.inc()
        r.emitter.emit(Reply(1, event, 0.0, {}, reason="deadline"))
    connected[0] = False
    r.emitter.cleanup()
    assert r.emitter.dropped == 0


def test_replies_taken_while_no_consumer_was_connected_count_only_if_none_is_at_close(
    rig,
) -> None:
    """Connect mode: replies ZeroMQ took with no consumer connected go out once one
    connects: counted dropped only when none is connected as the socket closes."""
    for back, dropped in ((True, 0), (False, 2)):
        r = rig()
        connected = [True]
        _connect_mode(r, connected)
        r.metrics.inflight.inc()
        r.emitter.emit(Reply(1, 0, 0.0, {}, reason="deadline"))  # with a consumer there
        connected[0] = False
        for event in (1, 2):
            r.metrics.inflight.inc()
            r.emitter.emit(Reply(1, event, 0.0, {}, reason="deadline"))
        connected[0] = back
        r.emitter.cleanup()
        assert r.emitter.dropped == dropped, back


def test_a_sent_reply_says_its_beam_line_and_model(rig) -> None:
    """A reply names the beam line its tracks' perigee parameters are about and the model
    that made them (docs/wire.md, version 6): both reach the consumer."""
    r = rig()
    r.metrics.inflight.inc()
    model = ModelId("gnn-a", "0123abcd", 0.5)
    r.emitter.emit(
        Reply(1, 2, 0.0, {}, np.arange(4), _tracks(2), beam_line=(0.5, -1.25), model=model)
    )
    reply = r.recv().to_reply()
    assert reply.beam_line == (0.5, -1.25) and reply.model == model


def test_an_event_with_no_track_found_counts_its_hits(rig) -> None:
    """``streamtrk_hits_total`` counts the hits of every event answered ok, one where no
    track was found too (the rules divide received bytes and throughput by it)."""
    r = rig()
    r.metrics.inflight.inc()
    r.emitter.emit(Reply(1, 2, 0.0, {}, hit_ids=np.arange(5), tracks=_tracks(0)))
    reply = r.recv().to_reply()
    assert reply.ok and len(reply) == 0
    assert r.value("streamtrk_tracks_total") == 0
    assert r.value("streamtrk_hits_total") == 5


def test_the_encode_time_sent_is_the_one_observed(rig) -> None:
    """The reply's ``timings["encode"]`` is the time its encoding took, the same seconds
    ``streamtrk_stage_seconds{stage="encode"}`` observed."""
    r = rig()
    r.metrics.inflight.inc()
    r.emitter.emit(Reply(1, 2, 0.0, {}, hit_ids=np.arange(4), tracks=_tracks(2)))
    sent = r.recv().to_reply().timings["encode"]
    assert sent > 0
    assert sent == r.value("streamtrk_stage_seconds_sum", {"stage": "encode"})


def test_waiting_for_a_consumer_is_progress_not_a_stall(rig) -> None:
    """No consumer yet, the emitter waits to send the reply in hand with more queued: it
    beats while it waits (back-pressure), so the liveness check does not call it stalled."""
    done = threading.Event()
    r = rig(peer=False, done=done.is_set)
    for event in (1, 2):
        r.metrics.inflight.inc()
        r.replies.put(Reply(1, event, 0.0, {}, reason="deadline"))
    r.emitter.start()
    try:
        time.sleep(1.0)  # ten polls for a consumer
        assert r.emitter.has_work() and r.emitter.problem(0.5) is None
    finally:
        r.connect()
        done.set()
        r.emitter.join(10)
    assert not r.emitter.is_alive()
    assert [r.recv().to_reply().event for _ in range(2)] == [1, 2]


def _reconnected_while(
    r: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, busy: bool
) -> None:
    """Connect mode: the monitor asks for the output to connect again (a handshake
    refused); with ``busy``, while a reply waits for a consumer, else while idle."""
    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.1)
    reconnects = Reconnects()
    endpoint = f"inproc://emit-nobody-{next(_ADDR)}"  # nothing binds it: the socket waits
    r.emitter.reconnect = lambda: reconnects.apply("output", r.push, endpoint)
    done = threading.Event()
    r.emitter.upstream_done = done.is_set
    if busy:
        r.metrics.inflight.inc()
        r.replies.put(Reply(1, 2, 0.0, {}, reason="deadline"))
    with caplog.at_level("INFO", logger="streamtrk.service.monitor"):
        r.emitter.start()
        try:
            time.sleep(0.3)  # the reply in hand, or none
            reconnects.request("output")
            wait_for(lambda: any(f"connecting the output to {endpoint}" in rec.getMessage()
                                 for rec in caplog.records), timeout=10)  # fmt: skip
        finally:
            if busy:
                r.connect()
            done.set()
            r.emitter.join(10)
    assert not r.emitter.is_alive() and r.emitter.error is None


def test_an_idle_emitter_connects_again_when_asked(rig, monkeypatch, caplog) -> None:
    """With no reply to send, the emitter's polls still make a reconnection asked for (its
    socket has one thread): a consumer that refused a handshake gets connected again."""
    _reconnected_while(rig(peer=False), monkeypatch, caplog, busy=False)


def test_an_emitter_waiting_for_a_consumer_connects_again_when_asked(
    rig, monkeypatch, caplog
) -> None:
    """Waiting to send a reply (no consumer), the emitter makes a reconnection asked for:
    that may be the very consumer it waits for."""
    _reconnected_while(rig(peer=False), monkeypatch, caplog, busy=True)


def test_an_emitter_that_sent_nothing_counts_nothing_dropped_at_close(rig) -> None:
    """Connect mode, no consumer connected at close: only replies ZeroMQ took are counted
    dropped; an emitter that was given none counts none (and says nothing)."""
    r = rig(peer=False)
    r.emitter.connected = lambda: False
    r.emitter.cleanup()
    assert r.emitter.dropped == 0
