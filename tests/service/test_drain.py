"""Acceptance: SIGTERM while a replay runs at full speed answers every event received; a
batch longer than the drain timeout is answered 'shutdown' and the daemon still exits 0."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_daemon import ACCEPT_EVENTS, sample

from streamtrk.client import Consumer, Producer
from streamtrk.detector import load_detector
from streamtrk.service.config import ServeConfig
from streamtrk.service.serve import Daemon
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

pytestmark = pytest.mark.slow


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory for ipc:// endpoints (their paths are limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="st-") as d:
        yield Path(d)


def test_sigterm_during_full_speed_replay(daemon_factory, sim_run: Path, tmp_path: Path):
    d = daemon_factory("--drain-timeout-s", "120")
    report = tmp_path / "replay.json"
    # --timeout 5: once the daemon has gone, the replay's blocked send gives up after 5 s;
    # the drain's replies (MU=2 events) reach it well before.
    replay = subprocess.Popen(
        [sys.executable, "-m", "streamtrk", "replay", str(sim_run), "--loop", "3", "--to",
         d.input, "--from", d.output, "-q", "--timeout", "5", "--report", str(report)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        t_end = time.monotonic() + 300
        while sample(d.metrics(), "streamtrk_events_completed_total", status="ok") < 20:
            assert replay.poll() is None and time.monotonic() < t_end, "replay too slow"
            time.sleep(0.2)
        assert d.stop(signal.SIGTERM) == 0
    finally:
        replay_code = replay.wait(timeout=300)
    drained = next(line for line in d.logs() if line["message"].startswith("drained"))
    assert drained["dropped"] == 0 and drained["unidentified"] == 0
    assert drained["replies_ok"] + drained["replies_error"] == drained["received"]
    assert drained["replies_error"] == 0
    got = json.loads(report.read_text())
    # Every event the daemon took off its socket was answered and reached the replayer.
    assert 20 <= got["received"] == got["ok"] == drained["received"] < 3 * ACCEPT_EVENTS
    assert got["unexpected"] == 0 and got["errors"] == {}
    assert got["missing"] + got["unsent"] > 0 and replay_code == 1
    assert any(line["message"] == "draining" for line in d.logs())


def test_replies_queued_for_a_collector_that_is_gone_are_counted_dropped(
    daemon_factory, sim_run: Path, short_tmp: Path
) -> None:
    """In connect mode ZeroMQ takes replies while no collector is connected (they would go
    out once one is): at a drain with still none, they are lost, counted, and the exit
    status says so."""
    from streamtrk.io.recording import iter_events

    nowhere = f"ipc://{short_tmp}/out"  # nothing listens there (a freed port could be taken)
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        d = daemon_factory(
            "--connect", "--input", producer.endpoint, "--output", nowhere,
            "--drain-timeout-s", "3",
        )  # fmt: skip
        for event, _ in zip(iter_events(sim_run), range(3), strict=False):
            assert producer.send_event(event, timeout_ms=30_000)
        d.settled(received=3)
        assert d.stop(signal.SIGTERM) == 1
    incomplete = next(line for line in d.logs() if line["message"].startswith("drain incomplete"))
    assert incomplete["dropped"] == 3 and incomplete["replies_ok"] == 3


def test_replies_the_emitter_still_holds_at_exit_are_counted_unsent(
    daemon_factory, sim_run: Path
) -> None:
    """An emit thread still busy when the drain ends (here made to take 30 s over its first
    reply) holds replies never handed to ZeroMQ: the exit line counts them as ``unsent``
    and the exit status is 1, however few the emitter itself counted dropped. The replies
    that find no room in the reply queue (one) by the drain's end are left unsent too: the
    drain does not wait for room."""
    from live_daemon import wait_for

    from streamtrk.io.recording import iter_events

    d = daemon_factory(
        "--drain-timeout-s", "1", "--reply-capacity", "1", "--max-batch-events", "1",
        env={"STREAMTRK_TEST_FAULTS": "emit_delay_s=30"},
    )  # fmt: skip
    with Producer(d.input, linger_ms=0) as producer:
        for event, _ in zip(iter_events(sim_run), range(5), strict=False):
            assert producer.send_event(event, timeout_ms=30_000)
        wait_for(lambda: any(x["message"] == "injected fault: emit delayed 30 s" for x in d.logs()))
        wait_for(lambda: sample(d.metrics(), "streamtrk_events_received_total") == 5)
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM) == 1
    assert time.monotonic() - t0 < 20  # the process waits neither for the emitter nor for room
    incomplete = next(line for line in d.logs() if line["message"].startswith("drain incomplete"))
    assert incomplete["received"] == 5 and incomplete["replies_ok"] == 0
    assert incomplete["dropped"] + incomplete["unsent"] == 5
    # the worker was not in a batch: it waited for room for a reply
    overran = "the worker, waiting for room in the reply queue (replies not sent as fast as made)"
    assert any(line["message"].startswith(overran + ", overran") for line in d.logs())


def test_replies_sent_by_a_bound_output_are_not_counted_lost(daemon_factory, sim_run) -> None:
    """Bound, the output takes a reply only into a connected consumer's queue: however far
    the socket monitor lags (here it sees the consumer only after the reply left), a reply
    sent is not counted lost when the consumer has gone by the drain."""
    from streamtrk.io.recording import iter_events

    d = daemon_factory(env={"STREAMTRK_TEST_FAULTS": "monitor_delay_s=3"})
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(next(iter_events(sim_run)), timeout_ms=30_000)
        reply = consumer.recv(timeout_ms=60_000)
    assert reply is not None and reply.to_reply().ok

    def seen_gone() -> bool:
        m = d.metrics()
        return sample(m, "streamtrk_disconnects_total", socket="output", cause="closed") >= 1

    t_end = time.monotonic() + 60  # the monitor's three events, 3 s each
    while not seen_gone():
        assert time.monotonic() < t_end, "the monitor never saw the consumer leave"
        time.sleep(0.2)
    assert d.stop(signal.SIGTERM) == 0
    assert not [line for line in d.logs() if line["message"].startswith("drain incomplete")]


def test_sigterm_during_a_batch_longer_than_the_drain_timeout(daemon_factory) -> None:
    # Three events in one batch made to take 10 s (on any machine): over the 1 s a 2 s drain
    # leaves the worker.
    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=5)), 8, 3))
    d = daemon_factory(
        "--drain-timeout-s", "2", "--max-batch-events", "3", "--max-queue-delay-ms", "5000",
        env={"STREAMTRK_TEST_FAULTS": "batch_delay_s=10"},
    )  # fmt: skip
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        t_end = time.monotonic() + 120
        while sample(d.metrics(), "streamtrk_batch_events_count") < 1:  # the batch has started
            assert time.monotonic() < t_end, "the batch never started"
            time.sleep(0.05)
        t0 = time.monotonic()
        code = d.stop(signal.SIGTERM)
        stopped_s = time.monotonic() - t0
        replies = [consumer.recv(timeout_ms=10_000) for _ in events]
    # The drain itself (the daemon's own clock) ends within drain_timeout_s and the emitter's
    # last 0.5 s; the process exit around it only needs to be prompt, not timed to the second.
    assert code == 0 and stopped_s < 30
    assert all(r is not None for r in replies)
    got = sorted((r.event, r.to_reply().reason) for r in replies if r is not None)
    assert got == [(ev.event, "shutdown") for ev in events]
    logs = d.logs()
    overran = "the batch in progress overran the drain; 3 more events (its batch, the queue)"
    assert any(line["message"].startswith(overran) for line in logs)
    drained = next(line for line in logs if line["message"].startswith("drained"))
    assert drained["shutdown"] == drained["received"] == len(events) and drained["dropped"] == 0
    assert drained["seconds"] <= 2 + 0.5 + 1  # its deadline, the linger, a loaded machine's slack


def test_replies_zeromq_holds_go_out_until_the_drain_ends_after_a_batch_overran(
    daemon_factory, short_tmp: Path
) -> None:
    """A batch overran the drain, so the process leaves by ``os._exit`` (a thread is still in
    it); the replies ZeroMQ holds (here the ``shutdown`` answers, taken while no collector
    was connected) still go out until the drain's end, to a collector that binds only once
    the emitter has closed its socket."""
    from live_daemon import wait_for

    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=5)), 8, 2))
    later = f"ipc://{short_tmp}/out"  # nothing listens there until the collector binds below
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        d = daemon_factory(
            "--connect", "--input", producer.endpoint, "--output", later,
            "--drain-timeout-s", "4", "--max-batch-events", "2", "--max-queue-delay-ms", "5000",
            env={"STREAMTRK_TEST_FAULTS": "batch_delay_s=30"},
        )  # fmt: skip
        for ev in events:
            assert producer.send_event(ev, timeout_ms=30_000)
        wait_for(lambda: sample(d.metrics(), "streamtrk_batch_events_count") >= 1, timeout=120)
        d.process.send_signal(signal.SIGTERM)
        # The emitter's last words, at the drain's reserve (1 s before its end).
        wait_for(lambda: any("no consumer was connected" in x["message"] for x in d.logs()), 30)
        with Consumer(later, bind=True, linger_ms=0) as collector:
            replies = [collector.recv(timeout_ms=5_000) for _ in events]
        d.process.wait(timeout=60)
    assert all(r is not None for r in replies)
    got = sorted((r.event, r.to_reply().reason) for r in replies if r is not None)
    assert got == [(ev.event, "shutdown") for ev in events]
    assert any("overran the drain" in line["message"] for line in d.logs())


@pytest.mark.parametrize("drain_s", ["2", "0"])
def test_sigterm_while_intake_waits_for_room_answers_everything(daemon_factory, drain_s) -> None:
    """A queue of one behind a busy worker: intake waits for room with an event in hand when
    SIGTERM comes. That event, and every other one received, must be answered: with a drain
    of 2 s mostly reconstructed, with none all ``shutdown`` (the held one by ingest; the
    big one's batch made to last past the signal, however fast the machine)."""
    big = next(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=200)), 9, 1))
    small = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=2)), 9, 6))
    d = daemon_factory(
        "--drain-timeout-s", drain_s, "--queue-capacity", "1", "--max-batch-events", "1",
        "--overload", "block",
        env={"STREAMTRK_TEST_FAULTS": "batch_delay_s=5"} if drain_s == "0" else None,
    )  # fmt: skip
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(big, timeout_ms=30_000)
        t_end = time.monotonic() + 120
        while sample(d.metrics(), "streamtrk_batch_events_count") < 1:  # the big one started
            assert time.monotonic() < t_end, "the batch never started"
            time.sleep(0.05)
        for ev in small:
            assert producer.send_event(ev, timeout_ms=30_000)
        while sample(d.metrics(), "streamtrk_events_received_total") < 3:  # one queued, one held
            assert time.monotonic() < t_end, "intake never took the events"
            time.sleep(0.05)
        assert d.stop(signal.SIGTERM) == 0
        # The daemon has exited: every reply it sent is here already, and none comes after.
        drained = next(line for line in d.logs() if line["message"].startswith("drained"))
        received = [consumer.recv(timeout_ms=5_000) for _ in range(drained["received"])]
        assert consumer.recv(timeout_ms=500) is None
    assert all(r is not None for r in received)
    replies = [r.to_reply() for r in received if r is not None]
    assert drained["received"] == len(replies) >= 3  # every event received got its reply
    assert drained["dropped"] == 0 and {r.reason for r in replies} <= {"", "shutdown"}
    if drain_s == "0":
        assert {r.reason for r in replies} == {"shutdown"}


def test_a_second_signal_during_the_drain_changes_nothing(daemon_factory) -> None:
    """SIGTERM, then SIGTERM and Ctrl-C again while a batch runs: the drain keeps going, the
    event is reconstructed and answered, and the daemon exits 0; the ``draining`` line
    names what stops it sooner."""
    event = next(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=5)), 4, 1))
    d = daemon_factory("--drain-timeout-s", "60", env={"STREAMTRK_TEST_FAULTS": "batch_delay_s=3"})
    with Consumer(d.output, linger_ms=0) as consumer, Producer(d.input, linger_ms=0) as producer:
        assert producer.send_event(event, timeout_ms=30_000)
        t_end = time.monotonic() + 120
        while sample(d.metrics(), "streamtrk_batch_events_count") < 1:  # the batch started
            assert time.monotonic() < t_end, "the batch never started"
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            d.process.send_signal(sig)
            time.sleep(0.2)
        reply = consumer.recv(timeout_ms=60_000)
        assert d.process.wait(timeout=60) == 0
    assert reply is not None and reply.to_reply().ok
    [draining] = [line for line in d.logs() if line["message"] == "draining"]
    assert draining["sooner"] == "SIGKILL"


def test_a_worker_waiting_for_room_is_not_said_to_leave_physics_uncounted(
    daemon_factory, sim_run: Path
) -> None:
    """No consumer, replies backed up to the worker: the physics thread, which counted every
    batch handed to it, only waits for that worker at the drain's end. It was said to have
    "overran the drain; its last batches are not counted" (a drill)."""
    from itertools import islice

    from streamtrk.io.recording import iter_events

    d = daemon_factory("--reply-capacity", "1", "--sndhwm", "1", "--max-batch-events", "1",
                       "--drain-timeout-s", "2")  # fmt: skip
    with Producer(d.input, linger_ms=0) as producer:
        for ev in islice(iter_events(sim_run), 6):
            assert producer.send_event(ev, timeout_ms=30_000)
        t_end = time.monotonic() + 60
        while sample(d.metrics(), "streamtrk_queue_depth", queue="reply") < 1:
            assert time.monotonic() < t_end, "the replies never backed up"
            time.sleep(0.1)
        time.sleep(1)  # the worker waits for room
    assert d.stop(signal.SIGTERM) == 1  # no consumer: "drain incomplete"
    messages = [line["message"] for line in d.logs()]
    assert any(m.startswith("the worker, waiting for room in the reply queue") for m in messages)
    assert not [m for m in messages if "physics thread overran" in m]
    # The emitter, given the drain's end, dropped what it could not send (it waited for a
    # consumer for ever: each reply then said unsent, none dropped).
    [incomplete] = [line for line in d.logs() if line["message"].startswith("drain incomplete")]
    assert incomplete["dropped"] > 0


def test_a_drain_keeps_a_second_at_most_a_quarter_of_it_for_the_last_replies() -> None:
    """As docs/serve.md says: with the default 30 s, the last second (not 7.5 s, which would
    answer 'shutdown' to work that had time to finish); with 2 s, half a second."""
    from streamtrk.service.serve import _drain_reserve_s

    assert (_drain_reserve_s(30), _drain_reserve_s(2)) == (1.0, 0.5)


class _Finished:
    """A thread of the drain's that has finished, with nothing to report."""

    error: BaseException | None = None
    dropped = 0
    replying = False
    drain_by = leave_by = give_up_at = None

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass

    def has_work(self) -> bool:
        return False

    def in_batch(self) -> bool:
        return False


def _drain_with(d: Daemon, **threads: Any) -> int:
    """``d``'s drain of its four threads (ingest, worker, emitter, observer), each a finished
    one unless given."""
    given: list[Any] = [threads.get(n) or _Finished() for n in ("ingest", "worker", "emitter",
                                                                 "observer")]  # fmt: skip
    return d._drain(threading.Event(), *given)


def test_a_reply_left_unsent_makes_the_drain_incomplete_once_every_thread_finished() -> None:
    """A reply the worker or intake gave up queueing at the drain's end stays in flight
    (``unsent``) however promptly the emitter then sent the rest and exited: exit 1, not
    "drained" with a reply lost."""
    d = Daemon(ServeConfig(drain_timeout_s=1), ServeConfig)
    d.metrics.inflight.inc()  # received, its reply never queued
    assert _drain_with(d) == 1
    d.metrics.inflight.dec()
    assert _drain_with(d) == 0


def test_the_drain_lets_no_batch_wait_to_fill() -> None:
    """Once the drain has stopped intake nothing more arrives: the batcher is told so
    (``flush``), and a batch short of ``max_batch_events`` goes at once, not at its
    ``max_queue_delay_ms``."""
    d = Daemon(ServeConfig(drain_timeout_s=1), ServeConfig)
    assert not d.batcher.flush
    assert _drain_with(d) == 0
    assert d.batcher.flush


def test_the_drained_line_counts_each_outcome_from_its_own_metric(caplog) -> None:
    """The exit line gives received, ok, error, ``shutdown`` and unidentified from their
    own counters (what an operator reconciles a run's losses with)."""
    d = Daemon(ServeConfig(drain_timeout_s=1), ServeConfig)
    m = d.metrics
    m.received.inc(15)
    m.completed.labels("ok").inc(7)
    m.completed.labels("error").inc(2)
    m.rejected.labels("shutdown").inc(3)
    m.rejected.labels("overloaded").inc(1)
    m.unidentified.inc(4)
    with caplog.at_level(logging.INFO, logger="streamtrk"):
        assert _drain_with(d) == 0
    [line] = [r for r in caplog.records if r.getMessage() == "drained, exiting"]
    got = {k: line.fields[k] for k in ("received", "replies_ok", "replies_error", "shutdown")}
    assert got == {"received": 15, "replies_ok": 7, "replies_error": 2, "shutdown": 3}
    assert (line.fields["unidentified"], line.fields["dropped"], line.fields["unsent"]) == (4, 0, 0)


class _DeadWorker(_Finished):
    """A worker that died (its thread ended) with events still queued behind it."""

    error = RuntimeError("device lost")

    def __init__(self) -> None:
        self.abandoned: list[float] = []

    def abandon(self, deadline: float) -> int:
        self.abandoned.append(deadline)
        return 2


def test_a_dead_worker_s_waiting_events_are_answered_shutdown_at_the_drain(caplog) -> None:
    """A worker that died makes no room and answers nothing: the drain abandons it at
    once (the queued events answered ``shutdown`` by the drain's deadline), and says how
    many."""
    d = Daemon(ServeConfig(drain_timeout_s=1), ServeConfig)
    worker = _DeadWorker()
    with caplog.at_level(logging.INFO, logger="streamtrk"):
        _drain_with(d, worker=worker)
    assert worker.abandoned == [d.drain_ends]
    said = [r.getMessage() for r in caplog.records]
    assert "the worker died; 2 waiting events answered 'shutdown'" in said


class _StuckWorker(_Finished):
    """A worker still alive at the drain's reserve, in no batch and not replying."""

    def is_alive(self) -> bool:
        return True

    def abandon(self, deadline: float) -> int:
        return 1


def test_a_worker_that_overran_outside_a_batch_is_said_to_wait_on_intake(caplog) -> None:
    """The overrun line names what held the worker: here neither a batch nor the reply
    queue, so intake; the process then leaves by ``os._exit`` (a thread is left)."""
    d = Daemon(ServeConfig(drain_timeout_s=0.2), ServeConfig)
    with caplog.at_level(logging.INFO, logger="streamtrk"):
        _drain_with(d, worker=_StuckWorker())
    said = [r.getMessage() for r in caplog.records]
    assert (
        "intake overran the drain; 1 more events (its batch, the queue) answered 'shutdown'" in said
    )
    assert d.abandoned_thread


class _StillRunning(_Finished):
    """A thread still alive when the drain ends (with or without work in hand)."""

    def __init__(self, work: bool = False) -> None:
        self.work = work

    def is_alive(self) -> bool:
        return True

    def has_work(self) -> bool:
        return self.work


def test_an_emitter_alive_at_the_drain_s_end_keeps_its_socket_and_context() -> None:
    """An emitter still running may be inside its socket: the ZeroMQ context is not
    destroyed under it, the process leaves by ``os._exit``, and the exit status is 1."""
    d = Daemon(ServeConfig(drain_timeout_s=0.2), ServeConfig)
    emitter = _StillRunning()
    assert _drain_with(d, emitter=emitter) == 1
    assert d.sockets_in_use and d.abandoned_thread


def test_the_physics_thread_is_said_to_overrun_only_with_batches_in_hand(caplog) -> None:
    """The physics thread alive at the drain's end: a warning that its last batches are
    not counted only where it holds some; either way the process leaves by ``os._exit``."""
    said = "the physics thread overran the drain; its last batches are not counted"
    for work in (False, True):
        caplog.clear()
        d = Daemon(ServeConfig(drain_timeout_s=0.2), ServeConfig)
        with caplog.at_level(logging.INFO, logger="streamtrk"):
            observer = _StillRunning(work)
            assert _drain_with(d, observer=observer) == 0
        assert d.abandoned_thread
        assert (said in [r.getMessage() for r in caplog.records]) is work


def test_a_drain_during_a_reload_leaves_by_os_exit() -> None:
    """A reload still loading its model is inside torch: the process must not tear the
    interpreter down under it (``os._exit``), though the drain itself ends 0."""
    d = Daemon(ServeConfig(drain_timeout_s=0.2), ServeConfig)
    assert d._reloading.acquire(blocking=False)  # as _start_reload takes it
    assert _drain_with(d) == 0
    assert d.abandoned_thread


def test_the_drain_gives_each_thread_its_deadline() -> None:
    """Of a 2 s drain, the worker and intake get all but the reserve (0.5 s: what they take
    after it is answered ``shutdown``); the emitter and intake's last answers get it all."""
    d = Daemon(ServeConfig(drain_timeout_s=2), ServeConfig)
    ingest, worker, emitter = _Finished(), _Finished(), _Finished()
    assert _drain_with(d, ingest=ingest, worker=worker, emitter=emitter) == 0
    assert d.drain_ends is not None
    assert worker.drain_by == ingest.leave_by == pytest.approx(d.drain_ends - 0.5)
    assert emitter.give_up_at == ingest.give_up_at == d.drain_ends
