"""Info gauges: one series each, replaced whole (a scrape sees the old or the new one)."""

from __future__ import annotations

from prometheus_client import generate_latest

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
    """collect() reads the labels once: a swap between its steps changes nothing in it."""
    info = InfoGauge("x_info", "test", ("version",))
    info.set({"version": "1"})
    scrape = info.collect()
    info.set({"version": "2"})  # lands while the scrape is under way
    (family,) = list(scrape)
    assert [s.labels for s in family.samples] in ([{"version": "1"}], [{"version": "2"}])
    text = generate_latest(Metrics().registry).decode()
    assert "# TYPE streamtrk_build_info gauge" in text
