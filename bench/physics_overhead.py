"""Cost of the daemon's physics metrics against reconstruction, per MU=200 event, CPU.

Each event is reconstructed once with the shipped model (one event per batch, as a CPU
daemon at MU=200 runs), then ``PhysicsMetrics.observe`` is timed ``--repeats`` times on
its result: what the worker adds per batch after the replies are queued. The beam-spot
estimate runs at scrape time, not per batch; it is timed on a full window. Prints JSON.

Run: .venv/bin/python bench/physics_overhead.py [--events 4] [--mu 200] [--repeats 20]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import time

import numpy as np
from prometheus_client import CollectorRegistry

from streamtrk.detector import load_detector
from streamtrk.recon.load import load_reconstructor
from streamtrk.service.beamspot import WINDOW_TRACKS, BeamSpotWindow
from streamtrk.service.physics import Observation, PhysicsMetrics
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=4)
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=31415)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    det = load_detector()
    rec = load_reconstructor()
    physics = PhysicsMetrics(CollectorRegistry())
    cfg = SimConfig(generator=GeneratorConfig(mu=args.mu))
    events = list(simulate(det, cfg, args.seed, args.events))
    rec.reconstruct(events[:1])  # warm-up
    rows = []
    for ev in events:
        t0 = time.perf_counter()
        result = rec.reconstruct([ev])
        recon_s = time.perf_counter() - t0

        def observe(result=result, ev=ev) -> None:
            physics.observe(Observation.of([ev], result, rec))

        rows.append(
            {
                "hits": len(ev.hits),
                "edges": result.graph.num_edges,
                "tracks": len(result.tracks[0]),
                "recon_s": recon_s,
                "recon_without_gnn_s": recon_s - result.timings["gnn"],
                "physics_s": median_seconds(observe, args.repeats),
            }
        )

    window = BeamSpotWindow()
    rng = np.random.default_rng(0)
    n = WINDOW_TRACKS
    event = np.arange(n) // 2000  # ten MU=200 events
    window.add(rng.normal(0, 0.2, n), rng.normal(0, 6, n), rng.uniform(-np.pi, np.pi, n), event)
    one = np.zeros(1)

    def estimate() -> None:
        window.add(one, one, one, one + n)  # a change, so that nothing is cached
        window.estimate()

    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    print(
        json.dumps(
            {
                "mu": args.mu,
                "events": args.events,
                "per_event": rows,
                "median": med,
                "physics_over_recon": med["physics_s"] / med["recon_s"],
                "physics_over_recon_without_gnn": med["physics_s"] / med["recon_without_gnn_s"],
                "beam_spot_estimate_s": median_seconds(estimate, args.repeats),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
