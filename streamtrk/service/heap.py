"""The daemon's Python heap and the pauses of its cyclic garbage collector.

A full collection (generation 2) scans every object the collector tracks while every
Python thread waits: with the shipped model loaded on the CPU, about 170,000 objects and
60 ms (``bench/gc_pause.py``; 540,000 and 200 ms with the compiled engine), the tail of an
event's latency whenever one falls inside it. What lives as long as the model (the
imports, the model, its engine, warmed up) is frozen once the model is installed
(:func:`freeze_heap`, ``gc.freeze``): the collector scans only what serving allocates from
then on. A reload installs a new model: the worker, between two batches (no batch holds
the old model then), closes the old one and freezes the heap again
(:func:`refreeze_heap`), which frees it first; that collection is the pause a reload
costs. :class:`CollectorPauses` exports every collection's pause. A process that times
latencies for a while (``streamtrk replay``, ``bench/gpu_bench.py``) freezes its heap while
it does (:func:`heap_frozen`).
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

#: Upper bounds (seconds) of the pause histogram's buckets.
PAUSE_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Freeze:
    """What :func:`freeze_heap` did: the objects frozen in all, the seconds it took."""

    objects: int
    seconds: float


# Whether freeze_heap froze the heap and nothing thawed it since: not gc.get_freeze_count()
# > 0, as Python 3.12's collections move objects (its immortal ones) to the frozen set too.
_frozen = False


def freeze_heap() -> Freeze:
    """Collect the garbage there is, then freeze every object left (``gc.freeze``): the
    collector no longer scans them. The collection is a full one: a pause of its own."""
    global _frozen
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    _frozen = True
    return Freeze(gc.get_freeze_count(), time.perf_counter() - t0)


def refreeze_heap() -> Freeze:
    """Unfreeze the heap, then :func:`freeze_heap`: what was frozen and is garbage now (a
    model replaced by a reload) is freed first."""
    gc.unfreeze()
    return freeze_heap()


@contextmanager
def heap_frozen() -> Iterator[Freeze]:
    """The heap frozen (:func:`freeze_heap`) while the block runs, unfrozen after, so that
    what it froze can be freed later; left frozen where it was frozen before (a daemon's
    heap: ``gc.unfreeze`` would thaw all of it)."""
    global _frozen
    frozen_before = _frozen
    freeze = freeze_heap()
    try:
        yield freeze
    finally:
        if not frozen_before:
            gc.unfreeze()
            _frozen = False


class CollectorPauses(Collector):
    """``streamtrk_gc_pause_seconds``: a histogram of every cyclic collection's pause, by
    generation (2: a full one), timed by a ``gc.callbacks`` hook from :meth:`start` until
    :meth:`stop`. The hook only counts (no lock: a collection may start inside a metric
    update, under that metric's lock); the histogram is made when scraped."""

    def __init__(self) -> None:
        self._counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]  # +Inf last
        self._sums = [0.0] * 3
        self._started = 0.0

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause, g = time.perf_counter() - self._started, info["generation"]
        self._sums[g] += pause
        self._counts[g][bisect_left(PAUSE_BUCKETS, pause)] += 1  # le: the first bound >= it

    def start(self) -> None:
        if self._hook not in gc.callbacks:
            gc.callbacks.append(self._hook)

    def stop(self) -> None:
        if self._hook in gc.callbacks:
            gc.callbacks.remove(self._hook)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "streamtrk_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (every Python thread waits), by "
            "generation (2: a full collection).",
            labels=["generation"],
        )
        bounds = (*map(str, PAUSE_BUCKETS), "+Inf")
        for g in range(3):
            cumulative = accumulate(list(self._counts[g]))
            family.add_metric([str(g)], list(zip(bounds, cumulative, strict=True)), self._sums[g])
        yield family
