"""How the candidate search's work spreads over GPU threads, counted on the CPU: per query
(inner hit, outer layer) its candidates (the slots of its phi window in each of its bins),
and what a warp of 32 threads does with them when a thread takes a query (the kernels until
2026-12-04: a warp runs as long as its longest query) or a candidate (since).

A proxy of the search kernels' balance, not a GPU time. The lane use of a thread per query
is the candidates over 32 x the longest query of each warp of 32 consecutive queries.

    .venv/bin/python bench/search_balance.py              # 2 MU=200 events
    .venv/bin/python bench/search_balance.py --mu 60 --events 4
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()

import argparse
import json

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig, batch_columns, prepare_search
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

WARP = 32


def balance(candidates: np.ndarray) -> dict[str, float]:
    """The spread of ``candidates`` per query, and a warp's lane use when a thread takes a
    query (candidates of 32 consecutive queries over 32 x their largest)."""
    n = len(candidates) // WARP * WARP
    warps = candidates[:n].reshape(-1, WARP)
    longest = warps.max(axis=1)
    return {
        "queries": len(candidates),
        "candidates": int(candidates.sum()),
        "mean_per_query": float(candidates.mean()),
        **{f"p{q}_per_query": float(np.percentile(candidates, q)) for q in (50, 90, 99)},
        "max_per_query": int(candidates.max()),
        "share_without_candidates": float((candidates == 0).mean()),
        "lane_use_thread_per_query": float(warps.sum() / (WARP * longest.sum())),
        "longest_query_per_warp_mean": float(longest.mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mu", type=float, default=200.0)
    p.add_argument("--events", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    det = load_detector()
    sim = SimConfig(generator=GeneratorConfig(mu=args.mu))
    out = {"mu": args.mu, "events": []}
    for ev in simulate(det, sim, seed=args.seed, n_events=args.events):
        cols, offsets = batch_columns([ev])
        ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
        q, lo, hi = ctx.bin_slots(0, len(ctx.qi))
        per_query = np.bincount(q, weights=hi - lo, minlength=len(ctx.qi)).astype(np.int64)
        out["events"].append({"hits": int(offsets[-1]), **balance(per_query)})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
