"""CPU time per event of the whole chain against pileup: graph, prune, GNN, tracks, fit.

The shipped model (or ``--model``) reconstructs simulated events of each MU (seeds 5000 +
MU, used by no tuning) and the real barrel event 1000 (55k hits, ``qallse_ez-1.0``), one
event per batch, after one warm-up call; medians over events x repeats. Threads are the
defaults a daemon would use (torch: the CPUs this process may use; the graph search: 2).
Prints JSON; with ``--png``, also a plot of each stage's time against hits (none by default:
docs/recon-cost.png is a committed figure, which a quick run would overwrite).

Run: .venv/bin/python bench/recon_cpu.py [--events 3] [--repeats 2] [--png docs/recon-cost.png]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.io.paths import save_png
from streamtrk.io.trackml import read_event
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.reconstructor import STAGES, Reconstructor
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.threads import set_torch_threads

ROOT = Path(__file__).resolve().parents[1]
REAL = "data/trackml/qallse_ez-1.0_hpt-1.0_no_truth/event000001000"


def measure(rec: Reconstructor, events: list, repeats: int) -> dict:
    """Median seconds per stage and in all, over events x repeats (one event per batch)."""
    rec.reconstruct(events[:1])  # warm-up: tables, imports
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    built, scored = [], []
    for ev in events:
        for _ in range(repeats):
            res = rec.reconstruct([ev])
            for s in STAGES:
                per_stage[s].append(res.timings[s])
            built.append(res.built.num_edges)
            scored.append(res.graph.num_edges)
    return {
        "hits": float(np.mean([len(e.hits) for e in events])),
        "graph_edges": float(np.mean(built)),
        "gnn_edges": float(np.mean(scored)),
        **{f"{s}_s": float(np.median(v)) for s, v in per_stage.items()},
        "total_s": float(np.median(np.sum([per_stage[s] for s in STAGES], axis=0))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mu", type=float, nargs="+", default=[10, 50, 100, 200, 300])
    ap.add_argument("--model", type=Path, help="default: the shipped model")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--png", type=Path, help="stage times against hits (no plot by default)")
    args = ap.parse_args()
    threads = set_torch_threads()
    det = load_detector()
    rec = load_reconstructor(args.model)
    rows = {}
    for mu in args.mu:
        cfg = SimConfig(generator=GeneratorConfig(mu=mu))
        events = list(simulate(det, cfg, seed=5000 + int(mu), n_events=args.events))
        rows[f"mu{mu:g}"] = measure(rec, events, args.repeats)
    real = args.shared / REAL
    if real.with_name(real.name + "-hits.csv").exists():
        rows["real_barrel_55k"] = measure(rec, [read_event(real)], args.repeats * 3)
    print(json.dumps({"threads": threads, **rows}, indent=2))
    if args.png:
        plot(rows, args.mu, args.png)


def plot(rows: dict, mus: list[float], png: Path) -> None:
    """Each stage's median time per event against hits, simulated events only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = [v for k, v in rows.items() if k.startswith("mu")]
    hits = [v["hits"] for v in sim]
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in STAGES:
        ax.plot(hits, [max(v[f"{s}_s"], 1e-4) * 1e3 for v in sim], "o-", label=s)
    ax.plot(hits, [v["total_s"] * 1e3 for v in sim], "k--", label="total")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hits per event (MU = " + ", ".join(f"{m:g}" for m in mus) + ")")
    ax.set_ylabel("wall time per event [ms]")
    ax.set_title("The whole chain on the CPU, one event per batch")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, png)


if __name__ == "__main__":
    main()
