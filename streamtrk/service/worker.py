"""The worker thread: one ``reconstruct`` call per batch (one disjoint graph, one GNN call).

Expired events are answered ``deadline`` unprocessed; an exception inside reconstruction
fails that batch's events with ``internal`` and the worker carries on with the next batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service.batcher import Batch, Batcher
from streamtrk.service.job import Reply
from streamtrk.service.telemetry import Metrics

log = logging.getLogger(__name__)
POLL_S = 0.1


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

    def run(self) -> None:
        while True:
            batch = self.batcher.next_batch(POLL_S)
            if batch is not None:
                self.process(batch)
            elif self.intake_done() and self.batcher.depth() == 0:
                return

    def process(self, batch: Batch) -> None:
        m = self.metrics
        for job in batch.expired:
            m.rejected.labels("deadline").inc()
            self.replies.put(Reply.error(job, "deadline"))
        if not batch.jobs:
            return
        t0 = time.perf_counter()
        for job in batch.jobs:
            job.timings["queue"] = t0 - job.t_queued
            m.stage.labels("queue").observe(job.timings["queue"])
            m.queue_delay.observe(job.timings["queue"])
        n_hits = batch.n_hits
        m.batch_events.observe(len(batch.jobs))
        m.batch_hits.observe(n_hits)
        try:
            result = self.reconstructor().reconstruct([job.event for job in batch.jobs])
            replies = [
                Reply.ok(job, tracks, {**job.timings, **result.timings})
                for job, tracks in zip(batch.jobs, result.tracks, strict=True)
            ]
        except Exception:
            log.exception("reconstruction failed; answering %d events 'internal'", len(batch.jobs))
            m.rejected.labels("internal").inc(len(batch.jobs))
            for job in batch.jobs:
                self.replies.put(Reply.error(job, "internal"))
            return
        for stage, seconds in result.timings.items():
            m.stage.labels(stage).observe(seconds)
        m.hits.inc(n_hits)
        for reply in replies:
            self.replies.put(reply)
