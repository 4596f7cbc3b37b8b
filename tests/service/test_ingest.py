"""Ingest on real sockets: limits as a message is read, decoding, deadlines, no room, error
replies, dead letters, connect mode; a rejection is counted before its reply is queued."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from live_daemon import wait_for

import streamtrk.service.ingest as ingest_module
from streamtrk.event import TRACK_PARAM_DTYPES, Event, Hits, HitTruth, Particles, Tracks, Truth
from streamtrk.io.recording import iter_records
from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.config import ServeConfig
from streamtrk.service.deadletter import DeadLetters
from streamtrk.service.ingest import Ingest
from streamtrk.service.job import Job, Reply
from streamtrk.service.monitor import Reconnects
from streamtrk.service.telemetry import Metrics
from streamtrk.wire import WireError, encode_hits, encode_tracks, encode_truth


class Watched(queue.Queue[Reply]):
    """A reply queue noting, for each reply queued, the rejections counted by then."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.counted: list[float | None] = []

    def put(self, item: Reply, block: bool = True, timeout: float | None = None) -> None:
        value = self.metrics.registry.get_sample_value
        self.counted.append(value("streamtrk_events_rejected_total", {"reason": item.reason}))
        super().put(item, block, timeout)


def test_a_rejection_is_counted_before_its_reply_is_queued() -> None:
    """The emitter may send a reply the moment it is queued: a scrape must not then see
    completed{status="error"} without the rejection (docs/metrics.md's identities)."""
    metrics = Metrics()
    replies = Watched(metrics)
    socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.PULL)
    try:
        ingest = Ingest(
            socket, Batcher(4, BatchPolicy()), replies, metrics, ServeConfig, threading.Event()
        )
        header = {"schema": "streamtrk", "version": 9, "kind": "hits", "run": 1, "event": 2}
        ingest.handle([zmq.Frame(msgpack.packb(header))])
    finally:
        socket.close(linger=0)
    reply = replies.get_nowait()
    assert (reply.run, reply.event, reply.reason) == (1, 2, "bad_version")
    assert replies.counted == [1.0]


def _event(event: int = 2, n: int = 6) -> Event:
    cols = {k: np.arange(n).astype(dt) for k, dt in Hits.DTYPES.items()}
    return Event(1, event, Hits(**cols))


def _good(event: int = 2, **kw: Any) -> list[bytes]:
    return [bytes(f) for f in encode_hits(_event(event), **kw)]


def _bad_version(event: int = 2, **extra: Any) -> list[bytes]:
    header = {"schema": "streamtrk", "version": 9, "kind": "hits", "run": 1, "event": event}
    return [msgpack.packb({**header, **extra})]


class FullDisk(DeadLetters):
    """The dead-letter file on a disk that has no room left."""

    def write(self, frames: Any, error: WireError, received: int = 0) -> bool:
        raise OSError(28, "No space left on device")


class Rig:
    """An Ingest on a loopback PULL socket, bound (or connected with ``connect``), and a PUSH
    socket to feed it."""

    def __init__(
        self,
        cfg: ServeConfig | None = None,
        batcher: Batcher | None = None,
        dead_letters: DeadLetters | None = None,
        connect: bool = False,
    ) -> None:
        self.ctx = zmq.Context()
        self.push, self.pull = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        self.push.setsockopt(zmq.SNDTIMEO, 2000)  # a send never hangs a test
        server, client = (self.push, self.pull) if connect else (self.pull, self.push)
        server.bind("tcp://127.0.0.1:*")  # the daemon's input binds, or connects to a distributor
        addr = server.getsockopt_string(zmq.LAST_ENDPOINT)  # tcp: its settings refuse inproc
        client.connect(addr)
        cfg = cfg or ServeConfig()
        if connect:
            cfg = replace(cfg, connect=True, input=addr)
        self.cfg = cfg
        self.metrics = Metrics()
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.batcher = batcher if batcher is not None else Batcher(16, BatchPolicy())
        self.stop = threading.Event()
        self.dead_letters = dead_letters
        self.ingest = Ingest(
            self.pull,
            self.batcher,
            self.replies,
            self.metrics,
            lambda: self.cfg,
            self.stop,
            dead_letters,
        )

    def send(self, frames: list[bytes]) -> None:
        self.push.send_multipart(frames)

    def receive(self) -> tuple[list[Any], WireError | None, int]:
        assert self.pull.poll(5000)
        return self.ingest._receive()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})

    def close(self) -> None:
        if self.dead_letters is not None:
            self.dead_letters.close()
        self.push.close(linger=0)
        self.pull.close(linger=0)
        self.ctx.term()


@pytest.fixture
def rig(closed_after):
    return lambda **kw: closed_after(Rig(**kw))


def test_frame_limit_counts_frames_and_keeps_those_before(rig) -> None:
    r = rig(cfg=ServeConfig(max_frames=8))
    eight = [bytes([n]) for n in range(8)]
    r.send(eight)
    frames, refused, count = r.receive()
    assert refused is None and [bytes(f) for f in frames] == eight and count == 8
    r.send([*eight, b"i", b"j"])
    frames, refused, count = r.receive()
    assert refused is not None and refused.reason == "frame_count"
    assert [bytes(f) for f in frames] == eight and count == 10


def test_byte_limit_sums_the_frames_and_keeps_the_first(rig) -> None:
    r = rig(cfg=ServeConfig(max_message_bytes=10))
    r.send([b"x" * 5, b"y" * 5])
    frames, refused, count = r.receive()
    assert refused is None and count == 2
    r.send([b"x" * 5, b"y" * 6])
    frames, refused, count = r.receive()
    assert refused is not None and refused.reason == "message_too_large"
    r.send([b"z" * 11, b"w"])
    frames, refused, count = r.receive()
    assert refused.reason == "message_too_large"
    assert [bytes(f) for f in frames] == [b"z" * 11] and count == 2
    assert r.value("streamtrk_received_bytes_total") == 10 + 11 + 12  # every frame read


def test_a_refused_message_is_counted_and_answered_with_its_reason(rig) -> None:
    r = rig(cfg=ServeConfig(max_frames=len(_good())))
    r.send([*_good(), b"extra"])
    r.ingest.handle(*r.receive())
    reply = r.replies.get_nowait()
    assert (reply.run, reply.event, reply.reason) == (1, 2, "frame_count")
    assert r.value("streamtrk_events_received_total") == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "frame_count"}) == 1
    assert r.value("streamtrk_inflight_events") == 1
    assert r.batcher.depth() == 0


def test_a_decoder_crash_is_answered_internal_and_counted(rig, monkeypatch) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ingest_module, "decode", boom)
    r = rig()
    r.ingest.handle(_good())
    reply = r.replies.get_nowait()
    assert (reply.event, reply.reason) == (2, "internal")
    assert r.value("streamtrk_internal_errors_total", {"cause": "decode"}) == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1


def test_deadline_is_the_messages_else_the_default_from_receipt(rig) -> None:
    r = rig(cfg=ServeConfig(deadline_ms=50.0))
    r.ingest.handle(_good(2, deadline_ms=20))
    r.ingest.handle(_good(3))
    a, b = list(r.batcher.queue.queue)
    assert a.deadline == a.t_recv + 20.0 / 1000
    assert b.deadline == b.t_recv + 50.0 / 1000
    assert r.value("streamtrk_inflight_events") == 2
    r.cfg = ServeConfig()
    r.ingest.handle(_good(4))
    assert list(r.batcher.queue.queue)[-1].deadline is None


@pytest.mark.parametrize(
    ("overload", "closed", "reason"), [("reject", False, "overloaded"), ("block", True, "shutdown")]
)
def test_no_room_is_answered_and_counted(rig, overload: str, closed: bool, reason: str) -> None:
    full = Batcher(1, BatchPolicy())
    assert full.put(Job(_event(1), time.perf_counter(), None))
    if closed:
        full.close()  # the drain gave up on the queue
    r = rig(cfg=ServeConfig(overload=overload), batcher=full)
    handle = threading.Thread(target=r.ingest.handle, args=(_good(5, msg_id=77),), daemon=True)
    handle.start()
    handle.join(10)
    assert not handle.is_alive()  # 'reject' never waits for room
    reply = r.replies.get_nowait()
    assert (reply.event, reply.reason, reply.msg_id) == (5, reason, 77)
    assert r.value("streamtrk_events_rejected_total", {"reason": reason}) == 1


def test_an_error_reply_echoes_the_msg_id(rig) -> None:
    r = rig()
    r.ingest.handle(
        [
            msgpack.packb(
                {
                    "schema": "streamtrk",
                    "version": 9,
                    "kind": "hits",
                    "run": 1,
                    "event": 2,
                    "msg_id": 41,
                }
            )
        ]
    )
    assert r.replies.get_nowait().msg_id == 41


def test_a_reply_on_the_input_is_counted_and_not_answered(rig, caplog) -> None:
    """A ``tracks`` message is a reply, not an event: an input wired to a collector (or a
    daemon's output wired to a distributor) must not answer it, or each reply would come
    back as another, for ever. One warning names the likely wiring fault."""
    r = rig()
    reply = [bytes(f) for f in encode_tracks(1, 2, np.arange(3), None, status="error",
                                             reason="timeout")]  # fmt: skip
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        for _ in range(3):
            r.ingest.handle([zmq.Frame(f) for f in reply])
    assert r.replies.empty()
    assert r.value("streamtrk_events_rejected_total", {"reason": "bad_kind"}) == 3
    assert r.value("streamtrk_events_unidentified_total") == 3  # received = answered + these
    warnings = [rec.getMessage() for rec in caplog.records]
    assert len(warnings) == 1 and "replies (tracks messages) come in on the input" in warnings[0]


def test_a_reply_the_decoder_refuses_is_not_answered_either(rig) -> None:
    """A reply this daemon cannot decode (here: from a daemon allowed more hits) is still a
    reply: counted with its reason and unidentified, not answered (with another reply)."""
    r = rig(cfg=ServeConfig(max_hits=5))
    params = {k: np.zeros(1, dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    tracks = Tracks(np.array([0, 10]), np.arange(10), params)
    r.ingest.handle([zmq.Frame(bytes(f)) for f in encode_tracks(1, 2, np.arange(10), tracks)])
    assert r.replies.empty()
    assert r.value("streamtrk_events_rejected_total", {"reason": "too_many_hits"}) == 1
    assert r.value("streamtrk_events_unidentified_total") == 1
    assert r.value("streamtrk_inflight_events") == 0


@pytest.mark.parametrize(
    ("cap", "label"), [(1 << 20, "written"), (1, "over_cap"), (None, "failed")]
)
def test_unidentified_input_is_counted_and_offered_to_the_dead_letters(rig, tmp_path, cap, label):
    path = tmp_path / "dead.stk"
    dead = FullDisk(path, 1 << 20) if cap is None else DeadLetters(path, cap)
    r = rig(dead_letters=dead)
    r.ingest.handle([b"\xc1garbage"])
    assert r.replies.empty()
    dead.close()
    assert [len(f) for _, f in iter_records(path)] == ([2] if label == "written" else [])
    assert r.value("streamtrk_events_unidentified_total") == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "not_msgpack"}) == 1
    assert r.value("streamtrk_dead_letters_total", {"result": label}) == 1


def test_dead_letters_failing_on_a_full_disk_are_one_warning_a_minute(rig, tmp_path, caplog):
    r = rig(dead_letters=FullDisk(tmp_path / "dead.stk", 1 << 20))
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        for _ in range(5):  # a producer sending garbage, each write failing
            r.ingest.handle([b"\xc1garbage"])
    warnings = [rec.getMessage() for rec in caplog.records if "dead-letter" in rec.getMessage()]
    assert warnings == [
        "cannot write to the dead-letter file (1 since the last warning): "
        "[Errno 28] No space left on device"
    ]
    assert r.value("streamtrk_dead_letters_total", {"result": "failed"}) == 5


def test_the_rest_of_a_burst_is_said_once_its_warning_is_due(rig, tmp_path, monkeypatch, caplog):
    """Misrouted replies and failed dead-letter writes that came after their warning are
    said once the next one is due, without waiting for a next occurrence (maybe never)."""
    monkeypatch.setattr(ingest_module, "MISROUTED_LOG_S", 1.0)
    monkeypatch.setattr(ingest_module, "DEAD_LETTER_LOG_S", 1.0)
    r = rig(dead_letters=FullDisk(tmp_path / "dead.stk", 1 << 20))
    reply = [bytes(f) for f in encode_tracks(1, 2, np.arange(3), None, status="error",
                                             reason="timeout")]  # fmt: skip

    def said() -> list[str]:
        return [rec.getMessage() for rec in caplog.records]

    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        r.ingest.start()
        try:
            for _ in range(3):  # each also fails its dead-letter write
                r.send(reply)
            wait_for(lambda: r.value("streamtrk_events_unidentified_total") == 3, timeout=10)
            wait_for(lambda: len(said()) == 4, timeout=10)
        finally:
            r.stop.set()
            r.ingest.join(10)
    assert not r.ingest.is_alive() and r.ingest.error is None
    assert set(said()[2:]) == {  # two throttles: either may be due first
        "2 more replies (tracks messages) came in on the input since the last warning",
        "2 more dead letters could not be written since the last warning: "
        "[Errno 28] No space left on device",
    }


def test_the_rest_of_a_burst_is_said_when_the_ingest_stops(rig, tmp_path, caplog) -> None:
    """Held back for a minute, the rest of a burst is not lost with the thread."""
    r = rig(dead_letters=FullDisk(tmp_path / "dead.stk", 1 << 20))
    reply = [bytes(f) for f in encode_tracks(1, 2, np.arange(3), None, status="error",
                                             reason="timeout")]  # fmt: skip
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        r.ingest.start()
        try:
            for _ in range(3):
                r.send(reply)
            wait_for(lambda: r.value("streamtrk_events_unidentified_total") == 3, timeout=10)
        finally:
            r.stop.set()
            r.ingest.join(10)
    assert not r.ingest.is_alive() and r.ingest.error is None
    said = [rec.getMessage() for rec in caplog.records]
    assert said[2:] == [
        "2 more replies (tracks messages) came in on the input since the last warning",
        "2 more dead letters could not be written since the last warning: "
        "[Errno 28] No space left on device",
    ]


def test_a_dead_letter_records_how_many_frames_came(rig, tmp_path) -> None:
    path = tmp_path / "dead.stk"
    r = rig(cfg=ServeConfig(max_frames=8), dead_letters=DeadLetters(path, 1 << 20))
    sent = [b"\xc1", *(bytes([n]) for n in range(9))]
    r.send(sent)
    r.ingest.handle(*r.receive())  # refused for its count: eight frames kept of ten
    r.ingest.handle([b"\xc1", b"b", b"c"])  # handled without a count: the frames kept
    records = [frames for _, frames in iter_records(path)]
    heads = [msgpack.unpackb(frames[0]) for frames in records]
    assert [(h["reason"], h["frames"]) for h in heads] == [("frame_count", 10), ("not_msgpack", 3)]
    assert [frames[1:] for frames in records] == [sent[:8], [b"\xc1", b"b", b"c"]]


def test_max_hits_reaches_the_decoder(rig) -> None:
    r = rig(cfg=ServeConfig(max_hits=5))
    r.ingest.handle(_good())  # 6 hits
    assert r.replies.get_nowait().reason == "too_many_hits"


def test_the_loop_receives_until_stopped(rig) -> None:
    r = rig()
    r.send(_bad_version(8))
    r.ingest.start()
    try:
        assert r.replies.get(timeout=10).event == 8
    finally:
        r.stop.set()
        r.ingest.join(10)
    assert not r.ingest.is_alive() and r.ingest.error is None


def test_a_bound_ingest_answers_what_its_socket_holds_and_frees_its_port() -> None:
    """On stop, a bound input unbinds, then answers what it had queued: a sender connected
    to it keeps what it has not sent, and a replacement can bind the port at once."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.setsockopt(zmq.RCVHWM, 4)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    replies: queue.Queue[Reply] = queue.Queue()
    stop = threading.Event()
    ingest = Ingest(pull, Batcher(16, BatchPolicy()), replies, Metrics(), ServeConfig, stop)
    replacement = ctx.socket(zmq.PULL)
    try:
        for event in range(40):  # 40 MB: more than the socket buffers hold
            push.send_multipart([*_bad_version(event), bytes(1_000_000)])
        assert pull.poll(5000)
        time.sleep(0.3)  # the receive queue fills to its high-water mark
        stop.set()
        ingest.loop()
        taken = [replies.get_nowait().event for _ in range(replies.qsize())]
        assert len(taken) >= 4 and taken == list(range(len(taken)))  # none queued left unread
        replacement.bind(f"tcp://127.0.0.1:{port}")
        assert replacement.poll(5000)  # the sender reconnects and sends what it kept
        kept = msgpack.unpackb(replacement.recv())["event"]
        assert kept >= len(taken)  # those in flight in between are lost (docs/serve.md)
    finally:
        for sock in (pull, push, replacement):
            sock.close(linger=0)
        ctx.term()


class SpySocket:
    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.disconnected: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.socket, name)

    def disconnect(self, endpoint: str) -> None:
        self.disconnected.append(endpoint)
        self.socket.disconnect(endpoint)


@pytest.mark.parametrize(("rcvhwm", "taken"), [(1000, 5), (2, 3)])
def test_a_connected_ingest_answers_what_it_holds_then_leaves(rig, rcvhwm, taken) -> None:
    """It takes at most ``rcvhwm`` messages and the one libzmq may read past them, not what
    the distributor goes on sending, then disconnects."""
    r = rig(cfg=ServeConfig(rcvhwm=rcvhwm), connect=True)
    spy = r.ingest.socket = SpySocket(r.pull)
    for event in range(1, 6):
        r.send(_bad_version(event))
    deadline = time.monotonic() + 5
    while not r.pull.poll(0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # every message arrived (5 small ones over loopback; a loaded CI's slack)
    r.stop.set()
    r.ingest.loop()
    assert sorted(r.replies.get_nowait().event for _ in range(taken)) == list(range(1, taken + 1))
    assert r.replies.empty() and spy.disconnected == [r.cfg.input]


def test_leaving_after_the_drain_s_cut_off_answers_shutdown_unread(rig) -> None:
    """What is taken after ``leave_by`` could not be processed within the drain: answered
    'shutdown' from its header (the distributor resends it at once), where it was left in
    the socket, for the distributor's resend timeout."""
    r = rig(connect=True)
    r.send(_bad_version(1))
    assert r.pull.poll(5000)
    r.ingest.leave_by = time.perf_counter()
    r.stop.set()
    r.ingest.loop()
    assert r.replies.get_nowait().reason == "shutdown" and r.replies.empty()
    assert r.value("streamtrk_events_received_total") == 1


def test_refused_input_is_said_with_its_reasons_once_a_minute(rig, caplog) -> None:
    """A reply carries its reason's code alone, and an unidentified message none: the log
    says why, throttled (a flood of refusals is one line a minute), the rest when the
    thread stops."""
    r = rig()
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        r.ingest.handle([b"\xc1garbage"])
        for _ in range(2):
            r.ingest.handle([bytes(f) for f in _bad_version(5)])
        r.stop.set()
        r.ingest.loop()
    said = [rec.getMessage() for rec in caplog.records]
    assert said == [
        "1 input messages refused since the last warning (not_msgpack 1); the last: "
        "unidentified: not_msgpack: frame 0 (8 bytes) is not one msgpack object: invalid format",
        "2 input messages refused since the last warning (bad_version 2); the last: run 1 "
        "event 5: bad_version: version 9 not supported (supported: [1, 2, 3, 4, 5, 6])",
    ]


def test_events_taken_after_the_intake_s_deadline_are_answered_shutdown(rig) -> None:
    """Past ``leave_by`` the drain has no time to process what the socket still holds:
    answered 'shutdown' from the header alone, where they were left in the socket, closed
    with it, no reply and no count."""
    r = rig()
    for event in (1, 2, 3):
        r.send(_good(event, msg_id=event))
    deadline = time.monotonic() + 5
    while not r.pull.poll(0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # the three arrived (a loaded CI's slack)
    r.ingest.leave_by = time.perf_counter()  # passed already
    r.stop.set()
    r.ingest.loop()
    replies = [r.replies.get_nowait() for _ in range(r.replies.qsize())]
    assert [(x.event, x.reason, x.msg_id) for x in replies] == [
        (1, "shutdown", 1), (2, "shutdown", 2), (3, "shutdown", 3)
    ]  # fmt: skip
    assert r.value("streamtrk_events_received_total") == 3
    assert r.value("streamtrk_events_rejected_total", {"reason": "shutdown"}) == 3
    assert r.value("streamtrk_inflight_events") == 3  # until the emitter sends them
    assert r.batcher.depth() == 0


def test_a_bound_input_waiting_for_room_on_stop_gives_up_its_port_at_once(rig) -> None:
    """The batch queue full (the worker behind), intake waits for room with an event in
    hand: on stop the port is free for a replacement then, not once the drain makes room."""
    r = rig(batcher=Batcher(1, BatchPolicy()))
    port = r.pull.getsockopt_string(zmq.LAST_ENDPOINT)
    for event in (1, 2):  # the first fills the queue, the second waits for room
        r.send(_good(event))
    thread = threading.Thread(target=r.ingest.loop)
    thread.start()
    replacement = r.ctx.socket(zmq.PULL)
    try:
        t_end = time.monotonic() + 10
        while r.value("streamtrk_events_received_total") != 2:
            assert time.monotonic() < t_end, "the second event never came"
            time.sleep(0.01)
        r.stop.set()
        while True:  # bound once the ingest has given the port up
            try:
                replacement.bind(port)
                break
            except zmq.ZMQError:
                assert time.monotonic() < t_end, "the port was held while waiting for room"
                time.sleep(0.05)
        assert thread.is_alive()  # still waiting for room
        r.batcher.close()  # the drain gives up on the queue: answered 'shutdown'
        thread.join(10)
        assert not thread.is_alive()
        assert [x.reason for x in (r.replies.get_nowait(),)] == ["shutdown"]
    finally:
        replacement.close(linger=0)
        r.batcher.close()
        thread.join(10)


def test_a_put_that_fails_while_waiting_for_room_counts_its_event_in_flight_once(rig) -> None:
    """The batch queue full and the wait for room failing (an unbind refused): the event is
    answered 'internal' once, and in flight once, where it was counted twice (the drain
    then reported a reply unsent that was sent, and exited 1)."""
    batcher = Batcher(1, BatchPolicy())
    assert batcher.put(Job(_event(9), time.perf_counter(), None))  # full
    r = rig(batcher=batcher)

    def refused() -> None:
        raise RuntimeError("unbind failed")

    r.ingest._waiting_for_room = refused
    r.send(_good(1, msg_id=1))
    r.ingest.handle(*r.receive())
    answered = [r.replies.get_nowait() for _ in range(r.replies.qsize())]
    assert [(x.event, x.reason) for x in answered] == [(1, "internal")]
    assert r.value("streamtrk_inflight_events") == 1


def test_a_reply_on_the_input_after_the_cut_off_is_not_answered(rig) -> None:
    """Past the intake's deadline messages are answered 'shutdown' unread, but a reply (a
    tracks message) is not answered at all: answering replies would loop for ever."""
    r = rig(connect=True)
    r.send([bytes(f) for f in encode_tracks(1, 5, np.zeros(0, dtype=np.int64), None)])
    assert r.pull.poll(5000)
    r.ingest.leave_by = time.perf_counter()
    r.stop.set()
    r.ingest.loop()
    assert r.replies.empty()
    assert r.value("streamtrk_events_unidentified_total") == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "bad_kind"}) == 1


def test_after_the_cut_off_a_full_reply_queue_holds_intake_only_until_the_drain_ends(
    rig,
) -> None:
    """Past the intake's deadline, its 'shutdown' answers wait for room in a full reply
    queue (a stalled emitter) only until the drain's end: intake leaves then (in connect
    mode, disconnecting from the distributor), the answer counted unsent."""
    r = rig()
    r.replies = r.ingest.replies = queue.Queue(1)
    r.replies.put_nowait(Reply(0, 0, 0.0, {}, reason="shutdown"))  # the emitter stalled
    r.send(_good(1, msg_id=1))
    assert r.pull.poll(5000)
    now = time.perf_counter()
    r.ingest.leave_by, r.ingest.give_up_at = now, now + 0.3
    r.stop.set()
    intake = threading.Thread(target=r.ingest.loop, daemon=True)
    intake.start()
    intake.join(5)
    assert not intake.is_alive() and r.replies.qsize() == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "shutdown"}) == 1
    assert r.value("streamtrk_inflight_events") == 1  # its answer unsent


def _truth(n: int = 3) -> Truth:
    hits = HitTruth(**{k: np.zeros(n, dt) for k, dt in HitTruth.DTYPES.items()})
    parts = Particles(**{k: np.zeros(1, dt) for k, dt in Particles.DTYPES.items()})
    return Truth(hits=hits, particles=parts)


def test_a_truth_message_is_answered_bad_kind(rig) -> None:
    """Only a ``tracks`` message is a reply left unanswered: a ``truth`` message names its
    event and is answered with the decoder's reason, not counted unidentified."""
    r = rig()
    r.ingest.handle([bytes(f) for f in encode_truth(1, 7, _truth())])
    reply = r.replies.get_nowait()
    assert (reply.run, reply.event, reply.reason) == (1, 7, "bad_kind")
    assert r.value("streamtrk_events_unidentified_total") == 0
    assert r.value("streamtrk_events_rejected_total", {"reason": "bad_kind"}) == 1


def test_waiting_for_room_while_running_keeps_the_port(rig) -> None:
    """Back-pressure is not a stop: a bound input waiting for room in a full batch queue
    keeps its port (only a stop gives it up while waiting)."""
    batcher = Batcher(1, BatchPolicy())
    assert batcher.put(Job(_event(9), time.perf_counter(), None))  # full
    r = rig(batcher=batcher)
    port = r.pull.getsockopt_string(zmq.LAST_ENDPOINT)
    r.send(_good(1))
    r.ingest.start()
    replacement = r.ctx.socket(zmq.PULL)
    try:
        wait_for(lambda: r.value("streamtrk_events_received_total") == 1, timeout=10)
        time.sleep(0.5)  # several waits for room
        with pytest.raises(zmq.ZMQError):
            replacement.bind(port)
    finally:
        replacement.close(linger=0)
        r.stop.set()
        batcher.close()
        r.ingest.join(10)
    assert not r.ingest.is_alive() and r.ingest.error is None


def test_waiting_for_room_is_progress_not_a_stall(rig) -> None:
    """The worker behind, intake waits for room with an event in hand: it beats while it
    waits (back-pressure), so the liveness check does not call it stalled."""
    batcher = Batcher(1, BatchPolicy())
    assert batcher.put(Job(_event(9), time.perf_counter(), None))  # full
    r = rig(batcher=batcher)
    r.send(_good(1))
    r.ingest.start()
    try:
        wait_for(lambda: r.value("streamtrk_events_received_total") == 1, timeout=10)
        time.sleep(1.0)  # ten waits for room
        assert r.ingest.problem(0.5) is None
    finally:
        r.stop.set()
        batcher.close()
        r.ingest.join(10)


def test_past_the_cut_off_a_connected_ingest_still_takes_at_most_what_it_holds(rig) -> None:
    """Messages answered 'shutdown' unread count toward the ``rcvhwm`` + 1 taken: past the
    cut-off intake still leaves, not taking what the distributor goes on sending."""
    r = rig(cfg=ServeConfig(rcvhwm=2), connect=True)
    for event in range(1, 6):
        r.send(_good(event))
    deadline = time.monotonic() + 5
    while not r.pull.poll(0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # every message arrived (a loaded CI's slack)
    r.ingest.leave_by = time.perf_counter()  # passed already
    r.stop.set()
    r.ingest.loop()
    replies = [r.replies.get_nowait() for _ in range(r.replies.qsize())]
    assert sorted((x.event, x.reason) for x in replies) == [
        (1, "shutdown"), (2, "shutdown"), (3, "shutdown")
    ]  # fmt: skip


def test_past_the_cut_off_an_unidentified_event_keeps_the_decoders_reason(rig) -> None:
    """Only an event that names itself is answered 'shutdown' unread: a hits message
    without an event number is refused for what it is (counted, not 'shutdown')."""
    r = rig(connect=True)
    r.send([msgpack.packb({"schema": "streamtrk", "version": 2, "kind": "hits", "run": 1})])
    assert r.pull.poll(5000)
    r.ingest.leave_by = time.perf_counter()
    r.stop.set()
    r.ingest.loop()
    assert r.replies.empty()
    assert r.value("streamtrk_events_rejected_total", {"reason": "bad_header"}) == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "shutdown"}) == 0
    assert r.value("streamtrk_events_unidentified_total") == 1


def test_refused_input_while_running_is_one_warning_a_minute(rig, caplog) -> None:
    """The loop's polls say the rest of a burst of refusals only once its warning is due
    (a minute on), not at every poll: a flood is one line a minute."""
    r = rig()
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        r.ingest.start()
        try:
            for event in range(3):
                r.send(_bad_version(event))
            wait_for(lambda: r.value("streamtrk_events_received_total") == 3, timeout=10)
            time.sleep(0.5)  # several polls
            said = [rec.getMessage() for rec in caplog.records]
        finally:
            r.stop.set()
            r.ingest.join(10)
    assert len(said) == 1 and said[0].startswith("1 input messages refused")
    assert caplog.records[-1].getMessage().startswith("2 input messages refused")


def test_refused_input_is_said_while_the_thread_waits_for_room_downstream(
    rig, caplog, monkeypatch
) -> None:
    """A burst of refusals, then the reply queue full (no collector reading): the rest of
    the burst is said once due, while intake waits for room (it was said at the drain)."""
    monkeypatch.setattr(ingest_module, "REFUSED_LOG_S", 0.3)
    r = rig()
    r.ingest.replies = r.replies = queue.Queue(maxsize=3)
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        r.ingest.start()
        try:
            for event in range(4):  # the 4th's reply finds the queue full
                r.send(_bad_version(event))
            wait_for(lambda: r.value("streamtrk_events_received_total") == 4, timeout=10)
            wait_for(lambda: len(caplog.records) == 2, timeout=5)
            assert r.replies.full() and r.ingest.is_alive()  # still waiting for room
        finally:
            r.stop.set()
            while r.ingest.is_alive():
                with contextlib.suppress(queue.Empty):
                    r.replies.get(timeout=0.1)
    said = [rec.getMessage() for rec in caplog.records]
    assert said[0].startswith("1 input messages refused")
    assert said[1].startswith("3 input messages refused since the last warning (bad_version 3)")


def test_a_refused_reply_is_dead_lettered_with_the_decoders_detail(rig, tmp_path) -> None:
    """A reply the decoder refuses is offered to the dead letters with why it was refused,
    not a generic detail."""
    path = tmp_path / "dead.stk"
    r = rig(cfg=ServeConfig(max_hits=5), dead_letters=DeadLetters(path, 1 << 20))
    params = {k: np.zeros(1, dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    tracks = Tracks(np.array([0, 10]), np.arange(10), params)
    r.ingest.handle([zmq.Frame(bytes(f)) for f in encode_tracks(1, 2, np.arange(10), tracks)])
    r.dead_letters.close()
    heads = [msgpack.unpackb(frames[0]) for _, frames in iter_records(path)]
    assert [(h["reason"], h["detail"]) for h in heads] == [
        ("too_many_hits", "too_many_hits: 10 hits, limit 5")
    ]


def test_an_error_reply_to_a_decoded_event_carries_its_stage_times(rig) -> None:
    """Every reply carries the seconds its event spent per stage (docs/serve.md): one
    answered 'overloaded' after decoding, its decode time."""
    full = Batcher(1, BatchPolicy())
    assert full.put(Job(_event(1), time.perf_counter(), None))
    r = rig(cfg=ServeConfig(overload="reject"), batcher=full)
    r.ingest.handle(_good(5))
    reply = r.replies.get_nowait()
    assert reply.reason == "overloaded" and set(reply.timings) == {"decode"}
    assert reply.timings["decode"] >= 0


def test_a_message_over_the_byte_limit_is_answered_message_too_large(rig) -> None:
    """A message refused for its size as it is read is answered with that reason (its
    header, frame 0, is kept), not the frame count's."""
    r = rig(cfg=ServeConfig(max_message_bytes=64))
    r.send(_good(3, msg_id=8))
    r.ingest.handle(*r.receive())
    reply = r.replies.get_nowait()
    assert (reply.event, reply.reason, reply.msg_id) == (3, "message_too_large", 8)
    assert r.value("streamtrk_events_rejected_total", {"reason": "message_too_large"}) == 1
    assert r.value("streamtrk_events_rejected_total", {"reason": "frame_count"}) == 0


def test_past_the_cut_off_a_truth_message_is_still_answered_bad_kind(rig) -> None:
    """Only a hits message is answered 'shutdown' unread past the intake's deadline: a
    truth message naming its event is refused for what it is, as before the cut-off."""
    r = rig(connect=True)
    r.send([bytes(f) for f in encode_truth(1, 7, _truth())])
    assert r.pull.poll(5000)
    r.ingest.leave_by = time.perf_counter()
    r.stop.set()
    r.ingest.loop()
    reply = r.replies.get_nowait()
    assert (reply.event, reply.reason) == (7, "bad_kind") and r.replies.empty()
    assert r.value("streamtrk_events_rejected_total", {"reason": "shutdown"}) == 0


def test_a_stopped_ingest_closes_its_socket(rig) -> None:
    """The thread owns its socket: closed when it ends (a context's term waits for every
    socket, so one left open would hang the daemon's exit)."""
    r = rig()
    r.ingest.start()
    r.stop.set()
    r.ingest.join(10)
    assert not r.ingest.is_alive() and r.ingest.error is None
    assert r.pull.closed


def test_a_connected_input_waiting_for_room_on_stop_is_answered_shutdown(rig) -> None:
    """Connect mode has no port to give up: an event waiting for room when the stop comes
    goes on waiting, answered 'shutdown' when the drain gives up on the queue (not
    'internal', from an unbind of an endpoint never bound)."""
    batcher = Batcher(1, BatchPolicy())
    assert batcher.put(Job(_event(9), time.perf_counter(), None))  # full
    r = rig(batcher=batcher, connect=True)
    r.send(_good(1, msg_id=1))
    thread = threading.Thread(target=r.ingest.loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: r.value("streamtrk_events_received_total") == 1, timeout=10)
        r.stop.set()
        time.sleep(0.3)  # several waits for room, stopping
        assert r.replies.empty()
    finally:
        batcher.close()  # the drain gives up on the queue
        thread.join(10)
    assert not thread.is_alive()
    reply = r.replies.get_nowait()
    assert (reply.event, reply.reason) == (1, "shutdown")
    assert r.value("streamtrk_internal_errors_total", {"cause": "decode"}) == 0


def test_a_decoded_event_s_decode_time_is_observed(rig) -> None:
    """``streamtrk_stage_seconds{stage="decode"}`` observes each event decoded."""
    r = rig()
    r.ingest.handle(_good(2))
    r.ingest.handle(_good(3))
    assert r.value("streamtrk_stage_seconds_count", {"stage": "decode"}) == 2


def test_a_reply_refused_for_its_frame_count_is_dead_lettered_with_the_count(rig, tmp_path):
    """A reply on the input refused as it is read keeps its first frames: its dead letter
    says how many came, as for any unidentified message."""
    path = tmp_path / "dead.stk"
    r = rig(cfg=ServeConfig(max_frames=8), dead_letters=DeadLetters(path, 1 << 20))
    reply = [bytes(f) for f in encode_tracks(1, 2, np.arange(3), None, status="error",
                                             reason="timeout")]  # fmt: skip
    r.send([*reply, b"extra"])
    r.ingest.handle(*r.receive())
    assert r.replies.empty()
    r.dead_letters.close()
    heads = [msgpack.unpackb(frames[0]) for _, frames in iter_records(path)]
    assert [(h["reason"], h["frames"]) for h in heads] == [("frame_count", len(reply) + 1)]


def test_an_event_refused_by_the_decoder_carries_its_decode_time(rig) -> None:
    """Every reply carries the seconds its event spent per stage (docs/serve.md): one the
    decoder refused, the time until it was refused."""
    r = rig()
    r.ingest.handle(_bad_version(5))
    reply = r.replies.get_nowait()
    assert reply.reason == "bad_version" and set(reply.timings) == {"decode"}
    assert reply.timings["decode"] >= 0


def test_leaving_says_how_many_it_took_and_how_many_past_the_cut_off(rig, caplog) -> None:
    """The line an operator reads on leaving counts the messages taken and those of them
    answered 'shutdown' unread, past the intake's deadline."""
    r = rig(connect=True)
    r.send(_good(1))
    assert r.pull.poll(5000)
    r.ingest.leave_by = time.perf_counter()
    r.stop.set()
    with caplog.at_level("INFO", logger="streamtrk.service.ingest"):
        r.ingest.loop()
    said = [rec.getMessage() for rec in caplog.records]
    assert said == [
        f"disconnected the input from {r.cfg.input}; 1 queued messages taken (1 of them after "
        "the intake's deadline, answered 'shutdown' unread)"
    ]


def test_an_unidentified_message_is_dead_lettered_with_the_decoders_detail(rig, tmp_path):
    """A message naming no event is offered to the dead letters with why the decoder
    refused it (the reason's code alone does not say which frame, or what was wrong)."""
    path = tmp_path / "dead.stk"
    r = rig(dead_letters=DeadLetters(path, 1 << 20))
    r.ingest.handle([b"\xc1garbage"])
    r.dead_letters.close()
    heads = [msgpack.unpackb(frames[0]) for _, frames in iter_records(path)]
    assert [(h["reason"], h["detail"]) for h in heads] == [
        ("not_msgpack", "not_msgpack: frame 0 (8 bytes) is not one msgpack object: invalid format")
    ]


def test_a_connected_ingest_connects_again_when_asked_as_it_polls(rig, monkeypatch, caplog) -> None:
    """Connect mode: a reconnection the monitor asks for (a handshake refused) is made by
    the ingest thread itself (a socket has one thread) at its polls, while no message
    comes."""
    monkeypatch.setattr("streamtrk.service.monitor.RECONNECT_AFTER_S", 0.1)
    r = rig(connect=True)
    reconnects = Reconnects()
    r.ingest.reconnect = lambda: reconnects.apply("input", r.pull, r.cfg.input)
    with caplog.at_level("INFO", logger="streamtrk.service.monitor"):
        r.ingest.start()
        try:
            reconnects.request("input")
            wait_for(lambda: any("connecting the input to" in rec.getMessage()
                                 for rec in caplog.records), timeout=10)  # fmt: skip
        finally:
            r.stop.set()
            r.ingest.join(10)
    assert not r.ingest.is_alive() and r.ingest.error is None


def test_a_bound_ingest_takes_all_it_holds_on_stop_not_rcvhwm(rig) -> None:
    """Bind mode unbinds first, so nothing more comes: on stop it answers every message
    its socket queued, not only ``rcvhwm`` + 1 (the bound for a connected input)."""
    r = rig(cfg=ServeConfig(rcvhwm=2))
    for event in range(1, 6):
        r.send(_bad_version(event))
    wait_for(lambda: r.pull.poll(0), timeout=5)
    time.sleep(1.0)  # every message arrived (5 small ones over loopback; a loaded CI's slack)
    r.stop.set()
    r.ingest.loop()
    events = sorted(r.replies.get_nowait().event for _ in range(r.replies.qsize()))
    assert events == [1, 2, 3, 4, 5]


def test_refused_reasons_are_said_most_frequent_first(rig, caplog) -> None:
    """The throttled warning lists the reasons of the refusals since the last one, most
    frequent first (a flood's cause leads, whatever came first)."""
    r = rig()
    with caplog.at_level("WARNING", logger="streamtrk.service.ingest"):
        r.ingest.handle([b"\xc1garbage"])  # warned at once
        r.ingest.handle(_bad_version(5))
        r.ingest.handle([b"\xc1garbage"])
        r.ingest.handle([b"\xc1garbage"])
        r.stop.set()
        r.ingest.loop()
    last = caplog.records[-1].getMessage()
    assert last.startswith(
        "3 input messages refused since the last warning (not_msgpack 2, bad_version 1)"
    )
