"""The worker thread: one ``reconstruct`` call per batch (one disjoint graph, one GNN call).

Expired events are answered ``deadline`` unprocessed; an exception inside reconstruction
fails that batch's events with ``internal`` and the worker carries on with the next batch.

Draining: once ``drain_by`` is set, a batch that would not finish by then (estimated from
the seconds per hit of the batches so far) is answered ``shutdown`` instead of started, and
:meth:`abandon` answers ``shutdown`` for the batch in progress and everything still queued
when the worker overruns. Each job is answered once: by whoever claims it first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service.batcher import Batch, Batcher
from streamtrk.service.job import Job, Reply
from streamtrk.service.telemetry import Metrics

log = logging.getLogger(__name__)
POLL_S = 0.1
SAFETY = 1.5  # a batch is started while draining only if SAFETY x its estimate fits


class Worker(threading.Thread):
    """Batches and reconstructs until ``intake_done`` is set and the queue is empty."""

    def __init__(
        self,
        batcher: Batcher,
        replies: queue.Queue[Reply],
        metrics: Metrics,
        reconstructor: Callable[[], Reconstructor],
        intake_done: Callable[[], bool],
    ) -> None:
        super().__init__(name="worker", daemon=True)
        self.batcher = batcher
        self.replies = replies
        self.metrics = metrics
        self.reconstructor = reconstructor
        self.intake_done = intake_done
        self.drain_by: float | None = None  # perf_counter time; set when draining
        self.abandoned = threading.Event()
        self.done = threading.Event()  # no more replies will come from this worker
        self.seconds_per_hit = 0.0  # running estimate, for the drain
        self._current: list[Job] = []
        self._taking = threading.Lock()  # held while a batch is taken off the queue

    def run(self) -> None:
        try:
            while not self.abandoned.is_set():
                with self._taking:
                    batch = None if self.abandoned.is_set() else self.batcher.next_batch(POLL_S)
                    self._current = [] if batch is None else batch.jobs
                if batch is not None:
                    self.process(batch)
                elif self.intake_done() and self.batcher.depth() == 0:
                    return
        finally:
            if not self.abandoned.is_set():
                self.done.set()

    def _answer(self, job: Job, reply: Reply) -> None:
        if job.claim():
            self.replies.put(reply)

    def _reject(self, jobs: list[Job], reason: str) -> int:
        claimed = [job for job in jobs if job.claim()]
        self.metrics.rejected.labels(reason).inc(len(claimed))
        for job in claimed:
            self.replies.put(Reply.failure(job, reason))
        return len(claimed)

    def process(self, batch: Batch) -> None:
        m = self.metrics
        self._reject(batch.expired, "deadline")
        if not batch.jobs or self.abandoned.is_set():  # abandon() answered them
            return
        t0 = time.perf_counter()
        n_hits = batch.n_hits
        estimate = SAFETY * self.seconds_per_hit * n_hits
        if self.drain_by is not None and t0 + estimate > self.drain_by:
            self._reject(batch.jobs, "shutdown")
            return
        for job in batch.jobs:
            job.timings["queue"] = t0 - job.t_queued
            m.stage.labels("queue").observe(job.timings["queue"])
            m.queue_delay.observe(job.timings["queue"])
        m.batch_events.observe(len(batch.jobs))
        m.batch_hits.observe(n_hits)
        events = [job.event for job in batch.jobs]
        rec = self.reconstructor()
        try:
            result = rec.reconstruct(events)
            replies = [
                Reply.success(job, tracks, {**job.timings, **result.timings})
                for job, tracks in zip(batch.jobs, result.tracks, strict=True)
            ]
        except Exception:
            log.exception("reconstruction failed; answering %d events 'internal'", len(batch.jobs))
            self._reject(batch.jobs, "internal")
            return
        per_hit = (time.perf_counter() - t0) / max(n_hits, 1)
        self.seconds_per_hit = max(per_hit, 0.8 * self.seconds_per_hit + 0.2 * per_hit)
        for stage, seconds in result.timings.items():
            m.stage.labels(stage).observe(seconds)
        m.hits.inc(n_hits)
        for job, reply in zip(batch.jobs, replies, strict=True):
            self._answer(job, reply)
        t1 = time.perf_counter()
        try:
            m.physics.observe(events, result, rec.detector, rec.threshold)
        except Exception:  # monitoring must never stop reconstruction
            log.exception("physics metrics failed on a batch (its replies were sent)")
        m.stage.labels("physics").observe(time.perf_counter() - t1)

    def abandon(self) -> int:
        """Answer ``shutdown`` for the batch in progress and every queued event; the worker
        stops at its next step. Returns how many events this answered."""
        self.abandoned.set()
        with self._taking:
            jobs = list(self._current)
            while (batch := self.batcher.next_batch(0.0)) is not None:
                jobs += batch.jobs + batch.expired
        answered = self._reject(jobs, "shutdown")
        self.done.set()
        return answered
