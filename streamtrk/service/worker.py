"""The worker thread: one ``reconstruct`` call per batch (one disjoint graph, one GNN call).

Once a batch's replies are queued, its physics metrics are handed to the physics thread
(:mod:`streamtrk.service.observer`, without waiting) and the next batch starts. Events
whose deadline has passed when their batch starts (or that the batcher set aside)
are answered ``deadline``, unprocessed. Events over the work budget
(``streamtrk.recon.budget``) are answered ``too_dense`` and the rest of their batch
reconstructed without them. When reconstruction of a batch raises, its events
are retried one by one (each a batch of its own, for its deadline and the drain), so that
only an event that fails on its own is answered ``internal``; the worker carries on with
the next batch. Unless the device itself no longer
works (a sticky CUDA error: every later batch would fail too): then the worker dies with
:class:`DeviceFault`, its events and the queued ones are answered ``shutdown`` (a sender
resends them elsewhere) and the daemon exits 1 for a restart.

Draining: once ``drain_by`` is set, a batch that would not finish by then (estimated from
the batches so far of the model serving now, or of the one before it until the first
batch after a reload ends: :mod:`streamtrk.service.batch_time`) is
answered ``shutdown`` instead of started, and :meth:`abandon` answers ``shutdown`` for the
batch in progress and everything still queued when the worker overruns. Each job is
answered once: by whoever claims it first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable

from streamtrk.recon.budget import EventTooDense
from streamtrk.recon.device import device_fault, release_cached_memory
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service import faults
from streamtrk.service.batcher import Batch, Batcher
from streamtrk.service.job import Job, Reply
from streamtrk.service.logs import Throttle
from streamtrk.service.physics import Observation
from streamtrk.service.supervised import Supervised
from streamtrk.service.telemetry import Metrics
from streamtrk.wire import ModelId

log = logging.getLogger(__name__)
POLL_S = 0.1
SAFETY = 1.5  # a batch is started while draining only if SAFETY x its estimate fits
DENSE_LOG_S = 60.0  # at most one warning this often about events refused as too dense
FAILED_LOG_S = 60.0  # at most one traceback this often of a reconstruction that raised


class DeviceFault(RuntimeError):
    """The device fails every call (the process must restart)."""


class Worker(Supervised):
    """Batches and reconstructs until ``intake_done`` is set and the queue is empty."""

    def __init__(
        self,
        batcher: Batcher,
        replies: queue.Queue[Reply],
        metrics: Metrics,
        model: Callable[[], tuple[Reconstructor, ModelId | None]],
        intake_done: Callable[[], bool],
        observe: Callable[[Observation], object],
        on_failure: Callable[[Supervised], None] = lambda thread: None,
        between_batches: Callable[[], object] = lambda: None,
    ) -> None:
        super().__init__("worker", on_failure)
        self.batcher = batcher
        self.replies = replies
        self.metrics = metrics
        self.model = model  # the reconstructor in force, and what names it in the replies
        self.intake_done = intake_done
        self.observe = observe  # takes each batch's physics, never waits (Observer.offer)
        self.between_batches = between_batches  # called when no batch (nor model) is held
        self.drain_by: float | None = None  # perf_counter time; set when draining
        self.abandoned = threading.Event()
        self.done = threading.Event()  # no more replies will come from this worker
        self._current: list[Job] = []  # the batch in progress, its set-aside events too
        self.replying = False  # queueing a reply (for the drain, which reads it before abandon())
        self._taking = threading.Lock()  # held while a batch is taken off the queue
        self._owed = 0  # replies claimed and not yet queued (abandon() waits for them)
        self._timed: weakref.ref[Reconstructor] | None = None  # whose batches batch_time has
        self._owing = threading.Lock()
        self._abandon_answered = False  # abandon() has queued its own replies
        self.give_up_at: float | None = None  # after abandon(): replies not queued by then
        self._dense = Throttle(DENSE_LOG_S)  # events refused as too dense
        self._failed = Throttle(FAILED_LOG_S)  # reconstructions that raised (events may repeat)

    def loop(self) -> None:
        while not self.abandoned.is_set():
            self.beat()
            self.between_batches()
            with self._taking:
                batch = None if self.abandoned.is_set() else self.batcher.next_batch(POLL_S)
                self._current = [] if batch is None else batch.jobs + batch.expired
            if batch is not None:
                self.process(batch)
                with self._taking:
                    self._current = []  # answered: no work held while the next one forms
                faults.fail("worker")
            elif self.intake_done() and self.batcher.depth() == 0:
                return
            self._say_bursts()

    def _say_bursts(self, final: bool = False) -> None:
        """The rest of a burst of events refused as too dense, or of failed reconstructions,
        once it stopped and its warning is due, or when the thread stops (``final``),
        without a next one."""
        if since := self._dense.pending(final):
            log.warning("%d more events refused as too dense since the last warning", since)
        if since := self._failed.pending(final):
            log.warning("%d more reconstructions failed since the last traceback", since)

    def cleanup(self) -> None:
        self._say_bursts(final=True)
        # A worker that died leaves its queue to abandon(), which sets done once answered.
        if not self.abandoned.is_set() and self.error is None:
            self.done.set()

    def in_batch(self) -> bool:
        return bool(self._current)

    def has_work(self) -> bool:
        return self.in_batch() or self.batcher.depth() > 0

    def _claim(self, jobs: list[Job]) -> list[Job]:
        """The jobs of ``jobs`` this call is the first to claim, each now owed a reply."""
        with self._owing:
            claimed = [job for job in jobs if job.claim()]
            self._owed += len(claimed)
        return claimed

    def _queue(self, reply: Reply) -> None:
        """Queue an owed reply (after :meth:`abandon`, unless there is no room by its
        ``give_up_at``: left unsent, still in flight); the last one owed after
        :meth:`abandon` sets ``done``."""
        self.replying = True
        try:
            self.put(self.replies, reply, until=self.give_up_at)
        finally:
            self.replying = False
            with self._owing:
                self._owed -= 1
                if self._owed == 0 and self._abandon_answered:
                    self.done.set()

    def _answer(self, job: Job, reply: Reply) -> bool:
        """Queue ``reply`` unless ``job`` was answered already (by :meth:`abandon`)."""
        if not self._claim([job]):
            return False
        self._queue(reply)
        return True

    def _reject(self, jobs: list[Job], reason: str) -> int:
        claimed = self._claim(jobs)
        self.metrics.rejected.labels(reason).inc(len(claimed))
        for job in claimed:
            self._queue(Reply.failure(job, reason))
        return len(claimed)

    def _startable(self, jobs: list[Job]) -> tuple[list[Job], float]:
        """``jobs`` less those that must not start now, answered: those past their deadline
        (``deadline``), and all when ``SAFETY`` times their estimated time would not fit before
        ``drain_by`` (``shutdown``); and the time they start. Answering can wait for room in
        the reply queue (a slow consumer): the deadlines and the drain are weighed after it."""
        t0 = time.perf_counter()
        while late := [j for j in jobs if j.deadline is not None and j.deadline < t0]:
            self._reject(late, "deadline")
            jobs = [j for j in jobs if j not in late]
            t0 = time.perf_counter()
        estimate = SAFETY * self.batcher.batch_time.estimate(sum(j.n_hits for j in jobs))
        if self.drain_by is not None and t0 + estimate > self.drain_by:
            self._reject(jobs, "shutdown")
            return [], t0
        return jobs, t0

    def process(self, batch: Batch) -> None:
        m = self.metrics
        self._reject(batch.expired, "deadline")  # (can wait for room in the reply queue)
        batch.jobs, t0 = self._startable(batch.jobs)
        if not batch.jobs or self.abandoned.is_set():  # abandon() answered them
            return
        n_hits = batch.n_hits
        for job in batch.jobs:
            job.timings["queue"] = t0 - job.t_queued
            m.stage.labels("queue").observe(job.timings["queue"])
            m.queue_delay.observe(job.timings["queue"])
        m.batch_events.observe(len(batch.jobs))
        m.batch_hits.observe(n_hits)
        if self._reconstruct(batch.jobs):
            return
        left = [job for job in batch.jobs if not job.claimed]  # too_dense ones are answered
        m.batch_failures.inc()
        log.warning("retrying the %d events of the failed batch one by one", len(left))
        for job in left:
            if self.abandoned.is_set():  # abandon() answers what is left
                return
            if self._startable([job])[0]:  # a batch of its own
                self._reconstruct([job])

    def _reconstruct(self, jobs: list[Job]) -> bool:
        """Reconstruct ``jobs`` as one batch and answer them: True once each is answered.
        Events over the work budget are answered ``too_dense`` and the others reconstructed
        without them. A single event that fails is answered ``internal``; a failed batch of
        two or more is left to the caller (False)."""
        self.beat()  # a call is progress: the retry of a failed batch makes several
        m = self.metrics
        events = [job.event for job in jobs]
        t0 = time.perf_counter()
        rec, ident = self.model()  # one model for the batch, whatever a reload swaps in
        try:
            faults.delay("batch")
            faults.fail("batch")
            result = rec.reconstruct(events)
            replies = [
                Reply.success(job, tracks, {**job.timings, **result.timings}, rec.beam_spot, ident)
                for job, tracks in zip(jobs, result.tracks, strict=True)
            ]
        except EventTooDense as e:
            dense = [jobs[k] for k in e.events]
            if since := self._dense.count(len(dense)):  # a producer may send only those
                log.warning(
                    "%d of %d events refused as too dense (%d since the last warning): %s",
                    len(dense), len(jobs), since, e,
                    extra={"fields": {"events": [[j.event.run, j.event.event] for j in dense]}},
                )  # fmt: skip
            self._reject(dense, EventTooDense.reason)
            rest = [job for job in jobs if job not in dense]
            # abandon() answers the rest once it has begun
            return not rest or self.abandoned.is_set() or self._reconstruct(rest)
        except Exception:
            if since := self._failed.count():  # a stream of failing events: one a minute
                log.exception(
                    "reconstruction of %d events failed (%d since the last traceback)",
                    len(jobs),
                    since,
                )
            self._check_device(rec)
            if len(jobs) > 1:
                return False
            answered = self._reject(jobs, "internal")  # unless abandon() was first
            m.internal_errors.labels("reconstruction").inc(answered)
            return True
        seconds = time.perf_counter() - t0
        if self._timed is None or self._timed() is not rec:  # a reload: another model's cost
            self.batcher.batch_time.forget()
            self._timed = weakref.ref(rec)
        self.batcher.batch_time.observe(sum(job.n_hits for job in jobs), seconds)
        for stage, seconds in result.timings.items():
            m.stage.labels(stage).observe(seconds)
        sent = [job for job, reply in zip(jobs, replies, strict=True) if self._answer(job, reply)]
        if len(sent) < len(jobs):  # abandon() answered the rest 'shutdown': no tracks went out
            return True
        self.observe(Observation.of(events, result, rec))
        return True

    def _check_device(self, rec: Reconstructor) -> None:
        """Raise :class:`DeviceFault` when the device ``rec`` failed on no longer works;
        else free the memory caches for what comes next (the failure may have been out of
        memory)."""
        device = rec.device
        try:
            faults.fail("device")  # tests: the device check finds a fault
            why = device_fault(device)
        except faults.InjectedFault as e:
            why = str(e)
        if why is not None:
            raise DeviceFault(f"the device no longer works ({why}); a restart is needed")
        release_cached_memory(device)

    def abandon(self, give_up_at: float | None = None) -> int:
        """Answer ``shutdown`` for the batch in progress and every queued event; the worker
        stops at its next step. Returns how many events this answered. ``done`` is set once
        the replies the worker had claimed are queued too (at once if it died). Replies
        that find no room in the reply queue by ``give_up_at`` (the drain's end) are left
        unsent (and those the worker queues after this): the caller does not wait on a
        stalled emitter."""
        self.give_up_at = give_up_at
        self.abandoned.set()
        self.batcher.close()  # nothing queued after this point could be answered
        with self._taking:
            jobs = list(self._current)
            while (batch := self.batcher.next_batch(0.0)) is not None:
                jobs += batch.jobs + batch.expired
        answered = self._reject(jobs, "shutdown")
        with self._owing:
            self._abandon_answered = True
            if self._owed == 0 or not self.is_alive():
                self.done.set()
        return answered
