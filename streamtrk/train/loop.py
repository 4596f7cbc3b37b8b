"""The training loop: weighted BCE, Adam with a linear warm-up and a cosine decay, validation
on full held-out events after every epoch, early stopping on the validation loss (the best
epoch is kept), checkpoints of the best epoch and the last, and the history plot."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamtrk.io.paths import save_png
from streamtrk.recon.gnn import InteractionNetwork
from streamtrk.recon.model import save_torch
from streamtrk.train.config import OptimConfig, TrainConfig
from streamtrk.train.samples import Sample


def _loss(logits: Tensor, s: Sample, pos_weight: float) -> Tensor:
    pw = torch.tensor(pos_weight, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits[s.counted], s.target[s.counted], pos_weight=pw)


def validate(
    model: InteractionNetwork, samples: Sequence[Sample], pos_weight: float
) -> dict[str, float]:
    """Loss, and edge efficiency and purity at score 0.5, over the counted edges."""
    model.eval()
    loss, n, tp, pos, sel = 0.0, 0, 0, 0, 0
    for s in samples:
        c = int(s.counted.sum())
        if c == 0:  # no loss to take (its mean would be NaN)
            continue
        logits = model.infer(s.x, s.edge_index, s.edge_attr)
        loss += float(_loss(logits, s, pos_weight)) * c
        n += c
        pred, truth = (logits > 0)[s.counted], s.target[s.counted] > 0.5
        tp += int((pred & truth).sum())
        pos += int(truth.sum())
        sel += int(pred.sum())
    return {
        "loss": loss / max(n, 1),
        "edge_efficiency": tp / pos if pos else math.nan,
        "edge_purity": tp / sel if sel else math.nan,
    }


def _schedule(opt: torch.optim.Optimizer, o: OptimConfig, total: int) -> Any:
    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = min((step - o.warmup_steps) / max(total - o.warmup_steps, 1), 1.0)
        return (o.lr_min + (o.lr - o.lr_min) * 0.5 * (1 + math.cos(math.pi * t))) / o.lr

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(
    cfg: TrainConfig,
    train: Sequence[Sample],
    val: Sequence[Sample],
    checkpoints: Path,
    *,
    progress: bool = True,
) -> tuple[InteractionNetwork, list[dict[str, float]]]:
    """Train; return the best-validation-loss network and the per-epoch history. Samples
    without a counted edge (a sector of a sparse event) are left out: their loss is NaN,
    and one NaN gradient step would spoil the weights. ValueError where no counted edge of
    the training or of the validation samples is a true segment (nothing to learn), or
    where the validation loss was never finite (the training diverged)."""
    from tqdm import tqdm

    train = [s for s in train if bool(s.counted.any())]
    val = [s for s in val if bool(s.counted.any())]
    if not train or not val:
        raise ValueError(
            "no edge counts in the loss of the training or of the validation events: "
            "simulate more events, or at higher MU"
        )
    for name, samples in (("training", train), ("validation", val)):
        if not any(bool((s.target[s.counted] > 0).any()) for s in samples):
            raise ValueError(  # a network trained so scores every edge fake
                f"no edge of the {name} events' graphs is a true segment of a particle "
                f"above pt_min ({cfg.pt_min:g} GeV): nothing to learn; lower pt_min, or "
                "simulate more events"
            )
    o = cfg.optim
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = InteractionNetwork(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=o.lr)
    sched = _schedule(opt, o, o.epochs * len(train))
    checkpoints.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    saved: list[int] = []  # the epochs of this run's checkpoints still on disk
    best: tuple[float, int, dict[str, Tensor]] = (math.inf, -1, {})
    for epoch in range(o.epochs):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        bar = tqdm(rng.permutation(len(train)), desc=f"epoch {epoch}", disable=not progress)
        for i in bar:
            s = train[i]
            loss = _loss(model(s.x, s.edge_index, s.edge_attr), s, o.pos_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            sched.step()
            c = int(s.counted.sum())
            total, n = total + float(loss.detach()) * c, n + c
            bar.set_postfix(loss=f"{total / max(n, 1):.4f}")
        v = validate(model, val, o.pos_weight)
        row = {"epoch": epoch, "train_loss": total / max(n, 1)}
        row |= {f"val_{k}": x for k, x in v.items()} | {"seconds": time.perf_counter() - t0}
        history.append(row)
        if progress:
            tqdm.write(  # beside the bars, on stderr: stdout holds the summary's JSON alone
                f"epoch {epoch}: train loss {row['train_loss']:.4f}  val loss {v['loss']:.4f}  "
                f"edge eff {v['edge_efficiency']:.4f}  purity {v['edge_purity']:.4f}",
                file=sys.stderr,
            )
        save_torch(
            {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict()},
            _checkpoint(checkpoints, epoch),
        )
        if v["loss"] < best[0]:
            best = (v["loss"], epoch, copy.deepcopy(model.state_dict()))
        # The best epoch's checkpoint and the last are kept (one an epoch would fill the
        # disk); no other file is touched.
        kept = {best[1], epoch}  # best[1] is -1 while no loss was finite
        for old in set(saved) - kept:
            _checkpoint(checkpoints, old).unlink()
        saved = [e for e in sorted(kept) if e >= 0]
        if epoch - best[1] >= o.patience:
            break
    if best[1] < 0:
        raise ValueError(
            "the validation loss was never finite: the training diverged (a lower [optim] "
            "lr or grad_clip?)"
        )
    model.load_state_dict(best[2])
    return model.eval(), history


def _checkpoint(checkpoints: Path, epoch: int) -> Path:
    return checkpoints / f"epoch-{epoch:03d}.pt"


def plot_history(history: Sequence[dict[str, float]], path: Path) -> None:
    """Loss (train, validation) and validation edge efficiency and purity per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("weighted BCE loss")
    a.set_yscale("log")
    a.legend()
    b.plot(epochs, [h["val_edge_efficiency"] for h in history], "o-", label="edge efficiency")
    b.plot(epochs, [h["val_edge_purity"] for h in history], "o-", label="edge purity")
    b.set_xlabel("epoch")
    b.set_ylabel("validation, score > 0.5")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.5
    fig.tight_layout()
    save_png(fig, path)
