"""Where the helices of particles made away from the beam line pass it: the simulation
against the real particles of TrackML event 1000.

Per class of production vertex distance from the beam line (vr < 1, 1-5, 5-10 mm), among
the particles with pT >= 1 GeV and at least 5 hits (the reconstructable ones of
``../shared/docs/trackml-scoring.md``; both count the whole detector's hits, the real list
with the double hits of overlapping modules: the hits cut removes one displaced particle of
each, 2026-12-04): how many an event has, from how many production vertices, the median
|z0| of their perigees, and how many pass the beam line outside |z0| <= 30 mm, the
luminous region the shipped graph's z0 cut admits (``bench/missed_particles.py``:
particles outside it are lost at the graph stage).
``p`` is the chance that none of the real ones would be outside were each outside
independently at the simulated share; particles of one vertex are not independent, so ``p
per vertex`` counts each real vertex once. Real: the complete particle list of event 1000
(``full_event000001000``; validation only, nothing is tuned on it); simulated: MU=200
events of the default simulation.

Run: PYTHONPATH=. .venv/bin/python bench/displaced_pointing.py [--events 10] [--seed 2024]
       [--shared ../shared] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.eval.evaluate import Evaluation
from streamtrk.event import Particles
from streamtrk.io.trackml import read_particles
from streamtrk.sim.simulate import SimConfig, simulate

ROOT = Path(__file__).resolve().parents[1]
REAL = "data/trackml/full_event000001000/event000001000-particles.csv"
CLASSES = ((0.0, 1.0), (1.0, 5.0), (5.0, 10.0))  # vr, mm
Z0_MAX = 30.0  # mm: the shipped graph's z0_max


def pointing(events: list[Particles], bfield: float) -> list[dict]:
    """One row per vr class over the particles of ``events``: particles per event, their
    production vertices (distinct positions within an event), median |z0| (mm), and how
    many have |z0| > ``Z0_MAX``."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("pt", "nhits", "vr", "z0", "v")}
    for k, particles in enumerate(events):
        p = particles.to(np)
        cols["z0"].append(Evaluation(bfield=bfield).perigee_truth(p, p.particle_id)["z0"])
        for name in ("pt", "nhits", "vr"):
            cols[name].append(getattr(p, name))
        cols["v"].append(np.stack([np.full(len(p), k), p.vx, p.vy, p.vz], 1))
    pt, nhits, vr, z0, v = (np.concatenate(cols[k]) for k in ("pt", "nhits", "vr", "z0", "v"))
    chosen, z0 = (pt >= 1.0) & (nhits >= 5), np.abs(z0)
    rows = []
    for lo, hi in CLASSES:
        sel = chosen & (vr >= lo) & (vr < hi)
        rows.append({
            "vr_mm": f"{lo:g}-{hi:g}",
            "particles": int(sel.sum()),
            "vertices": len(np.unique(v[sel], axis=0)),
            "per_event": float(sel.sum()) / len(events),
            "median_abs_z0_mm": float(np.median(z0[sel])) if sel.any() else None,
            "outside": int((z0[sel] > Z0_MAX).sum()),
        })  # fmt: skip
    return rows


def compare(shared: Path, events: int, seed: int) -> dict:
    """The real event's rows and those of ``events`` simulated ones, with ``p`` per class
    (and ``p_vertices``: the same counting each real production vertex once, for particles
    that share one are not independent)."""
    det = load_detector()
    real = pointing([read_particles(shared / REAL)], det.bfield)
    simulated = simulate(det, SimConfig(), seed, events)
    sim = pointing([ev.truth.particles for ev in simulated if ev.truth is not None], det.bfield)
    for r, s in zip(real, sim, strict=True):
        share = s["outside"] / s["particles"] if s["particles"] else 0.0
        none_outside = r["outside"] == 0
        r["p"] = (1 - share) ** r["particles"] if none_outside else None
        r["p_vertices"] = (1 - share) ** r["vertices"] if none_outside else None
    return {"real": real, "simulated": sim, "events": events, "seed": seed}


def table(out: dict) -> str:
    lines = [
        "| particles | vr (mm) | per event | vertices | median \\|z0\\| (mm) | \\|z0\\| > 30 mm "
        "| p | p per vertex |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("real", "simulated"):
        for r in out[name]:
            median = "-" if r["median_abs_z0_mm"] is None else f"{r['median_abs_z0_mm']:.1f}"
            share = f"{r['outside']} ({100 * r['outside'] / max(r['particles'], 1):.0f}%)"
            p, pv = ("" if r.get(k) is None else f"{r[k]:.1e}" for k in ("p", "p_vertices"))
            lines.append(
                f"| {name} | {r['vr_mm']} | {r['per_event']:.1f} | {r['vertices']} | {median} "
                f"| {share} | {p} | {pv} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10, help="simulated MU=200 events")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    out = compare(args.shared, args.events, args.seed)
    print(table(out))
    if args.json:
        args.json.write_text(json.dumps(out | {"table": table(out)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
