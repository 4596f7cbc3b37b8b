"""Edge-classifier CPU time per event (graph construction excluded) and the model size.

For each MU: simulate events, reconstruct each once for the graph the chain scores (after
its card's pruning), then time the shipped model's scorer (torch -> network -> scores) on
each graph, after one warm-up call; the same on the real
TrackML barrel event (55k hits; the reference Exa.TrkX Interaction Network, H=128 and 6
steps, takes 11.9 s a forward there on these 2-core CPUs). Prints JSON.

Run: .venv/bin/python bench/gnn_cpu.py [--mu 10 50 100 200] [--events 5] [--model DIR]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtrk.detector import load_detector
from streamtrk.event import Event
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import WEIGHTS, default_model_path
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

REAL = Path(__file__).resolve().parents[1].parent / (
    "shared/data/trackml/qallse_ez-1.0_hpt-1.0_no_truth/event000001000"
)


def _time(rec: Any, events: list[Event]) -> dict[str, Any]:
    """The scorer on the graph the chain gives it (pruned, where the card prunes)."""
    times, edges, built, hits = [], [], [], []
    for ev in events:
        result = rec.reconstruct([ev])
        g = result.graph
        rec.scorer(g, [ev])  # warm-up: allocator and kernel caches
        t0 = time.perf_counter()
        rec.scorer(g, [ev])
        times.append(time.perf_counter() - t0)
        edges.append(g.num_edges)
        built.append(result.built.num_edges)
        hits.append(g.num_nodes)
    return {
        "events": len(events),
        "median_gnn_seconds": round(float(np.median(times)), 3),
        "max_gnn_seconds": round(float(np.max(times)), 3),
        "mean_hits": int(np.mean(hits)),
        "mean_edges": int(np.mean(edges)),
        "mean_edges_built": int(np.mean(built)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mu", type=float, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--events", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--real", type=Path, default=REAL, help="TrackML event prefix ('' to skip)")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    path = args.model or default_model_path()
    rec = load_reconstructor(path)
    det = load_detector()
    rows = []
    for mu in args.mu:
        cfg = SimConfig(generator=replace(GeneratorConfig(), mu=mu))
        rows.append({"mu": mu, **_time(rec, list(simulate(det, cfg, args.seed, args.events)))})
    if args.real and Path(f"{args.real}-hits.csv").exists():
        from streamtrk.io.trackml import read_event

        rows.append({"input": str(args.real), **_time(rec, [read_event(args.real)])})
    assert isinstance(rec.scorer, EngineScorer)  # what load_reconstructor gives
    model = rec.scorer.model
    out = {
        "model": str(path),
        "architecture": asdict(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": (path / WEIGHTS).stat().st_size,
        "torch_threads": torch.get_num_threads(),
        "results": rows,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
