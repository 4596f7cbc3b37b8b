"""Graph construction on the full real barrel event (55k hits): median wall time.

The reference in the developers' brief (then): a naive NumPy windowed builder takes 0.21 s
on these CPUs, HEP.TrkX's pandas one 2.1 s.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/graph_real.py [--repeats 10]
(the candidate search runs on ``GraphConfig.threads`` Python threads, 2 by default, which
OMP_NUM_THREADS does not limit; ``bench/graph_profile.py`` times it beside the naive
reference in one process)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.io.trackml import read_event
from streamtrk.recon.graph import build_graph

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args()
    prefix = args.shared / "data/trackml/qallse_ez-1.0_hpt-1.0_no_truth/event000001000"
    h = read_event(prefix).hits
    det = load_detector()
    call = (h.x, h.y, h.z, h.volume_id, h.layer_id, np.array([0, len(h)]), det)
    g = build_graph(*call)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        build_graph(*call)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "hits": len(h),
                "edges": g.num_edges,
                "edges_per_hit": g.num_edges / len(h),
                "median_s": float(np.median(times)),
                "min_s": float(np.min(times)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
