"""Time to simulate one MU=200 event on one core (median over events).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/sim_speed.py [--events 10] [--mu 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate_event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--mu", type=float, default=200.0)
    args = ap.parse_args()
    det = load_detector()
    cfg = SimConfig(generator=GeneratorConfig(mu=args.mu))
    times, hits = [], []
    for seed in range(args.events):
        t0 = time.perf_counter()
        ev = simulate_event(det, cfg, np.random.default_rng(seed))
        times.append(time.perf_counter() - t0)
        hits.append(len(ev.hits))
    print(
        json.dumps(
            {
                "mu": args.mu,
                "events": args.events,
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "median_seconds_per_event": round(float(np.median(times)), 3),
                "max_seconds_per_event": round(float(np.max(times)), 3),
                "mean_hits_per_event": int(np.mean(hits)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
