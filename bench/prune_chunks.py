"""Pruning on the CPU against the chunk size of its triplet cuts: time and peak memory.

Simulated events (seeds 5000 + MU, used by no tuning), the graphs the shipped chain builds;
``prune_edges`` with ``prune.TRIPLET_CHUNK`` set to each size in turn (``0``: one piece, as
on the GPU and as the CPU did before chunking), interleaved event by event and repeat by
repeat so that load changes hit all alike; every mask checked against the default's. Peak memory is
NumPy's allocations during one call (``tracemalloc``), on the first event.

Run: PYTHONPATH=. .venv/bin/python bench/prune_chunks.py [--mu 200 300] [--events 3]
       [--repeats 4] [--chunks 0 16384 65536 262144]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import time
import tracemalloc

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon import prune
from streamtrk.recon.load import load_reconstructor
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

ONE_PIECE = 1 << 62


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mu", type=float, nargs="+", default=[200, 300])
    ap.add_argument("--events", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 16384, 65536, 262144])
    args = ap.parse_args()
    det = load_detector()
    rec = load_reconstructor(device="cpu")
    cfg = rec.prune
    assert cfg is not None, "the shipped chain prunes"
    out: dict[str, dict[str, dict[str, float]]] = {}
    for mu in args.mu:
        gen = SimConfig(generator=GeneratorConfig(mu=mu))
        events = list(simulate(det, gen, seed=5000 + int(mu), n_events=args.events))
        graphs = [rec.reconstruct([ev]).built for ev in events]
        refs = [prune.prune_edges(g, cfg, det) for g in graphs]
        seconds: dict[int, list[float]] = {c: [] for c in args.chunks}
        peak: dict[int, float] = {}
        for rep in range(args.repeats):
            for graph, ref in zip(graphs, refs, strict=True):
                order = args.chunks if rep % 2 == 0 else args.chunks[::-1]
                for chunk in order:
                    prune.TRIPLET_CHUNK = chunk or ONE_PIECE
                    t0 = time.perf_counter()
                    mask = prune.prune_edges(graph, cfg, det)
                    seconds[chunk].append(time.perf_counter() - t0)
                    assert np.array_equal(mask, ref)
        for chunk in args.chunks:
            prune.TRIPLET_CHUNK = chunk or ONE_PIECE
            tracemalloc.start()
            prune.prune_edges(graphs[0], cfg, det)
            peak[chunk] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        out[f"mu{mu:g}"] = {
            str(c or "one piece"): {
                "edges": float(np.mean([g.num_edges for g in graphs])),
                "median_ms": 1000 * float(np.median(seconds[c])),
                "max_ms": 1000 * float(np.max(seconds[c])),
                "peak_mb": peak[c] / 1e6,
            }
            for c in args.chunks
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
