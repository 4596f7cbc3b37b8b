"""The magnetic field the particles of real TrackML event 1000 felt, measured from their
truth momenta: between two consecutive hits of a particle its momentum turns by
dphi = -q B ds / (c pT) (positive charges turn clockwise in +Bz), so each pair of hits
gives B = -q pT dphi / (c ds), ds the transverse chord. The median over pairs cancels the
scattering at the first hit (zero on average). Primaries (vertex within 1 mm of the beam
line) of pT >= 1 GeV, hits at least 20 mm apart in radius; medians by the pair's middle |z|
and radius, and by charge. Validation only: the shipped detector and fit assume a uniform
field (``bfield_tesla`` of streamtrk/data/trackml_detector.toml), nothing is tuned on this.

Run: PYTHONPATH=. .venv/bin/python bench/field_from_truth.py [--shared ../shared]
       [--event simulated.stk]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from streamtrk.detector import GEV_PER_TESLA_MM
from streamtrk.io.events import read_events
from streamtrk.xp import wrapped_angle

EVENT = "data/trackml/qallse_ez-0.5_hpt-1.0/event000001000"


def field_per_pair(event_path: Path) -> dict[str, np.ndarray]:
    """B (T) of each usable pair of a particle's consecutive hits, with the pair's middle
    |z| and radius (mm) and the particle's charge."""
    event = next(iter(read_events(event_path)))
    if event.truth is None:
        raise SystemExit(f"{event_path}: no truth")
    hits, particles = event.truth.hits, event.truth.particles
    pid = np.asarray(hits.particle_id)
    x, y, z = (np.asarray(getattr(hits, k), float) for k in ("tx", "ty", "tz"))
    px, py = (np.asarray(getattr(hits, k), float) for k in ("tpx", "tpy"))
    r = np.hypot(x, y)
    order = np.lexsort((r, pid))
    order = order[pid[order] > 0]
    a, b = order[:-1], order[1:]
    a, b = a[pid[a] == pid[b]], b[pid[a] == pid[b]]
    ids = np.asarray(particles.particle_id)
    by_id = np.argsort(ids)
    row = by_id[np.searchsorted(ids, pid[a], sorter=by_id)]
    q = np.asarray(particles.q, float)[row]
    vertex_r = np.hypot(np.asarray(particles.vx, float), np.asarray(particles.vy, float))[row]
    pt0 = np.hypot(np.asarray(particles.px, float), np.asarray(particles.py, float))[row]
    pt = 0.5 * (np.hypot(px[a], py[a]) + np.hypot(px[b], py[b]))
    dphi = wrapped_angle(np.arctan2(py[b], px[b]) - np.arctan2(py[a], px[a]))
    chord = np.hypot(x[b] - x[a], y[b] - y[a])
    keep = (vertex_r < 1) & (pt0 >= 1) & (np.abs(r[b] - r[a]) > 20)
    with np.errstate(divide="ignore", invalid="ignore"):
        field = -q * pt * dphi / (GEV_PER_TESLA_MM * chord)
    return {
        "field": field[keep],
        "abs_z": np.abs(0.5 * (z[a] + z[b]))[keep],
        "r": (0.5 * (r[a] + r[b]))[keep],
        "q": q[keep],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared"))
    ap.add_argument(
        "--event",
        type=Path,
        help="another event with truth (a control: a "
        "simulated recording's first event gives the simulation's uniform field)",
    )
    args = ap.parse_args()
    pairs = field_per_pair(args.event or args.shared / EVENT)
    field = pairs["field"]
    print(f"all pairs: median B {np.median(field):.3f} T ({field.size} pairs)")
    for name, key, edges in (
        ("|z|", "abs_z", (0, 300, 600, 1100)),
        ("r", "r", (0, 100, 200, 400, 700, 1100)),
    ):
        for lo, hi in itertools.pairwise(edges):
            sel = (pairs[key] >= lo) & (pairs[key] < hi)
            print(
                f"  middle {name} {lo:4d}-{hi:4d} mm: median B {np.median(field[sel]):.3f} T"
                f" ({sel.sum()} pairs)"
            )
    for charge in (1, -1):
        sel = pairs["q"] == charge
        print(f"  q = {charge:+d}: median B {np.median(field[sel]):.3f} T ({sel.sum()} pairs)")


if __name__ == "__main__":
    main()
