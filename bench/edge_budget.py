"""Edge budget of the pruning stage: edges per event into the GNN against edge efficiency.

For every pruning variant (and scale of its windows) on simulated events: edges per event
kept, ``pruned_edge_efficiency`` (central pT >= 1 GeV target segments that are in the built
graph and survive pruning, over all central target segments: the population of
``graph_edge_efficiency``), the same relative to the graph (``retention``), the ``_all``
variant (every production vertex) and the pruning time per event (best of ``--repeats``).
Draws efficiency against edges per event (``--png``).

Validation events only for checks (seed 2000); the windows come from training seeds
(``bench/prune_windows.py``); seed 3000 (test) needs ``--final``, once choices are frozen.

``--gnn N`` also times the shipped model's scorer on the first N events' graphs, whole and
pruned (default variant); ``--chain`` runs the full reconstruction with the shipped model
on whole and on pruned graphs (pruned edges scored 0) and prints the physics metrics.

Run: PYTHONPATH=. .venv/bin/python bench/edge_budget.py --seed 2000 --events 10 \
       --png docs/edge-budget.png --json out/edge_budget.json [--gnn 2] [--chain]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.eval.evaluate import edge_counts
from streamtrk.event import Event
from streamtrk.recon.graph import Graph, build_graph, select_edges, without_isolated_hits
from streamtrk.recon.prune import PruneConfig, prune_edges

ROOT = Path(__file__).resolve().parents[1]
GNN_US_PER_EDGE = 2.8  # shipped model on this CPU (bench/RESULTS.md, issue 4)
DEFAULT_NAME = "quadruplets x1.5"  # PruneConfig() as shipped


def variants(scales: list[float]) -> dict[str, PruneConfig | None]:
    """Variants by name; names ending in `` xS`` are one curve over the window scale S."""
    base = replace(PruneConfig(), scale=1.0, min_hits=3)
    out: dict[str, PruneConfig | None] = {
        "none (graph as built)": None,
        "pair windows only": replace(base, triplet_cuts=False),
        "triplets: dtheta, dkappa": replace(base, kappa_cut=False, pair_cuts=False),
        "triplets: + kappa": replace(base, pair_cuts=False),
    }
    for s in scales:
        out[f"triplets + kappa + pairs x{s:g}"] = replace(base, scale=s)
    for s in scales:
        out[f"quadruplets x{s:g}"] = replace(base, scale=s, min_hits=4)
    assert replace(base, scale=1.5, min_hits=4) == PruneConfig()  # DEFAULT_NAME, any --scales
    return out


def load_events(args: argparse.Namespace) -> Iterator[Event]:
    if args.trackml:
        from streamtrk.io.trackml import read_event

        yield read_event(args.trackml)
        return
    if args.stk:
        from streamtrk.io.recording import iter_events

        yield from islice(iter_events(args.stk), args.events)
        return
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    sim = SimConfig(generator=GeneratorConfig(mu=args.mu))
    yield from simulate(load_detector(), sim, args.seed, args.events)


def graph_of(ev: Event) -> Graph:
    h = ev.hits
    return build_graph(
        h.x, h.y, h.z, h.volume_id, h.layer_id, np.array([0, len(h)]), load_detector()
    )


class MLPFilter:
    """The learned doublet filter of ``bench/mlp_filter.py`` at one threshold."""

    def __init__(self, path: Path, k: int) -> None:
        data = np.load(path)
        self.weights = {n: data[n] for n in data.files if n[0] in "wb"}
        self.threshold = float(data["thresholds"][k])
        self.retention = float(data["retentions"][k])

    def mask(self, g: Graph) -> np.ndarray:
        from mlp_filter import features, forward

        return forward(self.weights, features(g, load_detector())) >= self.threshold


def measure(events: list[Event], graphs: list[Graph], cfgs: dict, repeats: int) -> list[dict]:
    """One row per variant: edges per event, efficiencies, pruning seconds per event."""
    det = load_detector()
    rows = []
    base = [edge_counts(ev, g.edge_index) for ev, g in zip(events, graphs, strict=True)]
    for name, cfg in cfgs.items():
        tot: dict[str, float] = {"seconds": 0.0, "max_edges": 0}
        for ev, g, b in zip(events, graphs, base, strict=True):
            mask: np.ndarray | None
            if cfg is None:
                mask, best = np.ones(g.num_edges, bool), 0.0
            else:
                best, mask = np.inf, None
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    if isinstance(cfg, MLPFilter):
                        mask = cfg.mask(g)
                    else:
                        mask = prune_edges(g, cfg, det)
                    best = min(best, time.perf_counter() - t0)
                assert mask is not None, "--repeats must be at least 1"
            c = edge_counts(ev, g.edge_index[:, mask])
            for k, v in c.items():
                tot[k] = tot.get(k, 0) + v
            for k in ("central_found", "targets_found"):
                tot[f"graph_{k}"] = tot.get(f"graph_{k}", 0) + b[k]
            tot["seconds"] += best
            tot["max_edges"] = max(tot["max_edges"], c["edges"])
        n = len(events)
        rows.append(
            {
                "variant": name,
                "edges_per_event": tot["edges"] / n,
                "max_edges": int(tot["max_edges"]),
                "pruned_edge_efficiency": tot["central_found"] / tot["central"],
                "pruned_edge_efficiency_all": tot["targets_found"] / tot["targets"],
                "retention": tot["central_found"] / tot["graph_central_found"],
                "retention_all": tot["targets_found"] / tot["graph_targets_found"],
                "graph_edge_efficiency": tot["graph_central_found"] / tot["central"],
                "graph_edge_efficiency_all": tot["graph_targets_found"] / tot["targets"],
                "seconds_per_event": tot["seconds"] / n,
                "gnn_seconds_estimate": tot["edges"] / n * GNN_US_PER_EDGE * 1e-6,
            }
        )
        r = rows[-1]
        print(
            f"{name:34s} edges/event {r['edges_per_event']:9.0f} (max {r['max_edges']:7d})  "
            f"eff {r['pruned_edge_efficiency']:.4%}  all {r['pruned_edge_efficiency_all']:.4%}  "
            f"retention {r['retention']:.4%}  {r['seconds_per_event']:.3f} s",
            flush=True,
        )
    return rows


def time_gnn(events: list[Event], graphs: list[Graph], cfg: PruneConfig, repeats: int) -> dict:
    """Seconds of the shipped model's scorer (best of ``repeats``) on whole, pruned, and
    pruned and compacted (hits without edges dropped) graphs; torch's thread count as set."""
    import torch

    from streamtrk.recon.load import load_reconstructor

    scorer = load_reconstructor().scorer
    det = load_detector()
    out: dict[str, list[float]] = {}
    with torch.inference_mode():
        scorer(graphs[0], events[:1])  # warm-up
        for ev, g in zip(events, graphs, strict=True):
            pg = select_edges(g, prune_edges(g, cfg, det))
            cg = without_isolated_hits(pg)
            same = np.allclose(scorer(cg, [ev]), scorer(pg, [ev]), atol=1e-5)
            out.setdefault("compact_scores_equal", []).append(float(same))
            for key, gg in (("whole", g), ("pruned", pg), ("compact", cg)):
                best = np.inf
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    scorer(gg, [ev])
                    best = min(best, time.perf_counter() - t0)
                out.setdefault(key, []).append(best)
                out.setdefault(f"edges_{key}", []).append(gg.num_edges)
                out.setdefault(f"hits_{key}", []).append(gg.num_nodes)
    res = {k: float(np.mean(v)) for k, v in out.items()}
    res["torch_threads"] = torch.get_num_threads()
    print("GNN (shipped model):", json.dumps(res))
    return res


class PrunedScorer:
    """Scores only the edges that survive pruning (on the compacted graph: hits without
    edges dropped); the others get 0, below any threshold. Pruning is timed apart."""

    def __init__(self, scorer, cfg: PruneConfig) -> None:
        self.scorer, self.cfg, self.seconds = scorer, cfg, 0.0

    def __call__(self, graph: Graph, events):
        t0 = time.perf_counter()
        mask = prune_edges(graph, self.cfg, load_detector())
        self.seconds += time.perf_counter() - t0
        scores = np.zeros(graph.num_edges, dtype=np.float32)
        small = without_isolated_hits(select_edges(graph, mask))  # edges keep their order
        scores[mask] = np.asarray(self.scorer(small, events))
        return scores


def chain(events: list[Event], cfg: PruneConfig) -> dict:
    from streamtrk.eval.evaluate import evaluate
    from streamtrk.recon.load import load_reconstructor

    rec = load_reconstructor()
    rec.prune = None  # "whole" scores the graph as built; "pruned" prunes in PrunedScorer
    keys = (
        "tracking_efficiency",
        "tracking_efficiency_all",
        "fake_rate",
        "duplicate_rate",
        "gnn_edge_efficiency",
        "gnn_edge_purity",
        "seconds_per_event",
        "stage_seconds",
    )
    out = {}
    pruned = PrunedScorer(rec.scorer, cfg)
    for name, scorer in (("whole", rec.scorer), ("pruned", pruned)):
        rec.scorer = scorer
        rep = evaluate(rec, events).report()
        out[name] = {k: rep[k] for k in keys}
    out["pruned"]["prune_seconds_per_event"] = pruned.seconds / len(events)
    print("chain with the shipped model:", json.dumps(out, indent=1))
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in (
        (axes[0], "pruned_edge_efficiency", "central targets (r < 10 mm)"),
        (axes[1], "pruned_edge_efficiency_all", "all targets (any vertex)"),
    ):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            g = r["variant"].split(" x")[0]
            groups.setdefault(g, []).append(r)
        for g, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["edges_per_event"])
            x = [r["edges_per_event"] / 1000 for r in rs]
            y = [100 * r[key] for r in rs]
            ax.plot(x, y, "o-" if len(rs) > 1 else "s", label=g)
            if len(rs) > 1:
                for r, xx, yy in zip(rs, x, y, strict=True):
                    ax.annotate(
                        r["variant"].split(" x")[1],
                        (xx, yy),
                        fontsize=7,
                        xytext=(3, -9),
                        textcoords="offset points",
                    )
        d = next((r for r in rows if r["variant"] == DEFAULT_NAME), None)
        if d is not None:
            ax.plot(
                d["edges_per_event"] / 1000,
                100 * d[key],
                "*",
                ms=16,
                color="black",
                label=f"default ({DEFAULT_NAME})",
                zorder=0,
            )
        ax.axvline(150, color="grey", ls="--", lw=1)
        if key == "pruned_edge_efficiency":
            ax.axhline(99.5, color="grey", ls="--", lw=1)
            ax.set_ylim(98.8, 100.0)
        else:
            graph_all = 100 * rows[0]["graph_edge_efficiency_all"]
            ax.axhline(graph_all - 1.0, color="grey", ls="--", lw=1)
            ax.set_ylim(graph_all - 2.0, graph_all + 0.3)
        ax.set_xscale("log")
        ticks = [30, 50, 100, 150, 200, 300, 500, 800]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("edges per event into the GNN (thousands)")
        ax.set_ylabel(f"edge efficiency, {label} [%]")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stk", type=Path, help="read events from a recording instead")
    ap.add_argument("--trackml", type=Path, help="one TrackML event (prefix) with truth")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--mu", type=float, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.7, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--png", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--gnn", type=int, default=0, help="time the shipped GNN on N events")
    ap.add_argument("--torch-threads", type=int, help="torch threads for --gnn and --chain")
    ap.add_argument("--chain", action="store_true", help="full chain, shipped model")
    ap.add_argument("--only", nargs="*", help="measure only these variants (names)")
    ap.add_argument("--final", action="store_true", help="allow the test seed 3000")
    ap.add_argument("--mlp", type=Path, help="also the learned filter (bench/mlp_filter.py)")
    args = ap.parse_args()
    if (args.seed == 3000 or args.trackml) and not args.stk and not args.final:
        raise SystemExit("test seed 3000 and real data only with --final, once choices are frozen")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    t0 = time.perf_counter()
    events = list(load_events(args))
    graphs = [graph_of(ev) for ev in events]
    hits = np.mean([len(ev.hits) for ev in events])
    print(f"{len(events)} events, {hits:.0f} hits, graphs in {time.perf_counter() - t0:.0f} s")
    cfgs: dict = variants(args.scales)
    if args.mlp:
        n = len(np.load(args.mlp)["thresholds"])
        for k in range(n):
            f = MLPFilter(args.mlp, k)
            cfgs[f"MLP filter x{f.retention:g}"] = f
    if args.only is not None:
        if unknown := set(args.only) - set(cfgs):
            raise SystemExit(f"--only: no variant {sorted(unknown)}; there are {list(cfgs)}")
        cfgs = {k: v for k, v in cfgs.items() if k in args.only}
    rows = measure(events, graphs, cfgs, args.repeats)
    result: dict = {"events": len(events), "hits_per_event": hits, "rows": rows}
    if args.gnn:
        result["gnn"] = time_gnn(
            events[: args.gnn], graphs[: args.gnn], PruneConfig(), args.repeats
        )
    if args.chain:
        result["chain"] = chain(events, PruneConfig())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.png:
        src = (
            args.trackml.name
            if args.trackml
            else args.stk.name
            if args.stk
            else f"seed {args.seed}"
        )
        plot(rows, args.png, f"Pruning: simulated MU={args.mu:g}, {len(events)} events ({src})")


if __name__ == "__main__":
    main()
