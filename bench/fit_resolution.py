"""The helix fit alone on simulated helices: resolution and bias by pT and by |eta|.

Primary helices from the beam line through the shipped detector (propagated by the simulator,
multiple scattering included unless ``--no-material``), their crossings smeared by the layer
resolutions, fitted as true tracks (every hit of a particle, in order). Per pT (|eta| < 1) and
per |eta| bin (at 10 GeV): the half-width of the central 68% of the errors on q/pT (1/GeV),
d0 and z0 (mm), the median fitted / true pT - 1, the median chi2/ndf, the shares of wrong
charges and of eta off by more than 0.3, the pulls of the five parameters (half-widths of the
central 68% of error / the fit's standard error sigma_*: 1 where the standard errors are
right), and for each reported correlation (corr_*) the correlation of the two pulls over the
tracks beside the median reported one, and the share of tracks reporting the other sign.
With ``--holes N`` each helix's first N crossings lose their hits, their material still
crossed (a dead or inefficient inner layer): the fit places scattering at its hits only.
The fit's own tests pin the same behaviour; this prints the figures for bench/RESULTS.md.
To compare two versions of the fit, run it at both commits.

Run: PYTHONPATH=. .venv/bin/python bench/fit_resolution.py [--tracks 3000] [--no-material]
[--holes N]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import numpy as np

from streamtrk.detector import Detector, load_detector
from streamtrk.recon.fit import fit_tracks
from streamtrk.sim.generator import GeneratedParticles
from streamtrk.sim.propagate import propagate
from streamtrk.sim.simulate import smear

PTS = (0.2, 0.3, 0.5, 1.0, 10.0, 100.0, 1000.0, 10_000.0)
ETA_BINS = ((0.0, 1.0), (1.0, 2.0), (2.0, 2.5), (2.5, 3.0), (3.0, 3.5), (3.5, 4.0))


CORRELATED = (("q_over_pt", "phi"), ("q_over_pt", "d0"), ("phi", "d0"), ("eta", "z0"))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two pulls over the tracks, those beyond 5 left out (tails)."""
    core = (np.abs(a) < 5) & (np.abs(b) < 5)
    return float(np.corrcoef(a[core], b[core])[0, 1])


def half_width(x: np.ndarray) -> float:
    low, high = np.percentile(x, [16, 84])
    return float(high - low) / 2


def measure(
    det: Detector, n: int, pt: float, eta_range: tuple[float, float], seed: int, holes: int = 0
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    eta = rng.uniform(*eta_range, n) * np.where(rng.random(n) < 0.5, 1, -1)
    phi = rng.uniform(-np.pi, np.pi, n)
    q = np.where(rng.random(n) < 0.5, 1, -1)
    vz = rng.normal(0, 6, n)
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1)
    parts = GeneratedParticles(np.stack([np.zeros(n), np.zeros(n), vz], 1), mom, q.astype(np.int32))
    c = propagate(det, parts, rng, max_turns=0.5)
    x, y, z = smear(det, c, rng).T
    order = np.lexsort((c.order, c.particle))
    who, first, counts = np.unique(c.particle[order], return_index=True, return_counts=True)
    order = order[np.arange(len(order)) - np.repeat(first, counts) >= holes]  # the holes' hits
    who, counts = np.unique(c.particle[order], return_counts=True)
    keep = counts >= 3
    offsets = np.concatenate([[0], np.cumsum(counts)])
    p = fit_tracks(offsets, order, x, y, z, c.layer, det)
    p = {k: v[keep].astype(np.float64) for k, v in p.items()}
    who = who[keep]
    errors = {
        "q_over_pt": p["charge"] / p["pt"] - q[who] / pt,
        "eta": p["eta"] - eta[who],
        "phi": np.mod(p["phi"] - phi[who] + np.pi, 2 * np.pi) - np.pi,
        "d0": p["d0"],
        "z0": p["z0"] - vz[who],
    }
    seen_reported = {
        f"{a}_{b}": [
            correlation(errors[a] / p[f"sigma_{a}"], errors[b] / p[f"sigma_{b}"]),
            float(np.median(p[f"corr_{a}_{b}"])),
        ]
        for a, b in CORRELATED
    }
    return {
        "tracks": int(keep.sum()),
        "q_over_pt_resolution": half_width(p["charge"] / p["pt"] - q[who] / pt),
        "d0_resolution_mm": half_width(p["d0"]),
        "z0_resolution_mm": half_width(p["z0"] - vz[who]),
        "pt_bias": float(np.median(p["pt"] / pt - 1)),
        "chi2_ndf_median": float(np.median(p["chi2"] / p["ndf"])),
        "charge_wrong": float(np.mean(p["charge"] != q[who])),
        "eta_off_by_0.3": float(np.mean(np.abs(errors["eta"]) > 0.3)),
        "pulls": {k: half_width(e / p[f"sigma_{k}"]) for k, e in errors.items()},
        "correlations_seen_reported": seen_reported,
        "correlation_sign_wrong": {  # tracks whose reported one has the other sign
            name: float(np.mean(np.sign(p[f"corr_{name}"]) != np.sign(seen)))
            for name, (seen, _) in seen_reported.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=3000, help="helices per row (default 3000)")
    ap.add_argument("--no-material", action="store_true", help="no multiple scattering")
    ap.add_argument("--holes", type=int, default=0, help="crossings without a hit first (0)")
    args = ap.parse_args()
    det = load_detector()
    if args.no_material:
        det = replace(det, x0=np.full(len(det), 1e-12))
    out = {
        "material": not args.no_material,
        "holes": args.holes,
        "by_pt": {
            f"{pt:g}": measure(det, args.tracks, pt, (0.0, 1.0), 11, args.holes) for pt in PTS
        },
        "by_abs_eta_at_10_gev": {
            f"{lo:g}-{hi:g}": measure(det, args.tracks, 10.0, (lo, hi), 12, args.holes)
            for lo, hi in ETA_BINS
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
