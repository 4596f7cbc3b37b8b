"""The physics thread: the physics metrics of each reconstructed batch, off the worker's path.

Once a batch's replies are queued the worker hands its events, tracks and edge scores to
this thread (:meth:`Observer.offer`) and goes on with the next batch: it never waits for the
metrics. When the hand-over queue is full (the metrics fall behind reconstruction), that
batch is not observed and is counted in ``streamtrk_physics_batches_skipped_total``
(``reason="behind"``): the physics metrics then sample the batches, and the replies are not
affected. A batch whose metrics fail is logged, left out and counted (``reason="failed"``;
what it had counted before failing stays); the thread carries on. The thread ends once the
worker is done and the queue is empty.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from streamtrk.service import faults
from streamtrk.service.physics import Observation
from streamtrk.service.supervised import Supervised
from streamtrk.service.telemetry import Metrics

log = logging.getLogger(__name__)
POLL_S = 0.1
CAPACITY = 8  # batches waiting for their metrics before more are skipped


class Observer(Supervised):
    """Keeps the physics metrics of the batches offered until ``upstream_done()`` and the
    queue is empty."""

    def __init__(
        self,
        metrics: Metrics,
        upstream_done: Callable[[], bool],
        capacity: int = CAPACITY,
        on_failure: Callable[[Supervised], None] = lambda thread: None,
    ) -> None:
        super().__init__("physics", on_failure)
        self.metrics = metrics
        self.upstream_done = upstream_done
        self.queue: queue.Queue[Observation] = queue.Queue(capacity)

    def offer(self, observation: Observation) -> bool:
        """Queue ``observation`` without waiting; False (counted) when the queue is full."""
        try:
            self.queue.put_nowait(observation)
            return True
        except queue.Full:
            self.metrics.physics.batches_skipped.labels("behind").inc()
            return False

    def loop(self) -> None:
        while True:
            self.beat()
            try:
                observation = self.queue.get(timeout=POLL_S)
            except queue.Empty:
                if self.upstream_done() and self.queue.empty():
                    return
                continue
            self.observe(observation)

    def has_work(self) -> bool:
        return not self.queue.empty()

    def observe(self, o: Observation) -> None:
        """Count one batch in the physics metrics; a failure is logged, never raised."""
        t0 = time.perf_counter()
        try:
            faults.delay("physics")
            faults.fail("physics")
            self.metrics.physics.observe(o)
        except Exception:  # monitoring must never stop reconstruction
            log.exception("physics metrics failed on a batch (its replies were not affected)")
            self.metrics.physics.batches_skipped.labels("failed").inc()
        self.metrics.stage.labels("physics").observe(time.perf_counter() - t0)
