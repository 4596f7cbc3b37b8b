"""How much smaller the track parameters' errors would be with a generalised least-squares fit.

The helix fit (``streamtrk.recon.fit``) weights each hit by 1 / (its measurement variance
plus a diagonal share of the scattering), and reports the standard errors of that fit: the
diagonal of A^-1 (J^T W V W J) A^-1, A = J^T W J, with the hits' full covariance V (a
scatter moves every later hit; the pulls show it right, bench/RESULTS.md). A fit weighted
with V^-1 itself (generalised least squares, what a Kalman filter computes) has the
smallest errors a linear fit of these hits can have: (J^T V^-1 J)^-1. This compares the two
track by track, at the fit's own linearisation and with its own V (the arguments of its
``_variances``, taken as the fit makes them), on the simulated helices of
``bench/fit_resolution.py``. It changes nothing in the fit; the figures say what
a GLS fit would gain, not what an implementation would reach (it would also weight the
inner hits more, so a wrong inner hit would cost more).

Prints, per pT (|eta| < 1) and per |eta| bin (at 1 and 10 GeV), the median over tracks of
sigma_GLS / sigma_now for q/pT (kappa), phi, d0, tan(lambda) (eta) and z0.

Run: PYTHONPATH=. .venv/bin/python bench/fit_gls_gain.py [--tracks 500]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import streamtrk.recon.fit as fit
from streamtrk.detector import load_detector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_resolution import measure  # the same helices as the resolution bench

CASES = [(pt, (0.0, 1.0)) for pt in (0.5, 1.0, 2.0, 5.0, 10.0, 100.0)]
CASES += [(pt, eta) for pt in (1.0, 10.0) for eta in ((1.0, 2.0), (2.0, 2.5), (2.5, 3.0))]


def ratios(args: tuple[Any, ...], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per track, sigma_GLS / sigma_now of each parameter, from ``_variances``' arguments
    (derivatives, weights, measurement variances, scatters, track offsets); tracks of one
    size at a time, as stacked dense matrices."""
    jac, w, var, scatters, offsets, _ = args
    sizes = np.diff(offsets)
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for n in np.unique(sizes):
        starts = offsets[:-1][sizes == n]
        rows = starts[:, None] + np.arange(n)  # (tracks, n) hit indices
        big_j = np.stack([j[rows] for j in jac], -1)  # (tracks, n, parameters)
        v = np.zeros((len(starts), n, n))
        v[:, np.arange(n), np.arange(n)] = var[rows]
        below = np.tril(np.ones((n, n)), -1)  # hit j after the scatter at hit k
        for kick, arms in scatters:
            d = sum(a[rows][:, :, None] * b[rows][:, None, :] for a, b in arms)
            k = d * below * kick[rows][:, None, :]
            v += k @ np.swapaxes(k, -1, -2)
        wj = w[rows][:, :, None] * big_j
        a_inv = np.linalg.inv(np.swapaxes(big_j, -1, -2) @ wj)
        now = a_inv @ (np.swapaxes(wj, -1, -2) @ v @ wj) @ a_inv
        gls = np.linalg.inv(np.swapaxes(big_j, -1, -2) @ np.linalg.solve(v, big_j))
        for i, name in enumerate(names):
            out[name].append(np.sqrt(gls[:, i, i] / now[:, i, i]))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", type=int, default=500, help="helices per row (default 500)")
    args = ap.parse_args()
    det = load_detector()
    captured: list[tuple[Any, ...]] = []
    variances = fit._variances

    def capture(*a: Any) -> Any:  # the fit's own V, as it builds it (CPU arrays)
        captured.append(a[:6])
        return variances(*a)

    fit._variances = capture
    rows = []
    for pt, eta in CASES:
        captured.clear()
        measure(det, args.tracks, pt, eta, 11)
        circle, line = captured
        gain = ratios(circle, ("q_over_pt", "phi", "d0")) | ratios(line, ("eta", "z0"))
        medians = {k: round(float(np.median(v)), 3) for k, v in gain.items()}
        rows.append({"pt": pt, "abs_eta": list(eta), "sigma_gls_over_now": medians})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
