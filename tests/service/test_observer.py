"""The physics thread, one test per rule of its docstring: the worker never waits for it, a
full queue skips the batch and counts it, a failing batch is left out and the next one
observed, and the thread ends once the worker is done and the queue is empty."""

from __future__ import annotations

import queue
import time
from collections import Counter

import numpy as np
import pytest

from streamtrk.detector import load_detector
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service import faults
from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.job import Job, Reply
from streamtrk.service.observer import Observer
from streamtrk.service.physics import Observation
from streamtrk.service.telemetry import Metrics
from streamtrk.service.worker import Worker
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

DET = load_detector()
REC = Reconstructor.oracle(detector=DET)
# Seed 3: 15, 14 and 9 tracks (seed 5's first event had no hit and its second no track, so
# that a sum over their tracks could not tell which batch was counted).
EVENTS = list(simulate(DET, SimConfig(generator=GeneratorConfig(mu=1)), 3, 3))


def _observation(k: int) -> Observation:
    return Observation.of([EVENTS[k]], REC.reconstruct([EVENTS[k]]), REC)


def _observed(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("streamtrk_event_tracks_count")


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch):
    """Set fault-injection points for this test only (as STREAMTRK_TEST_FAULTS would)."""
    monkeypatch.setattr(faults, "_passes", Counter())
    return lambda name, value: monkeypatch.setitem(faults.FAULTS, name, value)


def test_the_worker_does_not_wait_for_the_physics_metrics(inject) -> None:
    inject("physics_delay_s", 1.0)  # each batch's metrics take a second
    metrics = Metrics()
    batcher = Batcher(8, BatchPolicy(max_events=1, max_queue_delay_ms=0))
    replies: queue.Queue[Reply] = queue.Queue()
    observer = Observer(metrics, lambda: worker.done.is_set())
    worker = Worker(batcher, replies, metrics, lambda: (REC, None), lambda: True, observer.offer)
    for ev in EVENTS:
        batcher.put(Job(ev, time.perf_counter(), None))
    observer.start()
    worker.start()
    got = [replies.get(timeout=60) for _ in EVENTS]
    # every reply is out while the first batch's metrics are still being kept
    assert [r.status for r in got] == ["ok"] * 3 and _observed(metrics) == 0
    worker.join(timeout=60)
    observer.join(timeout=60)
    assert not observer.is_alive() and _observed(metrics) == 3  # then all three are kept


def test_a_full_queue_skips_the_batch_and_counts_it() -> None:
    metrics = Metrics()
    observer = Observer(metrics, lambda: True, capacity=1)
    assert observer.offer(_observation(0)) and not observer.offer(_observation(1))
    value = metrics.registry.get_sample_value
    assert value("streamtrk_physics_batches_skipped_total", {"reason": "behind"}) == 1
    observer.start()
    observer.join(timeout=60)
    assert _observed(metrics) == 1  # the one that was queued


def test_a_failing_batch_is_left_out_and_the_next_observed(inject) -> None:
    inject("physics_fail_after", 1)
    metrics = Metrics()
    observer = Observer(metrics, lambda: True)
    for k in range(2):
        observer.offer(_observation(k))
    observer.start()
    observer.join(timeout=60)
    assert observer.error is None and _observed(metrics) == 1
    tracks = metrics.registry.get_sample_value("streamtrk_event_tracks_sum")
    failed, kept = (len(_observation(k).tracks[0]) for k in range(2))
    assert 0 < kept != failed  # the sum says which batch was counted
    assert tracks == kept
    value = metrics.registry.get_sample_value
    assert value("streamtrk_stage_seconds_count", {"stage": "physics"}) == 2
    assert value("streamtrk_physics_batches_skipped_total", {"reason": "failed"}) == 1


def test_the_thread_ends_once_the_worker_is_done_and_the_queue_is_empty() -> None:
    metrics = Metrics()
    done = False
    observer = Observer(metrics, lambda: done)
    observer.start()
    observer.offer(_observation(0))
    time.sleep(0.5)
    assert observer.is_alive()  # the worker is not done: more may come
    observer.offer(_observation(1))
    done = True  # the batch offered before it is still observed
    observer.join(timeout=60)
    assert not observer.is_alive() and _observed(metrics) == 2
    pt = np.concatenate([_observation(k).tracks[0].params["pt"] for k in range(2)])
    assert len(pt) > 0  # both batches' tracks are in the pT histogram, in eV
    got = metrics.registry.get_sample_value("streamtrk_track_pt_electronvolts_sum")
    assert got == pytest.approx(float(pt.astype(np.float64).sum()) * 1e9, rel=1e-6)


def test_a_batch_offered_as_the_worker_finishes_is_still_observed() -> None:
    """The worker may offer its last batch between a poll that found the queue empty and
    its being done: the thread looks at the queue again before it ends, and counts it."""
    metrics = Metrics()
    last = [_observation(0)]

    def worker_done() -> bool:  # the last batch is offered just before the worker is done
        if last:
            observer.offer(last.pop())
        return True

    observer = Observer(metrics, worker_done)
    observer.start()
    observer.join(timeout=60)
    assert not observer.is_alive() and _observed(metrics) == 1


def test_a_thread_stuck_on_a_batch_with_others_waiting_is_a_stall(inject) -> None:
    """A stall counts only with work waiting: batches queued behind one whose metrics do not
    end make the thread unhealthy (/healthz), and it is healthy again once they are kept."""
    inject("physics_delay_s", 1.0)
    metrics = Metrics()
    observer = Observer(metrics, lambda: True)
    for k in range(2):
        observer.offer(_observation(k))
    observer.start()
    time.sleep(0.6)  # in the first batch's metrics, the second waiting
    assert "physics: no progress" in (observer.problem(0.3) or "")
    observer.join(timeout=60)
    assert observer.problem(0.3) is None and _observed(metrics) == 2


def test_a_thread_waiting_for_batches_keeps_beating() -> None:
    """Waiting for the worker is progress (a beat each poll): a batch offered after a quiet
    while is not taken for a stall."""
    done = False
    observer = Observer(Metrics(), lambda: done)
    observer.start()
    time.sleep(0.8)
    assert time.monotonic() - observer.heartbeat < 0.5  # POLL_S apart
    done = True
    observer.join(timeout=60)


def test_the_thread_takes_eight_batches_behind_before_skipping() -> None:
    """docs/serve.md: a batch that finds the thread 8 batches behind is left out."""
    metrics = Metrics()
    observer = Observer(metrics, lambda: True)
    batch = _observation(0)
    assert all(observer.offer(batch) for _ in range(8)) and not observer.offer(batch)
