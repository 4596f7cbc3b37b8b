"""The worker thread: a failing batch is answered 'internal' and the next one is served."""

from __future__ import annotations

import queue
import time

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.job import Job, Reply
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


def test_failure_inside_reconstruction_fails_only_that_batch() -> None:
    det = load_detector()
    events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3, first_event=12))
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    metrics = Metrics()
    rec = Reconstructor(FailOnEvent13(), detector=det)
    done = False
    worker = Worker(batcher, replies, metrics, lambda: rec, lambda: done)
    worker.start()
    for ev in events:
        batcher.put(Job(ev, time.perf_counter(), None, {"decode": 0.0}))
    got = [replies.get(timeout=60) for _ in events]
    done = True
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert [(r.event, r.status, r.reason) for r in got] == [
        (12, "ok", ""),
        (13, "error", "internal"),
        (14, "ok", ""),
    ]
    assert got[0].tracks is not None and got[1].tracks is None
    assert {"decode", "queue", "graph", "gnn", "tracks", "fit"} <= got[2].timings.keys()
    value = metrics.registry.get_sample_value
    assert value("streamtrk_events_rejected_total", {"reason": "internal"}) == 1
    assert value("streamtrk_batch_events_count") == 3
