"""Training the edge classifier on simulated events, and the model card that comes with it.

Recipe: events are simulated from the config's seeds (or read from a recording), their
graphs built once and kept in memory. Training graphs are cut into overlapping phi sectors
(small graphs train faster per edge on the CPU and give more optimiser steps); each edge
counts in the loss of exactly one sector, the one holding its inner hit, and a margin of
hits around the sector gives it its neighbourhood. Targets are true segments of particles
with pT >= ``pt_min``; true segments of softer particles are left out of the loss (the
network cannot tell 0.9 from 1.1 GeV) rather than counted as negatives. The loss is binary
cross-entropy with ``pos_weight`` on the positives; Adam with a linear warm-up and a cosine
decay; validation on full held-out events after every epoch; early stopping on the
validation loss, keeping the best epoch.

After training, the default edge-score threshold is chosen on the validation events: the
full reconstruction is scored at each candidate threshold and the one maximising
``tracking_efficiency - fake_rate - duplicate_rate`` is kept. The model is then evaluated on
held-out test events and on the ``report`` inputs (reported in the card, never used for a
choice).
"""

from __future__ import annotations

import copy
import math
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamtrk.detector import Detector, load_detector
from streamtrk.event import Event
from streamtrk.recon.gnn import GNNConfig, GNNScorer, InteractionNetwork
from streamtrk.recon.graph import Graph, GraphConfig, build_graph
from streamtrk.recon.model import model_card, save_model
from streamtrk.recon.reconstructor import EdgeScorer, Reconstructor
from streamtrk.recon.truth import edge_labels

CARD_METRICS = (
    "tracking_efficiency",
    "tracking_efficiency_all",
    "fake_rate",
    "duplicate_rate",
    "trackml_score",
    "gnn_edge_efficiency",
    "gnn_edge_efficiency_all",
    "gnn_edge_purity",
    "graph_edge_efficiency",
    "graph_edge_purity",
    "events",
    "hits_per_event",
    "edges_per_hit",
    "seconds_per_event",
)


@dataclass(frozen=True)
class EventSource:
    """Simulated events (``mu``, ``seed``, ``events``, ``noise``) or a ``recording``."""

    mu: float = 200.0
    seed: int = 0
    events: int = 1
    noise: float = 0.19
    recording: str | None = None

    def load(self, det: Detector) -> list[Event]:
        if self.recording:
            from streamtrk.io.recording import iter_events

            return list(islice(iter_events(Path(self.recording)), self.events))
        from streamtrk.sim.generator import GeneratorConfig
        from streamtrk.sim.simulate import SimConfig, simulate

        gen = replace(GeneratorConfig(), mu=self.mu)
        cfg = SimConfig(generator=gen, noise_fraction=self.noise)
        return list(simulate(det, cfg, self.seed, self.events))


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    lr: float = 2e-3
    lr_min: float = 1e-4
    warmup_steps: int = 50
    pos_weight: float = 4.0
    grad_clip: float = 1.0
    patience: int = 3
    sectors: int = 8
    sector_margin: float = 0.1  # rad of hits kept around a sector


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the config file, parsed)."""

    name: str
    seed: int = 0
    threads: int = 1  # torch threads while training (see models/configs/default.toml)
    pt_min: float = 1.0
    model: GNNConfig = field(default_factory=GNNConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: EventSource = field(default_factory=EventSource)
    val: EventSource = field(default_factory=EventSource)
    test: EventSource | None = None
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    # label -> TrackML prefix or recording, evaluated for the card only (never for a choice)
    report: dict[str, str] = field(default_factory=dict)


def _table(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ValueError(f"[{where}] must be a table")
    unknown = sorted(table.keys() - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown keys in [{where}]: {', '.join(unknown)}")
    return cls(**table)


def load_config(path: Path) -> TrainConfig:
    """Parse a training config (see models/configs/default.toml); unknown keys are errors."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    sub = {
        "model": GNNConfig,
        "graph": GraphConfig,
        "optim": OptimConfig,
        "train": EventSource,
        "val": EventSource,
        "test": EventSource,
    }
    top = {f.name for f in fields(TrainConfig)}
    unknown = sorted(raw.keys() - top)
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)}")
    if "name" not in raw:
        raise ValueError(f"{path}: a config needs a name")
    kw = {k: _table(cls, raw[k], k) for k, cls in sub.items() if k in raw}
    if "thresholds" in raw:
        kw["thresholds"] = tuple(float(t) for t in raw["thresholds"])
    if "report" in raw:
        kw["report"] = {str(k): str(v) for k, v in raw["report"].items()}
    return TrainConfig(
        **{k: raw[k] for k in ("name", "seed", "threads", "pt_min") if k in raw},
        **kw,
    )


# --- data ---


@dataclass
class Sample:
    """One training graph: inputs, 0/1 targets, and which edges count in the loss."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    target: Tensor
    counted: Tensor

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def event_graph(ev: Event, det: Detector, cfg: GraphConfig) -> Graph:
    h = ev.hits
    offsets = np.array([0, len(h)], dtype=np.int64)
    return build_graph(h.x, h.y, h.z, h.volume_id, h.layer_id, offsets, det, cfg)


def _sectors(
    g: Graph, target: np.ndarray, counted: np.ndarray, n: int, margin: float
) -> Iterator[Sample]:
    """The graph cut into ``n`` phi sectors, each with its hits within ``margin`` around it.

    A sector holds every edge touching its extended range; only edges whose inner hit lies
    in the sector itself count in its loss, so every edge counts once over all sectors.
    """
    phi = g.node_features[:, 1].astype(np.float64) * np.pi
    width = 2 * np.pi / n
    sector = np.minimum(((phi + np.pi) / width).astype(np.int64), n - 1)
    src, dst = g.edge_index
    for k in range(n):
        centre = -np.pi + (k + 0.5) * width
        ext = np.abs(np.mod(phi - centre + np.pi, 2 * np.pi) - np.pi) < width / 2 + margin
        sel = ext[src] | ext[dst]
        nodes, inverse = np.unique(g.edge_index[:, sel], return_inverse=True)
        yield Sample(
            x=torch.from_numpy(g.node_features[nodes]),
            edge_index=torch.from_numpy(inverse.reshape(2, -1).astype(np.int64)),
            edge_attr=torch.from_numpy(g.edge_features[sel]),
            target=torch.from_numpy(target[sel].astype(np.float32)),
            counted=torch.from_numpy(counted[sel] & (sector[src[sel]] == k)),
        )


def make_samples(
    events: Iterable[Event],
    det: Detector,
    cfg: GraphConfig,
    pt_min: float,
    sectors: int = 1,
    margin: float = 0.0,
) -> list[Sample]:
    """Graphs with targets (pT >= ``pt_min`` segments) and loss masks (no softer segments)."""
    out = []
    for ev in events:
        g = event_graph(ev, det, cfg)
        target = edge_labels(ev, g.edge_index, pt_min)
        soft = edge_labels(ev, g.edge_index, 0.0) & ~target
        out.extend(_sectors(g, target, ~soft, sectors, margin))
    return out


# --- training ---


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
        logits = model.infer(s.x, s.edge_index, s.edge_attr)
        c = int(s.counted.sum())
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
    """Train; return the best-validation-loss network and the per-epoch history."""
    from tqdm import tqdm

    o = cfg.optim
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = InteractionNetwork(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=o.lr)
    sched = _schedule(opt, o, o.epochs * len(train))
    checkpoints.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
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
            tqdm.write(
                f"epoch {epoch}: train loss {row['train_loss']:.4f}  val loss {v['loss']:.4f}  "
                f"edge eff {v['edge_efficiency']:.4f}  purity {v['edge_purity']:.4f}"
            )
        torch.save(
            {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict()},
            checkpoints / f"epoch-{epoch:03d}.pt",
        )
        if v["loss"] < best[0]:
            best = (v["loss"], epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= o.patience:
            break
    model.load_state_dict(best[2])
    return model.eval(), history


def plot_history(history: Sequence[dict[str, float]], path: Path) -> None:
    """Loss (train, validation) and validation edge efficiency and purity per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- threshold and evaluation ---


class CachedScorer:
    """Scores each batch of events once, whatever the threshold it is reconstructed at."""

    def __init__(self, scorer: EdgeScorer) -> None:
        self.scorer = scorer
        self.cache: dict[tuple[int, ...], Any] = {}

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any:
        key = tuple(id(ev) for ev in events)
        if key not in self.cache:
            self.cache[key] = self.scorer(graph, events)
        return self.cache[key]


def scan_thresholds(
    model: InteractionNetwork, events: Sequence[Event], cfg: TrainConfig
) -> dict[str, Any]:
    """Reconstruction metrics at each candidate threshold, and the best one."""
    from streamtrk.eval.evaluate import evaluate

    scorer = CachedScorer(GNNScorer(model))
    keys = ("tracking_efficiency", "fake_rate", "duplicate_rate")
    scan: dict[str, Any] = {"thresholds": [float(t) for t in cfg.thresholds]}
    scan |= {k: [] for k in (*keys, "objective")}
    for t in cfg.thresholds:
        rec = Reconstructor(scorer, graph_config=cfg.graph, threshold=t)
        report = evaluate(rec, events).report()
        for k in keys:
            scan[k].append(float(report[k]))
        scan["objective"].append(float(report[keys[0]] - report[keys[1]] - report[keys[2]]))
    objective = np.nan_to_num(np.array(scan["objective"]), nan=-np.inf)
    scan["chosen"] = scan["thresholds"][int(np.argmax(objective))]
    scan["objective_definition"] = "tracking_efficiency - fake_rate - duplicate_rate"
    return scan


def _read_events(path: str) -> Iterator[Event]:
    if path.endswith(".stk"):
        from streamtrk.io.recording import iter_events
    else:
        from streamtrk.io.trackml import iter_events
    return iter_events(path)


def evaluate_model(
    model: InteractionNetwork, events: Iterable[Event], graph: GraphConfig, threshold: float
) -> dict[str, float]:
    """The ``streamtrk evaluate`` figures of the card (see CARD_METRICS)."""
    from streamtrk.eval.evaluate import evaluate

    rec = Reconstructor(GNNScorer(model), graph_config=graph, threshold=threshold)
    report = evaluate(rec, events).report()
    out = {k: report[k] for k in CARD_METRICS if k in report}
    out["gnn_seconds_per_event"] = report["stage_seconds"]["gnn"]
    return out


def train(
    cfg: TrainConfig, out: Path, *, config_text: str = "", command: str = "", progress: bool = True
) -> dict[str, Any]:
    """The whole recipe: data, fit, threshold, evaluation; writes the model into ``out``."""
    t_start = time.perf_counter()
    det = load_detector()
    o = cfg.optim
    train_events = cfg.train.load(det)
    val_events = cfg.val.load(det)
    train_samples = make_samples(
        train_events, det, cfg.graph, cfg.pt_min, o.sectors, o.sector_margin
    )
    del train_events
    val_samples = make_samples(val_events, det, cfg.graph, cfg.pt_min)
    t_data = time.perf_counter() - t_start
    model, history = fit(cfg, train_samples, val_samples, out / "checkpoints", progress=progress)
    t_fit = time.perf_counter() - t_start - t_data
    out.mkdir(parents=True, exist_ok=True)
    plot_history(history, out / "training.png")
    scan = scan_thresholds(model, val_events, cfg)
    best = min(history, key=lambda h: h["val_loss"])
    metrics: dict[str, Any] = {"validation": {k: v for k, v in best.items() if k != "seconds"}}
    if cfg.test is not None:
        test = evaluate_model(model, cfg.test.load(det), cfg.graph, scan["chosen"])
        metrics["test"] = {**asdict(cfg.test), **test}
    for label, path in cfg.report.items():
        if Path(path).exists() or Path(path).parent.is_dir():
            found = evaluate_model(model, _read_events(path), cfg.graph, scan["chosen"])
            metrics[label] = {"input": path, **found}
        else:
            metrics[label] = {"input": path, "skipped": "not found"}
    card = model_card(
        cfg.name,
        cfg.model,
        cfg.graph,
        scan["chosen"],
        training={
            "simulator_version": _simulator_version(),
            "pt_min": cfg.pt_min,
            "seed": cfg.seed,
            "threads": cfg.threads,
            "train": asdict(cfg.train),
            "validation": asdict(cfg.val),
            "optim": asdict(o),
            "epochs_run": len(history),
            "best_epoch": int(best["epoch"]),
            "train_edges": sum(s.num_edges for s in train_samples),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds_data": round(t_data, 1),
            "seconds_fit": round(t_fit, 1),
            "seconds_total": round(time.perf_counter() - t_start, 1),
            "history": {k: [h[k] for h in history] for k in history[0]},
        },
        threshold_scan=scan,
        metrics=metrics,
        reproduce={"command": command, "config": config_text},
    )
    save_model(out, model, card)
    return card


def _simulator_version() -> int:
    from streamtrk.sim.simulate import SIMULATOR_VERSION

    return SIMULATOR_VERSION
