"""A learned edge filter for comparison (Exa.TrkX's filter stage): an MLP on doublet features.

Per edge: the graph's 6 edge features, both hits' 3 node features and both hits' folded
layer indices (/ n_layers): 14 inputs, two hidden layers, one logit. Trained with weighted
BCE on central pT >= 1 GeV target segments of simulated MU=200 events of training seed 1000
(never the validation seeds 2000..2010 or the test seed 3000); the threshold is chosen on
held-out training events (the last ``--holdout``) for a target retention. Saves NumPy
weights (``--out``, npz) that ``bench/edge_budget.py --mlp`` evaluates with a NumPy forward
pass (array-module code), at the thresholds that kept ``--retention`` of the held-out target
segments.

Run: PYTHONPATH=. .venv/bin/python bench/mlp_filter.py --events 8 --holdout 2 \
       --out out/mlp_filter.npz
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import time
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.graph import Graph, build_graph
from streamtrk.recon.prune import mirror_layers
from streamtrk.xp import array_module


def features(graph: Graph, det) -> np.ndarray:
    """(e, 14) float32 inputs of the filter (NumPy or CuPy, as the graph)."""
    xp = array_module(graph.edge_index)
    fold = xp.asarray(mirror_layers(det))
    lay = (fold[graph.layer] / len(det)).astype(xp.float32)[:, None]
    node = xp.concatenate([graph.node_features, lay], axis=1)
    i, j = graph.edge_index[0], graph.edge_index[1]
    return xp.concatenate([graph.edge_features, node[i], node[j]], axis=1)


def forward(weights: dict[str, np.ndarray], x):
    """Logits of the MLP (NumPy or CuPy arrays)."""
    xp = array_module(x)
    h = x
    k = 0
    while f"w{k}" in weights:
        h = h @ xp.asarray(weights[f"w{k}"]) + xp.asarray(weights[f"b{k}"])
        k += 1
        if f"w{k}" in weights:
            h = xp.maximum(h, 0)
    return h[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stk", type=Path, help="training events (seed 1000) from a recording")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--holdout", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--retention", type=float, nargs="+", default=[0.99, 0.995, 0.999, 0.9995])
    ap.add_argument("--out", type=Path, default=Path("out/mlp_filter.npz"))
    args = ap.parse_args()
    import torch
    from prune_windows import (  # a sibling: bench/ is on sys.path when run
        FORBIDDEN_SEEDS,
        central_target_edges,
    )

    from streamtrk.io.recording import iter_events
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    if args.seed in FORBIDDEN_SEEDS:
        raise SystemExit("train on training seeds only")
    torch.manual_seed(0)
    det = load_detector()
    if args.stk:
        from itertools import islice

        events = list(islice(iter_events(args.stk), args.events))
    else:
        sim = SimConfig(generator=GeneratorConfig(mu=200))
        events = list(simulate(det, sim, args.seed, args.events))
    xs, ys = [], []
    for ev in events:
        h = ev.hits
        g = build_graph(h.x, h.y, h.z, h.volume_id, h.layer_id, np.array([0, len(h)]), det)
        xs.append(features(g, det))
        ys.append(central_target_edges(ev, g.edge_index))
    n_train = len(events) - args.holdout
    x = torch.from_numpy(np.concatenate(xs[:n_train]))
    y = torch.from_numpy(np.concatenate(ys[:n_train]).astype(np.float32))
    mean, std = x.mean(0), x.std(0) + 1e-6
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], args.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, args.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(args.hidden, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    pos_weight = ((1 - y.mean()) / y.mean() / 4).detach()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    xn = (x - mean) / std
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xn))
        total = 0.0
        for k in range(0, len(perm), 8192):
            idx = perm[k : k + 8192]
            loss = loss_fn(model(xn[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch} loss {total / len(perm):.4f} {time.perf_counter() - t0:.0f} s")
    # Fold the input normalisation into the first layer; export NumPy weights.
    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    weights = {}
    for k, m in enumerate(lin):
        w: np.ndarray = m.weight.detach().numpy().T.astype(np.float32)
        b = m.bias.detach().numpy().astype(np.float32)
        if k == 0:
            b = b - (mean / std).numpy() @ w
            w = w / std.numpy()[:, None]
        weights[f"w{k}"], weights[f"b{k}"] = w.astype(np.float32), b.astype(np.float32)
    # Threshold for the target retention on the held-out training events.
    logit = np.concatenate([forward(weights, xx) for xx in xs[n_train:]])
    true = np.concatenate(ys[n_train:])
    thresholds = np.quantile(logit[true], 1 - np.asarray(args.retention)).astype(np.float32)
    for ret, thr in zip(args.retention, thresholds, strict=True):
        kept = (logit >= thr).sum() / max(args.holdout, 1)
        print(f"threshold {thr:.3f}: held-out retention {ret}, {kept:.0f} edges/event")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    retentions = np.asarray(args.retention)
    # (the ignore: mypy matches **weights to savez's allow_pickle parameter too)
    np.savez(args.out, thresholds=thresholds, retentions=retentions, **weights)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
