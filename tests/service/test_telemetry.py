"""Info gauges: one series each, swapped without a scrape ever finding none."""

from __future__ import annotations

from streamtrk.service.telemetry import Metrics


def _model_series(m: Metrics) -> list[dict[str, str]]:
    (family,) = [f for f in m.registry.collect() if f.name == "streamtrk_model_info"]
    return [s.labels for s in family.samples]


def test_a_new_model_replaces_the_series_new_first(monkeypatch) -> None:
    m = Metrics()
    m.set_model("a", "/m/a", "1111", 0.5)
    seen_at_removal: list[int] = []
    remove = m.model_info.remove

    def watched(*values: str) -> None:
        seen_at_removal.append(len(_model_series(m)))
        remove(*values)

    monkeypatch.setattr(m.model_info, "remove", watched)
    m.set_model("b", "/m/b", "2222", 0.7)
    assert seen_at_removal == [2]  # the new series was there before the old one went
    assert _model_series(m) == [{"name": "b", "path": "/m/b", "hash": "2222", "threshold": "0.7"}]
    m.set_model("b", "/m/b", "2222", 0.7)  # the same model again: one series, kept
    assert len(_model_series(m)) == 1 and seen_at_removal == [2]
