"""Losses below the application are counted and logged, and resends recover them: a frame
over ``ZMQ_MAXMSGSIZE`` (libzmq drops the sender's connection and what it had queued on
it) and a consumer that restarts (libzmq drops the replies queued for it)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from live_daemon import ACCEPT_EVENTS, sample

from streamtrk.client import Consumer, Producer
from streamtrk.detector import load_detector
from streamtrk.replay import Recorded, ReplayOptions, load_recording, replay
from streamtrk.service.monitor import RECONNECT_AFTER_S
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire.codec import encode_hits

pytestmark = pytest.mark.slow

# The small events are within this max_hits, _big() far over it.
MAX_HITS = "8000"


def options(d, **kw) -> ReplayOptions:
    return ReplayOptions(to=d.input, from_=d.output, **{"timeout_s": 5.0, **kw})


# Replies to resends may find no consumer left when the replay is over: the drain cannot
# send them (exit status 1, as documented) and gives up after 1 s, not the default 30.
SHORT_DRAIN = ("--drain-timeout-s", "1")


def stopped(d) -> None:
    """Exit 0, or 1 for the replies to resends that found no consumer, as the drain says
    (not a crash, which exits 1 too)."""
    code = d.stop()
    if code == 1:
        [drain] = [x for x in d.logs() if x["message"].startswith("drain incomplete")]
        assert drain["dropped"] + drain["unsent"] > 0, d.logs()[-3:]
    assert code in (0, 1), d.logs()[-3:]


def disconnects(d, socket: str) -> float:
    return sample(d.metrics(), "streamtrk_disconnects_total", socket=socket, cause="closed")


def _big() -> Recorded:
    """An event of about 39,000 hits: a hit_id frame of 315 KB, 1.26 MB in all."""
    big_event = next(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=50)), 7, 1))
    assert len(big_event.hits) > 32 * 1024
    return Recorded([bytes(f) for f in encode_hits(big_event)], big_event)


def test_an_oversized_frame_is_counted_and_resends_recover(daemon_factory, sim_run: Path):
    """A frame over the limit (the most of 8 bytes a hit of max_hits, max_message_bytes and
    a header's 64 KiB: 256 KiB here) drops the connection, with what was queued on it."""
    d = daemon_factory("--max-hits", MAX_HITS, "--max-message-bytes", "262144", *SHORT_DRAIN)
    small = load_recording(sim_run, limit=25)
    big = _big()
    events = [*small[:5], big, *small[5:]]

    plain = replay(events, options(d)).report(events, None)
    assert disconnects(d, "input") >= 1  # counted ...
    logged = [r for r in d.logs() if r.get("socket") == "input" and r.get("cause") == "closed"]
    assert logged  # ... and logged
    assert plain["missing"] >= 1  # the oversized one at least; the replay says so

    opts = options(d, retries=5, retry_after_s=0.5, timeout_s=2.0)
    resent = replay(events, opts).report(events, None)
    assert resent["missing"] == 1  # only the oversized event, on every resend
    assert resent["ok"] == len(small) and resent["resent"] >= 1
    stopped(d)


def test_an_event_over_max_hits_is_answered_and_the_events_after_it_too(
    daemon_factory, sim_run: Path
):
    """An event of more hits than max_hits whose frames are within max_message_bytes is read
    and answered too_many_hits, its connection kept: its 8-byte column was over a frame limit
    of max_hits x 8, and libzmq dropped it with the events queued behind it, unanswered."""
    d = daemon_factory("--max-hits", MAX_HITS)
    small = load_recording(sim_run, limit=5)
    events = [small[0], _big(), *small[1:]]
    report = replay(events, options(d)).report(events, None)
    assert (report["missing"], report["ok"]) == (0, len(small))
    assert report["errors"] == {"too_many_hits": 1}  # (the replay's own leaving: no drop)
    stopped(d)


def test_a_connecting_daemon_cut_off_by_a_peer_of_another_type_connects_again(
    daemon_factory, sim_run: Path
) -> None:
    """Its input connected first to a PULL (a distributor started with --from and --to
    swapped), then that peer is put right: libzmq had dropped the connection and never made
    it again (the daemon ready, taking nothing, one "closed" line); the daemon connects
    again and the events are answered."""
    wrong = Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0)
    endpoint = wrong.endpoint
    with Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as collector:
        d = daemon_factory("--connect", "--input", endpoint, "--output", collector.endpoint)
        t_end = time.monotonic() + 60
        while sample(d.metrics(), "streamtrk_auth_failures_total", socket="input",
                     cause="handshake") < 1:  # fmt: skip
            assert time.monotonic() < t_end, "the mismatch was not seen"
            time.sleep(0.1)
        wrong.close()
        event = load_recording(sim_run, limit=1)[0]
        with Producer(endpoint, bind=True, linger_ms=0) as producer:
            assert producer.send_frames(event.frames, timeout_ms=30_000)
            reply = collector.recv(timeout_ms=30_000)
    assert reply is not None and reply.to_reply().event == event.event.event
    stopped(d)


def test_a_connecting_daemon_keeps_the_connection_libzmq_makes_again(
    daemon_factory, sim_run: Path
) -> None:
    """Its input's first connection hung up before its handshake (a proxy with nothing
    behind it yet): libzmq connects again by itself, and the daemon does not also, which
    dropped that connection a second later, the events queued on it unanswered."""
    with (
        socket.socket() as listener,
        Consumer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as collector,
    ):
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        d = daemon_factory("--connect", "--input", endpoint, "--output", collector.endpoint)
        listener.accept()[0].close()
        listener.close()
        events = load_recording(sim_run, limit=ACCEPT_EVENTS)
        with Producer(endpoint, bind=True, linger_ms=0) as producer:
            for event in events:
                assert producer.send_frames(event.frames, timeout_ms=30_000)
            answered = 0
            while answered < len(events) and collector.recv(timeout_ms=30_000) is not None:
                answered += 1
            time.sleep(2 * RECONNECT_AFTER_S)  # past a reconnect the daemon asked for
    assert answered == len(events)
    assert not [r for r in d.logs() if r["message"].startswith("connecting the input")]
    stopped(d)


def test_replies_lost_with_a_restarting_consumer_are_counted(daemon_factory, sim_run: Path):
    d = daemon_factory("--sndhwm", "1000", *SHORT_DRAIN)
    events = load_recording(sim_run, limit=100)
    before = disconnects(d, "output")
    with Consumer(d.output, linger_ms=0) as first, Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_frames(ev.frames, timeout_ms=30_000)
        taken = [first.recv(timeout_ms=60_000) for _ in range(3)]
        assert all(m is not None for m in taken)
        m = d.settled(received=len(events))
    answered = {(r.run, r.event) for r in (m.to_reply() for m in taken if m is not None)}
    # The consumer went away with the rest of the replies queued for it.
    assert sample(m, "streamtrk_events_completed_total", status="ok") == len(events)
    t_end = time.monotonic() + 10
    while disconnects(d, "output") == before and time.monotonic() < t_end:
        time.sleep(0.1)
    assert disconnects(d, "output") == before + 1  # counted ...
    logged = [r for r in d.logs() if r.get("socket") == "output" and r.get("cause") == "closed"]
    assert logged  # ... and logged
    with Consumer(d.output, linger_ms=0) as second:
        assert second.recv(timeout_ms=2_000) is None  # the rest went with the first one
    # The producer side resends what has no reply, and gets every reply.
    todo = [ev for ev in events if ev.key not in answered]
    again = replay(todo, options(d, retries=2, retry_after_s=2.0)).report(todo, None)
    assert again["missing"] == 0 and again["ok"] == len(todo) == len(events) - 3
    stopped(d)


def test_an_event_over_the_byte_limit_is_answered_whatever_its_frames(daemon_factory):
    """An event within ``max_hits`` is read whatever ``max_message_bytes`` says: one over it
    is answered ``message_too_large``, its sender's connection kept (a frame limit below its
    columns had libzmq drop the connection, and the event had no reply)."""
    d = daemon_factory("--max-message-bytes", "1024")
    ev = next(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=10)), 7, 1))
    frames = encode_hits(ev)
    assert max(len(f) for f in frames) > 64 * 1024 > 1024 > len(frames[0])
    with Producer(d.input, linger_ms=0) as producer, Consumer(d.output, linger_ms=0) as consumer:
        assert producer.send_frames(frames, timeout_ms=30_000)
        message = consumer.recv(timeout_ms=30_000)
        assert disconnects(d, "input") == 0
    assert message is not None
    reply = message.to_reply()
    assert ((reply.run, reply.event), reply.reason) == ((ev.run, ev.event), "message_too_large")
