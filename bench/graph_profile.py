"""Where ``build_graph``'s time goes, side by side with the naive NumPy reference.

On one event (default: the real barrel event 1000, 55k hits) in one process, interleaved:
the naive windowed doublet builder of ``../shared/bench/naive_graph_reference.py``
(adjacent barrel layers only), ``build_graph`` as it is, and its two stages called one by
one (``prepare_search``: grid cells, queries and their windows; ``search_arrays``: the
candidate search in chunks); the staged edges are checked identical to ``build_graph``'s.

Run: PYTHONPATH=. .venv/bin/python bench/graph_profile.py [--repeats 7] [--threads 1]
       [--stk FILE --event K]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig, build_graph, prepare_search, search_arrays

ROOT = Path(__file__).resolve().parents[1]
REAL = "data/trackml/qallse_ez-1.0_hpt-1.0_no_truth/event000001000"


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
    assert spec is not None and spec.loader is not None
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
    times: dict[str, list[float]] = {}
    naive_edges = None
    for _ in range(args.repeats):  # interleaved, so that load changes hit all alike
        if naive_hits is not None:
            t0 = time.perf_counter()
            naive_edges = naive.build(*naive_hits)
            times.setdefault("naive reference", []).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_graph(*call)
        t1 = time.perf_counter()
        ctx, _, _ = prepare_search(*call)
        t2 = time.perf_counter()
        i, j, _ = search_arrays(ctx)
        t3 = time.perf_counter()
        times.setdefault("build_graph", []).append(t1 - t0)
        times.setdefault("  prepare_search: cells, queries, windows", []).append(t2 - t1)
        times.setdefault("  search_arrays: candidate search", []).append(t3 - t2)
        assert np.array_equal(_keys(np.stack([i, j]), len(h)), _keys(ref.edge_index, len(h)))
    print(f"{len(h)} hits, {ref.num_edges} edges", end="")
    if naive_edges is not None:
        print(f" (naive reference: {naive_edges.shape[1]} edges, adjacent barrel pairs only)")
    else:
        print()
    for name, v in times.items():
        print(f"{name:45s} median {np.median(v) * 1e3:7.1f} ms  min {np.min(v) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
