"""Threads whose death and stalls the daemon sees: the base of ingest, worker, emitter and
the physics thread.

A supervised thread runs :meth:`Supervised.loop` and calls :meth:`beat` whenever it makes
progress (every pass of its loop; while it waits, at most a fraction of a second apart,
or, for the worker filling a batch, ``max_queue_delay_ms``).
It is unhealthy when it has died, or when it has work (:meth:`has_work`) and has not beaten
for ``stall_timeout_s``. An exception escaping the loop is logged with its traceback and
reported to ``on_failure`` (the daemon then drains and exits non-zero); :meth:`cleanup`
runs in every case.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
PUT_POLL_S = 0.1
T = TypeVar("T")


class Supervised(threading.Thread):
    """A daemon thread with a heartbeat; subclasses implement :meth:`loop`."""

    def __init__(self, name: str, on_failure: Callable[[Supervised], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.on_failure = on_failure
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def put(self, q: queue.Queue[T], item: T, until: float | None = None) -> bool:
        """Put ``item`` on the bounded queue ``q``, beating while it waits for room: waiting
        on a slow consumer downstream is back-pressure, not a stall. False, not put, when
        there is no room by ``until`` (a ``time.perf_counter()`` time; None: no limit)."""
        while True:
            wait = PUT_POLL_S if until is None else min(PUT_POLL_S, until - time.perf_counter())
            try:
                if wait <= 0:
                    q.put_nowait(item)
                else:
                    q.put(item, timeout=wait)
                return True
            except queue.Full:
                if wait <= 0:
                    return False
                self.beat()

    def loop(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Runs when the loop ends, normally or not."""

    def has_work(self) -> bool:
        """Whether the thread has something to do now (a stall only counts then)."""
        return False

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as e:
            log.exception("the %s thread died: %s", self.name, e)
            self.error = e
            self.on_failure(self)
        finally:
            self.cleanup()

    def problem(self, stall_timeout_s: float) -> str | None:
        """Why this thread is unhealthy, or None."""
        if self.error is not None:
            return f"{self.name}: died ({type(self.error).__name__}: {self.error})"
        idle = time.monotonic() - self.heartbeat
        if self.is_alive() and idle > stall_timeout_s and self.has_work():
            return f"{self.name}: no progress for {idle:.0f} s with work waiting"
        return None
