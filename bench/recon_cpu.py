"""CPU time per event of graph construction, track building and fit against pileup.

Oracle edge scores (from truth) stand in for the GNN, so that only the stages around it
are timed. Prints JSON and writes a PNG of time against hits.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/recon_cpu.py [--events 5] [--png docs/recon-cost.png]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.io.trackml import read_event
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("graph", "tracks", "fit")


def measure(rec: Reconstructor, events: list, repeats: int) -> dict:
    """Median seconds per stage over events x repeats (one event per batch)."""
    rec.reconstruct(events[:1])  # warm-up: tables, imports
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    cpu = []
    for ev in events:
        for _ in range(repeats):
            c0 = time.process_time()
            res = rec.reconstruct([ev])
            cpu.append(time.process_time() - c0 - res.timings["gnn"])
            for s in STAGES:
                per_stage[s].append(res.timings[s])
    return {
        "hits": float(np.mean([len(e.hits) for e in events])),
        "edges": float(np.mean([rec.reconstruct([e]).graph.num_edges for e in events])),
        **{f"{s}_s": float(np.median(v)) for s, v in per_stage.items()},
        "total_s": float(np.median(np.sum([per_stage[s] for s in STAGES], axis=0))),
        "cpu_total_s": float(np.median(cpu)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mu", type=float, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "recon-cost.png")
    args = ap.parse_args()
    det = load_detector()
    rec = Reconstructor.oracle()
    rows = {}
    for mu in args.mu:
        cfg = SimConfig(generator=GeneratorConfig(mu=mu))
        events = list(simulate(det, cfg, seed=5000 + int(mu), n_events=args.events))
        rows[f"mu{mu:g}"] = measure(rec, events, args.repeats)
    real = args.shared / "data" / "trackml" / "qallse_ez-0.5_hpt-1.0" / "event000001000"
    if real.with_name(real.name + "-hits.csv").exists():
        rows["real_barrel_27k"] = measure(rec, [read_event(real)], args.repeats * 3)
    print(json.dumps({"omp_num_threads": os.environ.get("OMP_NUM_THREADS"), **rows}, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = [v for k, v in rows.items() if k.startswith("mu")]
    hits = [v["hits"] for v in sim]
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in STAGES:
        ax.plot(hits, [v[f"{s}_s"] * 1e3 for v in sim], "o-", label=s)
    ax.plot(hits, [v["total_s"] * 1e3 for v in sim], "k--", label="total")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hits per event (mu = 10, 50, 100, 200)")
    ax.set_ylabel("CPU time per event [ms]")
    ax.set_title("Reconstruction cost without the GNN (1 event per batch)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=100)


if __name__ == "__main__":
    main()
