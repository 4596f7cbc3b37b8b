"""Edge-classifier engines and precisions on the CPU (``engine = auto`` is eager fp32 there:
no compilation at start-up or reload, and the fp32 scores the threshold was set on). Times
the shipped model's scorer on simulated MU=200 events (seed 3000), on the graph the chain
gives it (after its card's pruning), for each ``ENGINE:PRECISION`` given (first call,
which compiles, and each later event).

Run: .venv/bin/python bench/cpu_engines.py eager:fp32 eager:bf16 compile:fp32
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import time

from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import default_model_path
from streamtrk.sim.simulate import SimConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("variants", nargs="+", help="ENGINE:PRECISION, e.g. eager:fp32")
    ap.add_argument("--events", type=int, default=2)
    args = ap.parse_args()
    rec = load_reconstructor(default_model_path())
    assert isinstance(rec.scorer, EngineScorer)  # what load_reconstructor gives
    events = list(simulate(rec.detector, SimConfig(), 3000, args.events))
    graphs = [rec.reconstruct([ev]).graph for ev in events]
    rows = []
    for variant in args.variants:
        engine, precision = variant.split(":")
        scorer = EngineScorer(rec.scorer.model, "cpu", engine, precision)
        t0 = time.perf_counter()
        scorer(graphs[0], events[:1])
        first = time.perf_counter() - t0
        seconds = []
        for g, ev in zip(graphs, events, strict=True):
            t0 = time.perf_counter()
            scorer(g, [ev])
            seconds.append(round(time.perf_counter() - t0, 3))
        rows.append(
            {
                "engine": engine,
                "precision": precision,
                "edges_per_event": [g.num_edges for g in graphs],
                "first_call_s": round(first, 1),
                "seconds_per_event": seconds,
            }
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
