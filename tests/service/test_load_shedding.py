"""Deadlines and overload replies from a live daemon."""

from __future__ import annotations

import time
from collections import Counter
from itertools import islice

import pytest
from live_daemon import sample

from streamtrk.client import Consumer, Producer
from streamtrk.detector import load_detector
from streamtrk.event import Event
from streamtrk.io.recording import iter_events
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire import TrackReply

pytestmark = pytest.mark.slow


BUSY_RUN = 99


def busy_event() -> Event:
    """A MU=100 event (run 99): it keeps the worker busy for a few tenths of a second."""
    [ev] = simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=100)), 4, 1, run=99)
    return ev


def wait_for_batches(d, n: int, timeout: float = 120) -> None:
    """Until the daemon has started ``n`` batches."""
    t_end = time.monotonic() + timeout
    while sample(d.metrics(), "streamtrk_batch_events_count") < n:
        assert time.monotonic() < t_end, "the batch never started"
        time.sleep(0.05)


def test_deadlines_and_overload(daemon_factory, sim_run) -> None:
    # Default deadline 1 us (every event without its own deadline expires); a queue of one.
    d = daemon_factory(
        "--deadline-ms", "0.001", "--overload", "reject", "--queue-capacity", "1",
        "--max-batch-events", "1",
    )  # fmt: skip
    events = list(islice(iter_events(sim_run), 30))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:

        def ask(ev, deadline_ms=None):
            assert producer.send_event(ev, deadline_ms, timeout_ms=30_000)
            msg = consumer.recv(timeout_ms=60_000)
            assert msg is not None, "no reply"
            return msg.to_reply()

        # Past the configuration's default deadline: answered, not processed.
        r = ask(events[0])
        assert (r.run, r.event, r.status, r.reason, len(r)) == (1, 0, "error", "deadline", 0)
        assert "gnn" not in r.timings and "decode" in r.timings
        # The header's deadline overrides the default, both ways.
        r = ask(events[1], deadline_ms=60_000)
        assert r.ok and r.event == 1 and len(r) > 0 and "gnn" in r.timings
        r = ask(events[2], deadline_ms=0.001)
        assert r.reason == "deadline"

        # A burst into a queue of one while the worker is busy with a large event: one burst
        # event waits in the queue, what does not fit is answered 'overloaded'.
        assert producer.send_event(busy_event(), deadline_ms=60_000, timeout_ms=30_000)
        wait_for_batches(d, 2)
        for ev in events:
            assert producer.send_event(ev, deadline_ms=60_000, timeout_ms=30_000)
        replies: list[TrackReply] = []
        while len(replies) < len(events) + 1 and (msg := consumer.recv(timeout_ms=60_000)):
            replies.append(msg.to_reply())
    busy = [r for r in replies if r.run == BUSY_RUN]
    assert len(busy) == 1 and busy[0].ok
    replies = [r for r in replies if r.run != BUSY_RUN]
    assert sorted(r.event for r in replies) == [ev.event for ev in events]  # one reply each
    outcome = Counter(r.reason or "ok" for r in replies)
    assert set(outcome) == {"ok", "overloaded"}, outcome
    m = d.settled()
    rejected = {
        dict(k[1])["reason"]: v for k, v in m.items() if k[0] == "streamtrk_events_rejected_total"
    }
    assert {r: v for r, v in rejected.items() if v} == {
        "deadline": 2, "overloaded": outcome["overloaded"]
    }  # fmt: skip
    assert d.get("/readyz")[0] == 200


def test_block_pushes_back_on_the_sender(daemon_factory) -> None:
    # overload = block: a full queue stops the daemon reading, the sockets' high-water marks
    # and buffers fill, and the sender cannot send; nothing is rejected, all is answered.
    d = daemon_factory(
        "--overload", "block", "--queue-capacity", "1", "--max-batch-events", "1",
        "--rcvhwm", "1",
    )  # fmt: skip
    # MU=100 events: about 1.7 MB each, and a few tenths of a second of reconstruction on this
    # CPU, far over the 20 ms a send may wait for room.
    # Simulated first: simulating one takes about as long as reconstructing it.
    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=100)), 6, 24))
    with (
        Consumer(d.output, linger_ms=0) as consumer,
        Producer(d.input, sndhwm=1, linger_ms=0) as producer,
    ):
        assert producer.send_event(busy_event(), timeout_ms=30_000)
        wait_for_batches(d, 1)
        sent = 0
        for ev in events:
            if not producer.send_event(ev, timeout_ms=20):
                break  # pushed back
            sent += 1
        assert sent < len(events), "the daemon took 24 large events at once"
        replies: list[TrackReply] = []
        while len(replies) < sent + 1 and (msg := consumer.recv(timeout_ms=60_000)):
            replies.append(msg.to_reply())
    assert len(replies) == sent + 1 and all(r.ok for r in replies)
    m = d.settled()
    assert not [k for k, v in m.items() if k[0] == "streamtrk_events_rejected_total" and v]


def test_a_batch_waits_no_longer_than_its_deadlines_allow(daemon_factory) -> None:
    # Deadlines of 2 s and a 60 s queue delay: each batch closes in time to start before its
    # deadline, from the daemon's first batch on (the warm-up's reconstruct is the first
    # estimate of a batch's cost: with none, every batch waited for its deadline and missed
    # it). MU=50 events: the estimate, the margin before the deadline, is tenths of a second.
    d = daemon_factory("--deadline-ms", "2000", "--max-queue-delay-ms", "60000")
    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=50)), 5, 3))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        replies: list[TrackReply] = []
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
            msg = consumer.recv(timeout_ms=30_000)  # not the 60 s delay
            assert msg is not None, "no reply"
            replies.append(msg.to_reply())
    assert [(r.event, r.status) for r in replies] == [(ev.event, "ok") for ev in events]
