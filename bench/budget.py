"""What simulated events use of the work budget, and how fast a pile of hits is refused.

Per MU, per hit of each event: doublet candidates, doublets and pruning's triplet
candidates (the three quantities ``streamtrk.recon.budget.Budget`` bounds), the largest
over the events against the default budget; then the seconds the chain takes to refuse
an event of ``k`` hits piled at one point of each of four barrel layers (median of 3).

    PYTHONPATH=. .venv/bin/python bench/budget.py [--events 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from streamtrk.detector import BARREL, load_detector
from streamtrk.event import Event, Hits
from streamtrk.recon.budget import Budget, EventTooDense
from streamtrk.recon.graph import GraphConfig, batch_columns, batch_graph, prepare_search
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.prune import PruneConfig, triplet_candidates, triplet_inputs
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.xp import expand_ranges


def pile(det, k: int) -> Event:
    layers = np.nonzero(det.kind == BARREL)[0][:4]
    n = 4 * k
    columns = {
        "hit_id": np.arange(n),
        "x": np.repeat(det.r[layers], k),
        **{c: np.zeros(n) for c in ("y", "z", "module_id")},
        "volume_id": np.repeat(det.volume_id[layers], k),
        "layer_id": np.repeat(det.layer_id[layers], k),
    }
    return Event(1, 1, Hits.from_columns(columns))


def usage(det, event: Event) -> dict[str, float]:
    cols, offsets = batch_columns([event])
    ctx, _, _ = prepare_search(*cols.values(), offsets, det, GraphConfig())
    q, b = expand_ranges(ctx.b_lo, ctx.b_hi + 1)
    graph = batch_graph([event], det)
    g, usable, t = triplet_inputs(graph, PruneConfig(), det)
    _, _, lo, hi = triplet_candidates(g, usable, t)
    n = len(event.hits)
    return {
        "candidates": float(ctx.candidates(q, b).sum()) / n,
        "edges": graph.num_edges / n,
        "triplets": float(np.maximum(hi - lo, 0).sum()) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    det = load_detector()
    budget = Budget()
    limits = {
        "candidates": budget.candidates_per_hit,
        "edges": budget.edges_per_hit,
        "triplets": budget.triplets_per_hit,
    }
    out: dict[str, object] = {"budget": limits, "allowance": budget.allowance, "mu": {}}
    print("| MU | hits/event | candidates/hit | doublets/hit | triplet candidates/hit |")
    print("| --- | --- | --- | --- | --- |")
    for mu in (10, 50, 200, 300, 400):
        cfg = SimConfig(generator=GeneratorConfig(mu=mu))
        events = list(simulate(det, cfg, 6000 + mu, args.events))
        rows = [usage(det, ev) for ev in events]
        worst = {k: max(r[k] for r in rows) for k in limits}
        hits = int(np.mean([len(ev.hits) for ev in events]))
        out["mu"][mu] = {"hits": hits, **worst}  # type: ignore[index]
        cells = " | ".join(f"{worst[k]:.1f} ({limits[k] / worst[k]:.0f}x)" for k in limits)
        print(f"| {mu} | {hits:,} | {cells} |")
    rec = load_reconstructor()
    print("\n| hits piled (4 layers x k) | refused by | seconds to refuse (median of 3) |")
    print("| --- | --- | --- |")
    refusals = {}
    for k in (40, 150, 2000, 20000):
        event, times, what = pile(det, k), [], ""
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                rec.reconstruct([event])
                what = "not refused"
            except EventTooDense as e:
                what = e.what
            times.append(time.perf_counter() - t0)
        refusals[k] = {"what": what, "seconds": float(np.median(times))}
        print(f"| {4 * k:,} ({k}) | {what} | {np.median(times):.3f} |")
    out["piles"] = refusals
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
