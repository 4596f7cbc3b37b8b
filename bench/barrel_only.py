"""Why the GNN finds fewer true segments on the real event than in simulation.

The shared real event holds barrel hits only; the network was trained on whole events. This
scores the shipped model's barrel-to-barrel target edges (pT >= 1 GeV) by |eta| of the inner
hit on (a) the real barrel event, (b) a simulated MU=200 event (seed 3000) and (c) the same
simulated event cut to its barrel hits, and prints the table as JSON.

Run: .venv/bin/python bench/barrel_only.py
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.event import Event, Truth
from streamtrk.io.trackml import read_event
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.recon.truth import edge_labels
from streamtrk.sim.simulate import SimConfig, simulate

BARREL = (8, 13, 17)
ETA_BINS = ((0.0, 1.0), (1.0, 1.5), (1.5, 4.0))
REAL = "data/trackml/qallse_ez-0.5_hpt-1.0/event000001000"  # under --shared


def barrel_only(ev: Event) -> Event:
    """``ev`` with its barrel hits only (and their truth)."""
    assert ev.truth is not None
    keep = np.nonzero(np.isin(ev.hits.volume_id, BARREL))[0]
    truth = Truth(ev.truth.hits.take(keep), ev.truth.particles)
    return Event(ev.run, ev.event, ev.hits.take(keep), truth)


def edge_efficiency(rec: Reconstructor, ev: Event) -> dict[str, float]:
    """Fraction of barrel-to-barrel target edges above threshold, overall and by |eta|."""
    res = rec.reconstruct([ev])
    ei, ok = res.graph.edge_index, res.scores > rec.threshold
    target = edge_labels(ev, ei, 1.0) | edge_labels(ev, ei[::-1], 1.0)
    vol = ev.hits.volume_id
    target &= np.isin(vol[ei[0]], BARREL) & np.isin(vol[ei[1]], BARREL)
    h = ev.hits
    eta = np.abs(np.arcsinh(h.z / np.hypot(h.x, h.y)))[ei[0]]
    out = {"target_edges": int(target.sum()), "all": float(ok[target].mean())}
    for lo, hi in ETA_BINS:
        sel = target & (eta >= lo) & (eta < hi)
        out[f"eta_{lo}-{hi}"] = float(ok[sel].mean())
        out[f"eta_{lo}-{hi}_edges"] = int(sel.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = ap.parse_args()
    real = args.shared / REAL
    rec = load_reconstructor()
    sim = next(iter(simulate(load_detector(), SimConfig(), 3000, 1)))
    rows = {
        "sim": edge_efficiency(rec, sim),
        "sim_barrel_only": edge_efficiency(rec, barrel_only(sim)),
    }
    if Path(f"{real}-hits.csv").exists():
        rows["real_barrel"] = edge_efficiency(rec, read_event(real))
    else:
        print(f"no real event at {real} (--shared): its row is left out", file=sys.stderr)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
