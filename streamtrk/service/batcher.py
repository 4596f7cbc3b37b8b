"""Dynamic batching with Triton-like semantics.

A batch starts with the oldest waiting event and closes when it holds ``max_events``
events (those set aside included, below), when the next event would take it past
``max_hits`` hits (that event opens the next batch; an event over the limit alone is a
batch of its own), ``max_queue_delay_ms``
after its first event was queued, or in time for the earliest deadline among its events
(that deadline less the batch's expected reconstruction time for its hits: ``batch_time``,
fitted to the batches so far by the worker, :mod:`streamtrk.service.batch_time`), whichever
comes first. Events that waited while the worker was busy are therefore batched at once,
without further delay. An event that would make the batch end past the earliest deadline
among its events (its own included) opens the next batch, as one past ``max_hits`` does,
unless the batch is late already. An event whose deadline has passed when the batcher
reaches it is set aside, unprocessed; it opens no batch (the first event that does starts
its delay), and events set aside alone are handed over at once. Those set aside count
towards ``max_events``: a batch holds no more events than that in all (the memory bound).
Once ``flush`` is set (intake has stopped: nothing more will arrive) batches close without
waiting; once :meth:`Batcher.close` is called nothing more is queued (and ``flush`` is set).
A new policy (a reload) sets the limits of the batches after the one being formed, and its
``max_queue_delay_ms`` that one's delay too.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamtrk.service.batch_time import BatchTime
from streamtrk.service.job import Job

PUT_POLL_S = 0.01  # how often a put waiting for room checks for a close and calls waiting()
FLUSH_POLL_S = 0.01  # how often a batch waiting to fill checks for a flush


@dataclass(frozen=True)
class BatchPolicy:
    """Batch limits; the daemon swaps in a new one on a configuration reload."""

    max_events: int = 8
    max_hits: int = 1_000_000
    max_queue_delay_ms: float = 5.0


@dataclass(eq=False)
class Batch:
    """Events to reconstruct together, and those found past their deadline."""

    jobs: list[Job] = field(default_factory=list)
    expired: list[Job] = field(default_factory=list)

    @property
    def n_hits(self) -> int:
        return sum(j.n_hits for j in self.jobs)


class Batcher:
    """A bounded queue of jobs (filled by the ingest thread) and the batching rule
    (applied by the worker thread; :meth:`next_batch` must be called from one thread at a
    time: the worker, or the drain's ``abandon`` under the worker's lock)."""

    def __init__(self, capacity: int, policy: BatchPolicy) -> None:
        self.queue: queue.Queue[Job] = queue.Queue(capacity)
        self.policy = policy
        self.flush = False
        self.closed = False
        self._lock = threading.Lock()
        self.batch_time = BatchTime()  # expected reconstruction time (the worker observes)
        self._held: Job | None = None  # the event that did not fit into the last batch

    def put(
        self, job: Job, *, block: bool = True, waiting: Callable[[], None] = lambda: None
    ) -> bool:
        """Queue ``job``: True once queued. False when the queue is full and ``block`` is
        False, or when the batcher is (or gets) closed. A blocked put queues as soon as there
        is room, and calls ``waiting()`` every ``PUT_POLL_S`` while it waits."""
        job.t_queued = time.perf_counter()
        while True:
            with self._lock:
                if self.closed:
                    return False
                try:
                    self.queue.put(job, block=block, timeout=PUT_POLL_S)
                    return True
                except queue.Full:
                    if not block:
                        return False
            waiting()

    def close(self) -> None:
        """Take no more events (the drain has given up on what is queued); batches close
        without waiting, as after ``flush``."""
        with self._lock:
            self.closed = self.flush = True

    def depth(self) -> int:
        """Events waiting, the held one included."""
        return self.queue.qsize() + (self._held is not None)

    def next_batch(self, timeout: float) -> Batch | None:
        """The next batch, or None when no event arrives within ``timeout`` seconds."""
        first = self._take_held()
        if first is None:
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                return None
        policy = self.policy  # its limits for this batch; its delay as it is at each wait
        batch = Batch()
        opened, due = -math.inf, math.inf  # until an event opens the batch: no waiting
        hits = 0
        earliest: float | None = None  # the earliest deadline of the batch's events
        job: Job | None = first
        while job is not None:
            now = time.perf_counter()
            with_job = _earlier(earliest, job.deadline)
            if job.deadline is not None and now > job.deadline:
                batch.expired.append(job)
            elif batch.jobs and (
                hits + job.n_hits > policy.max_hits
                or self._late(now, with_job, hits + job.n_hits) > self._late(now, earliest, hits)
            ):
                self._held = job  # past the hit limit, or it would make the batch late
                break
            else:
                if not batch.jobs:
                    opened = job.t_queued
                batch.jobs.append(job)
                hits += job.n_hits
                earliest = with_job
                if hits >= policy.max_hits:
                    break
                if earliest is not None:
                    due = earliest - self.batch_time.estimate(hits)
            if len(batch.jobs) + len(batch.expired) >= policy.max_events:
                break
            job = self._next(opened, due)
        return batch

    def _late(self, now: float, deadline: float | None, hits: int) -> bool:
        """Whether a batch of ``hits`` started now would end after ``deadline``."""
        return deadline is not None and now + self.batch_time.estimate(hits) > deadline

    def _take_held(self) -> Job | None:
        job, self._held = self._held, None
        return job

    def _next(self, opened: float, due: float) -> Job | None:
        """The next event, waiting for it until the queue delay after ``opened`` (the batch's
        first event queued; the policy's delay as it is now: a reload that shortens it
        shortens a batch already waiting) or ``due`` at most; once ``flush`` is set, only an
        event already queued, without waiting (both looked at every ``FLUSH_POLL_S`` while
        waiting: a batch already waiting closes too, and a wait past what a thread can
        wait, ``threading.TIMEOUT_MAX``, is one)."""
        while True:
            close_at = min(opened + self.policy.max_queue_delay_ms / 1000, due)
            wait = 0.0 if self.flush else close_at - time.perf_counter()
            try:
                if wait <= 0:
                    return self.queue.get_nowait()
                return self.queue.get(timeout=min(wait, FLUSH_POLL_S))
            except queue.Empty:
                if wait <= FLUSH_POLL_S:
                    return None


def _earlier(a: float | None, b: float | None) -> float | None:
    """The earlier of two deadlines (None: no deadline)."""
    return b if a is None else a if b is None else min(a, b)
