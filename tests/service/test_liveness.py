"""Liveness: a thread that dies is logged with its traceback and the daemon answers what it
can, then exits 1 for its supervisor to restart it; a stalled thread fails /healthz.
Faults are injected with STREAMTRK_TEST_FAULTS (streamtrk/service/faults.py)."""

from __future__ import annotations

import signal
import time
from itertools import islice
from pathlib import Path

import pytest
from live_daemon import sample

from streamtrk.client import Consumer, Producer
from streamtrk.io.recording import iter_events

pytestmark = pytest.mark.slow


def faults(spec: str) -> dict[str, str]:
    return {"STREAMTRK_TEST_FAULTS": spec}


def exits_by_itself(d, timeout: float = 120) -> int:
    return d.process.wait(timeout=timeout)


def test_a_dying_worker_is_logged_and_the_daemon_exits_1(daemon_factory, sim_run: Path) -> None:
    d = daemon_factory("--max-batch-events", "1", env=faults("worker_fail_after=1"))
    event = next(iter_events(sim_run))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(event, timeout_ms=30_000)
        reply = consumer.recv(timeout_ms=60_000)  # answered, then the worker dies
        assert exits_by_itself(d) == 1
    assert reply is not None and reply.to_reply().ok
    logs = d.logs()
    [died] = [line for line in logs if line["message"].startswith("the worker thread died")]
    assert "InjectedFault: fault injected at pass 1 of worker" in died["exception"]
    assert "Traceback" in died["exception"] and died["level"] == "error"
    [last] = [line for line in logs if "exiting 1 for a restart" in line["message"]]
    assert last["threads"] == "worker" and last["received"] == 1 and last["replies_ok"] == 1


def test_a_dying_socket_monitor_stops_the_daemon(daemon_factory) -> None:
    """The monitor's death (here at its first connection event) would soon hold up the
    sockets' traffic (libzmq's I/O thread waits for it): logged, and the daemon answers what
    it can and exits 1, as for its other threads; /healthz says so meanwhile."""
    d = daemon_factory("--drain-timeout-s", "5", env=faults("monitor_fail_after=1"))
    with Consumer(d.output, linger_ms=0):
        assert exits_by_itself(d) == 1
    logs = d.logs()
    [died] = [line for line in logs if line["message"].startswith("the socket monitor died")]
    assert "InjectedFault: fault injected at pass 1 of monitor" in died["exception"]
    [end] = [line for line in logs if line["message"].startswith("drained after a thread died")]
    assert end["threads"] == "monitor"


def test_a_failing_batch_on_a_working_device_fails_alone(daemon_factory, sim_run: Path) -> None:
    d = daemon_factory("--max-batch-events", "1", env=faults("batch_fail_after=1"))
    events = list(islice(iter_events(sim_run), 2))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        replies = []
        for ev in events:  # one at a time: the first batch fails, the second works
            assert producer.send_event(ev, timeout_ms=30_000)
            msg = consumer.recv(timeout_ms=60_000)
            assert msg is not None, "no reply"
            replies.append(msg.to_reply())
        assert d.process.poll() is None  # still serving
    assert replies[0].reason == "internal" and replies[1].ok


def test_a_device_that_no_longer_works_stops_the_daemon(daemon_factory, sim_run: Path) -> None:
    """After a sticky device error every batch would fail: the worker dies, its events are
    answered ``shutdown`` (to be resent elsewhere), and the daemon exits 1 for a restart."""
    d = daemon_factory(
        "--max-batch-events", "1", env=faults("batch_fail_after=1,device_fail_after=1")
    )
    event = next(iter_events(sim_run))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(event, timeout_ms=30_000)
        reply = consumer.recv(timeout_ms=60_000)
        assert exits_by_itself(d) == 1
    assert reply is not None and reply.to_reply().reason == "shutdown"
    [died] = [line for line in d.logs() if line["message"].startswith("the worker thread died")]
    assert "DeviceFault: the device no longer works" in died["exception"]


def test_a_dead_device_with_intake_waiting_for_room_ends_at_once(
    daemon_factory, sim_run: Path
) -> None:
    """The worker dies while intake holds an event and waits for room in the full queue:
    the drain answers everything ``shutdown`` and exits at once, not at its timeout."""
    spec = "batch_delay_s=1,batch_fail_after=1,device_fail_after=1"
    d = daemon_factory("--drain-timeout-s", "300", "--queue-capacity", "1",
                       "--max-batch-events", "1", env=faults(spec))  # fmt: skip
    events = list(islice(iter_events(sim_run), 4))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        assert exits_by_itself(d, timeout=60) == 1  # before: only after the 300 s drain
        # It has exited: every reply it sent is here already, and none comes after.
        [last] = [line for line in d.logs() if "exiting 1 for a restart" in line["message"]]
        got = [consumer.recv(timeout_ms=5_000) for _ in range(last["received"])]
        assert consumer.recv(timeout_ms=500) is None
    assert all(r is not None for r in got)
    replies = [r.to_reply() for r in got if r is not None]
    # Events still in the input socket's buffer were never received (a sender resends them).
    assert len({r.event for r in replies}) == len(replies) == last["received"] >= 3
    assert {r.reason for r in replies} == {"shutdown"}


def test_a_dying_ingest_still_answers_what_it_took(daemon_factory, sim_run: Path) -> None:
    d = daemon_factory(env=faults("ingest_fail_after=2"))
    events = list(islice(iter_events(sim_run), 2))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        replies = [consumer.recv(timeout_ms=60_000) for _ in events]
        assert exits_by_itself(d) == 1
    assert all(r is not None and r.to_reply().ok for r in replies)
    assert any(line["message"].startswith("the ingest thread died") for line in d.logs())


@pytest.mark.parametrize(
    ("spec", "dropped"),
    [
        ("emit_fail_after=1", None),  # dies after its first reply
        ("send_fail_after=2", 2),  # dies sending its second: the reply in hand is dropped
    ],
)
def test_a_dying_emitter_counts_what_it_could_not_send(
    daemon_factory, sim_run: Path, spec: str, dropped: int | None
) -> None:
    d = daemon_factory("--max-batch-events", "1", env=faults(spec))
    events = list(islice(iter_events(sim_run), 3))
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        first = consumer.recv(timeout_ms=60_000)
        assert exits_by_itself(d) == 1
    assert first is not None and first.to_reply().ok
    [line] = [line for line in d.logs() if line["message"].startswith("drain incomplete")]
    assert line["replies_ok"] == 1 and line["dropped"] == line["received"] - 1
    if dropped is not None:
        assert line["dropped"] == dropped


def test_a_stalled_worker_fails_healthz(daemon_factory, sim_run: Path) -> None:
    d = daemon_factory("--stall-timeout-s", "1", "--drain-timeout-s", "2",
                       env=faults("batch_delay_s=120"))  # fmt: skip
    assert d.get("/healthz") == (200, "ok\n")
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(next(iter_events(sim_run)), timeout_ms=30_000)
        t_end = time.monotonic() + 60
        while (health := d.get("/healthz"))[0] == 200:
            assert time.monotonic() < t_end, "/healthz never failed"
            time.sleep(0.2)
        assert health[0] == 503 and health[1].startswith("worker: no progress for ")
        assert d.stop(signal.SIGTERM) == 0  # the drain answers it 'shutdown'
        reply = consumer.recv(timeout_ms=10_000)
    assert reply is not None and reply.to_reply().reason == "shutdown"


def test_a_slow_consumer_is_back_pressure_not_a_stall(daemon_factory, sim_run: Path) -> None:
    """With no consumer the replies back up to the worker, which waits for room: /healthz
    stays 200 (a liveness probe must not restart a daemon for a slow consumer), and once a
    consumer connects every event is answered."""
    d = daemon_factory("--stall-timeout-s", "2", "--reply-capacity", "1", "--sndhwm", "1",
                       "--max-batch-events", "1")  # fmt: skip
    events = list(islice(iter_events(sim_run), 5))
    with Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        t_end = time.monotonic() + 5  # the worker waits for room well past the 2 s
        while time.monotonic() < t_end:
            assert d.get("/healthz") == (200, "ok\n")
            time.sleep(0.2)
        held = d.metrics()  # batches made, none answered, the reply queue full: held
        assert sample(held, "streamtrk_batch_events_count") >= 1
        assert sample(held, "streamtrk_queue_depth", queue="reply") == 1
        assert sample(held, "streamtrk_inflight_events") == len(events)
        assert sample(held, "streamtrk_events_completed_total", status="ok") == 0
        with Consumer(d.output, linger_ms=0) as consumer:
            replies = [consumer.recv(timeout_ms=60_000) for _ in events]
    assert all(r is not None and r.to_reply().ok for r in replies)
    # (the ignore: mypy does not narrow through the all() above)
    assert sorted(r.to_reply().event for r in replies) == sorted(e.event for e in events)  # type: ignore[union-attr]
