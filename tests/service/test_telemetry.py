"""Info gauges: one series each, replaced whole (a scrape sees the old or the new one);
counters of known labels exported from 0."""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path

import pytest
import zmq
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamtrk.service.batcher import Batcher, BatchPolicy
from streamtrk.service.config import ServeConfig
from streamtrk.service.deadletter import DeadLetters
from streamtrk.service.ingest import Ingest
from streamtrk.service.monitor import SocketMonitor
from streamtrk.service.telemetry import InfoGauge, Metrics


def _model_series(m: Metrics) -> list[dict[str, str]]:
    (family,) = [f for f in m.registry.collect() if f.name == "streamtrk_model_info"]
    return [s.labels for s in family.samples]


def test_a_new_model_replaces_the_one_series() -> None:
    m = Metrics()
    assert _model_series(m) == []  # nothing served yet
    m.set_model("a", "/m/a", "1111", 0.5)
    m.set_model("b", "/m/b", "2222", 0.7)
    assert _model_series(m) == [{"name": "b", "path": "/m/b", "hash": "2222", "threshold": "0.7"}]


def test_a_swap_during_a_scrape_gives_one_series_old_or_new() -> None:
    """Scrapes while another thread swaps the labels as fast as it can (thread switches
    made as frequent as the interpreter allows): each scrape holds one series, never none
    and never two."""
    registry = CollectorRegistry()
    info = InfoGauge("x_info", "test", ("version",))
    registry.register(info)
    info.set({"version": "0"})
    stop = threading.Event()

    def swap() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            info.set({"version": str(k % 7)})

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        series = [
            [line for line in generate_latest(registry).decode().splitlines() if line[:1] != "#"]
            for _ in range(3000)
        ]
    finally:
        stop.set()
        swapper.join()
        sys.setswitchinterval(interval)
    assert {len(s) for s in series} == {1}
    assert {s[0] for s in series} <= {f'x_info{{version="{k}"}} 1.0' for k in range(7)}
    assert len({s[0] for s in series}) > 1  # the swaps did land between scrapes


def test_the_build_info_is_exported_as_a_gauge() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert "# TYPE streamtrk_build_info gauge" in text


def test_device_memory_is_exported_only_while_serving_on_cuda() -> None:
    """A reload from CUDA to the CPU leaves no series of the device's memory behind."""
    m = Metrics()
    m.device_memory.labels("torch_allocated").set(1.0)  # as watched on CUDA before
    m.watch_device_memory("cpu")
    assert (
        m.registry.get_sample_value("streamtrk_device_memory_bytes", {"kind": "torch_allocated"})
        is None
    )


def test_each_reason_and_cause_is_exported_from_0(tmp_path: Path) -> None:
    """A series first seen at 1 has no increase to ``rate()`` and ``increase()``: a daemon's
    first rejection of a reason (a sporadic ``internal``, one ``too_dense``), its first dead
    letter, a socket's first refused handshake were missing from the breakdowns. Each known
    label is exported from the start, at 0 (dead letters where the file is set)."""
    m = Metrics()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    monitor = SocketMonitor({"hits": pull}, m)
    monitor.start()
    dead = DeadLetters(tmp_path / "dead.stk", 1 << 20)
    try:
        Ingest(pull, Batcher(16, BatchPolicy()), queue.Queue(), m, ServeConfig, threading.Event(),
               dead_letters=dead)  # fmt: skip
        text = m.render().decode()
    finally:
        dead.close()
        monitor.stop()
        for mon in monitor.monitors.values():
            mon.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    for reason in ("non_finite", "bad_header", "message_too_large", "too_dense", "deadline",
                   "overloaded", "internal", "shutdown"):  # fmt: skip
        assert f'streamtrk_events_rejected_total{{reason="{reason}"}} 0.0' in text, reason
    for result in ("written", "over_cap", "failed"):
        assert f'streamtrk_dead_letters_total{{result="{result}"}} 0.0' in text, result
    for cause in ("auth", "handshake", "closed"):
        assert f'streamtrk_disconnects_total{{cause="{cause}",socket="hits"}} 0.0' in text
    for cause in ("auth", "handshake"):
        assert f'streamtrk_auth_failures_total{{cause="{cause}",socket="hits"}} 0.0' in text


def _bounds(text: str, name: str) -> list[str]:
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    return [s.labels["le"] for s in family.samples if s.name == f"{name}_bucket"]


def test_every_known_label_is_exported_from_0() -> None:
    """Beyond reasons and causes of refusals: statuses, internal-error causes, reload
    results, HTTP drops and the stages of docs/metrics.md are all there before the first."""
    text = Metrics().render().decode()
    for status in ("ok", "error"):
        assert f'streamtrk_events_completed_total{{status="{status}"}} 0.0' in text, status
    for cause in ("decode", "reconstruction", "encode"):
        assert f'streamtrk_internal_errors_total{{cause="{cause}"}} 0.0' in text, cause
    for result in ("success", "failure"):
        assert f'streamtrk_model_reloads_total{{result="{result}"}} 0.0' in text, result
    for cause in ("timeout", "busy"):
        assert f'streamtrk_http_connections_dropped_total{{cause="{cause}"}} 0.0' in text, cause
    for stage in ("decode", "queue", "upload", "graph", "prune", "gnn", "tracks", "fit",
                  "physics", "encode"):  # fmt: skip
        assert f'streamtrk_stage_seconds_count{{stage="{stage}"}} 0.0' in text, stage


def test_the_histograms_have_the_documented_buckets() -> None:
    """docs/metrics.md: latencies 100 us to 10 s, about three a decade; events per batch 1 to
    128 by powers of two; hits per batch 1e3 to 3e6."""
    text = Metrics().render().decode()
    latency = ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05",
               "0.1", "0.2", "0.5", "1.0", "2.0", "5.0", "10.0", "+Inf"]  # fmt: skip
    assert _bounds(text, "streamtrk_event_latency_seconds") == latency
    assert _bounds(text, "streamtrk_queue_delay_seconds") == latency
    assert _bounds(text, "streamtrk_batch_events") == [*(f"{2.0**k}" for k in range(8)), "+Inf"]
    assert _bounds(text, "streamtrk_batch_hits") == [
        "1000.0",
        "10000.0",
        "30000.0",
        "100000.0",
        "300000.0",
        "1e+06",
        "3e+06",
        "+Inf",
    ]


def test_a_queue_watched_reports_its_depth_at_each_scrape() -> None:
    m = Metrics()
    depth = [3]
    m.watch_queue("batch", lambda: depth[0], 64)
    depth[0] = 7
    value = m.registry.get_sample_value
    assert value("streamtrk_queue_depth", {"queue": "batch"}) == 7
    assert value("streamtrk_queue_capacity", {"queue": "batch"}) == 64


@pytest.mark.parametrize(
    ("threshold", "label"),
    [(0.1 + 0.2, "0.3"), (0.12345678, "0.12345678"), (0.5000001, "0.5000001")],
)
def test_the_threshold_label_is_short_and_exact_enough(threshold: float, label: str) -> None:
    """As configured (a reload from 0.5 to 0.5000001 is a new series), not a sum's rounding."""
    m = Metrics()
    m.set_model("a", "/m/a", "1111", threshold)
    assert _model_series(m)[0]["threshold"] == label


def test_the_build_info_names_each_documented_label() -> None:
    """docs/metrics.md's labels of the two info gauges."""
    m = Metrics()
    build = ("version", "python", "torch", "numpy", "pyzmq", "libzmq", "device", "engine",
             "engine_requested", "precision")  # fmt: skip
    m.build_info.set({k: k for k in build})
    m.set_model("a", "/m/a", "1111", 0.5)
    got = {f.name: f.samples[0].labels for f in m.registry.collect()
           if f.name in ("streamtrk_build_info", "streamtrk_model_info")}  # fmt: skip
    assert got["streamtrk_build_info"] == {k: k for k in build}
    assert set(got["streamtrk_model_info"]) == {"name", "path", "hash", "threshold"}


def test_device_memory_reads_each_source(monkeypatch) -> None:
    """On CUDA each kind reads its own source (torch's and cupy's, faked here: no GPU)."""
    import sys
    import types

    pool = types.SimpleNamespace(used_bytes=lambda: 1.0, total_bytes=lambda: 2.0)
    cuda = types.SimpleNamespace(memory_allocated=lambda: 3.0, memory_reserved=lambda: 4.0)
    monkeypatch.setitem(
        sys.modules, "cupy", types.SimpleNamespace(get_default_memory_pool=lambda: pool)
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    m = Metrics()
    m.watch_device_memory("cuda")
    got = {kind: m.registry.get_sample_value("streamtrk_device_memory_bytes", {"kind": kind})
           for kind in ("cupy_used", "cupy_pool", "torch_allocated", "torch_reserved")}  # fmt: skip
    assert got == {
        "cupy_used": 1.0,
        "cupy_pool": 2.0,
        "torch_allocated": 3.0,
        "torch_reserved": 4.0,
    }


def test_each_stage_has_the_documented_latency_buckets() -> None:
    """docs/metrics.md: "All histograms below use the buckets 100 us ... 10 s": the
    stages' too (a stage past the default buckets' 10 s is none of its own)."""
    text = Metrics().render().decode()
    latency = ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05",
               "0.1", "0.2", "0.5", "1.0", "2.0", "5.0", "10.0", "+Inf"]  # fmt: skip
    (family,) = [f for f in text_string_to_metric_families(text)
                 if f.name == "streamtrk_stage_seconds"]  # fmt: skip
    for stage in ("decode", "gnn", "physics"):
        bounds = [
            s.labels["le"]
            for s in family.samples
            if s.name == "streamtrk_stage_seconds_bucket" and s.labels["stage"] == stage
        ]
        assert bounds == latency, stage


def test_the_collector_pauses_and_frozen_objects_are_exported() -> None:
    """docs/metrics.md: ``streamtrk_gc_pause_seconds`` by generation, from 0, and
    ``streamtrk_gc_frozen_objects``."""
    text = Metrics().render().decode()
    for g in ("0", "1", "2"):
        assert f'streamtrk_gc_pause_seconds_count{{generation="{g}"}} 0.0' in text, g
    assert "# TYPE streamtrk_gc_frozen_objects gauge" in text


def test_every_wire_reason_is_exported_from_0() -> None:
    """Each reason the decoder can give (``streamtrk.wire.REASONS``), not only the ones
    named in the docs' examples, has its rejected series at 0 from the start."""
    from streamtrk.wire import REASONS

    text = Metrics().render().decode()
    for reason in sorted(REASONS):
        assert f'streamtrk_events_rejected_total{{reason="{reason}"}} 0.0' in text, reason
