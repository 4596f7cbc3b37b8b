"""Connect mode: two daemons share one distributor (PUSH) and one collector (PULL)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
from live_daemon import sample

from streamtrk.client import Consumer, Producer
from streamtrk.io.recording import iter_events

pytestmark = pytest.mark.slow
N_EVENTS = 60


def test_two_daemons_in_connect_mode(daemon_factory, sim_run: Path) -> None:
    any_port = "tcp://127.0.0.1:*"
    with (
        Producer(any_port, bind=True, sndhwm=2, linger_ms=0) as distributor,
        Consumer(any_port, bind=True, linger_ms=0) as collector,
    ):
        dist, coll = distributor.endpoint, collector.endpoint
        farm = [daemon_factory("--connect", "--input", dist, "--output", coll) for _ in range(2)]
        for ev in islice(iter_events(sim_run), N_EVENTS):
            assert distributor.send_event(ev, timeout_ms=60_000)
        replies = []
        while len(replies) < N_EVENTS and (msg := collector.recv(timeout_ms=60_000)):
            replies.append(msg.to_reply())
    assert sorted(r.event for r in replies if r.ok) == list(range(N_EVENTS))
    served = [sample(d.settled(), "streamtrk_events_completed_total", status="ok") for d in farm]
    assert sum(served) == N_EVENTS and min(served) > 0, served
    for d in farm:
        [banner] = [line for line in d.logs() if line["message"] == "streamtrk serve ready"]
        assert banner["input"] == f"{dist} (PULL, connect)"
