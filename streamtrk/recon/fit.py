"""Helix fit of track candidates, vectorised over all tracks (NumPy or CuPy).

Per track: an algebraic circle fit in x-y (Kasa: linear least squares on
x^2 + y^2 + D x + E y + F = 0, on coordinates centred per track), then a straight-line fit
of z against the transverse arc length s from the perigee. All per-track sums are
``bincount`` reductions, so there is no loop over tracks.

Conventions (solenoid field along +z): ``charge`` from the sense of rotation; ``phi`` the
direction at the perigee; ``d0 = charge * (R - |c|)`` with ``c`` the circle centre, so d0 > 0
when a positive track's circle encloses the beam line; ``z0`` the z at the perigee;
``chi2`` the chi-square per degree of freedom from the detector resolutions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamtrk.detector import BARREL, GEV_PER_TESLA_MM, Detector
from streamtrk.event import TRACK_PARAM_DTYPES
from streamtrk.xp import Array, array_module


def fit_tracks(
    offsets: Array,
    hit_index: Array,
    x: Array,
    y: Array,
    z: Array,
    layer: Array,
    det: Detector,
) -> dict[str, Array]:
    """Helix parameters of CSR tracks (the keys and dtypes of ``TRACK_PARAM_DTYPES``)."""
    xp = array_module(offsets)
    n_tracks = len(offsets) - 1
    if n_tracks == 0:
        return {k: xp.zeros(0, dtype=dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    sizes = offsets[1:] - offsets[:-1]
    tid = xp.repeat(xp.arange(n_tracks), sizes) if xp is np else _track_ids(offsets, xp)
    hx = x[hit_index].astype(xp.float64)
    hy = y[hit_index].astype(xp.float64)
    hz = z[hit_index].astype(xp.float64)
    n = sizes.astype(xp.float64)

    def tsum(v: Array) -> Array:
        return xp.bincount(tid, weights=v, minlength=n_tracks)

    # Circle: centre the points per track, solve the 3x3 normal equations per track.
    mx, my = tsum(hx) / n, tsum(hy) / n
    u, v = hx - mx[tid], hy - my[tid]
    w = u * u + v * v
    suu, suv, svv, su, sv = tsum(u * u), tsum(u * v), tsum(v * v), tsum(u), tsum(v)
    a = xp.stack(
        [xp.stack([suu, suv, su], -1), xp.stack([suv, svv, sv], -1), xp.stack([su, sv, n], -1)],
        -2,
    )
    rhs = -xp.stack([tsum(u * w), tsum(v * w), tsum(w)], -1)
    a = a + xp.eye(3) * 1e-9  # guards degenerate (collinear) tracks
    d, e, f = xp.moveaxis(xp.linalg.solve(a, rhs[..., None])[..., 0], -1, 0)
    xc, yc = mx - d / 2, my - e / 2
    radius = xp.sqrt(xp.maximum(d * d / 4 + e * e / 4 - f, 1e-12))

    # Sense of rotation from the first to the last hit (ordered along the track).
    first, last = hit_index[offsets[:-1]], hit_index[offsets[1:] - 1]
    cross = (x[first] - xc) * (y[last] - yc) - (y[first] - yc) * (x[last] - xc)
    h = xp.where(cross < 0, -1.0, 1.0)  # -1: clockwise
    charge = (-h * np.sign(det.bfield)).astype(xp.int32)
    dist_c = xp.hypot(xc, yc)
    theta_p = xp.arctan2(-yc, -xc)  # perigee, seen from the centre
    phi = xp.mod(theta_p + h * np.pi / 2 + np.pi, 2 * np.pi) - np.pi
    d0 = charge * (radius - dist_c)

    # Line in s-z: s = R * turning angle from the perigee.
    theta = xp.arctan2(hy - yc[tid], hx - xc[tid])
    turn = xp.mod(h[tid] * (theta - theta_p[tid]) + np.pi, 2 * np.pi) - np.pi
    s = radius[tid] * turn
    ss, sz, s1, z1 = tsum(s * s), tsum(s * hz), tsum(s), tsum(hz)
    den = n * ss - s1 * s1
    den = xp.where(xp.abs(den) > 1e-9, den, 1e-9)
    tan_l = (n * sz - s1 * z1) / den
    z0 = (z1 - tan_l * s1) / n

    # Fit quality from the layer resolutions (r-phi; z on barrels, r * tan(lambda) on disks).
    res_a, res_b = xp.asarray(det.res_a), xp.asarray(det.res_b)
    barrel = xp.asarray(det.kind == BARREL)
    lay = layer[hit_index]
    rphi = (xp.hypot(hx - xc[tid], hy - yc[tid]) - radius[tid]) / res_a[lay]
    sig_z = xp.where(barrel[lay], res_b[lay], res_b[lay] * xp.abs(tan_l[tid]) + 1e-3)
    dz = (hz - z0[tid] - tan_l[tid] * s) / sig_z
    ndf = xp.maximum(2 * n - 5, 1)
    chi2 = (tsum(rphi * rphi) + tsum(dz * dz)) / ndf

    params = {
        "pt": GEV_PER_TESLA_MM * abs(det.bfield) * radius,
        "eta": xp.arcsinh(tan_l),
        "phi": phi,
        "d0": d0,
        "z0": z0,
        "charge": charge,
        "chi2": chi2,
    }
    return {k: params[k].astype(dt) for k, dt in TRACK_PARAM_DTYPES.items()}


def _track_ids(offsets: Array, xp: Any) -> Array:
    """Track index of every hit of CSR tracks (device version of ``repeat``)."""
    total = int(offsets[-1])
    return xp.searchsorted(offsets[1:], xp.arange(total), side="right")
