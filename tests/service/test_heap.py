"""The Python heap frozen out of the cyclic collector's scans, and the collector's pauses."""

from __future__ import annotations

import gc
import types
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from streamtrk.service import heap
from streamtrk.service.heap import (
    PAUSE_BUCKETS,
    CollectorPauses,
    freeze_heap,
    heap_frozen,
    refreeze_heap,
)


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test process's heap unfrozen again after the test (as ``heap`` records it)."""
    monkeypatch.setattr(heap, "_frozen", False)
    yield
    gc.unfreeze()


def test_frozen_objects_are_out_of_the_collections_until_frozen_again(unfrozen) -> None:
    """Frozen, garbage in a cycle stays (no collection scans it); :func:`refreeze_heap`
    frees it first, then freezes what is left."""
    node = Node()
    ref = weakref.ref(node)
    freeze = freeze_heap()  # (frozen objects may be freed since: by their reference counts)
    assert freeze.objects >= gc.get_freeze_count() > 0 and freeze.seconds > 0
    del node
    gc.collect()
    assert ref() is not None  # frozen: not scanned
    again = refreeze_heap()
    assert ref() is None and again.objects >= gc.get_freeze_count() > 0


def test_pauses_counted_by_generation_while_started() -> None:
    """Each collection between ``start`` and ``stop``, in its generation's histogram; the
    exposition's buckets cumulative, ``+Inf`` the count."""
    pauses = CollectorPauses()
    registry = CollectorRegistry()
    registry.register(pauses)
    pauses.start()
    pauses.start()  # once only
    gc.disable()  # only the collections asked for (explicit ones still call the hook)
    try:
        gc.collect(2)
        gc.collect(0)
        gc.collect(0)
    finally:
        gc.enable()
        pauses.stop()
    gc.collect(2)  # stopped: not counted

    def value(name: str, labels: dict[str, str]) -> float:
        got = registry.get_sample_value(name, labels)
        assert got is not None, (name, labels)
        return got

    name = "streamtrk_gc_pause_seconds"
    counts = {g: value(f"{name}_count", {"generation": str(g)}) for g in range(3)}
    assert counts == {0: 2, 1: 0, 2: 1}
    assert value(f"{name}_sum", {"generation": "2"}) > 0
    buckets = [value(f"{name}_bucket", {"generation": "0", "le": str(b)}) for b in PAUSE_BUCKETS]
    assert buckets == sorted(buckets) and buckets[-1] <= 2
    assert value(f"{name}_bucket", {"generation": "0", "le": "+Inf"}) == 2


@pytest.mark.parametrize("python_froze", [False, True])
def test_heap_frozen_for_a_block_then_collectable(unfrozen, python_froze: bool) -> None:
    """Frozen inside the block (garbage in a cycle stays), unfrozen after it: collectable.
    Also where objects were frozen that no :func:`freeze_heap` froze: Python 3.12's
    collections move its immortal objects to the frozen set (its count was read as a
    daemon's frozen heap, and the block's garbage stayed for the process's life)."""
    if python_froze:
        gc.freeze()  # as Python 3.12 does
    for _ in range(2):  # the second block as the first (gpu_bench's configurations)
        node = Node()
        ref = weakref.ref(node)
        with heap_frozen() as freeze:
            assert freeze.objects >= gc.get_freeze_count() > 0
            del node
            gc.collect()
            assert ref() is not None
        gc.collect()
        assert ref() is None


def test_heap_frozen_before_stays_frozen(unfrozen) -> None:
    """A heap frozen before the block (a daemon's) is not thawed by its end."""
    freeze_heap()
    with heap_frozen():
        pass
    assert gc.get_freeze_count() > 0


def test_pauses_add_up_in_their_generation_s_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pause in the first bucket at or above it, and all of them in the sum."""
    clock = iter([0.0, 0.002, 1.0, 1.5, 2.0, 2.0005])
    monkeypatch.setattr(heap, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    pauses = CollectorPauses()
    for _ in range(3):
        pauses._hook("start", {"generation": 0})
        pauses._hook("stop", {"generation": 0})
    registry = CollectorRegistry()
    registry.register(pauses)
    value = registry.get_sample_value
    name = "streamtrk_gc_pause_seconds"
    assert value(f"{name}_sum", {"generation": "0"}) == pytest.approx(0.5025)
    assert value(f"{name}_count", {"generation": "0"}) == 3
    assert value(f"{name}_bucket", {"generation": "0", "le": "0.001"}) == 1
    assert value(f"{name}_bucket", {"generation": "0", "le": "0.003"}) == 2


def test_the_pause_buckets_are_the_documented_ones() -> None:
    """docs/metrics.md: 0.1, 0.3, 1, 3, 10, 30, 100, 300 ms, 1 s, for each generation."""
    registry = CollectorRegistry()
    registry.register(CollectorPauses())
    (family,) = registry.collect()
    for g in ("0", "1", "2"):
        bounds = [s.labels["le"] for s in family.samples
                  if s.name.endswith("_bucket") and s.labels["generation"] == g]  # fmt: skip
        assert bounds == ["0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3",
                          "1.0", "+Inf"], g  # fmt: skip
