"""The served model: loaded, warmed up and checked, its engine closed when it is dropped."""

from __future__ import annotations

import pytest

from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.model import shipped_model_path
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


def test_a_budget_that_refuses_the_warm_up_event_is_said_to_be_the_setting() -> None:
    """``budget_scale`` so small that the warm-up event (MU 5) is too dense: the daemon
    said "cannot load the model: too many doublet candidates (run 0 event 0 ...)" with a
    traceback, as if the model were at fault and an event of the operator's to blame."""
    from streamtrk.errors import SettingError

    with pytest.raises(SettingError, match=r"budget_scale 0\.001 leaves no room for the warm-up"):
        served_model.load_served_model(
            ServeConfig(device="cpu", engine="eager", budget_scale=0.001)
        )


def test_a_model_loaded_keeps_its_engine_open(monkeypatch) -> None:
    closed: list[EngineScorer] = []
    monkeypatch.setattr(EngineScorer, "close", lambda self: closed.append(self))
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="eager"))
    assert isinstance(served.reconstructor.scorer, EngineScorer) and not closed
    served.close()
    assert closed == [served.reconstructor.scorer]


def test_no_model_set_is_the_shipped_one_whatever_the_environment(monkeypatch, tmp_path) -> None:
    """The configuration has read $STREAMTRK_MODEL (a flag's empty --model unsets it): a
    model left unset is the shipped one, not the variable's read a second time."""
    monkeypatch.setenv("STREAMTRK_MODEL", str(tmp_path / "no-model-here"))
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="eager"))
    assert served.path == str(shipped_model_path().resolve())
    served.close()


def test_the_digest_covers_the_pruning_windows_the_card_takes_from_outside(tmp_path) -> None:
    """The windows decide which edges the network scores: a model directory whose card
    names windows outside it (the package's, or a path) has a digest that changes with
    them, as with its own files."""
    import shutil

    from streamtrk.recon.model import default_model_path
    from streamtrk.recon.prune import windows_bytes

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    windows = tmp_path / "windows.toml"
    windows.write_bytes(windows_bytes("prune_windows.toml"))
    card = model / "card.toml"
    text = card.read_text()
    assert 'windows = "prune_windows.toml"' in text  # the package's, shipped
    shipped = served_model.model_digest(model)
    card.write_text(text.replace('"prune_windows.toml"', f'"{windows}"'))
    before = served_model.model_digest(model)
    assert before != shipped  # another card
    windows.write_bytes(windows.read_bytes() + b"\n# edited\n")
    assert served_model.model_digest(model) != before
