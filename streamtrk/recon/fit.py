"""Helix fit of track candidates, vectorised over all tracks (NumPy or CuPy).

Per track, a starting fit: a circle in x-y (a Gauss-Newton step on the geometric distances,
in curvature, direction and distance of closest approach to the hits' centroid, as in
Karimaki's fit: as good for a straight 1 TeV track as for a curved one; started from the
Kasa circle, linear least squares on x^2 + y^2 + D x + E y + F = 0, or from the chord where
that is worse), then a straight line of z against the transverse arc length s from the
perigee, each hit weighted by its measurement error: the circle by the r-phi resolution
``res_a`` alone; the line in z by ``res_b`` on barrels and, on disks (z exact), by the r
error ``res_b`` carried along a straight line to the origin (the r error on disks enters
the generalised least-squares step below). On
the CPU all per-track sums are ``bincount`` reductions, so there is no loop over tracks.
On the device the fit runs as kernels (``gls_filter.cu``, a thread per hit or per track
over its hits: the hits' inputs, the starting circle and line with their solves, the holes
and their rows among the hits', the per-hit terms, the least-squares sums and steps below,
the reported parameters), each checked against these array operations on its host build;
the array operations stay the CPU's.

Then one generalised least-squares step from the starting fit, weighted with the inverse of
the hits' full covariance V: the measurement errors projected on the fitted helix
(``res_a`` on the circle's normal, on disks ``res_b`` too; in z on disks ``res_b *
|tan(lambda)| * |t . r|``), and multiple scattering (Highland, p from the starting fit, path
x0 / cos(incidence) as simulated), whose scatter at a hit moves every later hit of the
track, so V is dense per track (applied by a Kalman filter along the track, never formed).
Its scatters are those at the hits and at the track's holes: the layers the starting helix
crosses from its perigee to its last hit without a hit of the track (an inefficient or dead
layer, a hit left out), rows without a measurement placed among the hits by their turn
(with the scatters at hits alone, the eta and phi pulls of helices missing their first
one or two hits were 1.3-1.7 at 0.2-10 GeV; ``bench/fit_resolution.py --holes``).
The step is taken for the circle, in Karimaki's parameters about the origin, then for the
line on the new circle. Against a fit weighted by a diagonal share of the scattering, on
simulated helices (``bench/fit_resolution.py``), the d0 and z0 errors are about a half and a
third at 0.5 GeV, and q/pT's 5-8% smaller at 0.5-1 GeV; nothing changes where the hit
resolutions dominate. The standard errors (``sigma_*``: of q/pT, eta, phi, d0, z0) are the
square roots of the diagonal of (J^T V^-1 J)^-1 and the correlations (``corr_*``) its
normalised off-diagonal terms, and the chi2 is r^T V^-1 r: on simulated tracks it follows a
chi-square with ``ndf = 2 n - 5`` degrees of freedom.

Conventions (ATLAS and ACTS perigee to the beam line, the origin of the hits given):
``charge`` from the sense of rotation and the field's (clockwise seen from +z is positive
in +B_z); ``phi`` the direction at the perigee, within +-``PHI_MAX`` (float32's nearest to
pi is above pi); ``d0`` signed by the geometry alone, in either field: the perigee is at
``d0 (-sin phi, cos phi)``, so a track from (x, y) has ``d0 = -x sin(phi) + y cos(phi)`` to
first order; in +B_z that is ``charge * (R - |c|)`` with ``c`` the circle centre (d0 > 0
when a positive track's circle encloses the beam line), in -B_z ``-charge * (R - |c|)``;
``z0`` the z at the perigee; ``chi2`` the total chi-square (not per degree of freedom, at
least 0) and ``ndf`` its degrees of freedom.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Any, NamedTuple

import numpy as np

from streamtrk.detector import BARREL, GEV_PER_TESLA_MM, PION_MASS, Detector, highland
from streamtrk.event import TRACK_PARAM_DTYPES
from streamtrk.recon.kernels import Launch, contiguous, cupy_launcher
from streamtrk.xp import (
    Array,
    array_module,
    bincount,
    csr_rows,
    lexsort,
    nonzeros,
    to_host,
    wrapped_angle,
)

_MIN_COS_INCIDENCE = 0.05  # as in the simulation
KERNELS = "gls_filter.cu"  # the fit's kernels on the GPU
GLS_MAX_STATE, GLS_MAX_COLUMNS = 5, 4  # the kernel's arrays: its GLS_MAX_M and GLS_MAX_C


def fit_tracks(
    offsets: Array,
    hit_index: Array,
    x: Array,
    y: Array,
    z: Array,
    layer: Array,
    det: Detector,
) -> dict[str, Array]:
    """Helix parameters (pt, eta, phi, d0, z0, charge), fit quality (chi2, ndf), standard
    errors (sigma_*) and correlations (corr_*) of CSR tracks whose hits are ordered along
    the track: the keys and dtypes of ``TRACK_PARAM_DTYPES``."""
    xp = array_module(offsets)
    n_tracks = len(offsets) - 1
    if n_tracks == 0:
        return {k: xp.zeros(0, dtype=dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    sizes = offsets[1:] - offsets[:-1]
    tid = csr_rows(offsets, len(hit_index))
    hx, hy, hz, res_a, res_b, x0, barrel, w = _fit_hits(hit_index, (x, y, z), layer, det)

    tsum = partial(bincount, tid, n_tracks)  # per-track sums of a per-hit array

    def normal(columns: tuple[Array, ...], res: Array, w: Array) -> tuple[Array, Array]:
        return _normal_sums(columns, res, w, tsum, xp)

    # The starting fit, weighted by the measurement errors (disks' z error from a straight
    # line to the origin), then the errors projected on it.
    circle = _fit_circle(hx, hy, w, offsets, (tsum, normal), tid, xp)
    radius = circle[2]
    h, theta_p, turn, dx, dy = _on_circle(circle, hx, hy, offsets, tsum, tid, xp)
    hits = (hx, hy, hz, res_a, res_b, barrel)
    s, n_phi, var_c, w_z = _projections(radius, turn, dx, dy, hits, tid, xp)
    tan_l, z0, cosh, p = _fit_line(s, hz, w_z, radius, det.bfield, offsets, normal)

    # Holes: the layers the starting helix crosses from its perigee to its last hit without
    # a hit of the track scatter it too, rows of their crossings among the hits' without a
    # measurement (infinite variances: no weight, their scatter moves the rows after them).
    holes = _holes((*circle, h, theta_p), (tan_l, z0), turn, layer[hit_index], offsets, tid, det)
    hole = None  # per row, whether a hole
    if holes is not None:
        hx, hy, hz, res_a, res_b, x0, barrel, offsets, tid, hole = _merged(
            (hx, hy, hz, res_a, res_b, x0, barrel), turn, holes, offsets, tid, det
        )
        tsum = partial(bincount, tid, n_tracks)
        h, theta_p, turn, dx, dy = _on_circle(circle, hx, hy, offsets, tsum, tid, xp)
        hits = (hx, hy, hz, res_a, res_b, barrel)
        s, n_phi, var_c, _ = _projections(radius, turn, dx, dy, hits, tid, xp)
        var_c = xp.where(hole, xp.inf, var_c)

    # Scattering: theta at each row's layer (Highland, p from the starting fit).
    var_z, theta, path = _scattering((tan_l, cosh, p), n_phi, s, (res_b, x0, barrel), tid, xp)
    if hole is not None:
        var_z = xp.where(hole, xp.inf, var_z)

    # Generalised least squares: one step from the starting fit (its geometry, its
    # scattering angles), weighted with the hits' full covariance V: measurement, and the
    # track's own scatters correlated along it. A scatter at hit k by theta across the track
    # turns the circle about k by theta cosh: hit j moves across by theta cosh R
    # sin(turn_j - turn_k); one by theta in the other plane tilts the line by theta cosh^2,
    # z moving by theta cosh (path_j - path_k), and changes the curvature by theta tan_l / R,
    # moving hit j across by that times (s_j - s_k)^2 / 2. Circle in Karimaki's perigee
    # parameters about the origin, then the line on the new circle's arc lengths.
    kappa, phi_k, delta = _karimaki(*circle, h, xp)  # in the track's sense: signs below
    eps, jac_c = _distances(kappa, phi_k, delta, hx, hy, tid, xp)
    step, cov_c, chi2_c = _circle_gls(
        jac_c, eps, var_c, (s, turn, theta), (radius, cosh, tan_l), offsets, tid
    )
    circle = _stepped_circle((kappa, phi_k, delta), step, xp)
    h, theta_p, turn, _, _ = _on_circle(circle, hx, hy, offsets, tsum, tid, xp)
    step_z, cov_z, chi2_z = _line_gls(
        (turn, hz, var_z, path, theta), (circle[2], z0, tan_l, cosh), offsets, tid
    )
    fitted = Fitted(circle, h, theta_p, tan_l, z0, step_z, chi2_c, chi2_z, cov_c, cov_z, sizes)
    return _parameters(fitted, det.bfield, xp)


def _holes(
    helix: tuple[Array, ...],
    line: tuple[Array, Array],
    turn: Array,
    hit_layer: Array,
    offsets: Array,
    tid: Array,
    det: Detector,
) -> Holes | None:
    """The holes of the tracks' starting helices (``helix``: circle centre, radius, sense and
    the perigee's angle from the centre; ``line``: tan(lambda), z0): each (track, layer)
    whose layer the helix crosses (a barrel within its half-length, a disk within its radii;
    a barrel's first crossing) after its perigee and before its last hit (``turn``: the
    hits', along the track from the perigee), where the track has no hit (``hit_layer``), as
    :class:`Holes`; None without any. A track is taken to come from
    the beam line: a secondary's holes before its first hit are material it never crossed.
    On the device two kernels (:func:`holes_kernel`) and one host synchronisation (their
    number)."""
    xp = array_module(turn)
    if xp is not np:
        return holes_kernel(helix, line, turn, hit_layer, offsets, det, cupy_launcher(KERNELS))
    xc, yc, radius, h, theta_p = (a[:, None] for a in helix)
    tan_l, z0 = (a[:, None] for a in line)
    barrel, r, z, half_length, r_min, r_max = _layer_surfaces(det, xp)[:, None, :]
    c2, big_r = xc * xc + yc * yc, radius
    # A barrel: r^2 = c^2 + R^2 - 2 R c cos(turn) at the turn from the perigee.
    twice_rc = 2 * big_r * xp.sqrt(c2)
    cos_b = (c2 + big_r * big_r - r * r) / xp.where(twice_rc > 0, twice_rc, 1.0)
    t_b = xp.arccos(xp.clip(cos_b, -1.0, 1.0))
    on_b = (xp.abs(cos_b) <= 1) & (twice_rc > 0) & (xp.abs(z0 + tan_l * big_r * t_b) <= half_length)
    # A disk: z = z0 + tan_l R turn.
    rise = tan_l * big_r
    t_d = (z - z0) / xp.where(rise != 0, rise, 1.0)
    r2_d = c2 + big_r * big_r - twice_rc * xp.cos(t_d)
    on_d = (rise != 0) & (r_min * r_min <= r2_d) & (r2_d <= r_max * r_max)
    t = xp.where(barrel, t_b, t_d)
    ends = offsets[1:]
    last = xp.where(ends > offsets[:-1], turn[ends - 1], -xp.inf)[:, None]
    hit = xp.zeros(t.shape, dtype=bool)
    hit[tid, hit_layer] = True
    crossed = xp.where(barrel, on_b, on_d) & (t > 0) & (t < last) & ~hit
    (flat,) = nonzeros(crossed.ravel())
    if len(flat) == 0:
        return None
    track, layer, t = flat // t.shape[1], flat % t.shape[1], t.ravel()[flat]
    angle = theta_p[track, 0] + h[track, 0] * t
    radius = radius[track, 0]
    x = xc[track, 0] + radius * xp.cos(angle)
    y = yc[track, 0] + radius * xp.sin(angle)
    return Holes(track, layer, t, x, y, z0[track, 0] + tan_l[track, 0] * radius * t)


def holes_kernel(
    helix: tuple[Array, ...],
    line: tuple[Array, Array],
    turn: Array,
    hit_layer: Array,
    offsets: Array,
    det: Detector,
    launch: Launch,
) -> Holes | None:
    """:func:`_holes` as two kernels, a thread per track: ``hole_counts``, then ``hole_rows``
    from each track's place in their running total (brought down: the one synchronisation)."""
    xp, i64, f64 = array_module(turn), np.int64, np.float64
    n_tracks = len(offsets) - 1
    args = contiguous(
        (i64(n_tracks), offsets.astype(xp.int64, copy=False), turn.astype(f64, copy=False),
         hit_layer.astype(xp.int64, copy=False),
         *(c.astype(f64, copy=False) for c in (*helix, *line)), _layer_surfaces(det, xp),
         i64(len(det.kind))),
        xp,
    )  # fmt: skip
    counts = xp.empty(n_tracks, dtype=xp.int64)
    launch("hole_counts", n_tracks, (*args, counts))
    ends = xp.cumsum(counts, dtype=xp.int64)
    total = int(to_host(ends[-1:])[0]) if n_tracks else 0
    if total == 0:
        return None
    track, layer = xp.empty(total, dtype=xp.int64), xp.empty(total, dtype=xp.int64)
    out = xp.empty((total, 4))
    launch("hole_rows", n_tracks, (*args, ends - counts, track, layer, out))
    return Holes(track, layer, out[:, 0], out[:, 1], out[:, 2], out[:, 3])


class Holes(NamedTuple):
    """Per hole (:func:`_holes`): its track, layer, turn from the perigee and position."""

    track: Array
    layer: Array
    turn: Array
    x: Array
    y: Array
    z: Array


def _merged(
    hits: tuple[Array, ...],
    turn: Array,
    holes: Holes,
    offsets: Array,
    tid: Array,
    det: Detector,
) -> tuple[Array, ...]:
    """The fit's rows: ``hits`` (x, y, z, res_a, res_b, x0, barrel) and the ``holes`` (their
    layer's errors and x0), a track's holes among its hits by turn (the hits of tracks
    without holes in their order); with the rows' offsets, their tracks and whether each is
    a hole."""
    xp = array_module(turn)
    if xp is not np:
        return merged_kernel(hits, turn, holes, offsets, det, cupy_launcher(KERNELS))
    track, t = holes.track, holes.turn
    n_hits = len(tid)
    res_a, res_b, x0, barrel = _layer_table(det, xp)[:, holes.layer]
    extra, new_offsets = _row_offsets(offsets, holes)
    with_holes = extra[tid] > 0
    slot = (xp.arange(n_hits) - offsets[:-1][tid]).astype(xp.float64)
    key = xp.concatenate([xp.where(with_holes, turn, slot), t])
    rows_tid = xp.concatenate([tid, track])
    order = lexsort((key, rows_tid.astype(xp.float64)))
    hole_rows = (holes.x, holes.y, holes.z, res_a, res_b, x0, barrel > 0)
    columns = [xp.concatenate([a, b])[order] for a, b in zip(hits, hole_rows, strict=True)]
    hole = xp.concatenate([xp.zeros(n_hits, dtype=bool), xp.ones(len(track), dtype=bool)])
    return (*columns, new_offsets, rows_tid[order], hole[order])


def _row_offsets(offsets: Array, holes: Holes) -> tuple[Array, Array]:
    """Per track, its holes' count, and the offsets (int64) of its rows, hits and holes."""
    xp = array_module(offsets)
    extra = bincount(holes.track, len(offsets) - 1)
    sizes = offsets[1:] - offsets[:-1] + extra
    return extra, xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(sizes, dtype=xp.int64)])


def merged_kernel(
    hits: tuple[Array, ...], turn: Array, holes: Holes, offsets: Array, det: Detector,
    launch: Launch,
) -> tuple[Array, ...]:  # fmt: skip
    """:func:`_merged` as one kernel (``hole_merge``), a thread per track."""
    xp, i64, f64 = array_module(turn), np.int64, np.float64
    n_tracks, n_rows = len(offsets) - 1, len(turn) + len(holes.track)
    _, new_offsets = _row_offsets(offsets, holes)
    *columns, barrel = hits
    values = (*columns, barrel.astype(bool, copy=False), turn, holes.turn, holes.x, holes.y)
    args = contiguous(
        (i64(n_tracks), offsets.astype(xp.int64, copy=False), new_offsets,
         *(v if v.dtype == bool else v.astype(f64, copy=False) for v in values),
         holes.z.astype(f64, copy=False), holes.layer.astype(xp.int64, copy=False),
         _layer_table(det, xp), i64(len(det.kind)), i64(n_rows)),
        xp,
    )  # fmt: skip
    out = xp.empty((6, n_rows))
    row_barrel, hole = xp.empty(n_rows, dtype=bool), xp.empty(n_rows, dtype=bool)
    row_track = xp.empty(n_rows, dtype=xp.int64)
    launch("hole_merge", n_tracks, (*args, out, row_barrel, row_track, hole))
    return (*out, row_barrel, new_offsets, row_track, hole)


class Fitted(NamedTuple):
    """Per track, what the fit's steps give: the circle after its step (centre, radius), its
    sense ``h`` and the perigee's angle ``theta_p`` from its centre; the line before its
    step ``step_z``; the two chi-squares and covariances; the number of hits."""

    circle: tuple[Array, Array, Array]
    h: Array
    theta_p: Array
    tan_l: Array
    z0: Array
    step_z: Array
    chi2_c: Array
    chi2_z: Array
    cov_c: Array
    cov_z: Array
    sizes: Array


#: The largest float32 below pi: the reported phi (float32) lies within +-PHI_MAX.
PHI_MAX = np.nextafter(np.float32(np.pi), np.float32(0))
#: The float32 parameters in the rows of ``track_parameters``'s output, in its order.
PARAMETER_ROWS = (
    "pt", "eta", "phi", "d0", "z0", "chi2", "sigma_q_over_pt", "sigma_eta", "sigma_phi",
    "sigma_d0", "sigma_z0", "corr_q_over_pt_phi", "corr_q_over_pt_d0", "corr_phi_d0",
    "corr_eta_z0",
)  # fmt: skip


def _parameters(fitted: Fitted, bfield: float, xp: Any) -> dict[str, Array]:
    """The reported parameters (``TRACK_PARAM_DTYPES``) of the fit's results. On the device
    one kernel (``track_parameters``) for these sixty operations."""
    if xp is not np:
        return parameters_kernel(fitted, bfield, cupy_launcher(KERNELS))
    (xc, yc, radius), h, theta_p, tan_l, z0, step_z, chi2_c, chi2_z, cov_c, cov_z, sizes = fitted
    tan_l, z0 = tan_l + step_z[:, 0], z0 + step_z[:, 1]
    chi2 = xp.maximum(chi2_c + chi2_z, 0)  # rounding: -1e-25 where the hits lie on the helix
    charge = (-h * np.sign(bfield)).astype(xp.int32)
    phi = wrapped_angle(theta_p + h * np.pi / 2, xp)
    d0 = -h * (radius - xp.hypot(xc, yc))  # the perigee at d0 (-sin phi, cos phi)
    cosh = xp.sqrt(1 + tan_l * tan_l)
    var_kappa, var_phi, var_d0 = (cov_c[:, i, i] for i in range(3))
    var_tan_l, var_z0 = cov_z[:, 0, 0], cov_z[:, 1, 1]
    sigma_c = xp.sqrt(xp.stack([var_kappa, var_phi, var_d0], -1))
    corr_c = cov_c / (sigma_c[:, :, None] * sigma_c[:, None, :])
    # q/pT = -sign(B) kappa / (c |B|), d0 = delta, phi is Karimaki's phi and
    # eta rises with tan(lambda): the signs that turn their correlations into the reported
    # parameters'.
    sign_b = float(np.sign(bfield))

    params = {
        # A fit whose chi2 is not finite (a non-finite hit, hits at one point) has no pT,
        # not the 1e10 mm radius its start may have left.
        "pt": xp.where(xp.isfinite(chi2), GEV_PER_TESLA_MM * abs(bfield) * radius, np.nan),
        "eta": xp.arcsinh(tan_l),
        "phi": phi,
        "d0": d0,
        "z0": z0,
        "charge": charge,
        "chi2": chi2,
        "ndf": xp.maximum(2 * sizes - 5, 1),
        "sigma_q_over_pt": xp.sqrt(var_kappa) / (GEV_PER_TESLA_MM * abs(bfield)),
        "sigma_eta": xp.sqrt(var_tan_l) / cosh,
        "sigma_phi": xp.sqrt(var_phi),
        "sigma_d0": xp.sqrt(var_d0),
        "sigma_z0": xp.sqrt(var_z0),
        "corr_q_over_pt_phi": -sign_b * corr_c[:, 0, 1],
        "corr_q_over_pt_d0": -sign_b * corr_c[:, 0, 2],
        "corr_phi_d0": corr_c[:, 1, 2],
        "corr_eta_z0": cov_z[:, 0, 1] / xp.sqrt(var_tan_l * var_z0),
    }
    out = {k: params[k].astype(dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    out["phi"] = xp.clip(out["phi"], -PHI_MAX, PHI_MAX)  # float32(pi) is above pi
    return out


def parameters_kernel(fitted: Fitted, bfield: float, launch: Launch) -> dict[str, Array]:
    """:func:`_parameters` as one kernel (``track_parameters``), a thread per track."""
    xp = array_module(fitted.h)
    n = len(fitted.h)
    floats = xp.empty((len(PARAMETER_ROWS), n), dtype=xp.float32)
    ints = xp.empty((2, n), dtype=xp.int32)
    (xc, yc, radius), *per_track = fitted[:-1]
    f64 = (a.astype(xp.float64, copy=False) for a in (radius, xc, yc, *per_track))
    args = contiguous((np.int64(n), *f64, fitted.sizes.astype(xp.int64, copy=False)), xp)
    scalars = (np.float64(np.sign(bfield)), np.float64(GEV_PER_TESLA_MM * abs(bfield)))
    launch("track_parameters", n, (*args, *scalars, floats, ints))
    rows = dict(zip(PARAMETER_ROWS, floats, strict=True)) | {"charge": ints[0], "ndf": ints[1]}
    return {k: rows[k] for k in TRACK_PARAM_DTYPES}


def _fit_circle(
    hx: Array,
    hy: Array,
    w: Array,
    offsets: Array,
    sums: tuple[Any, Any],
    tid: Array,
    xp: Any,
) -> tuple[Array, Array, Array]:
    """Weighted geometric circle fit: (xc, yc, R).

    One Gauss-Newton step on the hits' distances to the circle in Karimaki's parameters about
    the hits' weighted centroid (signed curvature ``kappa``, direction ``phi`` and signed
    distance ``delta`` of the circle's point closest to the centroid), which stay finite from
    loopers to straight lines; the centre and radius do not (a 1 TeV track's centre is 1.7 km
    away). It starts from the better (smaller weighted squared distances) of the Kasa circle
    (close for curved tracks, biased for straight ones, singular for collinear hits) and the
    straight line along the chord from the first to the last hit (in float32, as the hits'
    positions ``hx``, ``hy`` were). With ``fit_tracks``'s generalised least-squares step
    after it, two steps: enough from either start (10 TeV tracks included). ``sums``: the
    per-track sum of a per-hit array, and :func:`_normal_sums` of these tracks. On the
    device one kernel (:func:`start_circle_kernel`) for these sixty operations."""
    if xp is not np:
        return start_circle_kernel(hx, hy, w, offsets, cupy_launcher(KERNELS))
    tsum, normal = sums
    ends = (offsets[:-1], offsets[1:] - 1)
    chord = [c[ends[1]].astype(xp.float32) - c[ends[0]].astype(xp.float32) for c in (hx, hy)]
    ws = tsum(w)
    mx, my = tsum(w * hx) / ws, tsum(w * hy) / ws
    u, v = hx - mx[tid], hy - my[tid]
    q = u * u + v * v
    guard = xp.eye(3) * (1e-12 * ws)[:, None, None]  # degenerate (collinear) tracks
    a, rhs = normal((u, v, xp.ones_like(u)), q, w)  # Kasa: x^2 + y^2 + D x + E y + F = 0
    d, e, f = xp.moveaxis(xp.linalg.solve(a + guard, -rhs[..., None])[..., 0], -1, 0)
    radius = xp.sqrt(xp.maximum(d * d / 4 + e * e / 4 - f, 1e-12))
    h = xp.where(chord[0] * e - chord[1] * d > 0, -1.0, 1.0)  # the centre left of the chord
    kasa = _karimaki(-d / 2, -e / 2, radius, h, xp)
    line = (xp.zeros_like(ws), xp.arctan2(chord[1], chord[0]).astype(xp.float64), xp.zeros_like(ws))
    eps_kasa, jac_kasa = _distances(*kasa, u, v, tid, xp)
    eps_line, jac_line = _distances(*line, u, v, tid, xp)
    take = tsum(w * eps_kasa**2) <= tsum(w * eps_line**2)  # False where Kasa's solve failed
    kappa, phi, delta = (xp.where(take, k, li) for k, li in zip(kasa, line, strict=True))
    per_hit = take[tid]
    eps = xp.where(per_hit, eps_kasa, eps_line)
    jac = tuple(xp.where(per_hit, k, li) for k, li in zip(jac_kasa, jac_line, strict=True))
    step = _gauss_newton_step(jac, eps, w, normal, guard, xp)
    kappa, phi, delta = kappa + step[:, 0], phi + step[:, 1], delta + step[:, 2]
    xc, yc, radius = _circle(kappa, phi, delta, xp)
    return mx + xc, my + yc, radius


def start_circle_kernel(
    hx: Array, hy: Array, w: Array, offsets: Array, launch: Launch
) -> tuple[Array, Array, Array]:
    """:func:`_fit_circle` as one kernel (``start_circle``), a thread per track over its own
    hits."""
    n = len(offsets) - 1
    out = _run_kernel("start_circle", (3, n), (hx, hy, w), (), launch, offsets=offsets)
    return out[0], out[1], out[2]


def _circle(kappa: Array, phi: Array, delta: Array, xp: Any) -> tuple[Array, Array, Array]:
    """The circle (centre relative to the point the parameters are about, radius) of
    Karimaki's parameters; a straight line (kappa 0) becomes a circle of 10^10 mm (pT in the
    10^6 GeV)."""
    kappa = xp.where(kappa < 0, -1.0, 1.0) * xp.maximum(xp.abs(kappa), 1e-10)
    arm = delta + 1 / kappa  # to the centre, along (-sin phi, cos phi)
    return -arm * xp.sin(phi), arm * xp.cos(phi), 1 / xp.abs(kappa)


def _stepped_circle(
    params: tuple[Array, Array, Array], step: Array, xp: Any
) -> tuple[Array, Array, Array]:
    """:func:`_circle` of Karimaki's parameters ``params`` after a ``step`` (a row of three a
    track). On the device one kernel (:func:`circle_kernel`) for these sixteen operations."""
    if xp is not np:
        return circle_kernel(params, step, cupy_launcher(KERNELS))
    kappa, phi, delta = params
    return _circle(kappa + step[:, 0], phi + step[:, 1], delta + step[:, 2], xp)


def _karimaki(cx: Array, cy: Array, radius: Array, h: Array, xp: Any) -> tuple[Array, Array, Array]:
    """(kappa, phi, delta) of the circle of centre (cx, cy) about the origin and ``radius``,
    run in the sense ``h`` (1: anticlockwise; the sign of kappa). On the device one kernel
    (:func:`karimaki_kernel`) for these eight operations."""
    if xp is not np:
        return karimaki_kernel(cx, cy, radius, h, cupy_launcher(KERNELS))
    return h / radius, xp.arctan2(-h * cx, h * cy), h * (xp.hypot(cx, cy) - radius)


def circle_kernel(
    params: tuple[Array, Array, Array], step: Array, launch: Launch
) -> tuple[Array, Array, Array]:
    """:func:`_stepped_circle` as one kernel (``karimaki_circle``), a thread per track."""
    out = _run_kernel("karimaki_circle", (3, len(step)), (*params, step), (), launch)
    return out[0], out[1], out[2]


def karimaki_kernel(
    cx: Array, cy: Array, radius: Array, h: Array, launch: Launch
) -> tuple[Array, Array, Array]:
    """:func:`_karimaki` as one kernel (``karimaki_params``), a thread per track."""
    out = _run_kernel("karimaki_params", (3, len(cx)), (cx, cy, radius, h), (), launch)
    return out[0], out[1], out[2]


def _gauss_newton_step(
    jac: tuple[Array, Array, Array], res: Array, w: Array, normal: Any, guard: Array, xp: Any
) -> Array:
    """Per track, the weighted Gauss-Newton step of three parameters (zero where singular;
    ``normal``: :func:`_normal_sums` of the tracks)."""
    jtj, jtr = normal(jac, res, w)
    step = xp.linalg.solve(jtj + guard, -jtr[..., None])[..., 0]
    return xp.where(xp.isfinite(step).all(-1)[:, None], step, 0.0)


def _normal_sums(
    columns: tuple[Array, ...], res: Array, w: Array, tsum: Any, xp: Any
) -> tuple[Array, Array]:
    """Per track, the weighted normal equations of the per-hit ``columns`` J against
    ``res``: J^T W J (k x k) and J^T W res (k), each term (w J_i) J_j or (w J_i) res summed
    over the track's hits in their order (``tsum``; the device's kernels that solve them,
    ``start_circle`` and ``start_line``, sum them so)."""
    k = len(columns)
    weighted = [w * c for c in columns]
    sums = {(i, j): tsum(weighted[i] * columns[j]) for i in range(k) for j in range(i, k)}
    jtj = xp.stack(
        [xp.stack([sums[min(i, j), max(i, j)] for j in range(k)], -1) for i in range(k)], -2
    )
    return jtj, xp.stack([tsum(wc * res) for wc in weighted], -1)


Arms = tuple[tuple[Array, Array], ...]


def _circle_gls(
    jac: tuple[Array, ...],
    eps: Array,
    var: Array,
    per_hit: tuple[Array, Array, Array],
    per_track: tuple[Array, Array, Array],
    offsets: Array,
    tid: Array,
) -> tuple[Array, Array, Array]:
    """:func:`_gls` of the circle in Karimaki's parameters: distances ``eps`` with
    derivatives ``jac`` and variances ``var``; two scatter sets per hit k (``per_hit``: s,
    turn, theta; ``per_track``: radius R, cosh, tan_l), the circle turned about k by theta
    cosh (hit j across by that times R sin(turn_j - turn_k)) and its curvature changed by
    theta |tan_l| / R (hit j across by that times (s_j - s_k)^2 / 2). On the device the
    hits' columns are one kernel (``circle_gls_hits``) for about twenty operations."""
    xp = array_module(eps)
    if xp is not np:
        columns = (*jac, eps, var, *per_hit)
        hits = _gls_hits("circle_gls_hits", 15, tid, columns, per_track, cupy_launcher(KERNELS))
        return gls_step(gram_kernel(hits, 4, (2, 3), offsets, cupy_launcher(KERNELS)), 3, xp)
    return _gls(jac, eps, var, _circle_scatters(per_hit, per_track, tid), offsets, tid, xp)


def _circle_scatters(
    per_hit: tuple[Array, Array, Array], per_track: tuple[Array, Array, Array], tid: Array
) -> list[tuple[Array, Arms]]:
    """:func:`_circle_gls`'s two scatter sets, as :func:`_gls` takes them."""
    xp = array_module(tid)
    s, turn, theta = per_hit
    radius, cosh, tan_l = per_track
    one, big_r = xp.ones_like(s), radius[tid]
    sin_t, cos_t = xp.sin(turn), xp.cos(turn)
    turned = ((big_r * sin_t, cos_t), (cos_t, -big_r * sin_t))
    bent = ((s * s / 2, one), (s, -s), (one, s * s / 2))
    return [(theta * cosh[tid], turned), (theta * xp.abs(tan_l[tid]) / big_r, bent)]


def _line_gls(
    per_hit: tuple[Array, Array, Array, Array, Array],
    per_track: tuple[Array, Array, Array, Array],
    offsets: Array,
    tid: Array,
) -> tuple[Array, Array, Array]:
    """:func:`_gls` of the line z = z0 + tan_l s on the circle (``per_hit``: turn, z, z
    variance, path, scattering angle; ``per_track``: radius, z0, tan_l, cosh): a scatter at
    hit k tilts the line by theta cosh^2 (hit j moves by theta cosh (path_j - path_k)). On
    the device the hits' columns are one kernel (``line_gls_hits``) for about fifteen
    operations."""
    xp = array_module(tid)
    if xp is not np:
        hits = _gls_hits("line_gls_hits", 8, tid, per_hit, per_track, cupy_launcher(KERNELS))
        return gls_step(gram_kernel(hits, 3, (2,), offsets, cupy_launcher(KERNELS)), 2, xp)
    return _gls(*_line_terms(per_hit, per_track, tid), offsets, tid, xp)


def _line_terms(
    per_hit: tuple[Array, Array, Array, Array, Array],
    per_track: tuple[Array, Array, Array, Array],
    tid: Array,
) -> tuple[tuple[Array, Array], Array, Array, list[tuple[Array, Arms]]]:
    """:func:`_line_gls`'s derivatives, residuals, variances and scatter set, as
    :func:`_gls` takes them."""
    xp = array_module(tid)
    turn, hz, var_z, path, theta = per_hit
    radius, z0, tan_l, cosh = per_track
    s, one = radius[tid] * turn, xp.ones_like(turn)
    tilted = ((path, one), (one, -path))
    res_z = z0[tid] + tan_l[tid] * s - hz
    return (s, one), res_z, var_z, [(theta * cosh[tid], tilted)]


def _gls_hits(
    name: str,
    width: int,
    tid: Array,
    per_hit: tuple[Array, ...],
    per_track: tuple[Array, ...],
    launch: Launch,
) -> Array:
    """The hits' columns of a GLS step from kernel ``name`` (a thread per hit): a row of
    ``width`` float64 a hit, what :func:`gram_kernel` reads."""
    return _run_kernel(name, (len(tid), width), (*per_hit, *per_track), (), launch, tid)


def _gls(
    jac: tuple[Array, ...],
    res: Array,
    var: Array,
    scatters: list[tuple[Array, Arms]],
    offsets: Array,
    tid: Array,
    xp: Any,
) -> tuple[Array, Array, Array]:
    """Per track, the generalised least-squares step, its covariance and the chi-square after
    it, for residuals ``res`` (model - hit) with derivatives ``jac`` and hits of covariance V:
    ``var`` on the diagonal and, for each ``(kick, arms)`` of ``scatters`` (independent
    deflections at each hit k), the displacements kick_k D_jk of the hits j after k (in track
    order), their arms D_jk = sum over ``arms`` (a, b) of a_j b_k. Step -(J^T V^-1 J)^-1 J^T
    V^-1 res, covariance (J^T V^-1 J)^-1.

    V^-1 is applied without forming V: hit j's displacement by the scatters before it is
    a_j . u_j, with u a random walk along the track (u_1 = 0, u_{j+1} = u_j + kick_j b_j t_j,
    t_j one unit deviate per scatter set), so a Kalman filter of u run along the track turns
    the columns of [J res] into their innovations; divided by their standard deviations they
    are L^-1 [J res] for V = L L^T (the filter is V's Cholesky factorisation), and their sums
    of products give J^T V^-1 J, J^T V^-1 res and res^T V^-1 res: :func:`gram_arrays` (the
    GPU's fit runs :func:`gram_kernel` on its own columns, :func:`_circle_gls`)."""
    columns, dims = gls_columns(jac, res, var, scatters)
    return gls_step(gram_arrays(columns, len(jac) + 1, dims, offsets, tid), len(jac), xp)


def gls_columns(
    jac: tuple[Array, ...], res: Array, var: Array, scatters: list[tuple[Array, Arms]]
) -> tuple[list[Array], tuple[int, ...]]:
    """:func:`_gls`'s per-hit columns ([J res], the variance, the arms a, the kicks times
    b: what :func:`gram_arrays` and :func:`gram_kernel` read) and the scatter sets' sizes."""
    columns = [*jac, res, var]
    columns += [a for _, arms in scatters for a, _ in arms]
    columns += [kick * b for kick, arms in scatters for _, b in arms]
    return columns, tuple(len(arms) for _, arms in scatters)


def gls_step(gram: Array, n: int, xp: Any) -> tuple[Array, Array, Array]:
    """Per track, :func:`_gls`'s step, covariance and chi-square from the sums ``gram`` of
    its ``n`` parameters' columns and the residuals ([J res]^T V^-1 [J res]). On the
    device one kernel (:func:`gls_step_kernel`) for about fifteen operations and the
    batched inverse."""
    if xp is not np:
        return gls_step_kernel(gram, n, cupy_launcher(KERNELS))
    normal, grad, rr = gram[:, :n, :n], gram[:, :n, n], gram[:, n, n]
    # Degenerate (collinear) tracks: a guard on the scale of each parameter's own entry (the
    # curvature's, in mm^4, outweighs the others by 10^11: 10^-12 of the trace, as this was,
    # made the circle's errors 1.5-3% small).
    scale = xp.diagonal(normal, axis1=-2, axis2=-1)
    guard = 1e-12 * xp.eye(n) * xp.where(scale > 0, scale, 1.0)[:, None, :]
    cov = xp.linalg.inv(normal + guard)
    step = -(cov @ grad[..., None])[..., 0]
    step = xp.where(xp.isfinite(step).all(-1)[:, None], step, 0.0)
    chi2 = rr + 2 * (step * grad).sum(-1) + (step * (normal @ step[..., None])[..., 0]).sum(-1)
    return step, cov, chi2


def gls_step_kernel(gram: Array, n: int, launch: Launch) -> tuple[Array, Array, Array]:
    """:func:`gls_step` as one kernel (``gls_solve``), a thread per track: the guarded
    normal matrix inverted in the thread (as LAPACK's but for rounding), the step and the
    chi-square."""
    xp, i64 = array_module(gram), np.int64
    n_tracks, c = gram.shape[0], gram.shape[1]
    if not 0 < n < c <= GLS_MAX_COLUMNS:
        raise ValueError(f"the GLS step kernel takes 0 < n < c <= {GLS_MAX_COLUMNS}, got {n}, {c}")
    gram = contiguous((gram.astype(xp.float64, copy=False),), xp)[0]
    cov, step, chi2 = xp.empty((n_tracks, n, n)), xp.empty((n_tracks, n)), xp.empty(n_tracks)
    launch("gls_solve", n_tracks, (i64(n_tracks), gram, i64(c), i64(n), cov, step, chi2))
    return step, cov, chi2


def gram_arrays(
    columns: list[Array], c: int, dims: tuple[int, ...], offsets: Array, tid: Array
) -> Array:
    """Per track, the sums [J res]^T V^-1 [J res] (c x c) of :func:`_gls`'s filter, from the
    per-hit ``columns``: the ``c`` columns [J res], the variance, the arms a of the scatter
    sets (``dims`` of them per set) and their scaled kicks kick * b. A loop over the places
    along the longest track (a host synchronisation on the device), vectorised over tracks;
    the padding of shorter tracks has unit variance, no column and no arm, and changes
    nothing."""
    xp = array_module(offsets)
    n_tracks, m = len(offsets) - 1, sum(dims)
    size = int(xp.max(offsets[1:] - offsets[:-1]))
    slot = xp.arange(len(tid)) - offsets[:-1][tid]  # each hit's place in its track
    hits = xp.zeros((len(columns), size * n_tracks))
    hits[c] = 1.0  # the padding's variance
    hits[:, slot * n_tracks + tid] = xp.stack(columns)
    hits = hits.reshape(len(columns), size, n_tracks).swapaxes(0, 1)  # [place, column, track]
    cols, hit_var = hits[:, :c], hits[:, c]
    arm, kick = hits[:, c + 1 : c + 1 + m], hits[:, c + 1 + m :]
    cov_u = xp.zeros((m, m, n_tracks))  # u's covariance given the hits before
    est = xp.zeros((m, c, n_tracks))  # u's estimate from the hits before, per column
    white = xp.empty((size, c, n_tracks))
    for j in range(size):
        a = arm[j]
        cov_a = (cov_u * a).sum(1)
        s = (a * cov_a).sum(0) + hit_var[j]  # the innovation's variance
        innovation = cols[j] - (a[:, None] * est).sum(0)
        gain = cov_a / s
        white[j] = innovation / xp.sqrt(s)
        est += gain[:, None] * innovation
        cov_u -= gain[:, None] * cov_a
        first = 0
        for d in dims:  # the scatter at hit j, one per set
            b = kick[j, first : first + d]
            cov_u[first : first + d, first : first + d] += b[:, None] * b
            first += d
    return xp.einsum("jcn,jdn->ncd", white, white)


def gram_kernel(
    hits: Array, c: int, dims: tuple[int, ...], offsets: Array, launch: Launch
) -> Array:
    """:func:`gram_arrays` as one kernel (``gls_filter.cu``), a thread per track over its
    own hits (``hits``: the columns stacked, a row per hit; at most two scatter sets): no
    padding, no host synchronisation."""
    xp = array_module(offsets)
    if len(dims) > 2 or sum(dims) > GLS_MAX_STATE or c > GLS_MAX_COLUMNS:
        raise ValueError(f"the GLS kernel takes at most 2 scatter sets, {GLS_MAX_STATE} arms "
                         f"and {GLS_MAX_COLUMNS} columns, got {dims} and {c}")  # fmt: skip
    width = c + 1 + 2 * sum(dims)
    if hits.ndim != 2 or hits.shape[1] != width or hits.dtype != xp.float64:
        raise ValueError(f"hits must be float64 of {width} columns, got {hits.dtype} {hits.shape}")
    n_tracks, i64 = len(offsets) - 1, np.int64
    dim0, dim1 = (*dims, 0, 0)[:2]
    gram = xp.empty((n_tracks, c, c))
    args = contiguous(
        (i64(n_tracks), offsets.astype(xp.int64, copy=False), hits, i64(hits.shape[1]), i64(c),
         i64(dim0), i64(dim1)),
        xp,
    )  # fmt: skip
    launch("gls_gram", n_tracks, (*args, gram))
    return gram


def _on_circle(
    circle: tuple[Array, Array, Array],
    hx: Array,
    hy: Array,
    offsets: Array,
    tsum: Any,
    tid: Array,
    xp: Any,
) -> tuple[Array, Array, Array, Array, Array]:
    """Per track, the sense of rotation along its hits (ordered along the track; -1:
    clockwise) and the perigee's angle seen from the centre; per hit, its turn from the
    perigee along the track (radians) and its offset (dx, dy) from the centre.

    The sense is that of the hits' turns from one to the next (each within half a turn)
    summed, and a hit's turn is the first hit's (within half a turn of the perigee) plus
    those steps. Both hold past half a turn, where the first and last hits' angles about the
    centre, or a hit's angle from the perigee, turn over. On the device one kernel
    (:func:`turns_kernel`) for these thirty operations."""
    if xp is not np:
        return turns_kernel(circle, hx, hy, offsets, cupy_launcher(KERNELS))
    xc, yc, _ = circle
    dx, dy = hx - xc[tid], hy - yc[tid]
    angle = xp.arctan2(dy, dx)
    step = xp.zeros_like(angle)  # to the next hit of the track; 0 from its last
    step[:-1] = wrapped_angle(angle[1:] - angle[:-1], xp)
    step[offsets[1:] - 1] = 0.0
    h = xp.where(tsum(step) < 0, -1.0, 1.0)
    theta_p = xp.arctan2(-yc, -xc)
    starts = offsets[:-1]
    # A non-finite step (a NaN hit) left out of the sums, so that it spoils its own track's
    # turns only.
    finite = xp.isfinite(step)
    along = _sums_before(xp.where(finite, step, 0.0), offsets)
    along = xp.where(tsum(~finite)[tid] > 0, xp.nan, along)
    first = wrapped_angle(h * (angle[starts] - theta_p), xp)
    return h, theta_p, first[tid] + h[tid] * along, dx, dy


def _sums_before(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per hit, the sum of ``values`` of the hits before it in its track, added in order
    along the track as ``circle_turns`` does: a track's sums owe nothing to the tracks
    before it (a cumulative sum over the batch, less its start, took their rounding)."""
    out = np.zeros_like(values)
    starts, length = offsets[:-1], np.diff(offsets)
    for place in range(1, int(length.max(initial=0))):
        at = starts[length > place] + place
        out[at] = out[at - 1] + values[at - 1]
    return out


def turns_kernel(
    circle: tuple[Array, Array, Array], hx: Array, hy: Array, offsets: Array, launch: Launch
) -> tuple[Array, Array, Array, Array, Array]:
    """:func:`_on_circle` as one kernel (``circle_turns`` of ``gls_filter.cu``), a thread
    per track over its own hits."""
    xp = array_module(hx)
    n_tracks = len(offsets) - 1
    per_hit, per_track = xp.empty((3, len(hx))), xp.empty((2, n_tracks))
    columns = (a.astype(xp.float64, copy=False) for a in (circle[0], circle[1], hx, hy))
    args = contiguous((np.int64(n_tracks), offsets.astype(xp.int64, copy=False), *columns), xp)
    launch("circle_turns", n_tracks, (*args, per_hit, per_track))
    return per_track[0], per_track[1], per_hit[0], per_hit[1], per_hit[2]


Hits = tuple[Array, Array, Array, Array, Array, Array]  # x, y, z, res_a, res_b, barrel


def _projections(
    radius: Array, turn: Array, dx: Array, dy: Array, hits: Hits, tid: Array, xp: Any
) -> tuple[Array, Array, Array, Array]:
    """Per hit on its track's circle (``radius``; ``turn`` from the perigee, offset ``dx,
    dy`` from the centre): its transverse arc length s from the perigee, the circle normal's
    azimuthal part n_phi (its radial part n_r), its variance across the circle (``res_a``
    on the normal, on disks ``res_b`` too) and the weight of its z for the starting line
    (disks: the r error carried along a straight line to the origin). On the device one
    kernel (``hit_projections``) for these thirty operations."""
    if xp is not np:
        return projections_kernel(radius, turn, dx, dy, hits, tid, cupy_launcher(KERNELS))
    hx, hy, hz, res_a, res_b, barrel = hits
    r = xp.hypot(hx, hy)
    s = radius[tid] * turn
    rho = xp.hypot(dx, dy)
    n_r = (dx * hx + dy * hy) / (rho * r)  # circle normal . radial direction
    n_phi = (dx * hy - dy * hx) / (rho * r)  # circle normal . azimuthal direction (+-)
    var_c = res_a**2 * xp.maximum(n_phi**2, _MIN_COS_INCIDENCE**2) + xp.where(
        barrel, 0.0, res_b**2 * n_r**2
    )
    var_z = xp.where(barrel, res_b * res_b, (res_b * hz / r) ** 2)
    return s, n_phi, var_c, 1 / var_z


Triple = tuple[Array, Array, Array]


def _scattering(
    line: Triple, n_phi: Array, s: Array, layers: Triple, tid: Array, xp: Any
) -> Triple:
    """Per hit, with its track's starting ``line`` (tan(lambda), cosh(eta), momentum p):
    the variance of its z about the line (disks: ``res_b`` along it), the scattering angle
    at its layer (Highland for ``x0`` over the cosine of incidence) and its path from the
    perigee. ``layers``: per hit, ``res_b``, ``x0`` and whether on a barrel. On the device
    one kernel (``hit_scattering``) for these thirty operations."""
    if xp is not np:
        return scattering_kernel(line, n_phi, s, layers, tid, cupy_launcher(KERNELS))
    tan_l, cosh, p = line
    res_b, x0, barrel = layers
    var_z = xp.where(barrel, res_b**2, (res_b * tan_l[tid] * n_phi) ** 2 + 1e-12)
    cos_inc = xp.where(barrel, xp.abs(n_phi), xp.abs(tan_l[tid])) / cosh[tid]
    theta = highland(p[tid], x0 / xp.maximum(cos_inc, _MIN_COS_INCIDENCE), xp)
    return var_z, theta, s * cosh[tid]


def projections_kernel(
    radius: Array, turn: Array, dx: Array, dy: Array, hits: Hits, tid: Array, launch: Launch
) -> tuple[Array, Array, Array, Array]:
    """:func:`_projections` as one kernel (``hit_projections``), a thread per hit."""
    arrays = (radius, turn, dx, dy, *hits)
    scalars = (_MIN_COS_INCIDENCE**2,)
    out = _run_kernel("hit_projections", (4, len(tid)), arrays, scalars, launch, tid)
    return out[0], out[1], out[2], out[3]


def scattering_kernel(
    line: Triple, n_phi: Array, s: Array, layers: Triple, tid: Array, launch: Launch
) -> Triple:
    """:func:`_scattering` as one kernel (``hit_scattering``), a thread per hit."""
    arrays = (*line, n_phi, s, *layers)
    scalars = (_MIN_COS_INCIDENCE, PION_MASS**2)
    out = _run_kernel("hit_scattering", (3, len(tid)), arrays, scalars, launch, tid)
    return out[0], out[1], out[2]


def _run_kernel(
    name: str,
    shape: tuple[int, int],
    arrays: tuple[Array, ...],
    scalars: tuple[float, ...],
    launch: Launch,
    tid: Array | None = None,
    offsets: Array | None = None,
) -> Array:
    """Kernel ``name`` of ``gls_filter.cu`` on ``arrays`` (float64 columns, and bool ones,
    per track or per hit) and ``scalars``, its float64 output of ``shape``: a thread per
    hit (``tid``: their tracks, the kernel's first array), per track over its hits
    (``offsets``: the tracks' CSR offsets, the kernel's first array) or, with neither, per
    track (as many as ``arrays[0]``)."""
    xp = array_module(arrays[0])
    ids: tuple[Array, ...] = ()
    if tid is not None:
        n, ids = len(tid), (tid.astype(xp.int64, copy=False),)
    elif offsets is not None:
        n, ids = len(offsets) - 1, (offsets.astype(xp.int64, copy=False),)
    else:
        n = len(arrays[0])
    columns = (a if a.dtype == bool else a.astype(xp.float64, copy=False) for a in arrays)
    out = xp.empty(shape)
    args = contiguous((np.int64(n), *ids, *columns), xp)
    launch(name, n, (*args, *map(np.float64, scalars), out))
    return out


def _distances(
    kappa: Array, phi: Array, delta: Array, u: Array, v: Array, tid: Array, xp: Any
) -> tuple[Array, tuple[Array, Array, Array]]:
    """Signed distances of hits (u, v about the point the parameters are about) to their
    track's circle, and their derivatives by (kappa, phi, delta). With the circle's centre
    ``(delta + 1 / kappa) (-sin phi, cos phi)`` and q = u^2 + v^2, ``eps + kappa eps^2 / 2 =
    p`` where p is quadratic in the hit; the root ``2 p / (1 + sqrt(1 + 2 kappa p))`` has no
    cancellation. On the device one kernel (:func:`distances_kernel`) for these thirty
    operations."""
    if xp is not np:
        return distances_kernel(kappa, phi, delta, u, v, tid, cupy_launcher(KERNELS))
    k, dl = kappa[tid], delta[tid]
    sp, cp = xp.sin(phi)[tid], xp.cos(phi)[tid]
    q = u * u + v * v
    across, along = u * sp - v * cp, u * cp + v * sp
    p = k * q / 2 + (1 + k * dl) * across + dl + k * dl * dl / 2
    eps = 2 * p / (1 + xp.sqrt(xp.maximum(1 + 2 * k * p, 0.0)))
    den = 1 + k * eps
    jac = (
        (q / 2 + dl * across + (dl * dl - eps * eps) / 2) / den,
        (1 + k * dl) * along / den,
        (1 + k * dl + k * across) / den,
    )
    return eps, jac


def distances_kernel(
    kappa: Array, phi: Array, delta: Array, u: Array, v: Array, tid: Array, launch: Launch
) -> tuple[Array, tuple[Array, Array, Array]]:
    """:func:`_distances` as one kernel (``circle_distances``), a thread per hit."""
    out = _run_kernel("circle_distances", (4, len(tid)), (kappa, phi, delta, u, v), (), launch, tid)
    return out[0], (out[1], out[2], out[3])


Line = tuple[Array, Array, Array, Array]  # tan_l, z0, cosh, p


def _fit_line(
    s: Array, hz: Array, w: Array, radius: Array, bfield: float, offsets: Array, normal: Any
) -> Line:
    """Weighted least-squares line z = z0 + tan_l * s per track, and with it the track's
    cosh(eta) and momentum p (GeV, at least 0.01; ``radius``: its circle's, ``bfield`` in
    T): (tan_l, z0, cosh, p) (``normal``: :func:`_normal_sums` of the tracks). On the device
    one kernel (:func:`start_line_kernel`) for these eighteen operations."""
    xp = array_module(s)
    if xp is not np:
        return start_line_kernel(s, hz, w, radius, bfield, offsets, cupy_launcher(KERNELS))
    jtj, jtr = normal((xp.ones_like(s), s), hz, w)
    s0, s1, s2 = jtj[:, 0, 0], jtj[:, 0, 1], jtj[:, 1, 1]
    z1, sz = jtr[:, 0], jtr[:, 1]
    den = s0 * s2 - s1 * s1
    den = xp.where(xp.abs(den) > 1e-30, den, 1e-30)
    tan_l = (s0 * sz - s1 * z1) / den
    cosh = xp.sqrt(1 + tan_l * tan_l)
    p = xp.maximum(GEV_PER_TESLA_MM * abs(bfield) * radius * cosh, 0.01)
    return tan_l, (z1 - tan_l * s1) / s0, cosh, p


def start_line_kernel(
    s: Array, hz: Array, w: Array, radius: Array, bfield: float, offsets: Array, launch: Launch
) -> Line:
    """:func:`_fit_line` as one kernel (``start_line``), a thread per track over its own
    hits."""
    columns, pt_per_mm = (radius, s, hz, w), GEV_PER_TESLA_MM * abs(bfield)
    out = _run_kernel(
        "start_line", (4, len(offsets) - 1), columns, (pt_per_mm,), launch, offsets=offsets
    )
    return out[0], out[1], out[2], out[3]


class FitHits(NamedTuple):
    """The fit's per-hit inputs: positions (float64), the layer's measurement errors and
    radiation length, whether it is a barrel, and the starting circle's weight 1 / res_a^2."""

    x: Array
    y: Array
    z: Array
    res_a: Array
    res_b: Array
    x0: Array
    barrel: Array
    w: Array


def _fit_hits(
    hit_index: Array, positions: tuple[Array, Array, Array], layer: Array, det: Detector
) -> FitHits:
    """The tracks' hits' (``hit_index``) inputs of the fit, from the batch's positions and
    layers. On the device one kernel (:func:`fit_hits_kernel`) for these thirteen
    operations."""
    xp = array_module(hit_index)
    if xp is not np:
        return fit_hits_kernel(hit_index, positions, layer, det, cupy_launcher(KERNELS))
    hx, hy, hz = (c[hit_index].astype(xp.float64) for c in positions)
    lay = layer[hit_index]
    res_a, res_b, x0 = det.res_a[lay], det.res_b[lay], det.x0[lay]
    return FitHits(hx, hy, hz, res_a, res_b, x0, det.kind[lay] == BARREL, 1 / (res_a * res_a))


def fit_hits_kernel(
    hit_index: Array, positions: tuple[Array, Array, Array], layer: Array, det: Detector,
    launch: Launch,
) -> FitHits:  # fmt: skip
    """:func:`_fit_hits` as one kernel (``fit_hits``), a thread per hit; the detector's
    layer table on the device (:func:`_layer_table`)."""
    xp, n = array_module(hit_index), len(hit_index)
    out, barrel = xp.empty((7, n)), xp.empty(n, dtype=bool)
    args = contiguous(
        (np.int64(n), hit_index.astype(xp.int64, copy=False),
         *(c.astype(xp.float64, copy=False) for c in positions),
         layer.astype(xp.int64, copy=False), _layer_table(det, xp), np.int64(len(det.kind))),
        xp,
    )  # fmt: skip
    launch("fit_hits", n, (*args, out, barrel))
    hx, hy, hz, res_a, res_b, x0, w = out
    return FitHits(hx, hy, hz, res_a, res_b, x0, barrel, w)


@cache
def _layer_table(det: Detector, xp: Any) -> Array:
    """The layers' res_a, res_b, x0 and whether a barrel, as one (4, layers) float64 array
    on ``xp``'s device, uploaded once a detector."""
    return xp.asarray(np.stack([det.res_a, det.res_b, det.x0, det.kind == BARREL]), xp.float64)


@cache
def _layer_surfaces(det: Detector, xp: Any) -> Array:
    """The layers' surfaces as one (6, layers) float64 array on ``xp``'s device, uploaded
    once a detector: 1.0 for a barrel, its radius, z, half-length and radii (a disk's)."""
    rows = (det.kind == BARREL, det.r, det.z, det.half_length, det.r_min, det.r_max)
    return xp.asarray(np.stack(rows).astype(np.float64))
