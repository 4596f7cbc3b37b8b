"""The supervised thread's rules: a bounded put that beats and gives up on time, a stall only
with work waiting, a death reported with its cause."""

from __future__ import annotations

import logging
import queue
import threading
import time

import pytest

from streamtrk.service.supervised import Supervised


def test_a_put_with_no_room_by_its_time_is_not_put() -> None:
    """``until`` bounds the wait for room: False then (not a wait for ever), the queue as it
    was."""
    q: queue.Queue[int] = queue.Queue(1)
    q.put(0)
    t0 = time.perf_counter()
    assert Supervised("t", print).put(q, 1, until=t0 + 0.3) is False
    assert 0.25 < time.perf_counter() - t0 < 1.0
    assert q.get_nowait() == 0 and q.empty()
    assert Supervised("t", print).put(q, 2, until=time.perf_counter() - 1)  # room: put
    assert q.get_nowait() == 2


def test_a_put_waiting_for_room_beats() -> None:
    """Waiting on a slow consumer is back-pressure, not a stall: the heartbeat moves."""
    q: queue.Queue[int] = queue.Queue(1)
    q.put(0)
    thread = Supervised("t", print)
    thread.heartbeat -= 60
    seen: set[float] = set()  # the heartbeats the taker saw set during the put

    def take() -> None:  # room once the heartbeat has moved twice in the wait (or after 10 s)
        t_end = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < t_end:
            if (beat := thread.heartbeat) >= t_put:
                seen.add(beat)
            time.sleep(0.01)
        q.get()

    taker = threading.Thread(target=take)
    t_put = time.monotonic()
    taker.start()
    assert thread.put(q, 1)
    taker.join()
    # It beat, and again, while it waited (not once, not 60 s ago); the last beat is recent.
    assert len(seen) >= 2 and thread.heartbeat >= max(seen), seen
    assert q.get_nowait() == 1


class _Idle(Supervised):
    """Waits without beating until told to end; ``work`` says whether it has some."""

    def __init__(self) -> None:
        super().__init__("idle", print)
        self.work, self.end = False, threading.Event()

    def loop(self) -> None:
        self.end.wait(30)

    def has_work(self) -> bool:
        return self.work


def test_no_beat_is_a_stall_only_with_work_waiting() -> None:
    thread = _Idle()
    thread.start()
    try:
        thread.heartbeat -= 60
        assert thread.problem(1.0) is None  # nothing to do: waiting is no stall
        thread.work = True
        assert (thread.problem(1.0) or "").startswith("idle: no progress for 60 s")
    finally:
        thread.end.set()
        thread.join(5)
    assert thread.problem(1.0) is None  # ended: not stalled


class _Dying(Supervised):
    def __init__(self, failed: list[Supervised]) -> None:
        super().__init__("dying", failed.append)
        self.cleaned = False

    def loop(self) -> None:
        raise OSError("the disk is gone")

    def cleanup(self) -> None:
        self.cleaned = True


def test_a_death_is_reported_with_its_cause_and_cleaned_up() -> None:
    failed: list[Supervised] = []
    thread = _Dying(failed)
    thread.start()
    thread.join(5)
    assert failed == [thread] and thread.cleaned
    assert thread.problem(1e9) == "dying: died (OSError: the disk is gone)"


def test_a_supervised_thread_is_a_daemon_thread() -> None:
    """A stuck thread must not keep the process from exiting once the drain has ended."""
    assert Supervised("t", print).daemon


def test_a_death_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """The operator's log holds where the thread died, not only the exception's text."""
    thread = _Dying([])
    thread.start()
    thread.join(5)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "the dying thread died: the disk is gone"
    assert record.exc_info is not None and record.exc_info[0] is OSError
