"""Dynamic batching rules, in-process (no sockets, no model)."""

from __future__ import annotations

import threading
import time

import numpy as np

from streamtrk.event import Event, Hits
from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.job import Job


def job(n_hits: int, event: int = 0, deadline_s: float | None = None) -> Job:
    cols = {k: np.zeros(n_hits, dt) for k, dt in Hits.DTYPES.items()}
    cols["hit_id"] = np.arange(n_hits, dtype=np.int64)
    t = time.perf_counter()
    return Job(Event(1, event, Hits(**cols)), t, None if deadline_s is None else t + deadline_s)


def events(batch) -> list[int]:
    return [j.event.event for j in batch.jobs]


def test_waiting_events_form_full_batches_at_once() -> None:
    b = Batcher(16, BatchPolicy(max_events=4, max_hits=10**6, max_queue_delay_ms=10_000))
    for i in range(10):
        assert b.put(job(10, i))
    t0 = time.perf_counter()
    assert events(b.next_batch(1)) == [0, 1, 2, 3]
    assert events(b.next_batch(1)) == [4, 5, 6, 7]
    assert time.perf_counter() - t0 < 5  # full batches never wait for the queue delay
    assert b.depth() == 2


def test_hit_limit_closes_a_batch_and_the_next_event_opens_the_next() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=100, max_queue_delay_ms=0))
    for i, n in enumerate([40, 40, 40, 500, 10]):
        b.put(job(n, i))
    first = b.next_batch(1)
    assert first is not None
    assert events(first) == [0, 1] and first.n_hits == 80
    assert b.depth() == 3  # event 2, held for the next batch, counts as waiting
    assert events(b.next_batch(1)) == [2]  # event 3 would pass the limit
    assert events(b.next_batch(1)) == [3]  # alone over the limit: a batch of its own
    assert events(b.next_batch(1)) == [4]
    assert b.next_batch(0.01) is None and b.depth() == 0


def test_an_event_reaching_exactly_max_hits_joins_the_batch() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=100, max_queue_delay_ms=0))
    b.put(job(60, 0))
    b.put(job(40, 1))
    assert events(b.next_batch(1)) == [0, 1]


def test_a_batch_full_in_hits_closes_without_waiting_for_the_delay() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=100, max_queue_delay_ms=60_000))
    b.put(job(100, 0))
    t0 = time.perf_counter()
    assert events(b.next_batch(1)) == [0]
    assert time.perf_counter() - t0 < 30  # not the 60 s delay


def test_queue_delay_waits_for_late_events_then_closes() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=5000))
    first = job(5, 0)
    b.put(first)
    out: list = []
    taker = threading.Thread(target=lambda: out.append(b.next_batch(1)))
    taker.start()
    t_end = time.monotonic() + 60
    while b.depth():  # the batcher has taken event 0 and waits for more
        assert time.monotonic() < t_end
        time.sleep(0.001)
    time.sleep(max(0.0, first.t_queued + 3.0 - time.perf_counter()))
    b.put(job(5, 1))  # late, in the delay's last seconds, but within it (2 s of slack)
    taker.join()
    waited = time.perf_counter() - first.t_queued
    assert events(out[0]) == [0, 1]
    assert waited >= 5.0  # the batch stayed open for the whole delay, not just until event 1


def test_the_queue_delay_counts_from_the_first_event_s_queueing() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=2000))
    b.put(job(5, 0))
    time.sleep(2.1)  # it waited out the delay while the worker was busy
    t0 = time.perf_counter()
    assert events(b.next_batch(1)) == [0]
    assert time.perf_counter() - t0 < 1  # batched at once, not after another 2 s


def test_flush_closes_a_batch_without_waiting_for_the_delay() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=60_000))
    b.put(job(5, 0))
    b.flush = True  # set by the drain once intake has stopped
    late = threading.Timer(3, lambda: b.put(job(5, 1)))  # (after a flush, only in a test)
    late.start()
    t0 = time.perf_counter()
    try:
        assert events(b.next_batch(1)) == [0]  # not even open for an event 3 s later
    finally:
        late.join()
    assert time.perf_counter() - t0 < 5  # not the 60 s delay


def test_zero_delay_sends_what_is_there() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=0))
    b.put(job(5, 0))
    assert events(b.next_batch(1)) == [0]
    assert b.next_batch(0.01) is None


def test_expired_events_are_set_aside_unprocessed() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=0))
    b.put(job(5, 0, deadline_s=1e-6))
    b.put(job(5, 1, deadline_s=3600))
    b.put(job(5, 2))
    time.sleep(0.01)
    batch = b.next_batch(1)
    assert events(batch) == [1, 2]
    assert batch is not None
    assert [j.event.event for j in batch.expired] == [0]


def test_an_event_expiring_while_queued_behind_the_first_is_set_aside() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=0))
    b.put(job(5, 0))
    b.put(job(5, 1, deadline_s=0.05))
    time.sleep(0.1)  # event 1's deadline passes before the batcher reaches it
    batch = b.next_batch(1)
    assert events(batch) == [0]
    assert batch is not None
    assert [j.event.event for j in batch.expired] == [1]


def test_a_deadline_closes_the_batch_before_the_queue_delay() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=60_000))
    b.put(job(5, 0, deadline_s=0.5))
    t0 = time.perf_counter()
    batch = b.next_batch(1)
    assert events(batch) == [0] and time.perf_counter() - t0 < 30  # not the 60 s delay


def test_the_expected_reconstruction_time_closes_the_batch_earlier() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=60_000))
    b.batch_time.observe(100, 1000.0)  # 1,000 s of work for 100 hits: past the deadline in 60 s
    b.put(job(100, 0, deadline_s=60))
    t0 = time.perf_counter()
    assert events(b.next_batch(1)) == [0]
    assert time.perf_counter() - t0 < 30  # closed at once: waiting can only make it later


def test_an_event_that_would_make_the_batch_late_opens_the_next() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=50))
    b.batch_time.observe(500, 5.0)  # 500 hits: 5 s of work (seconds of slack for a slow CI)
    b.put(job(500, 0, deadline_s=12))  # fits alone, and with one more, not with two
    for k in (1, 2, 3):
        b.put(job(500, k))
    first = b.next_batch(1)
    assert events(first) == [0, 1]
    assert events(b.next_batch(1)) == [2, 3]  # no deadline among them
    b.put(job(500, 4, deadline_s=1))  # late alone already: batched all the same
    b.put(job(500, 5))
    assert events(b.next_batch(1)) == [4, 5]
    b.put(job(500, 6))
    b.put(job(500, 7, deadline_s=8))  # its own deadline: 10 s together, 5 s alone
    assert events(b.next_batch(1)) == [6]
    assert events(b.next_batch(1)) == [7]


def test_an_event_whose_own_deadline_is_too_tight_opens_the_next_batch() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=50))
    b.batch_time.observe(500, 0.5)  # 500 hits: 0.5 s of work
    b.put(job(500, 0))  # no deadline: the open batch is not late
    b.put(job(500, 1, deadline_s=0.3))  # late even alone; joining would make it later still
    assert events(b.next_batch(1)) == [0]
    assert events(b.next_batch(1)) == [1]


def test_an_earlier_events_deadline_keeps_a_later_event_out() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=50))
    b.batch_time.observe(500, 5.0)  # (seconds of slack for a slow CI)
    b.put(job(500, 0, deadline_s=8))  # 10 s of work together ends past event 0's deadline
    b.put(job(500, 1, deadline_s=60))
    assert events(b.next_batch(1)) == [0]
    assert events(b.next_batch(1)) == [1]


def test_a_later_events_deadline_closes_the_batch_earlier() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=60_000))
    b.put(job(5, 0, deadline_s=60))
    b.put(job(5, 1, deadline_s=1))
    t0 = time.perf_counter()
    assert events(b.next_batch(1)) == [0, 1]
    assert time.perf_counter() - t0 < 30  # at event 1's deadline, not event 0's (60 s)


def test_an_event_past_its_deadline_opens_no_batch() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=60_000))
    b.put(job(5, 0, deadline_s=-1))
    t0 = time.perf_counter()
    batch = b.next_batch(1)
    assert batch is not None and events(batch) == []
    assert [j.event.event for j in batch.expired] == [0]
    assert time.perf_counter() - t0 < 30  # handed over at once, not after the 60 s delay


def test_an_expired_event_does_not_start_the_delay_of_the_batch_after_it() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=1500))
    b.put(job(5, 0, deadline_s=-1))
    time.sleep(1.6)  # queued longer ago than the delay
    b.put(job(5, 1))
    thread, out = _open_batch(b)
    time.sleep(0.1)
    b.put(job(5, 2))  # within event 1's delay
    thread.join(60)
    assert [events(batch) for batch in out] == [[1, 2]]


def test_events_set_aside_count_towards_max_events() -> None:
    """Taken off the queue, they would otherwise pile up beyond every bound while a batch
    waits out its delay (a producer's deadlines already past on arrival)."""
    b = Batcher(16, BatchPolicy(max_events=4, max_hits=10**6, max_queue_delay_ms=60_000))
    b.put(job(5, 0))
    thread, out = _open_batch(b)
    for i in range(1, 9):
        assert b.put(job(5, i, deadline_s=-1))
    thread.join(60)
    [batch] = out
    assert events(batch) == [0] and len(batch.expired) == 3
    assert b.depth() == 5  # the others still queued, counted
    b.put(job(5, 9, deadline_s=-1))
    b.put(job(5, 10))
    batch = b.next_batch(1)
    assert batch is not None and events(batch) == [] and len(batch.expired) == 4


def test_full_queue_rejects_without_blocking() -> None:
    b = Batcher(2, BatchPolicy())
    assert b.put(job(1, 0), block=False) and b.put(job(1, 1), block=False)
    assert not b.put(job(1, 2), block=False)
    assert b.depth() == 2


def _blocked_put(b: Batcher, j: Job) -> tuple[threading.Thread, list[bool]]:
    """A put of ``j`` on a thread, once it waits for room; its result, when it has one."""
    result: list[bool] = []
    waited = threading.Event()
    # A daemon thread: a put that never ends fails the test instead of hanging the run.
    thread = threading.Thread(
        target=lambda: result.append(b.put(j, waiting=waited.set)), daemon=True
    )
    thread.start()
    assert waited.wait(10)
    return thread, result


def test_a_blocked_put_queues_once_a_batch_makes_room() -> None:
    b = Batcher(1, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    assert b.put(job(1, 0))
    thread, result = _blocked_put(b, job(1, 1))
    assert not result  # still waiting: the queue is full
    assert events(b.next_batch(1)) == [0]
    thread.join(10)
    assert result == [True]
    assert events(b.next_batch(1)) == [1]


def test_closing_ends_a_blocked_put_unqueued() -> None:
    b = Batcher(1, BatchPolicy(max_events=1))
    assert b.put(job(1, 0))
    thread, result = _blocked_put(b, job(1, 1))
    b.close()
    thread.join(10)
    assert result == [False]
    assert b.depth() == 1


def _open_batch(b: Batcher) -> tuple[threading.Thread, list]:
    """``next_batch`` on a thread, once it has taken the first event and waits for more; its
    batch, or the exception it raised, when it has one."""
    out: list = []

    def take() -> None:
        try:
            out.append(b.next_batch(1))
        except Exception as e:  # the test reports it
            out.append(e)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    t_end = time.monotonic() + 10
    while b.depth() and not out:
        assert time.monotonic() < t_end
        time.sleep(0.001)
    return thread, out


def test_flush_closes_a_batch_already_waiting_for_the_delay() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=600_000))
    b.put(job(5, 0))
    thread, out = _open_batch(b)
    b.flush = True  # the drain: intake has stopped while the batch waits to fill
    thread.join(60)
    assert [events(batch) for batch in out] == [[0]]  # not after the 600 s delay


def test_a_reload_that_shortens_the_delay_closes_a_batch_already_waiting() -> None:
    """The delay is the policy's as it is at each wait; its limits, the batch's own."""
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=600_000))
    b.put(job(5, 0))
    thread, out = _open_batch(b)
    b.policy = BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=1.0)  # a SIGHUP
    thread.join(60)
    assert [events(batch) for batch in out] == [[0]]  # not after the 600 s delay


def test_a_reload_sets_the_limits_of_the_batches_after_the_one_being_formed() -> None:
    """Events and hits alike: the batch being formed keeps the limits it opened with."""
    b = Batcher(16, BatchPolicy(max_events=3, max_hits=100, max_queue_delay_ms=600_000))
    b.put(job(30, 0))
    thread, out = _open_batch(b)
    b.policy = BatchPolicy(max_events=1, max_hits=50, max_queue_delay_ms=600_000)
    for i in (1, 2, 3):
        b.put(job(30, i))
    thread.join(60)
    assert [events(batch) for batch in out] == [[0, 1, 2]]  # the old limits: 3 events, 90 hits
    assert events(b.next_batch(1)) == [3]  # the new ones


def test_a_queue_delay_past_what_a_thread_can_wait_batches_all_the_same() -> None:
    """1e13 ms is finite, as the setting must be, and past threading.TIMEOUT_MAX."""
    b = Batcher(16, BatchPolicy(max_events=2, max_hits=10**6, max_queue_delay_ms=1e13))
    b.put(job(5, 0))
    thread, out = _open_batch(b)
    b.put(job(5, 1))
    thread.join(60)
    assert [events(batch) for batch in out] == [[0, 1]]


def test_closing_flushes_what_is_queued_without_the_delay() -> None:
    b = Batcher(16, BatchPolicy(max_events=8, max_queue_delay_ms=60_000))
    for i in range(3):
        assert b.put(job(5, i))
    b.close()
    t0 = time.perf_counter()
    assert events(b.next_batch(0.0)) == [0, 1, 2]
    assert time.perf_counter() - t0 < 30  # not waiting 60 s for a fourth
    assert not b.put(job(5, 3))


def test_a_late_event_does_not_extend_the_queue_delay() -> None:
    """The delay counts from the batch's first event queued, not from its latest one."""
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=3000))
    first = job(5, 0)
    b.put(first)
    thread, out = _open_batch(b)
    time.sleep(max(0.0, first.t_queued + 2.0 - time.perf_counter()))
    b.put(job(5, 1))  # 2 s into event 0's delay: the batch still closes at 3 s, not 5 s
    thread.join(60)
    waited = time.perf_counter() - first.t_queued
    assert [events(batch) for batch in out] == [[0, 1]]
    assert waited < 4.5  # (1.5 s of slack for a slow CI)


def test_the_deadline_closes_the_batch_in_time_for_all_of_its_hits() -> None:
    """The batch closes its expected reconstruction time, for all its hits, before the
    earliest deadline: 10 s of work for two events, not the 5 s of one."""
    b = Batcher(16, BatchPolicy(max_events=8, max_hits=10**6, max_queue_delay_ms=60_000))
    b.batch_time.observe(100, 5.0)  # 0.05 s a hit
    b.put(job(100, 0, deadline_s=11))
    b.put(job(100, 1))  # 10 s of work together: due 1 s after event 0's queueing
    t0 = time.perf_counter()
    batch = b.next_batch(1)
    assert events(batch) == [0, 1]
    assert time.perf_counter() - t0 < 3.5  # not 6 s, past which 10 s of work ends too late
