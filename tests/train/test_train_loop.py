"""The optimisation loop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import TINY

from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig
from streamtrk.train import EventSource, load_config, make_samples


def test_samples_without_counted_edges_are_left_out(tmp_path: Path) -> None:
    """A sector with no counted edge has a NaN loss: left out of training and validation,
    it can neither spoil the weights nor the choice of the best epoch."""

    from streamtrk.train.loop import fit

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    cfg = load_config(config)
    det = load_detector()
    samples = make_samples(EventSource(mu=5, seed=5, events=1).load(det), det, GraphConfig(), 1.0)
    empty = replace(samples[0], counted=torch.zeros_like(samples[0].counted))
    model, history = fit(cfg, [empty, *samples], [empty, *samples], tmp_path / "ck", progress=False)
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="no edge counts in the loss"):
        fit(cfg, [empty], samples, tmp_path / "ck2", progress=False)


def test_checkpoints_of_the_best_epoch_and_the_last_are_kept(tmp_path: Path) -> None:
    """One an epoch would fill a disk in a long run. Validated on the inverted targets, the
    network gets worse as it learns: the best epoch is the first."""
    from streamtrk.train.loop import fit

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("epochs = 2", "epochs = 4\npatience = 4"))
    cfg = load_config(config)
    det = load_detector()
    samples = make_samples(EventSource(mu=5, seed=5, events=1).load(det), det, GraphConfig(), 1.0)
    inverted = [replace(s, target=1 - s.target) for s in samples]
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "epoch-old.pt").write_text("another run's")  # left as it is
    _, history = fit(cfg, samples, inverted, tmp_path / "ck", progress=False)
    assert len(history) == 4
    best = int(np.argmin([h["val_loss"] for h in history]))
    assert best < 3
    kept = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert kept == [f"epoch-{best:03d}.pt", "epoch-003.pt", "epoch-old.pt"]
    assert torch.load(tmp_path / "ck" / kept[0], weights_only=True)["epoch"] == best


def test_checkpoints_after_an_epoch_of_no_finite_validation_loss(tmp_path: Path, monkeypatch):
    """The first epoch's validation loss NaN (no best epoch yet): its checkpoint goes once a
    later epoch is the best."""
    from streamtrk.train import loop

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("epochs = 2", "epochs = 3\npatience = 3"))
    cfg = load_config(config)
    det = load_detector()
    samples = make_samples(EventSource(mu=5, seed=5, events=1).load(det), det, GraphConfig(), 1.0)
    calls: list[int] = []

    def first_nan(*args, **kwargs):
        calls.append(1)
        v = validate(*args, **kwargs)
        return v | {"loss": float("nan")} if len(calls) == 1 else v

    validate = loop.validate
    monkeypatch.setattr(loop, "validate", first_nan)
    _, history = loop.fit(cfg, samples, samples, tmp_path / "ck", progress=False)
    assert len(history) == 3 and np.isnan(history[0]["val_loss"])
    best = 1 + int(np.argmin([h["val_loss"] for h in history[1:]]))
    kept = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert kept == sorted({f"epoch-{best:03d}.pt", "epoch-002.pt"})
