"""What simulated events use of the work budget, and how fast a pile of hits is refused.

Per MU, per hit of each event: doublet candidates, doublets and pruning's triplet
candidates (the three quantities ``streamtrk.recon.budget.Budget`` bounds), the largest
over the events against the default budget; then the seconds the chain takes to refuse
(or, under the budget, to reconstruct) an event of ``k`` hits piled at one point of each of
four barrel layers (median of 3); then, each in a fresh process, the seconds and the peak
RSS while reconstructing (after a warm-up; Linux's ``clear_refs``) of a MU=200 event alone
and with a pile just within the budget (``--within``, k hits a layer).

    PYTHONPATH=. .venv/bin/python bench/budget.py [--events 2] [--within 165] [--json out.json]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def pile(det, k: int, first_id: int = 0) -> Hits:
    layers = np.nonzero(det.kind == BARREL)[0][:4]
    n = 4 * k
    columns = {
        "hit_id": first_id + np.arange(n),
        "x": np.repeat(det.r[layers], k).astype(np.float32),
        **{c: np.zeros(n, np.float32) for c in ("y", "z")},
        "module_id": np.zeros(n, np.int32),
        "volume_id": np.repeat(det.volume_id[layers], k).astype(np.int32),
        "layer_id": np.repeat(det.layer_id[layers], k).astype(np.int32),
    }
    return Hits.from_columns(columns)


def one(k: int) -> None:
    """Reconstruct a MU=200 event (seed 9) with ``k`` hits a layer piled into it; print
    seconds, peak RSS (MiB), the outcome and the stages' seconds as JSON."""
    det = load_detector()
    event = next(iter(simulate(det, SimConfig(), 9, 1)))
    if k:
        extra = pile(det, k, first_id=int(event.hits.hit_id.max()) + 1)
        columns = {c: np.concatenate([getattr(event.hits, c), getattr(extra, c)]) for c in
                   ("hit_id", "x", "y", "z", "volume_id", "layer_id", "module_id")}  # fmt: skip
        event = Event(1, 1, Hits.from_columns(columns))
    rec = load_reconstructor()
    rec.reconstruct([next(iter(simulate(det, SimConfig(generator=GeneratorConfig(mu=5)), 1, 1)))])
    print(json.dumps({"k": k, "hits": len(event.hits)} | reconstructed_alone(rec, event)))


def reconstructed_alone(rec: Any, event: Event) -> dict[str, Any]:
    """Reconstruct ``event`` alone (after a collection; the peak RSS counted from here:
    Linux's ``clear_refs``): seconds, the outcome (reconstructed, or what it passed), the
    stages' seconds, and the process's RSS before and at its peak (MiB)."""
    gc.collect()
    status = Path("/proc/self/status")

    def kib(field: str) -> int:
        return next(int(x.split()[1]) for x in status.read_text().split("\n") if x[:6] == field)

    before = kib("VmRSS:") / 1024
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here (Linux)
    t0, stages = time.perf_counter(), {}
    try:
        stages = rec.reconstruct([event]).timings
        outcome = "reconstructed"
    except EventTooDense as e:
        outcome = str(e)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "outcome": outcome, "stages": stages,
            "rss_before_mib": before, "peak_rss_mib": kib("VmHWM:") / 1024}  # fmt: skip


def usage(det, event: Event) -> dict[str, float]:
    cols, offsets = batch_columns([event])
    ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    q, b = expand_ranges(ctx.b_lo, ctx.b_hi + 1)
    lo_c, hi_c = ctx.slots(q, b)
    graph = batch_graph([event], det)
    g, usable, t = triplet_inputs(graph, PruneConfig(), det)
    _, _, lo, hi = triplet_candidates(g, usable, t)
    n = len(event.hits)
    return {
        "candidates": float((hi_c - lo_c).sum()) / n,
        "edges": graph.num_edges / n,
        "triplets": float(np.maximum(hi - lo, 0).sum()) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2)
    ap.add_argument("--within", type=int, default=165, help="hits a layer of the pile")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a fresh process's part
    args = ap.parse_args()
    if args.one is not None:
        one(args.one)
        return
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
    print("\n| hits piled (4 layers x k) | refused by | seconds (median of 3) |")
    print("| --- | --- | --- |")
    refusals = {}
    for k in (40, 150, 2000, 20000):
        event, times, what = Event(1, 1, pile(det, k)), [], ""
        for _ in range(3):
            t0 = time.perf_counter()
            try:
                rec.reconstruct([event])
                what = "not refused: reconstructed"
            except EventTooDense as e:
                what = e.whats[0]
            times.append(time.perf_counter() - t0)
        refusals[k] = {"what": what, "seconds": float(np.median(times))}
        print(f"| {4 * k:,} ({k}) | {what} | {np.median(times):.3f} |")
    out["piles"] = refusals
    print(
        "\n| MU=200 event (seed 9) | hits | seconds | peak RSS reconstructing (MiB) | outcome "
        "| stages (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    within = []
    for k in (0, args.within):
        cmd = [sys.executable, __file__, "--one", str(k)]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        within.append(row)
        name = "alone" if k == 0 else f"with {4 * k} hits piled ({k} a layer)"
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stages"].items())
        print(f"| {name} | {row['hits']:,} | {row['seconds']:.2f} | {row['peak_rss_mib']:.0f} | "
              f"{row['outcome']} | {stages} |")  # fmt: skip
    out["within"] = within
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
