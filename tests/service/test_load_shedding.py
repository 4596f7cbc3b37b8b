"""Deadlines and overload replies from a live daemon."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from streamtrk.client import Consumer, Producer
from streamtrk.io.recording import iter_events

pytestmark = pytest.mark.slow


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

        # A burst into a queue of one: what does not fit is answered 'overloaded'.
        for ev in events:
            assert producer.send_event(ev, deadline_ms=60_000, timeout_ms=30_000)
        replies = []
        while len(replies) < len(events) and (msg := consumer.recv(timeout_ms=60_000)):
            replies.append(msg.to_reply())
    assert sorted(r.event for r in replies) == [ev.event for ev in events]  # one reply each
    outcome = Counter(r.reason or "ok" for r in replies)
    assert set(outcome) == {"ok", "overloaded"}, outcome
    m = d.settled()
    rejected = Counter(
        {dict(k[1])["reason"]: v for k, v in m.items() if k[0] == "streamtrk_events_rejected_total"}
    )
    assert rejected == {"deadline": 2, "overloaded": outcome["overloaded"]}
    assert d.get("/readyz")[0] == 200
