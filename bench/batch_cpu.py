"""Seconds per event against batch size on the CPU: where batching stops paying.

The shipped model reconstructs the same ``--events`` simulated events (seed 7) in batches
of 1, 2, 4, ... events, for each ``--mu``; one warm-up call first; threads as a daemon
sets them (OpenMP workers waiting passively, torch on the CPUs this process may use).
Prints seconds per event, in all and by stage, per batch size. The daemon's default
``max_batch_hits`` on the CPU (``streamtrk.service.serve.CPU_BATCH_HITS``) comes from here.

Run: .venv/bin/python bench/batch_cpu.py [--mu 10 50 200] [--events 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from streamtrk.threads import set_torch_threads, wait_passively


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mu", type=float, nargs="+", default=[10, 50, 200])
    ap.add_argument("--events", type=int, default=16, help="events per MU (a power of 2)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    wait_passively()  # before torch starts its OpenMP runtime, as `streamtrk serve` does
    set_torch_threads(0)

    from streamtrk.detector import load_detector
    from streamtrk.recon.load import load_reconstructor
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    det = load_detector()
    rec = load_reconstructor()
    out = []
    for mu in args.mu:
        events = list(simulate(det, SimConfig(generator=GeneratorConfig(mu=mu)), 7, args.events))
        hits = sum(len(e.hits) for e in events) / len(events)
        rec.reconstruct(events[:1])
        size = 1
        while size <= args.events:
            stages: dict[str, float] = {}
            t0 = time.perf_counter()
            for k in range(0, args.events, size):
                for stage, s in rec.reconstruct(events[k : k + size]).timings.items():
                    stages[stage] = stages.get(stage, 0.0) + s
            total = (time.perf_counter() - t0) / args.events
            row = {"mu": mu, "hits_per_event": hits, "batch": size, "seconds_per_event": total}
            row |= {f"{k}_s": v / args.events for k, v in stages.items()}
            out.append(row)
            print(
                f"MU={mu:g} ({hits:,.0f} hits) batch {size:2d} ({size * hits:,.0f} hits): "
                f"{total:.3f} s/event; "
                + ", ".join(f"{k} {v / args.events:.3f}" for k, v in stages.items())
            )
            size *= 2
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
