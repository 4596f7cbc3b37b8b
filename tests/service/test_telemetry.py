"""Info gauges: one series each, replaced whole (a scrape sees the old or the new one)."""

from __future__ import annotations

import sys
import threading

from prometheus_client import CollectorRegistry, generate_latest

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
