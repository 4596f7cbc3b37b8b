"""The worker thread: a failing batch is answered 'internal' and the next one is served;
work that cannot finish within the drain is answered 'shutdown', once."""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from live_daemon import wait_for
from piles import pile

from streamtrk.detector import load_detector
from streamtrk.event import Event
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service.batcher import Batch, Batcher, BatchPolicy
from streamtrk.service.job import Job, Reply
from streamtrk.service.observer import Observer
from streamtrk.service.physics import Observation
from streamtrk.service.telemetry import Metrics
from streamtrk.service.worker import Worker
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate


class FailOnEvent13:
    """Edge scorer: all edges 0, except that a batch holding event 13 raises."""

    def __call__(self, graph, events):
        if any(ev.event == 13 for ev in events):
            raise RuntimeError("scorer failure")
        return np.zeros(graph.num_edges, dtype=np.float32)


def _worker(
    batcher: Batcher,
    replies: queue.Queue[Reply],
    scorer,
    det,
    metrics: Metrics | None = None,
    observed: list[Observation] | None = None,
) -> Worker:
    """A worker whose batches ``scorer`` scores, with intake over (it stops once the queue is
    empty); the batches it hands to the physics metrics go to ``observed``."""
    rec = Reconstructor(scorer, detector=det)
    observe = (observed if observed is not None else []).append
    return Worker(
        batcher, replies, metrics or Metrics(), lambda: (rec, None), lambda: True, observe
    )


def test_failure_inside_reconstruction_fails_only_that_batch() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3, first_event=12))
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    rec = Reconstructor(FailOnEvent13(), detector=det)
    done = False
    observer = Observer(metrics, lambda: worker.done.is_set())
    worker = Worker(batcher, replies, metrics, lambda: (rec, None), lambda: done, observer.offer)
    worker.start()
    observer.start()
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None, {"decode": 0.0}))
    got = [replies.get(timeout=60) for _ in events]
    done = True
    worker.join(timeout=60)
    observer.join(timeout=60)
    assert not worker.is_alive() and not observer.is_alive()
    assert [(r.event, r.status, r.reason) for r in got] == [
        (12, "ok", ""),
        (13, "error", "internal"),
        (14, "ok", ""),
    ]
    assert got[0].tracks is not None and got[1].tracks is None
    assert {"decode", "queue", "graph", "gnn", "tracks", "fit"} <= got[2].timings.keys()
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1
    assert value("streamtrk_batch_failures_total") == 0  # a batch of one is not retried
    assert value("streamtrk_batch_events_count") == 3
    assert value("streamtrk_queue_delay_seconds_count") == 3
    # The physics metrics count the batches that succeeded (in the physics thread).
    assert value("streamtrk_stage_seconds_count", {"stage": "physics"}) == 2
    assert value("streamtrk_event_tracks_count") == 2
    hits = sum(len(ev.hits) for ev in events if ev.event != 13)
    samples = next(iter(metrics.physics.layer_hits.collect())).samples
    assert sum(s.value for s in samples if s.name == "streamtrk_layer_hits_total") == hits


def test_between_batches_runs_when_no_batch_holds_a_model() -> None:
    """The hook (the daemon's heap refreeze after a reload) runs before each batch is
    taken, when the batch before no longer holds the model it was reconstructed with: a
    model a reload replaced is garbage there."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3))
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    made: list[weakref.ref[Reconstructor]] = []

    def reconstructor() -> tuple[Reconstructor, None]:  # a new model each batch, as reloads
        rec = Reconstructor(FailOnEvent13(), detector=det)
        made.append(weakref.ref(rec))
        return rec, None

    alive: list[int] = []
    worker = Worker(
        batcher, replies, Metrics(), reconstructor, lambda: True, lambda o: None,
        between_batches=lambda: alive.append(sum(r() is not None for r in made)),
    )  # fmt: skip
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None, {"decode": 0.0}))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and replies.qsize() == len(made) == len(events)
    assert len(alive) >= len(events) + 1 and not any(alive)


def test_an_event_over_the_work_budget_is_answered_too_dense() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    dense = pile(det, 2000, 99)  # 20M doublet candidates
    batcher = Batcher(8, BatchPolicy(max_events=3, max_queue_delay_ms=1000))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(batcher, replies, FailOnEvent13(), det, metrics)
    for ev in (events[0], dense, events[1]):
        batcher.put(Job(ev, time.perf_counter(), None))
    worker.start()
    got = sorted((replies.get(timeout=60) for _ in range(3)), key=lambda r: r.event)
    worker.join(timeout=60)
    assert [(r.event, r.status, r.reason) for r in got] == [
        (0, "ok", ""),
        (1, "ok", ""),
        (99, "error", "too_dense"),
    ]
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "too_dense"}) == 1
    assert value("streamtrk_batch_events_count") == 1  # one batch: the two reconstructed


class Gate:
    """Edge scorer that blocks until released: a batch that overruns the drain."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[int]] = []  # event numbers of every batch scored

    def __call__(self, graph, events):
        self.batches.append([ev.event for ev in events])
        self.entered.set()
        assert self.release.wait(60)
        return np.zeros(graph.num_edges, dtype=np.float32)


def _drained(replies: queue.Queue[Reply]) -> list[Reply]:
    """The replies queued: all of them once ``process`` has returned, the worker has joined
    or its ``done`` is set (no reply comes after that)."""
    out = []
    while True:
        try:
            out.append(replies.get_nowait())
        except queue.Empty:
            return out


def test_abandon_answers_the_running_batch_and_the_queue_once() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 5))
    batcher = Batcher(8, BatchPolicy(max_events=2, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    gate = Gate()
    observed: list[Observation] = []
    worker = _worker(batcher, replies, gate, det, metrics, observed)
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None))
    worker.start()
    assert gate.entered.wait(60)  # the first batch (2 events) is inside the model
    assert worker.abandon() == len(events)
    assert worker.done.is_set()
    gate.release.set()  # the overrunning batch finishes: its replies were already sent
    worker.join(timeout=60)
    assert not worker.is_alive()
    got = _drained(replies)
    assert sorted(r.event for r in got) == [ev.event for ev in events]
    assert {(r.status, r.reason) for r in got} == {("error", "shutdown")}
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "shutdown"}) == len(events)
    # The overrunning batch's tracks went to no one: not counted as reconstructed, not
    # handed to the physics metrics.
    assert value("streamtrk_hits_total") == 0
    assert observed == []


def test_done_waits_for_replies_the_worker_claimed_before_abandon() -> None:
    """``done`` tells the emitter that no reply will come any more: not while the worker
    still holds one it claimed, blocked on a full reply queue (a slow consumer)."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue(maxsize=1)
    replies.put(Reply(0, 0, 0.0, {}, reason="shutdown"))  # full: the worker's put waits
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    batcher.put(Job(event, time.perf_counter(), None))
    worker.start()
    wait_for(lambda: worker._owed > 0)  # the event's reply is claimed, its put blocked
    assert worker.abandon() == 0  # nothing left for abandon() to answer
    assert not worker.done.is_set()
    replies.get()  # room: the worker's reply goes in
    assert worker.done.wait(10)
    assert replies.get(timeout=1).event == event.event
    worker.join(timeout=60)


def test_done_waits_for_every_reply_the_worker_still_owes() -> None:
    """Two events set aside past their deadline are claimed together; done waits for the
    second reply, not only the first."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    batcher = Batcher(8, BatchPolicy(max_events=2, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue(maxsize=1)
    replies.put(Reply(0, 0, 0.0, {}, reason="shutdown"))  # full: the worker's puts wait
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    now = time.perf_counter()
    for ev in events:
        batcher.put(Job(ev, now, now - 1.0))
    worker.start()
    wait_for(lambda: worker._owed == 2)  # both 'deadline' replies claimed, the first put blocked
    assert worker.abandon() == 0 and not worker.done.is_set()
    replies.get()  # the first goes in; the second waits
    wait_for(lambda: worker._owed == 1)
    assert not worker.done.is_set()
    replies.get()
    assert worker.done.wait(10)
    worker.join(timeout=60)


def test_done_waits_for_abandons_own_replies() -> None:
    """The worker's last owed reply can go out after abandon() began but before abandon()
    queued its own: done must wait for those too."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue(maxsize=2)
    for _ in range(2):
        replies.put(Reply(0, 0, 0.0, {}, reason="shutdown"))  # full: the worker's put waits
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    batcher.put(Job(events[0], time.perf_counter(), None))
    worker.start()
    wait_for(lambda: worker._owed > 0)  # event 0's reply claimed, its put blocked
    batcher.put(Job(events[1], time.perf_counter(), None))  # still queued: abandon()'s
    close, early = batcher.close, []

    def close_then_let_the_worker_finish() -> None:  # inside abandon(), before its claims
        close()
        replies.get()  # room for the worker's reply
        wait_for(lambda: worker._owed == 0)
        early.append(worker.done.is_set())
        replies.get()  # room for abandon()'s

    batcher.close = close_then_let_the_worker_finish  # type: ignore[method-assign]
    assert worker.abandon() == 1
    assert early == [False] and worker.done.is_set()
    assert sorted(r.event for r in _drained(replies)) == [e.event for e in events]
    worker.join(timeout=60)


def test_abandon_answers_the_events_a_batch_set_aside() -> None:
    """Events past their deadline ride with the batch taken off the queue; abandon() must
    answer them too when the worker has not yet."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    batcher = Batcher(8, BatchPolicy(max_events=2, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    entered, go = threading.Event(), threading.Event()
    process = worker.process

    def gated(batch: Batch) -> None:
        entered.set()
        assert go.wait(60)
        process(batch)

    worker.process = gated  # type: ignore[method-assign]
    now = time.perf_counter()
    batcher.put(Job(events[0], now, now - 1.0))  # past its deadline: set aside
    batcher.put(Job(events[1], now, None))
    worker.start()
    assert entered.wait(60)
    assert worker.abandon() == 2 and worker.done.is_set()
    go.set()
    worker.join(timeout=60)
    got = _drained(replies)
    assert sorted((r.event, r.reason) for r in got) == [(e.event, "shutdown") for e in events]


def test_a_batch_that_cannot_finish_before_the_drain_ends_is_not_started() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    batcher = Batcher(8, BatchPolicy(max_events=8, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    gate = Gate()
    gate.release.set()
    worker = _worker(batcher, replies, gate, det)
    batcher.batch_time.observe(1, 1.0)  # as measured on earlier batches: far too slow to start
    worker.drain_by = time.perf_counter() + 5.0
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None))
    worker.start()
    worker.join(timeout=60)
    assert not gate.entered.is_set() and worker.done.is_set()
    got = _drained(replies)
    assert sorted((r.event, r.reason) for r in got) == [(ev.event, "shutdown") for ev in events]


def test_a_batch_is_started_in_a_drain_only_with_room_to_spare() -> None:
    """Its estimate (from the batches so far) times SAFETY, 1.5, must fit before the end:
    an estimate of 20 s is refused with 29 s left and started with 31 s."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    gate = Gate()
    gate.release.set()
    batcher = Batcher(8, BatchPolicy())
    worker = _worker(batcher, replies, gate, det)
    got = []
    for ev, left in zip(events, (29.0, 31.0), strict=True):
        batcher.batch_time.forget()
        batcher.batch_time.observe(len(ev.hits), 20.0)  # an estimate of 20 s for this event
        worker.drain_by = time.perf_counter() + left
        worker.process(Batch(jobs=[Job(ev, time.perf_counter(), None)]))
        got += [(r.event, r.reason) for r in _drained(replies)]
    assert got == [(events[0].event, "shutdown"), (events[1].event, "")]
    assert gate.batches == [[events[1].event]]


def test_a_small_event_does_not_make_the_drain_refuse_a_large_one() -> None:
    """A 3-hit event costs the batch's fixed time: not 3 hits' worth of a per-hit time that
    would make the next large event look hundreds of times its length."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=20)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    batcher = Batcher(8, BatchPolicy())
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    tiny = Event(events[1].run, 99, events[1].hits.take(np.arange(3)))
    t0 = time.perf_counter()
    worker.process(Batch(jobs=[Job(events[0], t0, None)]))
    took = time.perf_counter() - t0  # a large event's time, about
    worker.process(Batch(jobs=[Job(tiny, time.perf_counter(), None)]))
    worker.drain_by = time.perf_counter() + 10 * took + 5.0
    worker.process(Batch(jobs=[Job(events[1], time.perf_counter(), None)]))
    assert [(r.event, r.status) for r in _drained(replies)] == [
        (events[0].event, "ok"), (99, "ok"), (events[1].event, "ok")
    ]  # fmt: skip


def test_a_batch_taken_before_abandon_is_not_started_after_it() -> None:
    """abandon() answered its events: reconstructing them would only delay the exit."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1))
    gate = Gate()
    gate.release.set()
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, gate, det)
    worker.abandoned.set()
    worker.process(Batch(jobs=[Job(events[0], time.perf_counter(), None)]))
    assert not gate.batches and replies.empty()


def test_abandon_stops_the_one_by_one_retry_of_a_failed_batch() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3))
    calls: list[int] = []
    replies: queue.Queue[Reply] = queue.Queue()
    worker: Worker

    def fail_and_abandon(graph, evs):  # the batch fails while the drain gives up
        calls.append(len(evs))
        worker.abandon()
        raise RuntimeError("scorer failure")

    worker = _worker(Batcher(8, BatchPolicy()), replies, fail_and_abandon, det)
    now = time.perf_counter()
    jobs = [Job(ev, now, None) for ev in events]
    worker._current = list(jobs)  # the batch in progress, as the worker's loop records it
    worker.process(Batch(jobs=jobs))
    assert calls == [3]  # no retries
    assert sorted(r.reason for r in _drained(replies)) == ["shutdown"] * 3


def test_the_time_estimate_takes_a_slower_batch_at_once() -> None:
    """The estimate covers a slower batch at once, so that the batcher and the drain never
    count on speed they have not seen."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1))
    replies: queue.Queue[Reply] = queue.Queue()
    batcher = Batcher(8, BatchPolicy())
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    worker.process(Batch(jobs=[Job(events[0], time.perf_counter(), None)]))
    [reply] = _drained(replies)
    stages = sum(v for k, v in reply.timings.items() if k not in ("decode", "queue"))
    assert batcher.batch_time.estimate(len(events[0].hits)) >= stages > 0


def test_abandon_answers_queued_events_past_their_deadline() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1))
    batcher = Batcher(8, BatchPolicy())
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    now = time.perf_counter()
    batcher.put(Job(events[0], now, now - 1.0))  # never started: still queued
    assert worker.abandon() == 1 and worker.done.is_set()
    assert [(r.event, r.reason) for r in _drained(replies)] == [(events[0].event, "shutdown")]


def test_abandon_leaves_unsent_what_finds_no_room_by_its_give_up_time() -> None:
    """The drain's end: a full reply queue (a stalled emitter) holds the abandon no longer,
    however many events are queued (each waited a poll's time past it before)."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    batcher = Batcher(64, BatchPolicy())
    replies: queue.Queue[Reply] = queue.Queue(1)
    replies.put_nowait(Reply.failure(Job(event, 0.0, None), "internal"))  # full
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    for _ in range(64):
        batcher.put(Job(event, time.perf_counter(), None))
    t0 = time.perf_counter()
    assert worker.abandon(give_up_at=t0 + 0.25) == 64
    assert time.perf_counter() - t0 < 3  # not 64 polls of 0.1 s past the give-up time
    assert replies.qsize() == 1 and worker.done.is_set()


def test_an_event_past_its_deadline_when_its_batch_starts_is_not_reconstructed() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3))
    batcher = Batcher(8, BatchPolicy(max_events=8, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    gate = Gate()
    gate.release.set()
    worker = _worker(batcher, replies, gate, det)
    now = time.perf_counter()
    late, timely = Job(events[0], now, now - 1e-3), Job(events[1], now, now + 3600)
    expired = Job(events[2], now, now - 1.0)  # the batcher set it aside
    worker.process(Batch(jobs=[late, timely], expired=[expired]))  # closed just too late
    got = {r.event: r.reason for r in _drained(replies)}
    assert got == {events[0].event: "deadline", events[1].event: "", events[2].event: "deadline"}
    assert gate.batches == [[events[1].event]]  # the timely event was reconstructed, alone


def test_the_one_by_one_retry_leaves_out_the_events_refused_as_too_dense(
    caplog: pytest.LogCaptureFixture,
) -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3, first_event=12))
    events.insert(1, pile(det, 2000, 99))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, FailOnEvent13(), det)
    now = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.process(Batch(jobs=[Job(ev, now, None) for ev in events]))
    got = {r.event: r.reason for r in _drained(replies)}
    assert got == {12: "", 99: "too_dense", 13: "internal", 14: ""}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("refused as too dense" in m for m in messages) == 1, messages
    assert "retrying the 3 events of the failed batch one by one" in messages


def test_a_stream_of_dense_events_is_one_warning_a_minute_and_each_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    det = load_detector()
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(Batcher(8, BatchPolicy()), replies, FailOnEvent13(), det, metrics)
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        for k in range(5):  # a producer sending nothing else: one batch each
            worker.process(Batch(jobs=[Job(pile(det, 2000, 90 + k), time.perf_counter(), None)]))
    assert {r.event: r.reason for r in _drained(replies)} == {90 + k: "too_dense" for k in range(5)}
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "too_dense"}) == 5
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("1 of 1 events refused as too dense (1 since the last warning)")


def test_the_rest_of_a_burst_of_dense_events_is_said_once_its_warning_is_due(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a next dense event (the producer stopped), the events refused after the
    warning are said once the next warning is due, from the worker's idle polls."""
    monkeypatch.setattr("streamtrk.service.worker.DENSE_LOG_S", 5.0)  # the three refused within it
    det = load_detector()
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(FailOnEvent13(), detector=det)
    done = threading.Event()
    worker = Worker(batcher, replies, Metrics(), lambda: (rec, None), done.is_set, lambda o: None)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "streamtrk.service.worker"]

    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.start()
        try:
            for k in range(3):
                batcher.put(Job(pile(det, 2000, 90 + k), time.perf_counter(), None))
            assert [replies.get(timeout=60).reason for _ in range(3)] == ["too_dense"] * 3
            wait_for(lambda: len(said()) == 2, timeout=30)
        finally:
            done.set()
            worker.join(timeout=60)
    assert not worker.is_alive()
    first, rest = said()
    assert first.startswith("1 of 1 events refused as too dense (1 since the last warning)")
    assert rest == "2 more events refused as too dense since the last warning"


def test_the_rest_of_a_burst_of_dense_events_is_said_when_the_worker_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    det = load_detector()
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    for k in range(3):
        batcher.put(Job(pile(det, 2000, 90 + k), time.perf_counter(), None))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(batcher, replies, FailOnEvent13(), det)  # stops once the queue is empty
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert [r.reason for r in _drained(replies)] == ["too_dense"] * 3
    said = [r.getMessage() for r in caplog.records if r.name == "streamtrk.service.worker"]
    assert len(said) == 2 and said[0].startswith("1 of 1 events refused as too dense")
    assert said[1] == "2 more events refused as too dense since the last warning"


def test_a_stream_of_failing_events_logs_one_traceback_and_then_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each event fails alone (answered internal, counted); the log has the first traceback
    and, when the worker stops, how many failed since (not a traceback each)."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1, first_event=13))
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    for run in range(3):
        batcher.put(Job(replace(events[0], run=run), time.perf_counter(), None))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(batcher, replies, FailOnEvent13(), det, metrics)
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert [r.reason for r in _drained(replies)] == ["internal"] * 3
    value = metrics.registry.get_sample_value
    assert value("streamtrk_internal_errors_total", {"cause": "reconstruction"}) == 3
    said = [r for r in caplog.records if r.name == "streamtrk.service.worker"]
    assert [r.exc_info is not None for r in said] == [True, False]
    assert said[0].getMessage() == (
        "reconstruction of 1 events failed (1 since the last traceback)"
    )
    assert said[1].getMessage() == "2 more reconstructions failed since the last traceback"


def test_a_failing_event_fails_alone_and_its_batch_mates_are_served() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3, first_event=12))
    batcher = Batcher(8, BatchPolicy(max_events=8, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(batcher, replies, FailOnEvent13(), det, metrics)
    now = time.perf_counter()
    worker.process(Batch(jobs=[Job(ev, now, None) for ev in events]))  # 12, 13, 14 together
    got = {r.event: r.reason for r in _drained(replies)}
    assert got == {12: "", 13: "internal", 14: ""}
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1
    assert value("streamtrk_internal_errors_total", {"cause": "reconstruction"}) == 1
    assert value("streamtrk_batch_failures_total") == 1  # the batch of three, not the retry
    # One batch-size observation per batch taken, not per retry of its events.
    assert value("streamtrk_batch_events_count") == 1
    assert value("streamtrk_batch_events_sum") == 3
    assert value("streamtrk_batch_hits_sum") == sum(len(ev.hits) for ev in events)


def test_a_lone_event_failing_beside_a_dense_one_is_no_batch_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch of a dense event and one that fails alone: the dense one is refused, the
    other answered 'internal' on its own; nothing is left to retry one by one."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1, first_event=13)
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(Batcher(8, BatchPolicy()), replies, FailOnEvent13(), det, metrics)
    now = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.process(Batch(jobs=[Job(ev, now, None) for ev in (pile(det, 2000, 99), event)]))
    assert {r.event: r.reason for r in _drained(replies)} == {99: "too_dense", 13: "internal"}
    value = metrics.registry.get_sample_value
    assert value("streamtrk_internal_errors_total", {"cause": "reconstruction"}) == 1
    assert value("streamtrk_batch_failures_total") == 0
    assert not any("retrying" in r.getMessage() for r in caplog.records)


class SlowFailingBatches:
    """Edge scorer: 0.3 s a call, all edges 0; a batch of two events or more raises."""

    def __call__(self, graph, events):
        time.sleep(0.3)
        if len(events) > 1:
            raise RuntimeError("scorer failure")
        return np.zeros(graph.num_edges, dtype=np.float32)


def test_the_one_by_one_retry_of_a_failed_batch_is_progress_not_a_stall() -> None:
    """Each event retried is progress: a retry longer than ``stall_timeout_s`` in all, its
    every call shorter, does not make the worker look stalled (a liveness restart)."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 4))
    batcher = Batcher(8, BatchPolicy(max_events=8, max_queue_delay_ms=0))
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(batcher, replies, SlowFailingBatches(), det)  # 1.5 s of calls
    problems = set()
    worker.start()
    while worker.is_alive():
        if (problem := worker.problem(stall_timeout_s=1.0)) is not None:
            problems.add(problem.split(" for ")[0])
        time.sleep(0.02)
    assert [r.status for r in _drained(replies)] == ["ok"] * len(events)
    assert problems == set()


def test_a_batch_waiting_out_its_queue_delay_is_not_a_stall() -> None:
    """A delay longer than ``stall_timeout_s`` is waiting, not a stall; nor is the batch
    before it, answered, work held (a liveness probe would restart a sound daemon)."""
    det = load_detector()
    first, second = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2)
    batcher = Batcher(8, BatchPolicy(max_events=8, max_queue_delay_ms=4_000))
    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(FailOnEvent13(), detector=det)
    intake_done = False
    worker = Worker(
        batcher, replies, Metrics(), lambda: (rec, None), lambda: intake_done, lambda o: None
    )
    problems = set()
    worker.start()
    try:
        for ev in (first, second):
            batcher.put(Job(ev, time.perf_counter(), None))
            t_end = time.monotonic() + 60
            while replies.empty():
                assert time.monotonic() < t_end, "no reply"
                if (problem := worker.problem(stall_timeout_s=2.0)) is not None:
                    problems.add(problem.split(" for ")[0])
                time.sleep(0.02)
            assert replies.get_nowait().status == "ok"
    finally:
        intake_done = True
        worker.join(60)
    assert problems == set()


class FailingBatchThen:
    """Edge scorer: all edges 0; a batch of two events or more takes 0.3 s, calls ``then``
    and raises."""

    def __init__(self, then=lambda: None) -> None:
        self.then = then

    def __call__(self, graph, events):
        if len(events) > 1:
            time.sleep(0.3)
            self.then()
            raise RuntimeError("scorer failure")
        return np.zeros(graph.num_edges, dtype=np.float32)


def test_an_event_past_its_deadline_when_its_retry_starts_is_not_reconstructed() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, FailingBatchThen(), det)
    now = time.perf_counter()
    tight, loose = Job(events[0], now, now + 0.2), Job(events[1], now, None)
    worker.process(Batch(jobs=[tight, loose]))  # fails after 0.3 s: past the tight deadline
    got = {r.event: r.reason for r in _drained(replies)}
    assert got == {events[0].event: "deadline", events[1].event: ""}


def test_a_retry_that_cannot_finish_before_the_drain_ends_is_not_started() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    batcher = Batcher(8, BatchPolicy())

    def sigterm() -> None:  # during the batch, and the batches so far took 1 s a hit
        worker.drain_by = time.perf_counter() + 5.0
        batcher.batch_time.observe(1, 1.0)

    worker = _worker(batcher, replies, FailingBatchThen(sigterm), det)
    worker.process(Batch(jobs=[Job(ev, time.perf_counter(), None) for ev in events]))
    assert [r.reason for r in _drained(replies)] == ["shutdown", "shutdown"]


class Sleeping:
    """Edge scorer: all edges 0, after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, graph, events):
        time.sleep(self.seconds)
        return np.zeros(graph.num_edges, dtype=np.float32)


def test_the_batch_time_is_the_serving_models_after_a_reload() -> None:
    """A faster model swapped in: its first batch alone sets the estimate, not a mean over
    the old one's batches (which would answer a drain's events 'shutdown' needlessly)."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    batcher = Batcher(8, BatchPolicy())
    serving = Reconstructor(Sleeping(1.2), detector=det)
    worker = Worker(
        batcher, replies, Metrics(), lambda: (serving, None), lambda: True, lambda o: None
    )
    worker.process(Batch(jobs=[Job(events[0], time.perf_counter(), None)]))
    hits = len(events[0].hits)
    assert batcher.batch_time.estimate(hits) >= 1.2
    serving = Reconstructor(Sleeping(0.0), detector=det)  # reloaded
    worker.process(Batch(jobs=[Job(events[1], time.perf_counter(), None)]))
    assert [r.status for r in _drained(replies)] == ["ok", "ok"]
    # A mean with the old model's batch would be 0.6 s at least; this chain of an MU=1 event
    # takes under 0.1 s on an idle 2-core machine.
    assert batcher.batch_time.estimate(hits) < 0.6


def test_each_reply_names_the_model_of_its_batch() -> None:
    """A reload between two batches: each reply names the model that made its tracks, not
    the one serving when it is sent (the daemon's /status and model_info say only that)."""
    from streamtrk.recon.reconstructor import OracleScorer
    from streamtrk.wire import ModelId

    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    old, new = ModelId("a", "1111", 0.5), ModelId("b", "2222", 0.7)

    def reloaded_meanwhile(graph, events):  # a reload swaps the model in during the batch
        serving[0] = (Reconstructor(OracleScorer(), detector=det, threshold=0.7), new)
        return OracleScorer()(graph, events)

    serving = [(Reconstructor(reloaded_meanwhile, detector=det), old)]
    worker = Worker(Batcher(8, BatchPolicy()), replies, Metrics(), lambda: serving[0],
                    lambda: True, lambda o: None)  # fmt: skip
    worker.process(Batch(jobs=[Job(events[0], time.perf_counter(), None)]))
    worker.process(Batch(jobs=[Job(events[1], time.perf_counter(), None)]))
    assert [(r.status, r.model) for r in _drained(replies)] == [("ok", old), ("ok", new)]


def _nothing(graph, events):
    """Edge scores passing no edge."""
    return np.zeros(graph.num_edges, dtype=np.float32)


def test_an_ok_reply_echoes_the_msg_id_and_names_the_beam_line() -> None:
    """What a producer matches a reply by (``msg_id``), and the beam line the tracks'
    perigee parameters are about (the chain's): only slow daemon tests checked either."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    rec = Reconstructor(_nothing, detector=det, beam_spot=(1.0, -0.5))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = Worker(Batcher(8, BatchPolicy()), replies, Metrics(), lambda: (rec, None),
                    lambda: True, lambda o: None)  # fmt: skip
    job = Job(ev, time.perf_counter() - 0.5, None, msg_id=77)
    worker.process(Batch(jobs=[job]))
    [reply] = _drained(replies)
    assert (reply.status, reply.msg_id, reply.beam_line) == ("ok", 77, (1.0, -0.5))
    assert reply.t_recv == job.t_recv  # the end-to-end latency runs from the receipt


def test_a_deadline_reply_echoes_the_msg_id_and_names_the_event() -> None:
    """An error reply is matched as an ok one is: an event set aside past its deadline is
    answered 'deadline' with its own run, event, msg_id and time of receipt."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    replies: queue.Queue[Reply] = queue.Queue()
    now = time.perf_counter()
    worker = _worker(Batcher(8, BatchPolicy()), replies, _nothing, det)
    worker.process(Batch(expired=[Job(ev, now - 0.5, now - 0.25, msg_id=41)]))
    [reply] = _drained(replies)
    assert (reply.reason, reply.msg_id) == ("deadline", 41)
    assert (reply.run, reply.event, reply.t_recv) == (ev.run, ev.event, now - 0.5)


def test_an_internal_reply_keeps_the_time_its_event_spent_queued() -> None:
    """An event whose reconstruction failed after its wait in the queue: the error reply
    carries that stage's time, as an ok reply does (the client's latency breakdown)."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1, first_event=13)
    replies: queue.Queue[Reply] = queue.Queue()
    job = Job(ev, time.perf_counter(), None, msg_id=9)
    _worker(Batcher(8, BatchPolicy()), replies, FailOnEvent13(), det).process(Batch(jobs=[job]))
    [reply] = _drained(replies)
    assert (reply.reason, reply.msg_id) == ("internal", 9)
    assert "queue" in reply.timings and reply.timings["queue"] == job.timings["queue"]


def test_abandon_during_the_one_by_one_retry_stops_it() -> None:
    """A failed batch is retried event by event; abandon() during the first retry (the
    drain gave up) answers them all 'shutdown': the retries stop, where they went on
    reconstructing events already answered."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3))
    calls: list[int] = []

    def scorer(graph, evs):
        calls.append(len(evs))
        if len(evs) > 1:
            raise RuntimeError("batch failure")
        worker.abandon()
        return _nothing(graph, evs)

    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(scorer, detector=det)
    worker = Worker(Batcher(8, BatchPolicy()), replies, Metrics(), lambda: (rec, None),
                    lambda: True, lambda o: None)  # fmt: skip
    jobs = [Job(ev, time.perf_counter(), None) for ev in events]
    worker._current = list(jobs)  # as process() holds them
    worker.process(Batch(jobs=jobs))
    assert calls == [3, 1]
    assert sorted(r.reason for r in _drained(replies)) == ["shutdown"] * 3


def test_an_event_abandon_answered_is_not_counted_rejected_again() -> None:
    """An event set aside (past its deadline) that abandon() answered 'shutdown' first: the
    worker, coming to it after, neither answers nor counts it again (sum(rejected) is
    completed{error} plus unidentified)."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    metrics = Metrics()
    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(_nothing, detector=det)
    worker = Worker(Batcher(8, BatchPolicy()), replies, metrics, lambda: (rec, None),
                    lambda: True, lambda o: None)  # fmt: skip
    now = time.perf_counter()
    job = Job(ev, now, now - 1.0)
    worker._current = [job]
    assert worker.abandon() == 1
    worker.process(Batch(expired=[job]))
    value = metrics.registry.get_sample_value
    assert [r.reason for r in _drained(replies)] == ["shutdown"]
    assert value("streamtrk_events_rejected_total", {"reason": "shutdown"}) == 1
    assert value("streamtrk_events_rejected_total", {"reason": "deadline"}) == 0


def test_an_ok_reply_carries_its_events_hit_ids() -> None:
    """The tracks index the event's hits: the reply carries their ids, which a client maps
    its tracks back to (only slow daemon tests scored them)."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    rec = Reconstructor(_nothing, detector=det)
    replies: queue.Queue[Reply] = queue.Queue()
    worker = Worker(Batcher(8, BatchPolicy()), replies, Metrics(), lambda: (rec, None),
                    lambda: True, lambda o: None)  # fmt: skip
    worker.process(Batch(jobs=[Job(ev, time.perf_counter(), None)]))
    [reply] = _drained(replies)
    assert reply.status == "ok" and len(ev.hits.hit_id) > 0
    assert np.array_equal(reply.hit_ids, ev.hits.hit_id)


def test_a_claimed_job_is_refused_at_once() -> None:
    """Whoever comes second (the worker after abandon(), or abandon() after the worker) is
    told at once: abandon() claims a whole queue within the drain's deadline."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    job = Job(ev, time.perf_counter(), None)
    before, first, after = job.claimed, job.claim(), job.claimed
    assert (before, first, after) == (False, True, True)
    t0 = time.perf_counter()
    assert not job.claim()
    assert time.perf_counter() - t0 < 0.1


def test_an_event_queued_as_intake_ends_is_answered() -> None:
    """The last event can land after the worker's poll found the queue empty and before
    it sees intake over (ingest puts, then its thread exits): the worker answers it, it
    does not stop with the event queued."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(_nothing, detector=det)
    put: list[bool] = []

    def intake_done() -> bool:  # the ingest thread's last put, then its exit
        if not put:
            put.append(batcher.put(Job(event, time.perf_counter(), None)))
        return True

    worker = Worker(batcher, replies, Metrics(), lambda: (rec, None), intake_done, lambda o: None)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and put == [True]
    assert [(r.event, r.status) for r in _drained(replies)] == [(event.event, "ok")]
    assert batcher.depth() == 0


def test_a_worker_that_died_is_done_only_once_abandon_answered_its_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``done`` lets the emitter stop: a worker that died leaves its queue to abandon(), and
    done must wait for abandon()'s 'shutdown' replies (else they would go to no one)."""
    from collections import Counter

    from streamtrk.service import faults

    monkeypatch.setattr(faults, "_passes", Counter())
    monkeypatch.setitem(faults.FAULTS, "worker_fail_after", 1)  # dies after its first batch
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3))
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None))
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and worker.error is not None
    assert not worker.done.is_set()
    assert worker.abandon() == 2 and worker.done.is_set()
    assert sorted(r.reason for r in _drained(replies)) == ["", "shutdown", "shutdown"]


def test_a_batch_in_progress_is_work_for_the_stall_check() -> None:
    """A batch hung inside the model, nothing else queued: the worker has work, so that
    its missing heartbeats are a stall (a liveness restart), not idling."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    gate = Gate()
    worker = _worker(batcher, replies, gate, det)
    batcher.put(Job(event, time.perf_counter(), None))
    worker.start()
    try:
        assert gate.entered.wait(60) and batcher.depth() == 0
        assert worker.has_work()
        time.sleep(0.3)
        assert (worker.problem(stall_timeout_s=0.2) or "").startswith("worker: no progress")
    finally:
        gate.release.set()
        worker.join(timeout=60)
    assert [r.status for r in _drained(replies)] == ["ok"]


def test_a_drain_weighs_the_whole_batch_not_its_largest_event() -> None:
    """Two events, each of which would finish before the drain ends alone, together not:
    the batch is not started (its estimate is for all of its hits)."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    gate = Gate()
    gate.release.set()
    batcher = Batcher(8, BatchPolicy())
    worker = _worker(batcher, replies, gate, det)
    batcher.batch_time.observe(100, 10.0)
    batcher.batch_time.observe(200, 20.0)  # 0.1 s a hit
    hits = [len(ev.hits) for ev in events]
    alone, both = (1.5 * batcher.batch_time.estimate(n) for n in (max(hits), sum(hits)))
    worker.drain_by = time.perf_counter() + (alone + both) / 2
    worker.process(Batch(jobs=[Job(ev, time.perf_counter(), None) for ev in events]))
    assert [r.reason for r in _drained(replies)] == ["shutdown", "shutdown"] and not gate.batches


def test_the_queue_time_is_from_the_queueing_not_the_receipt() -> None:
    """``timings['queue']`` is the time an event waited in the queue: its decode and its
    intake before it (``t_recv`` to ``t_queued``) are not counted again."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(Batcher(8, BatchPolicy()), replies, _nothing, det, metrics)
    now = time.perf_counter()
    job = Job(ev, now - 5.0, None, {"decode": 0.0})  # received 5 s before it was queued
    job.t_queued = now
    worker.process(Batch(jobs=[job]))
    [reply] = _drained(replies)
    assert 0.0 <= reply.timings["queue"] < 1.0
    queued = metrics.registry.get_sample_value("streamtrk_queue_delay_seconds_sum")
    assert queued is not None and queued < 1.0


def test_the_batch_size_metrics_count_only_the_events_started() -> None:
    """An event the batcher set aside (past its deadline) is answered 'deadline', not
    counted in the batch's size: neither its event nor its hits."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    worker = _worker(Batcher(8, BatchPolicy()), replies, _nothing, det, metrics)
    now = time.perf_counter()
    worker.process(Batch(jobs=[Job(events[0], now, None)], expired=[Job(events[1], now, now - 1)]))
    assert {r.event: r.reason for r in _drained(replies)} == {0: "", 1: "deadline"}
    value = metrics.registry.get_sample_value
    assert value("streamtrk_batch_events_sum") == 1
    assert value("streamtrk_batch_hits_sum") == len(events[0].hits)


def test_a_lone_failure_abandon_answered_is_no_internal_error() -> None:
    """An event that fails alone after abandon() answered it 'shutdown': no 'internal'
    reply, and no internal error counted for it."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    metrics = Metrics()
    replies: queue.Queue[Reply] = queue.Queue()
    worker: Worker

    def fail_and_abandon(graph, evs):
        worker.abandon()
        raise RuntimeError("scorer failure")

    worker = _worker(Batcher(8, BatchPolicy()), replies, fail_and_abandon, det, metrics)
    job = Job(ev, time.perf_counter(), None)
    worker._current = [job]  # the batch in progress, as the worker's loop records it
    worker.process(Batch(jobs=[job]))
    assert [r.reason for r in _drained(replies)] == ["shutdown"]
    value = metrics.registry.get_sample_value
    assert value("streamtrk_internal_errors_total", {"cause": "reconstruction"}) == 0
    assert value("streamtrk_events_rejected_total", {"reason": "internal"}) == 0


class _AbandonAfterFirstReply(queue.Queue[Reply]):
    """A reply queue whose first reply brings the worker's abandon() (a stop meanwhile)."""

    def __init__(self, worker: Callable[[], Worker]) -> None:
        super().__init__()
        self.worker = worker

    def put(self, item: Reply, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if self.qsize() == 1:
            self.worker().abandon()


def test_a_batch_abandon_answered_in_part_is_not_observed() -> None:
    """abandon() comes while the worker queues a batch's replies: the first went out with
    its tracks, the second 'shutdown'. The batch's physics is not that of the tracks sent:
    it is not handed to the physics metrics."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    worker: Worker
    replies = _AbandonAfterFirstReply(lambda: worker)
    observed: list[Observation] = []
    worker = _worker(Batcher(8, BatchPolicy()), replies, _nothing, det, observed=observed)
    jobs = [Job(ev, time.perf_counter(), None) for ev in events]
    worker._current = list(jobs)
    worker.process(Batch(jobs=jobs))
    assert [(r.event, r.reason) for r in _drained(replies)] == [(0, ""), (1, "shutdown")]
    assert observed == []


def test_a_warning_counts_every_dense_event_of_its_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, _nothing, det)
    dense = [pile(det, 2000, 98), pile(det, 2000, 99)]
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.process(Batch(jobs=[Job(x, time.perf_counter(), None) for x in (*dense, ev)]))
    assert {r.event: r.reason for r in _drained(replies)} == {
        98: "too_dense",
        99: "too_dense",
        0: "",
    }
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("2 of 3 events refused as too dense (2 since the last warning)")


def test_a_failure_on_a_device_that_no_longer_works_kills_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sticky device error: the worker dies with DeviceFault (for a restart), its event
    left to abandon() ('shutdown', resent elsewhere), not answered 'internal'."""
    from streamtrk.service.worker import DeviceFault

    monkeypatch.setattr("streamtrk.service.worker.device_fault", lambda device: "lost")
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1, first_event=13)
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    batcher.put(Job(event, time.perf_counter(), None))
    worker = _worker(batcher, replies, FailOnEvent13(), det)
    worker.start()
    worker.join(timeout=60)
    assert isinstance(worker.error, DeviceFault) and replies.empty()
    assert worker.abandon() == 1
    assert [r.reason for r in _drained(replies)] == ["shutdown"]


def test_a_failed_reconstruction_frees_the_device_caches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failure may have been out of memory: the caches are given back before the
    retries (on the device the reconstruction ran on)."""
    freed: list[str] = []
    monkeypatch.setattr("streamtrk.service.worker.release_cached_memory", freed.append)
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2, first_event=12))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, FailOnEvent13(), det)
    worker.process(Batch(jobs=[Job(ev, time.perf_counter(), None) for ev in events]))
    assert {r.event: r.reason for r in _drained(replies)} == {12: "", 13: "internal"}
    assert freed == ["cpu", "cpu"]  # the batch of two, then event 13 alone


@pytest.mark.parametrize("late_as", ["set aside", "found as its batch starts"])
def test_an_event_whose_deadline_passes_while_the_reply_queue_is_full_is_not_started(
    late_as: str,
) -> None:
    """Answering a late event (set aside by the batcher, or found late as its batch starts)
    can wait on a full reply queue (a slow consumer): an event whose deadline passed
    meanwhile is answered 'deadline' when its batch starts after that wait, not
    reconstructed and answered late."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    replies: queue.Queue[Reply] = queue.Queue(maxsize=1)
    replies.put(Reply(0, 0, 0.0, {}, reason="shutdown"))  # full: the worker's put waits
    gate = Gate()
    gate.release.set()
    worker = _worker(Batcher(8, BatchPolicy()), replies, gate, det)
    got: list[Reply] = []

    def slow_consumer() -> None:  # room after 1 s, then every reply taken
        time.sleep(1.0)
        while len(got) < 3:
            got.append(replies.get(timeout=60))

    consumer = threading.Thread(target=slow_consumer)
    consumer.start()
    now = time.perf_counter()
    late = Job(events[0], now, now - 1.0)
    timely = Job(events[1], now, now + 0.5)  # its deadline passes while the worker waits
    if late_as == "set aside":
        worker.process(Batch(jobs=[timely], expired=[late]))
    else:
        worker.process(Batch(jobs=[late, timely]))
    consumer.join(timeout=60)
    assert {r.event: r.reason for r in got[1:]} == {0: "deadline", 1: "deadline"}
    assert gate.batches == []


def test_abandon_while_refusing_dense_events_stops_the_rest_of_the_batch() -> None:
    """abandon() comes as the worker answers a batch's dense events 'too_dense': the rest of
    the batch, answered 'shutdown' by it, is not reconstructed (that only delays the exit)."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    worker: Worker
    replies = _AbandonAfterFirstReply(lambda: worker)
    gate = Gate()
    gate.release.set()
    worker = _worker(Batcher(8, BatchPolicy()), replies, gate, det)
    jobs = [Job(ev, time.perf_counter(), None) for ev in (pile(det, 2000, 99), event)]
    worker._current = list(jobs)
    worker.process(Batch(jobs=jobs))
    assert {r.event: r.reason for r in _drained(replies)} == {99: "too_dense", 0: "shutdown"}
    assert gate.batches == []


def test_the_queue_stage_is_observed_per_event_and_the_chain_s_per_batch() -> None:
    """docs/metrics.md: ``streamtrk_stage_seconds{stage="queue"}`` per event, the same
    wait as ``streamtrk_queue_delay_seconds``; the chain's stages (graph, gnn, tracks,
    fit) once per batch reconstructed, the seconds its replies carry."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))
    metrics = Metrics()
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, _nothing, det, metrics)
    worker.process(Batch(jobs=[Job(ev, time.perf_counter(), None) for ev in events]))
    value = metrics.registry.get_sample_value
    assert value("streamtrk_stage_seconds_count", {"stage": "queue"}) == 2
    assert value("streamtrk_stage_seconds_sum", {"stage": "queue"}) == value(
        "streamtrk_queue_delay_seconds_sum"
    )
    [_, reply] = _drained(replies)
    stages = {k: v for k, v in reply.timings.items() if k != "queue"}
    assert {"graph", "gnn", "tracks", "fit"} <= stages.keys()
    for stage, seconds in stages.items():
        assert value("streamtrk_stage_seconds_count", {"stage": stage}) == 1, stage
        assert value("streamtrk_stage_seconds_sum", {"stage": stage}) == seconds, stage


def test_abandon_sets_done_for_a_worker_that_died_holding_claimed_replies() -> None:
    """A worker that died between claiming replies and queueing them never queues them:
    abandon() does not wait for them (done at once), or the emitter would wait on them."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 2))

    class Broken(queue.Queue):
        def put(self, item, block=True, timeout=None):
            raise RuntimeError("reply queue broken")

    batcher = Batcher(8, BatchPolicy(max_events=2, max_queue_delay_ms=0))
    now = time.perf_counter()
    for ev in events:
        batcher.put(Job(ev, now, now - 1.0))  # both set aside: claimed together
    worker = _worker(batcher, Broken(), FailOnEvent13(), det)
    worker.start()
    worker.join(timeout=60)
    assert worker.error is not None and worker._owed == 1
    assert worker.abandon() == 0 and worker.done.is_set()


def test_a_batch_taken_after_a_long_idle_is_not_a_stall() -> None:
    """The worker beats on each idle poll: a batch taken after an idle longer than
    ``stall_timeout_s`` is not, before its reconstruction starts, work without progress."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(_nothing, detector=det)
    intake_done = False
    worker = Worker(
        batcher, replies, Metrics(), lambda: (rec, None), lambda: intake_done, lambda o: None
    )
    seen: list[str | None] = []
    process = worker.process

    def checked(batch: Batch) -> None:  # the batch is taken, not yet reconstructed
        seen.append(worker.problem(stall_timeout_s=0.5))
        process(batch)

    worker.process = checked  # type: ignore[method-assign]
    worker.start()
    try:
        time.sleep(1.0)  # idle, longer than the stall timeout
        batcher.put(Job(event, time.perf_counter(), None))
        assert replies.get(timeout=60).status == "ok"
    finally:
        intake_done = True
        worker.join(timeout=60)
    assert seen == [None]


def test_events_queued_behind_a_worker_that_hangs_between_batches_are_a_stall() -> None:
    """The hook between batches (the heap refreeze after a reload) hangs with events queued
    and no batch taken: that is work without progress (a liveness restart), not idling."""
    det = load_detector()
    [event] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    rec = Reconstructor(_nothing, detector=det)
    release = threading.Event()
    worker = Worker(batcher, replies, Metrics(), lambda: (rec, None), lambda: True,
                    lambda o: None, between_batches=lambda: release.wait(60))  # fmt: skip
    batcher.put(Job(event, time.perf_counter(), None))
    worker.start()
    try:
        time.sleep(0.5)
        assert not worker.in_batch() and batcher.depth() == 1
        assert (worker.problem(stall_timeout_s=0.2) or "").startswith("worker: no progress")
    finally:
        release.set()
        worker.join(timeout=60)
    assert [r.status for r in _drained(replies)] == ["ok"]


def test_the_batch_time_is_of_all_the_hits_of_the_batch() -> None:
    """A batch's seconds are those of all its hits: two alike events reconstructed together
    make the estimate for one of them half the batch's time, not all of it (which would
    double the drain's and the batcher's estimates)."""
    det = load_detector()
    [ev] = simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 1)
    replies: queue.Queue[Reply] = queue.Queue()
    batcher = Batcher(8, BatchPolicy())
    worker = _worker(batcher, replies, Sleeping(0.2), det)
    now = time.perf_counter()
    worker.process(Batch(jobs=[Job(ev, now, None), Job(replace(ev, event=1), now, None)]))
    reply, _ = _drained(replies)
    stages = sum(v for k, v in reply.timings.items() if k != "queue")  # the batch's chain
    estimate = batcher.batch_time.estimate
    assert estimate(len(ev.hits)) < stages <= estimate(2 * len(ev.hits))


def test_a_failed_batch_counts_as_one_failed_reconstruction_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The traceback's count is of reconstructions that raised (a batch, or an event retried
    alone), not of their events: a failed batch of three is one."""
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3, first_event=12))
    replies: queue.Queue[Reply] = queue.Queue()
    worker = _worker(Batcher(8, BatchPolicy()), replies, FailOnEvent13(), det)
    now = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="streamtrk.service.worker"):
        worker.process(Batch(jobs=[Job(ev, now, None) for ev in events]))
    assert {r.event: r.reason for r in _drained(replies)} == {
        12: "",
        13: "internal",
        14: "",
    }
    [traceback] = [r for r in caplog.records if r.exc_info is not None]
    assert traceback.getMessage() == (
        "reconstruction of 3 events failed (1 since the last traceback)"
    )
    worker._say_bursts(final=True)  # the retry of event 13 failed too, within the minute
    assert caplog.records[-1].getMessage() == (
        "1 more reconstructions failed since the last traceback"
    )
