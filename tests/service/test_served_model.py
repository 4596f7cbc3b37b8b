"""The served model: loaded, warmed up and checked, its engine closed when it is dropped."""

from __future__ import annotations

import pytest

from streamtrk.recon.engine import EngineScorer
from streamtrk.service import served_model
from streamtrk.service.config import ServeConfig


def test_a_model_refused_after_its_warm_up_has_its_engine_closed(monkeypatch) -> None:
    """A load that fails once the engine is warmed up (here the directory's digest changes
    while it loads) closes the engine before it raises: its CUDA graphs and their thread
    do not wait for the collector (a frozen heap would keep them until the next reload)."""
    digests = iter(["before", "after"])
    monkeypatch.setattr(served_model, "model_digest", lambda path: next(digests))
    closed: list[EngineScorer] = []
    close = EngineScorer.close

    def recording_close(self: EngineScorer) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(EngineScorer, "close", recording_close)
    with pytest.raises(RuntimeError, match="changed while it was loaded"):
        served_model.load_served_model(ServeConfig(device="cpu", engine="eager"))
    assert len(closed) == 1


def test_a_model_loaded_keeps_its_engine_open(monkeypatch) -> None:
    closed: list[EngineScorer] = []
    monkeypatch.setattr(EngineScorer, "close", lambda self: closed.append(self))
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="eager"))
    assert isinstance(served.reconstructor.scorer, EngineScorer) and not closed
    served.close()
    assert closed == [served.reconstructor.scorer]
