"""The served model: loaded, warmed up and checked, its engine closed when it is dropped."""

from __future__ import annotations

import shutil

import pytest

from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.model import shipped_model_path
from streamtrk.service import faults, served_model
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

    with pytest.raises(
        SettingError, match=r"budget_scale 0\.001 leaves no room for the warm-up"
    ) as e:
        served_model.load_served_model(
            ServeConfig(device="cpu", engine="eager", budget_scale=0.001)
        )
    assert f"(MU 5, {len(served_model.warmup_event().hits)} hits: " in str(e.value)
    assert str(e.value).endswith("raise budget_scale (1 by default)")  # what to do


def test_a_model_loaded_is_warmed_up_and_keeps_its_engine_open(monkeypatch) -> None:
    """Compilation, graph capture, engine building happen at load (the warm-up), not in a
    producer's first batch; the engine stays open until the model is let go."""
    closed: list[EngineScorer] = []
    warmed: list[EngineScorer] = []
    warm_up = EngineScorer.warm_up
    monkeypatch.setattr(EngineScorer, "close", lambda self: closed.append(self))

    def recorded_warm_up(self: EngineScorer) -> float:
        warmed.append(self)
        return warm_up(self)

    monkeypatch.setattr(EngineScorer, "warm_up", recorded_warm_up)
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="eager"))
    assert isinstance(served.reconstructor.scorer, EngineScorer) and not closed
    assert warmed == [served.reconstructor.scorer]
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


def test_the_configured_threshold_beam_spot_and_precision_are_served() -> None:
    """``threshold`` and the beam spot reach the chain, and the replies' ModelId and
    /status say the threshold in use; /status says the configured precision."""
    cfg = ServeConfig(
        device="cpu", engine="eager", threshold=0.7, beam_spot_x_mm=1.5, beam_spot_y_mm=-0.5,
        precision="bf16",
    )  # fmt: skip
    served = served_model.load_served_model(cfg)
    try:
        rec, ident = served.serving
        assert rec.threshold == served.threshold == ident.threshold == 0.7
        assert rec.beam_spot == (1.5, -0.5) and served.precision == "bf16"
        assert served.warmup_batch[0] == len(served_model.warmup_event().hits) > 0
    finally:
        served.close()


def test_an_engine_other_than_asked_is_said_with_its_reason() -> None:
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="auto"))
    try:
        assert (served.engine_requested, served.engine) == ("auto", "eager")
        assert "auto on the CPU" in (served.engine_note or "")
    finally:
        served.close()


def test_a_copied_model_is_named_by_its_card_and_serves_its_threshold(tmp_path) -> None:
    """The name and default threshold are the card's, wherever the directory is."""
    model = tmp_path / "renamed"
    shutil.copytree(shipped_model_path(), model)
    card = model / "card.toml"
    text = card.read_text()
    assert "threshold = 0.5" in text
    card.write_text(text.replace("threshold = 0.5", "threshold = 0.6"))
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="eager", model=model))
    try:
        assert (served.name, served.threshold) == ("in-h32-s6-v2", 0.6)
    finally:
        served.close()


def test_the_digest_is_16_hex_digits_of_every_file_s_name_and_bytes(tmp_path) -> None:
    """Retrained weights, or a file renamed, are another model: another digest."""
    model = tmp_path / "model"
    shutil.copytree(shipped_model_path(), model)
    digest = served_model.model_digest(model)
    assert len(digest) == 16 and int(digest, 16) >= 0
    weights = model / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    retrained = served_model.model_digest(model)
    assert retrained != digest
    (model / "training.png").rename(model / "training-1.png")  # still between the others
    assert served_model.model_digest(model) != retrained


def test_the_warm_up_batch_is_timed_alone_not_with_the_load(monkeypatch) -> None:
    """``warmup_batch`` seeds the batch-time estimate (the drain's and the batcher's): it is
    the warm-up reconstruct's seconds, not the load's before it; ``warmup_s`` is all of it."""
    monkeypatch.setitem(faults.FAULTS, "load_delay_s", 2.0)  # a load of 2 s at least
    served = served_model.load_served_model(ServeConfig(device="cpu", engine="eager"))
    try:
        hits, seconds = served.warmup_batch
        assert hits == len(served_model.warmup_event().hits)
        assert served.warmup_s >= 2.0
        assert 0.0 < seconds <= served.warmup_s - 2.0
    finally:
        served.close()


def test_the_digest_covers_files_in_subdirectories(tmp_path) -> None:
    """A model directory may hold folders (an exported engine, say): their files count in
    the digest, and the folders themselves do not make it fail."""
    model = tmp_path / "model"
    shutil.copytree(shipped_model_path(), model)
    (model / "extra").mkdir()
    (model / "extra" / "notes.txt").write_text("a\n")
    digest = served_model.model_digest(model)
    (model / "extra" / "notes.txt").write_text("b\n")
    assert served_model.model_digest(model) != digest
