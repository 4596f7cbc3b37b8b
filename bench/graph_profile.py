"""Where ``build_graph``'s time goes, side by side with the naive NumPy reference.

On one event (default: the real barrel event 1000, 55k hits) in one process: the naive
windowed doublet builder of ``../shared/bench/naive_graph_reference.py`` (adjacent barrel
layers only), ``build_graph`` as it is, and ``build_graph`` with its candidate search timed
stage by stage (an instrumented copy of ``_Search.run``; the edges are checked identical).
Staged copies are made from the current source (timers at anchor lines); edges are
checked identical to ``build_graph``'s.

Run: PYTHONPATH=. .venv/bin/python bench/graph_profile.py [--repeats 7] [--threads 1]
       [--stk FILE --event K]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import textwrap
import time
from pathlib import Path

import numpy as np

import streamtrk.recon.graph as G
from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig, build_graph

ROOT = Path(__file__).resolve().parents[1]
REAL = "data/trackml/qallse_ez-1.0_hpt-1.0_no_truth/event000001000"
STAGES: dict[str, list[float]] = {}


CHUNKS: dict[str, float] = {}  # the search's stages, summed over the chunks of one build


def _tick(name: str, t0: float) -> float:
    t1 = time.perf_counter()
    if name.startswith("search:"):
        CHUNKS[name] = CHUNKS.get(name, 0.0) + t1 - t0
    else:
        STAGES.setdefault(name, []).append(t1 - t0)
    return t1


def staged_run(self, q, b):
    """``_Search.run`` with timers between its steps (same operations, same order)."""
    xp, cfg = self.xp, self.cfg
    t0 = time.perf_counter()
    row = (self.event[self.qi[q]] * self.n_layers + self.outer[q]) * self.nb + b
    row *= 2 * self.nphi
    lo = self.cell_start[row + self.p_lo[q]]
    cand, pos = G.expand_ranges(lo, self.cell_start[row + self.p_hi[q] + 1])
    qq = q[cand]
    t0 = _tick("search: cell ranges, expand candidates", t0)
    ri, zi = self.ri[qq], self.zi[qq]
    dr = self.r_sorted[pos] - ri
    dphi = self.phi_sorted[pos] - self.centre[qq]
    slope = cfg.phi_slope_max(self.det.bfield)
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = zi - ri * (self.z_sorted[pos] - zi) / dr
    keep = (dr > 0) & (xp.abs(dphi) <= slope * dr + cfg.phi_tolerance)
    keep &= xp.abs(z0) <= self.reach[qq]
    t0 = _tick("search: phi window and z0 reach", t0)
    k = xp.nonzero(keep)[0]
    qq, pos, dr, dphi, z0 = qq[k], pos[k], dr[k], dphi[k], z0[k]
    dz = self.z_sorted[pos] - self.zi[qq]
    i, j = self.qi[qq], self.hit_of[pos]
    t0 = _tick("search: compaction, hit ids", t0)
    deta = xp.arcsinh(dz / dr) - self.eta0[j]
    cap = cfg.z0_lever_max * xp.maximum(self.sigma[i], self.sigma[j])
    sig = xp.minimum(self.z0_error(i, j, dr, dz), cap)
    z0_cut = xp.minimum(cfg.z0_max + cfg.z0_sigmas * sig, cfg.z0_limit)
    k = xp.nonzero((xp.abs(z0) <= z0_cut) & (xp.abs(deta) <= cfg.deta_max))[0]
    t0 = _tick("search: eta and z0-error cuts", t0)
    dr, dphi = dr[k], dphi[k]
    features = xp.empty((len(k), 6), dtype=xp.float32)
    features[:, 0] = dr / 100.0
    features[:, 1] = dphi / 0.01
    features[:, 2] = dz[k] / 100.0
    features[:, 3] = deta[k] / 0.1
    features[:, 4] = (dphi / dr) / slope
    features[:, 5] = z0[k] / cfg.z0_limit
    _tick("search: edge features", t0)
    counts = CHUNKS.get("counts", (0, 0, 0))
    CHUNKS["counts"] = tuple(
        a + b for a, b in zip(counts, (len(q), len(cand), len(k)), strict=True)
    )
    return i[k], j[k], features


# Anchors in build_graph's source: a timer goes in before each; the time up to an anchor is
# booked to the stage named with it (the stage that the code before the anchor does).
ANCHORS = [
    ('    u = xp.where(t["barrel"][lay0], z, r)', "hits: r, phi, event, layer"),
    ("    # Queries: (inner hit, layer pair)", "grid: cells, sort, cell starts"),
    ("    q_all, b_all = expand_ranges(b_lo, b_hi + 1)", "queries: (hit, pair) + windows"),
    ("    n_chunks = 1 if", "queries: expand to (query, bin)"),
    ("    i, j, edge_features = (xp.concatenate", "candidate search (run, in chunks)"),
    ("    return Graph(", "concatenation, node features"),
]


def staged_build_graph():
    """``build_graph`` with timers inserted at ``ANCHORS`` (None if the source changed)."""
    src = textwrap.dedent(inspect.getsource(G.build_graph))
    for line, name in ANCHORS:
        if line not in src:
            return None
        src = src.replace(
            line, f"    _tick({name!r}, _T[-1]); _T.append(time.perf_counter())\n" + line, 1
        )
    src = src.replace(
        '    """Build the doublet graph', '    _T.append(time.perf_counter())\n    """Build', 1
    )
    ns = dict(vars(G))
    ns.update(_tick=_tick, _T=[0.0], time=time)
    exec(compile(src, "<staged build_graph>", "exec"), ns)
    return ns["build_graph"]


def _keys(edge_index: np.ndarray, n: int) -> np.ndarray:
    return np.sort(edge_index[0].astype(np.int64) * n + edge_index[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--stk", type=Path, help="a simulated recording instead of the real event")
    ap.add_argument("--event", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="GraphConfig.threads")
    args = ap.parse_args()
    prefix = args.shared / REAL
    spec = importlib.util.spec_from_file_location(
        "naive", args.shared / "bench/naive_graph_reference.py"
    )
    naive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(naive)
    if args.stk:
        from itertools import islice

        from streamtrk.io.recording import iter_events

        h = next(islice(iter_events(args.stk), args.event, None)).hits
        naive_hits = None
    else:
        from streamtrk.io.trackml import read_event

        h = read_event(prefix).hits
        naive_hits = naive.load(str(prefix))
    det = load_detector()
    cfg = GraphConfig(threads=args.threads)
    call = (h.x, h.y, h.z, h.volume_id, h.layer_id, np.array([0, len(h)]), det, cfg)
    ref = build_graph(*call)
    original = G._Search.run
    times: dict[str, list[float]] = {}
    staged = staged_build_graph() or build_graph
    variants = [("build_graph", build_graph, original), ("build_graph, staged", staged, staged_run)]
    for _ in range(args.repeats):  # interleaved, so that load changes hit all alike
        if naive_hits is not None:
            t0 = time.perf_counter()
            naive_edges = naive.build(*naive_hits)
            times.setdefault("naive reference", []).append(time.perf_counter() - t0)
        for name, fn, run in variants:
            G._Search.run = run
            try:
                t0 = time.perf_counter()
                g = fn(*call)
                times.setdefault(name, []).append(time.perf_counter() - t0)
            finally:
                G._Search.run = original
            for key, value in CHUNKS.items():
                STAGES.setdefault(key, []).append(value)
            CHUNKS.clear()
            assert np.array_equal(_keys(g.edge_index, len(h)), _keys(ref.edge_index, len(h)))
    print(f"{len(h)} hits, {ref.num_edges} edges", end="")
    if naive_hits is not None:
        print(f" (naive reference: {naive_edges.shape[1]} edges, adjacent barrel pairs only)")
    else:
        print()
    for name, v in times.items():
        print(f"{name:45s} median {np.median(v) * 1e3:7.1f} ms  min {np.min(v) * 1e3:7.1f} ms")
    print("stages (staged copies of build_graph and _Search.run, min over repeats):")
    for name, v in STAGES.items():
        if name == "counts":
            print(f"  counts: (query, bin) pairs, candidates, edges: {v[0]}")
        else:
            print(f"  {name:43s} {np.min(v) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
