"""The optimisation loop."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import TINY

from streamtrk.detector import load_detector
from streamtrk.recon.gnn import InteractionNetwork
from streamtrk.recon.graph import GraphConfig
from streamtrk.train import EventSource, load_config, loop, make_samples
from streamtrk.train.config import OptimConfig
from streamtrk.train.loop import _loss, _schedule, fit, validate


def test_samples_without_counted_edges_are_left_out(tmp_path: Path) -> None:
    """A sector with no counted edge has a NaN loss: left out of training and validation,
    it can neither spoil the weights nor the choice of the best epoch."""
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
    with pytest.raises(ValueError, match="no edge counts in the loss"):
        fit(cfg, samples, [empty], tmp_path / "ck3", progress=False)


def test_checkpoints_of_the_best_epoch_and_the_last_are_kept(tmp_path: Path) -> None:
    """One an epoch would fill a disk in a long run. Validated on the inverted targets, the
    network gets worse as it learns: the best epoch is the first."""
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


def _tiny_samples(tmp_path: Path, recipe: str = TINY):
    config = tmp_path / "tiny.toml"
    config.write_text(recipe)
    det = load_detector()
    events = EventSource(mu=5, seed=5, events=1).load(det)
    return load_config(config), make_samples(events, det, GraphConfig(), 1.0)


def test_the_loss_counts_the_counted_edges_alone_weighted_by_pos_weight(tmp_path: Path) -> None:
    """Soft segments (not counted) are out of the loss whatever their score; a true
    segment's term is pos_weight times its unweighted one."""
    _, [s] = _tiny_samples(tmp_path)
    assert not bool(s.counted.all()) and bool(s.target[s.counted].any())
    logits = torch.randn(s.num_edges, generator=torch.Generator().manual_seed(0))
    moved = torch.where(s.counted, logits, logits + 5.0)  # the edges not counted only
    assert torch.equal(_loss(logits, s, 3.0), _loss(moved, s, 3.0))
    positives = replace(s, counted=s.counted & (s.target > 0.5))
    assert float(_loss(logits, positives, 3.0)) == pytest.approx(
        3.0 * float(_loss(logits, positives, 1.0)), rel=1e-6
    )


def test_validation_metrics_are_over_every_counted_edge_at_score_one_half(tmp_path: Path):
    """The loss is the mean over all counted edges (a sample's weight is its edge count),
    efficiency and purity those of the edges scoring above 0.5."""
    cfg, [s] = _tiny_samples(tmp_path)
    torch.manual_seed(0)
    model = InteractionNetwork(cfg.model).eval()
    half = replace(s, counted=s.counted & (torch.arange(s.num_edges) % 3 == 0))
    v = validate(model, [s, half], 3.0)
    logits = model.infer(s.x, s.edge_index, s.edge_attr)
    c, h = int(s.counted.sum()), int(half.counted.sum())
    want = (float(_loss(logits, s, 3.0)) * c + float(_loss(logits, half, 3.0)) * h) / (c + h)
    assert v["loss"] == pytest.approx(want, rel=1e-5)
    passed, truth = torch.sigmoid(logits) > 0.5, s.target > 0.5
    tp = sum(int((passed & truth & k.counted).sum()) for k in (s, half))
    assert v["edge_efficiency"] == tp / sum(int((truth & k.counted).sum()) for k in (s, half))
    assert v["edge_purity"] == tp / sum(int((passed & k.counted).sum()) for k in (s, half))


def test_the_fit_returns_the_best_epochs_weights_on_the_documented_schedule(
    tmp_path: Path,
) -> None:
    """Validated on inverted targets, the best epoch is an early one: the network returned
    has its checkpoint's weights, not the last epoch's; the learning rate of each checkpoint
    is the warm-up then cosine schedule's after that epoch's steps."""
    recipe = TINY.replace("epochs = 2", "epochs = 4\npatience = 4")
    cfg, samples = _tiny_samples(tmp_path, recipe.replace("warmup_steps = 2", "warmup_steps = 0"))
    inverted = [replace(s, target=1 - s.target) for s in samples]
    model, history = fit(cfg, samples, inverted, tmp_path / "ck", progress=False)
    best = int(np.argmin([h["val_loss"] for h in history]))
    assert best < 3
    saved = torch.load(tmp_path / "ck" / f"epoch-{best:03d}.pt", weights_only=True)
    for name, weights in model.state_dict().items():
        assert torch.equal(weights, saved["model"][name]), name
    o, steps = cfg.optim, len(samples)
    for epoch in (best, 3):
        ck = torch.load(tmp_path / "ck" / f"epoch-{epoch:03d}.pt", weights_only=True)
        t = min((epoch + 1) * steps / (o.epochs * steps), 1)  # no warm-up
        lr = o.lr_min + (o.lr - o.lr_min) * 0.5 * (1 + math.cos(math.pi * t))
        assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr, rel=1e-6)


def test_the_warm_up_rises_linearly_then_a_cosine_decays_to_lr_min() -> None:
    """A linear warm-up to lr; then the cosine spans the remaining steps: half-way there
    the rate is the mean of lr and lr_min, at the last step lr_min, and it stays there."""
    o = OptimConfig(lr=1e-3, lr_min=1e-4, warmup_steps=4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=o.lr)
    sched = _schedule(opt, o, total=10)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert lrs[7] == pytest.approx((o.lr + o.lr_min) / 2)
    assert lrs[10:] == pytest.approx([o.lr_min] * 4)


def test_patience_stops_after_that_many_epochs_without_a_better_validation_loss(
    tmp_path: Path,
) -> None:
    """Validated on inverted targets, the loss rises after the first epoch: patience 2 runs
    epochs 0 (the best), 1 and 2, then stops."""
    cfg, samples = _tiny_samples(tmp_path, TINY.replace("epochs = 2", "epochs = 6\npatience = 2"))
    inverted = [replace(s, target=1 - s.target) for s in samples]
    _, history = fit(cfg, samples, inverted, tmp_path / "ck", progress=False)
    losses = [h["val_loss"] for h in history]
    best = int(np.argmin(losses))
    assert len(history) == best + 3 and losses[best] < min(losses[best + 1 :])


def test_samples_without_a_true_segment_in_the_loss_are_refused(tmp_path: Path) -> None:
    """A recipe whose pt_min leaves no target edge trained a network that scores every edge
    fake, and wrote it without a word (its card's validation edge efficiency NaN)."""
    cfg, samples = _tiny_samples(tmp_path)
    none = [replace(s, target=torch.zeros_like(s.target)) for s in samples]
    for train, val, name in ((none, samples, "training"), (samples, none, "validation")):
        with pytest.raises(ValueError, match=f"no edge of the {name} events' graphs is a true"):
            fit(cfg, train, val, tmp_path / "ck", progress=False)


def test_a_validation_loss_never_finite_is_said_to_be_a_divergence(tmp_path: Path, monkeypatch):

    cfg, samples = _tiny_samples(tmp_path)
    validate = loop.validate
    monkeypatch.setattr(loop, "validate", lambda *a, **k: validate(*a, **k) | {"loss": np.nan})
    with pytest.raises(ValueError, match="the validation loss was never finite"):
        loop.fit(cfg, samples, samples, tmp_path / "ck", progress=False)


def test_grad_clip_bounds_the_gradient_of_each_step(tmp_path: Path) -> None:
    """A clip far below Adam's eps leaves the steps vanishingly small: the weights stay
    the seeded initial ones (unclipped, each step moves them by about lr)."""
    cfg, samples = _tiny_samples(tmp_path)
    cfg = replace(cfg, optim=replace(cfg.optim, grad_clip=1e-14))
    torch.manual_seed(cfg.seed)
    initial = InteractionNetwork(cfg.model).state_dict()
    model, _ = fit(cfg, samples, samples, tmp_path / "ck", progress=False)
    for name, weights in model.state_dict().items():
        torch.testing.assert_close(weights, initial[name], atol=1e-6, rtol=0)


def test_each_step_takes_the_gradient_of_its_own_sample_alone(tmp_path: Path, monkeypatch):
    """Gradients are zeroed between steps: each is the gradient of one sample's loss at
    the weights of that step (accumulated, a step would add all those before it)."""
    cfg, [s] = _tiny_samples(tmp_path)
    seen: list[tuple[dict, list]] = []
    clip = torch.nn.utils.clip_grad_norm_
    networks: list[InteractionNetwork] = []  # the one fit trains

    def spy(params, max_norm):
        params = list(params)
        seen.append(({k: v.detach().clone() for k, v in networks[-1].state_dict().items()},
                     [None if p.grad is None else p.grad.clone() for p in params]))  # fmt: skip
        return clip(params, max_norm)

    made = InteractionNetwork

    def network(config):
        networks.append(made(config))
        return networks[-1]

    monkeypatch.setattr(loop, "InteractionNetwork", network)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    loop.fit(cfg, [s, s], [s], tmp_path / "ck", progress=False)
    assert len(seen) == 2 * cfg.optim.epochs
    for weights, grads in seen[1:]:
        fresh = made(cfg.model)
        fresh.load_state_dict(weights)
        loop._loss(fresh(s.x, s.edge_index, s.edge_attr), s, cfg.optim.pos_weight).backward()
        for p, g in zip(fresh.parameters(), grads, strict=True):
            assert (g is None) == (p.grad is None)
            if g is not None:
                torch.testing.assert_close(g, p.grad)


def test_the_train_loss_is_the_mean_over_the_counted_edges_of_the_epoch(tmp_path: Path):
    """Weights held still (a clip far below Adam's eps): the epoch's train loss is each
    sector's loss weighted by its counted edges, as the validation loss is."""
    cfg, _ = _tiny_samples(tmp_path)
    cfg = replace(cfg, optim=replace(cfg.optim, grad_clip=1e-14))
    det = load_detector()
    events = EventSource(mu=5, seed=5, events=1).load(det)
    sectors = make_samples(events, det, GraphConfig(), 1.0, sectors=3, margin=0.1)
    counts = [int(s.counted.sum()) for s in sectors]
    assert len(set(counts)) > 1
    torch.manual_seed(cfg.seed)
    initial = InteractionNetwork(cfg.model)
    with torch.no_grad():
        logits = [initial(s.x, s.edge_index, s.edge_attr) for s in sectors]
        losses = [
            float(_loss(x, s, cfg.optim.pos_weight)) for x, s in zip(logits, sectors, strict=True)
        ]
    _, history = fit(cfg, sectors, sectors, tmp_path / "ck", progress=False)
    want = sum(x * c for x, c in zip(losses, counts, strict=True)) / sum(counts)
    assert history[0]["train_loss"] == pytest.approx(want, rel=1e-4)


def test_a_sample_without_counted_edges_adds_nothing_to_the_validation(tmp_path: Path) -> None:
    """Its loss would be NaN (a mean over no edge): it is skipped, not summed."""
    cfg, [s] = _tiny_samples(tmp_path)
    torch.manual_seed(0)
    model = InteractionNetwork(cfg.model)
    empty = replace(s, counted=torch.zeros_like(s.counted))
    assert validate(model, [s, empty], 3.0) == validate(model, [s], 3.0)


def test_validation_efficiency_without_a_true_edge_is_nan_not_zero(tmp_path: Path) -> None:
    """No true segment among the counted edges: the efficiency is undefined (NaN), not 0."""
    cfg, [s] = _tiny_samples(tmp_path)
    torch.manual_seed(0)
    fakes = replace(s, counted=s.counted & (s.target < 0.5))
    assert bool(fakes.counted.any())
    assert math.isnan(validate(InteractionNetwork(cfg.model), [fakes], 3.0)["edge_efficiency"])


def test_a_validation_loss_that_only_ties_is_no_better_epoch(tmp_path: Path, monkeypatch):
    """Early stopping wants a lower loss: with every epoch's the same, the first stays the
    best, and patience 2 stops after epoch 2."""
    recipe = TINY.replace("epochs = 2", "epochs = 5\npatience = 2")
    cfg, samples = _tiny_samples(tmp_path, recipe)
    validate_ = loop.validate
    monkeypatch.setattr(loop, "validate", lambda *a, **k: validate_(*a, **k) | {"loss": 1.0})
    _, history = loop.fit(cfg, samples, samples, tmp_path / "ck", progress=False)
    assert len(history) == 3
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["epoch-000.pt", "epoch-002.pt"]


def test_each_epoch_visits_the_samples_in_the_seeds_shuffled_order(tmp_path: Path, monkeypatch):
    """The steps take the samples in a permutation drawn from the recipe's seed, a new one
    each epoch (not always the order they were given in)."""
    cfg, [s] = _tiny_samples(tmp_path, TINY.replace("epochs = 2", "epochs = 3\npatience = 3"))
    samples = [replace(s, home_edges=i) for i in range(5)]  # told apart by home_edges
    seen: list[int] = []
    loss = loop._loss

    def spy(logits, sample, pos_weight):
        if sample.home_edges >= 0:  # not the validation's
            seen.append(sample.home_edges)
        return loss(logits, sample, pos_weight)

    monkeypatch.setattr(loop, "_loss", spy)
    loop.fit(cfg, samples, [replace(s, home_edges=-1)], tmp_path / "ck", progress=False)
    rng = np.random.default_rng(cfg.seed)
    want = [int(i) for _ in range(3) for i in rng.permutation(5)]
    assert seen == want and want != list(range(5)) * 3


def test_progress_goes_to_stderr_leaving_stdout_to_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With progress on, each epoch's line (and the bars) are written to stderr: stdout
    holds ``streamtrk train``'s JSON summary alone."""
    cfg, samples = _tiny_samples(tmp_path)
    _, history = fit(cfg, samples, samples, tmp_path / "ck", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert all(f"epoch {h['epoch']}: train loss" in err for h in history)


def test_each_epoch_s_history_row_holds_the_documented_fields(tmp_path: Path) -> None:
    """A history row (the training card's validation metrics, the plot) holds the epoch,
    its train loss, the validation loss, edge efficiency and purity, and its seconds."""
    cfg, samples = _tiny_samples(tmp_path)
    _, history = fit(cfg, samples, samples, tmp_path / "ck", progress=False)
    assert [h["epoch"] for h in history] == list(range(len(history)))
    assert all(
        set(h) == {"epoch", "train_loss", "val_loss", "val_edge_efficiency", "val_edge_purity",
                   "seconds"}
        for h in history
    )  # fmt: skip
