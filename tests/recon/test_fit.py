"""Helix fit: exact on ideal helices, a calibrated chi2, and the resolution targets on simulated
tracks."""

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import least_squares

from streamtrk.detector import BARREL, ENDCAP, GEV_PER_TESLA_MM, highland
from streamtrk.event import TRACK_PARAM_DTYPES
from streamtrk.recon.fit import (
    KERNELS,
    Fitted,
    Holes,
    _circle_scatters,
    _distances,
    _fit_circle,
    _fit_hits,
    _fit_line,
    _gls,
    _gls_hits,
    _holes,
    _karimaki,
    _line_terms,
    _merged,
    _normal_sums,
    _on_circle,
    _parameters,
    _projections,
    _scattering,
    _stepped_circle,
    circle_kernel,
    distances_kernel,
    fit_hits_kernel,
    fit_tracks,
    gls_columns,
    gls_step,
    gls_step_kernel,
    gram_arrays,
    gram_kernel,
    holes_kernel,
    karimaki_kernel,
    merged_kernel,
    parameters_kernel,
    projections_kernel,
    scattering_kernel,
    start_circle_kernel,
    start_line_kernel,
    turns_kernel,
)
from streamtrk.sim.generator import GeneratedParticles
from streamtrk.sim.propagate import propagate
from streamtrk.sim.simulate import smear


def _csr(groups, key):
    """CSR tracks from per-hit group ids (hits ordered by ``key`` within a group)."""
    order = np.lexsort((key, groups))
    _, counts = np.unique(groups[order], return_counts=True)
    return np.concatenate([[0], np.cumsum(counts)]), order


def _helices(det, n, rng, pt=(1, 10), eta=2.5):
    """Primary helices through ``det`` as CSR tracks: (offsets, hit order, crossings, truth);
    pT uniform in the range ``pt`` (GeV), or all of the value ``pt``; |eta| below ``eta``."""
    pt = rng.uniform(*pt, n) if isinstance(pt, tuple) else np.full(n, float(pt))
    eta = rng.uniform(-eta, eta, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    q = np.where(rng.random(n) < 0.5, 1, -1)
    vz = rng.normal(0, 10, n)
    parts = GeneratedParticles(
        np.stack([np.zeros(n), np.zeros(n), vz], 1),
        np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1),
        q.astype(np.int32),
    )
    c = propagate(det, parts, rng, max_turns=0.5)
    offsets, idx = _csr(c.particle, c.order)
    who = np.unique(c.particle)
    return offsets, idx, c, (pt[who], q[who], eta[who], phi[who], vz[who])


@pytest.mark.parametrize(
    ("field", "pt_range"),
    [(1.0, (1, 10)), (-1.0, (1, 10)), (1.0, (0.2, 0.5)), (1.0, (100, 3000))],
)
def test_ideal_helices_are_fitted_exactly(det, field, pt_range):
    """Hits on helices, no material, no smearing: the fit gives the helices back, from
    loopers of 0.2 GeV (half a turn in the detector) to 3 TeV tracks."""
    ideal = replace(det, x0=np.full(len(det), 1e-12), bfield=field * det.bfield)
    rng = np.random.default_rng(1)
    offsets, idx, c, (pt, q, eta, phi, vz) = _helices(ideal, 200, rng, pt=pt_range)
    x, y, z = c.position.T
    p = fit_tracks(offsets, idx, x, y, z, c.layer, ideal)
    assert np.allclose(p["pt"], pt, rtol=1e-3)
    assert np.array_equal(p["charge"], q)
    assert np.allclose(p["eta"], eta, atol=1e-3)
    assert np.allclose(p["phi"], phi, atol=1e-3)
    assert np.allclose(p["z0"], vz, atol=1e-2)
    assert np.allclose(p["d0"], 0, atol=1e-2)
    assert np.all(p["chi2"] < 1e-3)
    assert np.array_equal(p["ndf"], 2 * np.diff(offsets) - 5)


def test_stiff_tracks_are_measured_as_well_as_soft_ones(det):
    """Without material the error on q/pT of a nearly straight track comes from the hit
    resolutions alone, the same at any pT; the fit reaches it for 1 and 10 TeV tracks (the
    circle's centre 1.7 and 17 km away) as for 100 GeV ones: no bias in pT, the same spread in
    q/pT and d0."""
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    seen = {}
    for pt in (100, 1000, 10_000):
        rng = np.random.default_rng(6)
        offsets, idx, c, (pt_true, q, *_) = _helices(ideal, 1500, rng, pt=pt)
        x, y, z = smear(ideal, c, rng).T
        p = fit_tracks(offsets, idx, x, y, z, c.layer, ideal)
        seen[pt] = (np.std(p["charge"] / p["pt"] - q / pt_true), np.std(p["d0"]))
        if pt < 10_000:  # at 10 TeV q/pT is within its error of 0: no median pT to speak of
            assert np.median(p["pt"]) == pytest.approx(pt, rel=0.02)
        assert np.median(p["chi2"] / p["ndf"]) == pytest.approx(1, abs=0.1)
    for pt in (1000, 10_000):
        assert seen[pt][0] == pytest.approx(seen[100][0], rel=0.05)
        assert seen[pt][1] == pytest.approx(seen[100][1], rel=0.05)


def _half_width(x):
    """Half the width of the central 68% (a Gaussian's sigma, robust to tails)."""
    low, high = np.percentile(x, [16, 84])
    return (high - low) / 2


def _fitted_errors(det, n, seed, pt, eta=2.5):
    """The fitted parameters (float) of ``n`` smeared helices of ``pt`` GeV (|eta| below
    ``eta``) and their errors against the truth: q/pT (1/GeV), eta, phi (rad), d0 and z0
    (mm)."""
    rng = np.random.default_rng(seed)
    offsets, idx, c, truth = _helices(det, n, rng, pt=pt, eta=eta)
    x, y, z = smear(det, c, rng).T
    return _errors(fit_tracks(offsets, idx, x, y, z, c.layer, det), truth)


def _errors(fitted, truth):
    """The fitted parameters (float) and their errors against the ``truth`` of
    :func:`_helices`: q/pT (1/GeV), eta, phi (rad), d0 and z0 (mm)."""
    pt, q, eta, phi, vz = truth
    p = {k: v.astype(float) for k, v in fitted.items()}
    errors = {
        "q_over_pt": p["charge"] / p["pt"] - q / pt,
        "eta": p["eta"] - eta,
        "phi": np.mod(p["phi"] - phi + np.pi, 2 * np.pi) - np.pi,
        "d0": p["d0"],
        "z0": p["z0"] - vz,
    }
    return p, errors


@pytest.mark.parametrize(
    ("pt", "within"), [(0.3, 0.2), (0.5, 0.1), (1, 0.1), (10, 0.1), (100, 0.1), (1000, 0.1)]
)
def test_standard_errors_are_the_spread_of_the_fitted_parameters(det, pt, within):
    """The sigma_* of simulated helices (material, hit resolutions, |eta| < 2.5) are what the
    fitted parameters scatter by about the truth: pulls of width 1 from 0.5 GeV, where the
    tracks' own scattering dominates and correlates their hits, to 1 TeV, where the hit
    resolutions do; without the scatters' correlation along the track they are several times
    wider from 1 GeV down. At 0.3 GeV (tracks turning up to a radian in the detector) the
    curvature change's arm, taken for small turns, makes sigma(q/pT) about 8% large (pull
    0.93; 0.84 with the two passes' estimate); the circle's turn is exact (with a straight arm
    the test fails at 0.5 GeV, without the curvature change at 0.3 and 0.5)."""
    p, errors = _fitted_errors(det, 1500, 8, pt)
    for name, error in errors.items():
        pull = error / p[f"sigma_{name}"]
        assert _half_width(pull) == pytest.approx(1, abs=within), name
        assert abs(np.median(pull)) < 0.15, name


@pytest.mark.parametrize("holes", [1, 2])
def test_layers_crossed_without_a_hit_scatter_the_track(det, holes):
    """Helices whose first crossings left no hit (a dead or inefficient inner layer, its
    material crossed): the fit places their scatters too, so the pulls of all five
    parameters keep a width of 1 (1.3-1.7 for eta and phi with the scatters at hits only);
    ndf counts the hits."""
    rng = np.random.default_rng(21)
    offsets, idx, c, truth = _helices(det, 1500, rng, pt=(1, 3), eta=1.0)
    x, y, z = smear(det, c, rng).T
    sizes = np.diff(offsets)
    kept = np.arange(len(idx)) - np.repeat(offsets[:-1], sizes) >= holes
    offsets = np.concatenate([[0], np.cumsum(sizes - holes)])
    p, errors = _errors(fit_tracks(offsets, idx[kept], x, y, z, c.layer, det), truth)
    for name, error in errors.items():
        assert _half_width(error / p[f"sigma_{name}"]) == pytest.approx(1, abs=0.1), name
    assert np.array_equal(p["ndf"], 2 * (sizes - holes) - 5)


@pytest.mark.parametrize("field", [2.0, -2.0])
@pytest.mark.parametrize("pt", [0.5, 10, 100])
def test_correlations_are_those_of_the_fitted_parameters(det, field, pt):
    """The corr_* of each track are how its errors go together: over simulated helices the
    correlation of two parameters' pulls is the reported one within 0.07 (three standard
    errors of a correlation on these 3,000 helices, and the spread of the reported ones about
    their median), in both senses of the field (where the signs of q/pT and d0 against the
    fit's own parameters turn); phi and d0, eta and z0 are strongly correlated (0.8-0.99 in
    size), q/pT with them weakly at 0.5 GeV and strongly at 100 GeV."""
    p, errors = _fitted_errors(replace(det, bfield=field), 3000, 4, pt)
    for a, b in (("q_over_pt", "phi"), ("q_over_pt", "d0"), ("phi", "d0"), ("eta", "z0")):
        pull_a, pull_b = errors[a] / p[f"sigma_{a}"], errors[b] / p[f"sigma_{b}"]
        core = (np.abs(pull_a) < 5) & (np.abs(pull_b) < 5)
        seen = np.corrcoef(pull_a[core], pull_b[core])[0, 1]
        assert seen == pytest.approx(np.median(p[f"corr_{a}_{b}"]), abs=0.07), (a, b)


@pytest.mark.parametrize("field", [2.0, -2.0])
def test_tracks_turning_about_half_a_turn_keep_their_sense(det, field):
    """0.2 GeV helices at |eta| < 1.5 turn about half a turn in the barrel, their last hits
    (scattered, smeared) up to a little past it. The sense of rotation is that of the hits'
    steps, and a hit's turn from the perigee is followed past half a turn: the first and last
    hits' angles about the centre gave the opposite sense (charge wrong, phi off by pi) and a
    turn wrapped at half a turn put eta off by 1-3 units (about 1% of these tracks). Every
    charge right, eta within 0.3, and the reported correlations of phi with d0 and q/pT of
    the sign and size seen on each track (they had the opposite sign on 9%)."""
    p, errors = _fitted_errors(replace(det, bfield=field), 3000, 11, 0.2, eta=1.5)
    assert np.abs(errors["q_over_pt"]).max() < 2  # a wrong charge is off by 10
    assert np.abs(errors["eta"]).max() < 0.3
    for a, b in (("q_over_pt", "phi"), ("phi", "d0")):
        pull_a, pull_b = errors[a] / p[f"sigma_{a}"], errors[b] / p[f"sigma_{b}"]
        core = (np.abs(pull_a) < 5) & (np.abs(pull_b) < 5)
        seen = np.corrcoef(pull_a[core], pull_b[core])[0, 1]
        reported = p[f"corr_{a}_{b}"]
        assert np.all(np.sign(reported) == np.sign(seen)), (a, b)
        assert seen == pytest.approx(np.median(reported), abs=0.07), (a, b)


def test_impact_parameters_are_measured_with_the_scatters_correlation(det):
    """At 1 GeV, where each track's own scattering dominates, the generalised least-squares
    step (weights from the hits' full covariance) measures d0 and z0 to 0.085 and 0.16 mm on
    these helices (|eta| < 2.5); the diagonally weighted passes alone reach 0.15 and 0.43."""
    _, errors = _fitted_errors(det, 1500, 9, 1.0)
    assert _half_width(errors["d0"]) < 0.1
    assert _half_width(errors["z0"]) < 0.2


def test_collinear_hits_are_fitted_as_a_straight_line(det):
    """Hits exactly on a radial line (no curvature: infinite momentum) give the line's phi, d0 0
    and chi2 0 at any azimuth, not a small circle through them."""
    layer = np.arange(4, dtype=np.int32)  # the four pixel barrels
    r = det.r[layer].astype(float)
    for phi in (0.0, 0.3, np.pi / 2, 2.0):
        x, y, z = r * np.cos(phi), r * np.sin(phi), 0.5 * r
        p = fit_tracks(np.array([0, 4]), np.arange(4), x, y, z, layer, det)
        assert p["pt"][0] > 1e5, phi
        assert p["phi"][0] == pytest.approx(phi, abs=1e-6)
        assert p["d0"][0] == pytest.approx(0, abs=1e-3)
        assert p["z0"][0] == pytest.approx(0, abs=1e-3)
        assert p["eta"][0] == pytest.approx(np.arcsinh(0.5), abs=1e-6)
        assert p["chi2"][0] < 1e-3
        for name in ("q_over_pt", "eta", "phi", "d0", "z0"):  # a line has errors too
            assert 0 < p[f"sigma_{name}"][0] < np.inf, name


def test_tracks_of_three_hits_or_fewer_have_one_degree_of_freedom(det) -> None:
    """ndf = 2 n - 5, and at least 1: three hits have one; two (fewer than the helix's five
    parameters) are given one too, not -1."""
    layer = np.arange(4, dtype=np.int32)
    r = det.r[layer].astype(float)
    x, y, z = r * np.cos(0.3), r * np.sin(0.3), 0.5 * r
    p = fit_tracks(
        np.array([0, 4, 7, 9]), np.array([0, 1, 2, 3, 0, 1, 2, 0, 1]), x, y, z, layer, det
    )
    assert p["ndf"].tolist() == [3, 1, 1]


@pytest.mark.parametrize("field", [2.0, -2.0])
def test_displaced_helices_have_the_documented_d0_sign(det, field):
    """d0 is signed by the geometry alone, as in ATLAS and ACTS: the perigee is at d0 (-sin
    phi, cos phi) from the beam line, phi the direction there, in either sense of the field
    (in +B_z that is charge * (R - |centre|): positive when a positive track's circle
    encloses the beam line); here against the true circles of helices from a vertex 2 mm
    off the axis. In -B_z the fit gave d0 the opposite sign, which mirrors the perigee
    through the beam line (the beam-spot monitor's d0 = -x sin(phi) + y cos(phi) then finds
    the collisions at (-x, -y))."""
    ideal = replace(det, x0=np.full(len(det), 1e-12), bfield=field)
    rng = np.random.default_rng(4)
    n = 200
    pt, phi = rng.uniform(1, 5, n), rng.uniform(-np.pi, np.pi, n)
    eta, q = rng.uniform(-1, 1, n), np.where(rng.random(n) < 0.5, 1, -1)
    vx, vy = 1.6, -1.2
    parts = GeneratedParticles(
        np.tile([vx, vy, 0.0], (n, 1)),
        np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1),
        q.astype(np.int32),
    )
    c = propagate(ideal, parts, rng, max_turns=0.5)
    offsets, idx = _csr(c.particle, c.order)
    who = np.unique(c.particle)
    x, y, z = c.position.T
    p = fit_tracks(offsets, idx, x, y, z, c.layer, ideal)
    radius = pt[who] / (GEV_PER_TESLA_MM * abs(ideal.bfield))
    h = -np.sign(q[who] * ideal.bfield)  # +1: anticlockwise seen from +z (F = q v x B)
    left = np.stack([-np.sin(phi[who]), np.cos(phi[who])])  # the centre is on the left if h > 0
    centre = np.array([[vx], [vy]]) + h * radius * left
    perigee = centre * (1 - radius / np.hypot(*centre))  # the circle's point nearest the axis
    phi0 = np.arctan2(*(perigee - centre)[::-1]) + h * np.pi / 2  # the direction there
    expected = -perigee[0] * np.sin(phi0) + perigee[1] * np.cos(phi0)
    assert np.allclose(np.abs(expected), np.hypot(*perigee))  # perigee across the direction
    assert np.abs(expected).max() > 1.0  # displaced enough for the sign to show
    assert np.allclose(np.angle(np.exp(1j * (p["phi"] - phi0))), 0, atol=1e-4)
    assert np.allclose(p["d0"], expected, atol=1e-2)
    if field > 0:
        assert np.allclose(p["d0"], q[who] * (radius - np.hypot(*centre)), atol=1e-2)


def _one_helix(det, pt, eta, phi, q, vertex=(0.0, 0.0, 3.0)):
    """The hits (x, y, z as float64, in track order) and layers of one helix through ``det``."""
    parts = GeneratedParticles(
        np.array([vertex]),
        np.array([[pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)]]),
        np.array([q], np.int32),
    )
    c = propagate(det, parts, np.random.default_rng(0), max_turns=0.5)
    order = np.argsort(c.order)
    return c.position[order].astype(float), c.layer[order]


def _fitted_vector(det, position, layer):
    """(q/pT, eta, phi, d0, z0) of the one track of hits ``position`` (float64) and the fit."""
    x, y, z = position.T
    p = fit_tracks(np.array([0, len(layer)]), np.arange(len(layer)), x, y, z, layer, det)
    q_over_pt = p["charge"].astype(float) / p["pt"].astype(float)
    values = [q_over_pt, *(p[k].astype(float) for k in ("eta", "phi", "d0", "z0"))]
    return np.concatenate(values), p


@pytest.mark.parametrize(("q", "phi"), [(1, 1.5795), (-1, -1.5795)])
def test_a_first_hit_across_the_perigee_angle_is_a_small_turn(det, q, phi):
    """The circle's centre on the +x axis: the perigee's angle about it is near +-pi and the
    first hit's just across: its turn from the perigee is small (wrapped), not about 2 pi,
    which put z0 2 pi R tan(lambda) away (5.5 m here)."""
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    position, layer = _one_helix(ideal, 1.0, 0.5, phi, q)
    _, p = _fitted_vector(ideal, position, layer)
    assert p["z0"][0] == pytest.approx(3.0, abs=1e-2)
    assert p["eta"][0] == pytest.approx(0.5, abs=1e-3)


def _through_its_perigee(det):
    """Seven hits on a circle of 1000 mm through its perigee (the origin, phi 0), three
    before it: their arc lengths s are negative; z = 3 + 0.5 s."""
    radius, tan_l = 1000.0, 0.5
    t = np.array([-0.3, -0.2, -0.1, 0.05, 0.15, 0.25, 0.35])  # turns from the perigee
    x, y, s = radius * np.sin(t), radius * (1 - np.cos(t)), radius * t
    layer = np.zeros(len(t), np.int32)
    p = fit_tracks(np.array([0, len(t)]), np.arange(len(t)), x, y, 3.0 + tan_l * s, layer, det)
    return p, (x, y, s, layer, radius, tan_l)


def test_hits_before_the_perigee_are_at_negative_arc_lengths(det):
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    p, (*_, tan_l) = _through_its_perigee(ideal)
    assert p["z0"][0] == pytest.approx(3.0, abs=1e-3)
    assert p["eta"][0] == pytest.approx(np.arcsinh(tan_l), abs=1e-5)
    assert p["d0"][0] == pytest.approx(0, abs=1e-3) and p["phi"][0] == pytest.approx(0, abs=1e-5)


def test_line_errors_of_hits_before_the_perigee_are_the_documented_covariances(det):
    """Through material: sigma_eta and sigma_z0 are those of the line's covariance, the
    scatters' arms signed (path = s cosh, negative before the perigee); with |s| they came
    out five times too small."""
    p, (x, y, s, layer, radius, tan_l) = _through_its_perigee(det)
    cosh = np.sqrt(1 + tan_l**2)
    cos_inc = np.maximum(np.abs(x / np.hypot(x, y)) / cosh, 0.05)  # centre at (0, radius)
    pt = GEV_PER_TESLA_MM * abs(det.bfield) * radius
    theta = highland(np.full(len(s), pt * cosh), det.x0[layer] / cos_inc)
    path = s * cosh
    later = np.tril(np.ones((len(s), len(s))), -1)
    d = (path[:, None] - path[None, :]) * later * (theta * cosh)
    v = np.diag(det.res_b[layer] ** 2) + d @ d.T
    jac = np.stack([s, np.ones_like(s)], -1)
    line = np.linalg.inv(jac.T @ np.linalg.solve(v, jac))
    assert p["sigma_z0"][0] == pytest.approx(np.sqrt(line[1, 1]), rel=1e-2)
    assert p["sigma_eta"][0] == pytest.approx(np.sqrt(line[0, 0]) / cosh, rel=1e-2)


@pytest.mark.parametrize(
    ("pt", "eta", "phi", "q", "field", "kinds", "vertex"),
    [
        (1.0, 0.4, 0.7, 1, 2.0, [BARREL], (0.0, 0.0, 3.0)),
        (1.0, 0.4, 0.7, 1, -2.0, [BARREL], (0.0, 0.0, 3.0)),
        (0.5, -0.5, -2.0, -1, 2.0, [BARREL], (0.0, 0.0, 3.0)),
        (5.0, 0.2, 3.1, 1, 2.0, [BARREL], (0.0, 0.0, 3.0)),
        (2.0, 2.2, -0.4, 1, 2.0, [BARREL, ENDCAP], (0.0, 0.0, 3.0)),
        (5.0, -2.0, 2.5, -1, 2.0, [BARREL, ENDCAP], (0.0, 0.0, 3.0)),
        (1.0, 2.0, 1.2, 1, 2.0, [BARREL, ENDCAP], (0.0, 0.0, 150.0)),
        (0.7, 0.3, -1.0, 1, 2.0, [BARREL], (1.6, -1.2, 3.0)),
        (0.7, 0.3, 2.0, -1, 2.0, [BARREL], (-2.0, 0.5, 3.0)),
    ],
)
def test_standard_errors_are_the_hit_errors_carried_through_the_fit(
    det, pt, eta, phi, q, field, kinds, vertex
):
    """Without material, about hits exactly on a helix, the fit is linear in the hits: its
    covariance is the hits' errors (res_a across each layer; res_b along z on barrels, along
    r on disks) carried through the fitted parameters' response to each hit, found here by
    moving the hit 1 mm both ways. The sigma_* and corr_* are that, to 0.2%, for both
    charges and senses of the field, across phi = pi, from vertices 2 mm off the beam line
    and on disks, where the line's response to the circle's, which the fit leaves out,
    takes up to 0.3% at 1 GeV (0.5% allowed there for eta and z0: their disk hits' errors,
    as the starting line had them, put them 5-10% off). The least-squares step's guard
    against singular matrices, once scaled by the trace of J^T V^-1 J (whose curvature
    entry, in mm^4, outweighs the others by 10^11), made the errors of q/pT, phi and d0
    1.5-3% small on these tracks."""
    ideal = replace(det, x0=np.full(len(det), 1e-12), bfield=field)
    position, layer = _one_helix(ideal, pt, eta, phi, q, vertex)
    assert len(layer) >= 8 and set(ideal.kind[layer]) == set(kinds)
    _, p = _fitted_vector(ideal, position, layer)
    cov, step = np.zeros((5, 5)), 1.0  # mm
    for k in range(len(layer)):
        r = np.hypot(*position[k, :2])
        across = np.array([-position[k, 1], position[k, 0], 0.0]) / r
        along = (0, 0, 1) if ideal.kind[layer[k]] == BARREL else (*(position[k, :2] / r), 0)
        for direction, sigma in ((across, ideal.res_a[layer[k]]), (along, ideal.res_b[layer[k]])):
            moved = [position.copy(), position.copy()]
            moved[0][k] += step * np.asarray(direction)
            moved[1][k] -= step * np.asarray(direction)
            response = np.subtract(*(_fitted_vector(ideal, m, layer)[0] for m in moved))
            response[2] = np.mod(response[2] + np.pi, 2 * np.pi) - np.pi  # phi across pi
            cov += np.outer(response, response) * (sigma / (2 * step)) ** 2
    sigma = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sigma, sigma)
    names = ("q_over_pt", "eta", "phi", "d0", "z0")
    line = 2.5 if ENDCAP in kinds else 1.0  # the line's part the fit leaves out, on disks
    for i, name in enumerate(names):
        within = 2e-3 * (line if name in ("eta", "z0") else 1.0)
        assert p[f"sigma_{name}"][0] == pytest.approx(sigma[i], rel=within), name
    for a, b in (("q_over_pt", "phi"), ("q_over_pt", "d0"), ("phi", "d0"), ("eta", "z0")):
        seen = corr[names.index(a), names.index(b)]
        within = 2e-3 * (line if a == "eta" else 1.0)
        assert p[f"corr_{a}_{b}"][0] == pytest.approx(seen, abs=within), (a, b)


@pytest.mark.parametrize(
    ("pt", "eta", "q", "material", "z_off"),
    [
        (0.3, 0.7, 1, True, 0.0),
        (0.3, -0.7, -1, True, 0.0),
        (2.0, 0.5, 1, True, 0.0),
        (0.24586, 0.3, -1, False, 0.0),
        (0.3, 0.7, 1, True, 30.0),
    ],
)
def test_errors_with_scattering_are_those_of_the_documented_covariance(
    det, pt, eta, q, material, z_off
):
    """Hits exactly on a helix through the material: the sigma_* and corr_* are those of
    (J^T V^-1 J)^-1 with V built whole from the module's description: the measurement errors
    on the circle's normal (res_a, at least 0.05 of it) and in z (res_b); Highland's angle at
    each hit (p of the helix, x0 over the incidence cosine, at least 0.05); a scatter at hit
    k turning the circle about k (hit j across by theta cosh R sin(turn_j - turn_k)),
    changing its curvature by theta tan_l / R (hit j across by that (s_j - s_k)^2 / 2) and
    tilting the line (hit j in z by theta cosh (path_j - path_k)). At 0.24586 GeV the helix
    turns back 0.04 mm past the layer at 820 mm: it crosses it at 0.014 of normal
    incidence, and that hit's error on the circle's normal is 0.05 res_a (seen without
    material: with it, the scatters before dwarf it). The last hit 30 mm off in z (ten times
    its error, 3.1 mm) changes nothing: the starting line, whose tan(lambda) gives p, weighs it
    as little as its error says."""
    phi = 0.4
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    position, layer = _one_helix(ideal, pt, eta, phi, q, (0.0, 0.0, 2.0))
    det = det if material else ideal
    assert len(layer) >= 8 and np.all(det.kind[layer] == BARREL)
    x, y, z = position.T
    z = z + np.where(np.arange(len(z)) == len(z) - 1, z_off, 0.0)
    p = fit_tracks(np.array([0, len(layer)]), np.arange(len(layer)), x, y, z, layer, det)

    radius = pt / (GEV_PER_TESLA_MM * abs(det.bfield))
    sense = -np.sign(q * det.bfield)  # +1 anticlockwise
    normal = np.array([-np.sin(phi), np.cos(phi)]) * sense  # perigee to centre
    r = np.hypot(x, y)
    turn = 2 * np.arcsin(r / (2 * radius))  # from the perigee, the origin
    s = radius * turn
    tan_l, cosh = np.sinh(eta), np.cosh(eta)
    centre = radius * normal
    n_phi = ((x - centre[0]) * y - (y - centre[1]) * x) / (radius * r)
    cos_inc = np.maximum(np.abs(n_phi) / cosh, 0.05)
    theta = highland(np.full(len(r), pt * cosh), det.x0[layer] / cos_inc)
    later = np.tril(np.ones((len(r), len(r))), -1)  # [j, k]: hit j after the scatter at k

    def covariance(measured, *kicks):
        v = np.diag(measured)
        for kick, arm in kicks:
            d = arm * later * kick
            v += d @ d.T
        return v

    circle_v = covariance(
        det.res_a[layer] ** 2 * np.maximum(n_phi**2, 0.05**2),
        (theta * cosh, radius * np.sin(turn[:, None] - turn[None, :])),
        (theta * abs(tan_l) / radius, (s[:, None] - s[None, :]) ** 2 / 2),
    )
    path = s * cosh
    line_v = covariance(det.res_b[layer] ** 2, (theta * cosh, path[:, None] - path[None, :]))

    def distances(q_over_pt, phi0, d0):  # signed distances of the hits to a circle
        rad = 1 / abs(q_over_pt * GEV_PER_TESLA_MM * det.bfield)
        towards = np.array([-np.sin(phi0), np.cos(phi0)]) * -np.sign(q_over_pt * det.bfield)
        cx, cy = (rad - np.sign(q_over_pt) * d0) * towards
        return np.hypot(x - cx, y - cy) - rad

    truth = np.array([q / pt, phi, 0.0])
    shift = np.array([1e-6 / pt, 1e-7, 1e-5])
    jac = np.stack(
        [
            (distances(*(truth + e)) - distances(*(truth - e))) / (2 * e.sum())
            for e in np.diag(shift)
        ],
        -1,
    )
    circle = np.linalg.inv(jac.T @ np.linalg.solve(circle_v, jac))
    line_jac = np.stack([s, np.ones_like(s)], -1)
    line = np.linalg.inv(line_jac.T @ np.linalg.solve(line_v, line_jac))
    expected = {
        "sigma_q_over_pt": np.sqrt(circle[0, 0]),
        "sigma_phi": np.sqrt(circle[1, 1]),
        "sigma_d0": np.sqrt(circle[2, 2]),
        "sigma_eta": np.sqrt(line[0, 0]) / cosh,
        "sigma_z0": np.sqrt(line[1, 1]),
        "corr_q_over_pt_phi": circle[0, 1] / np.sqrt(circle[0, 0] * circle[1, 1]),
        "corr_q_over_pt_d0": circle[0, 2] / np.sqrt(circle[0, 0] * circle[2, 2]),
        "corr_phi_d0": circle[1, 2] / np.sqrt(circle[1, 1] * circle[2, 2]),
        "corr_eta_z0": line[0, 1] / np.sqrt(line[0, 0] * line[1, 1]),
    }
    for name, value in expected.items():
        if name.startswith("sigma"):
            assert p[name][0] == pytest.approx(value, rel=1e-3), name
        else:
            assert p[name][0] == pytest.approx(value, abs=1e-3), name


def test_chi2_of_a_helix_moved_in_z_is_that_of_the_weighted_line(det):
    """Hits on a helix through barrels and disks, no material, moved in z by up to a tenth of
    a millimetre: the circle stays exact and the chi2 is the line's least squares, each hit
    weighted by its z error: res_b on barrels; on disks, where z is exact and r is not,
    res_b carried along the track, res_b |tan(lambda)| |t . r| (at 0.5 GeV the track
    crosses the outer disks up to 23 degrees off radial)."""
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    pt, eta, phi, q = 0.5, -2.2, -2.0, -1
    position, layer = _one_helix(ideal, pt, eta, phi, q)
    x, y, z = position.T
    disk = ideal.kind[layer] == ENDCAP
    assert disk.sum() >= 4 and (~disk).sum() >= 2
    moved = z + np.random.default_rng(1).uniform(-0.1, 0.1, len(z))
    p = fit_tracks(np.array([0, len(z)]), np.arange(len(z)), x, y, moved, layer, ideal)

    radius = pt / (GEV_PER_TESLA_MM * abs(ideal.bfield))
    r = np.hypot(x, y)
    s = 2 * radius * np.arcsin(r / (2 * radius))  # from the perigee, the origin
    t_dot_r = np.sqrt(1 - (r / (2 * radius)) ** 2)  # track direction . radial direction
    assert t_dot_r[disk].min() < 0.93
    res_b = ideal.res_b[layer]
    sigma = np.where(disk, res_b * abs(np.sinh(eta)) * t_dot_r, res_b)
    design = np.stack([s, np.ones_like(s)], -1) / sigma[:, None]
    _, chi2, *_ = np.linalg.lstsq(design, moved / sigma, rcond=None)
    assert chi2[0] > 1
    assert p["chi2"][0] == pytest.approx(chi2[0], rel=1e-3)


def test_tracks_fitted_together_are_fitted_as_alone(det):
    """The scattering term's neighbours stop at a track's ends: no kick crosses into the next
    track of the batch; and a track's sums are its own, so its fit is bit for bit the one
    alone (an event's tracks do not depend on the events batched with it)."""
    offsets, idx, c, _ = _helices(det, 40, np.random.default_rng(5))
    x, y, z = c.position.T
    together = fit_tracks(offsets, idx, x, y, z, c.layer, det)
    for k in range(len(offsets) - 1):
        mine = idx[offsets[k] : offsets[k + 1]]
        alone = fit_tracks(np.array([0, len(mine)]), mine, x, y, z, c.layer, det)
        for name, values in alone.items():
            np.testing.assert_array_equal(values, together[name][k : k + 1], err_msg=name)


def test_a_track_with_a_non_finite_hit_spoils_no_other_track(det):
    """A NaN coordinate on the first track of a batch: that track's fit is NaN, the others'
    are as alone (the turns along a track are summed within it, as the device kernel
    does)."""
    offsets, idx, c, _ = _helices(det, 5, np.random.default_rng(5))
    x, y, z = c.position.T.copy()
    x[idx[offsets[0] + 1]] = np.nan
    together = fit_tracks(offsets, idx, x, y, z, c.layer, det)
    assert all(np.isnan(together[name][0]) for name in ("pt", "eta", "phi", "d0", "z0", "chi2"))
    for k in range(1, len(offsets) - 1):
        mine = idx[offsets[k] : offsets[k + 1]]
        alone = fit_tracks(np.array([0, len(mine)]), mine, x, y, z, c.layer, det)
        for name, values in alone.items():
            assert np.allclose(values, together[name][k : k + 1], rtol=1e-9), (k, name)


def test_gls_step_is_that_of_the_dense_covariance():
    """The filter along the tracks gives the step, covariance and chi2 of V built whole:
    tracks of 1 to 9 hits, two scatter sets of two and three arms."""
    rng = np.random.default_rng(11)
    sizes = np.array([9, 1, 4, 7, 2, 9, 5])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tid = np.repeat(np.arange(len(sizes)), sizes)
    h = len(tid)
    jac = tuple(rng.normal(size=h) for _ in range(3))
    res, var = rng.normal(size=h), rng.uniform(0.5, 2.0, h)
    scatters = [
        (rng.uniform(0, 1, h), tuple((rng.normal(size=h), rng.normal(size=h)) for _ in range(m)))
        for m in (2, 3)
    ]
    step, cov, chi2 = _gls(jac, res, var, scatters, offsets, tid, np)
    for k, (lo, hi) in enumerate(itertools.pairwise(offsets)):
        v = np.diag(var[lo:hi])
        for kick, arms in scatters:
            d = sum(np.outer(a[lo:hi], b[lo:hi]) for a, b in arms)
            scatter = np.tril(d, -1) * kick[lo:hi]  # [j, i]: hit j moved by the scatter at i
            v += scatter @ scatter.T
        j = np.stack([a[lo:hi] for a in jac], -1)
        normal = j.T @ np.linalg.solve(v, j)
        if hi - lo >= 3:
            expected = -np.linalg.solve(normal, j.T @ np.linalg.solve(v, res[lo:hi]))
            r = res[lo:hi] + j @ expected
            assert np.allclose(step[k], expected, rtol=1e-9), k
            assert np.allclose(cov[k], np.linalg.inv(normal), rtol=1e-9), k
            assert chi2[k] == pytest.approx(r @ np.linalg.solve(v, r), rel=1e-9), k
        else:  # fewer hits than parameters: a finite step that leaves no residual
            assert np.isfinite(step[k]).all() and chi2[k] == pytest.approx(0, abs=1e-6), k


def test_host_kernel_sums_are_the_arrays(host_launcher):
    """gls_filter.cu, built for the host, gives the NumPy path's sums: tracks of 1 to 12
    hits, the circle's scatter sets (two and three arms, four columns), the line's, and none."""
    rng = np.random.default_rng(12)
    sizes = rng.integers(1, 13, 300)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tid = np.repeat(np.arange(len(sizes)), sizes)
    h = len(tid)
    for c, dims in ((4, (2, 3)), (3, (2,)), (3, ())):
        m = sum(dims)
        columns = [rng.normal(size=h) for _ in range(c)] + [rng.uniform(0.5, 2.0, h)]
        columns += [rng.normal(size=h) for _ in range(2 * m)]
        arrays = gram_arrays(columns, c, dims, offsets, tid)
        kernel = gram_kernel(np.stack(columns, -1), c, dims, offsets, host_launcher(KERNELS))
        np.testing.assert_allclose(kernel, arrays, rtol=1e-12, atol=1e-12 * np.abs(arrays).max())


def test_host_kernel_distances_are_the_arrays(host_launcher):
    """circle_distances, built for the host, gives the NumPy path's distances and
    derivatives: curved and straight circles, hits about any centroid; a NaN hit stays
    NaN."""
    rng = np.random.default_rng(13)
    n_tracks, sizes = 200, rng.integers(1, 13, 200)
    tid = np.repeat(np.arange(n_tracks), sizes)
    kappa = rng.choice([1e-10, 1e-4, 1e-3, 5e-3], n_tracks) * rng.choice([-1, 1], n_tracks)
    phi, delta = rng.uniform(-np.pi, np.pi, n_tracks), rng.normal(0, 50, n_tracks)
    u, v = rng.normal(0, 400, (2, len(tid)))
    u[1] = np.nan
    eps, jac = _distances(kappa, phi, delta, u, v, tid, np)
    k_eps, k_jac = distances_kernel(kappa, phi, delta, u, v, tid, host_launcher(KERNELS))
    assert np.isnan(k_eps[1]) and np.isfinite(np.delete(eps, 1)).all()
    for got, want in zip((k_eps, *k_jac), (eps, *jac), strict=True):
        scale = np.nanmax(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * scale)


def test_host_kernels_of_karimakis_parameters_are_the_arrays(host_launcher):
    """karimaki_params and karimaki_circle, built for the host, give the NumPy path's
    parameters of circles and circles of parameters after a step: curved and straight
    (kappa under its floor, of either sign, and 0), centres anywhere, either sense, steps
    of zero or not; a NaN stays NaN."""
    rng = np.random.default_rng(16)
    n = 500
    cx, cy = rng.normal(0, 1e4, (2, n))
    radius = 10.0 ** rng.uniform(1, 10, n)
    h = rng.choice([-1.0, 1.0], n)
    kappa = rng.choice([0.0, 1e-12, 1e-6, 1e-3], n) * rng.choice([-1.0, 1.0], n)
    phi, delta = rng.uniform(-np.pi, np.pi, n), rng.normal(0, 50, n)
    cx[0] = kappa[0] = np.nan
    step = np.zeros((n, 3))  # the odd rows' kappa stays at or under its floor
    step[::2] = rng.normal(0, [1e-4, 0.1, 1.0], (n // 2, 3))
    launch = host_launcher(KERNELS)
    params = (kappa, phi, delta)
    pairs = [
        (karimaki_kernel(cx, cy, radius, h, launch), _karimaki(cx, cy, radius, h, np)),
        (circle_kernel(params, step, launch), _stepped_circle(params, step, np)),
    ]
    for kernel, arrays in pairs:
        for got, want in zip(kernel, arrays, strict=True):
            assert np.isnan(got[0]) == np.isnan(want[0]) and np.isfinite(want[1:]).all()
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_host_kernels_of_the_gls_columns_are_the_arrays(host_launcher):
    """circle_gls_hits and line_gls_hits, built for the host, write the columns the arrays
    give the GLS sums (gls_columns of the circle's and the line's terms), in their order:
    curved and straight tracks, turns past half a circle, either sign of tan_l."""
    rng = np.random.default_rng(17)
    n_tracks, sizes = 200, rng.integers(1, 13, 200)
    tid = np.repeat(np.arange(n_tracks), sizes)
    n = len(tid)
    radius = 10.0 ** rng.uniform(2, 7, n_tracks)
    tan_l = rng.normal(0, 2, n_tracks)
    cosh, z0 = np.sqrt(1 + tan_l * tan_l), rng.normal(0, 30, n_tracks)
    jac = tuple(rng.normal(0, 100, (3, n)))
    eps, var, s = rng.normal(0, 1, n), rng.uniform(1e-4, 1, n), rng.normal(0, 500, n)
    turn, theta = rng.normal(0, 2, n), rng.uniform(0, 0.01, n)
    hz, var_z, path = rng.normal(0, 500, n), rng.uniform(1e-4, 1, n), rng.normal(0, 800, n)
    launch = host_launcher(KERNELS)
    circle = ((s, turn, theta), (radius, cosh, tan_l))
    columns, dims = gls_columns(jac, eps, var, _circle_scatters(*circle, tid))
    kernel = _gls_hits("circle_gls_hits", 15, tid, (*jac, eps, var, *circle[0]), circle[1], launch)
    assert dims == (2, 3)
    np.testing.assert_allclose(kernel, np.stack(columns, -1), rtol=1e-13, atol=0)
    line = ((turn, hz, var_z, path, theta), (radius, z0, tan_l, cosh))
    columns, dims = gls_columns(*_line_terms(*line, tid))
    kernel = _gls_hits("line_gls_hits", 8, tid, *line, launch)
    assert dims == (2,)
    np.testing.assert_allclose(kernel, np.stack(columns, -1), rtol=1e-13, atol=0)


def test_host_kernels_of_the_gls_step_are_the_arrays(host_launcher):
    """gls_solve, built for the host (its own inverse), gives the
    arrays' step, covariance and chi-square: circle (3 parameters) and line (2) sums of
    random tracks, a degenerate track (a zero row: the guard) and one with an infinite
    entry (its step 0)."""
    rng = np.random.default_rng(18)
    launch = host_launcher(KERNELS)
    for n in (3, 2):
        columns = rng.normal(0, 1, (300, 6, n + 1)) * 10.0 ** rng.uniform(-3, 5, (300, 1, n + 1))
        gram = np.einsum("tkc,tkd->tcd", columns, columns)
        gram[0, 1, :] = gram[0, :, 1] = 0.0  # degenerate: the guard keeps it invertible
        gram[1, 0, n] = gram[1, n, 0] = np.inf
        with np.errstate(invalid="ignore", over="ignore"):  # the infinite entry's NaNs
            arrays = gls_step(gram, n, np)
            kernel = gls_step_kernel(gram, n, launch)
        assert (arrays[0][1] == 0).all() and np.isfinite(arrays[0][2:]).all()
        for got, want in zip(kernel, arrays, strict=True):
            scale = np.abs(want[np.isfinite(want)]).max()
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale)
        assert np.isnan(kernel[2][1]) == np.isnan(arrays[2][1])
    for n, c in [(4, 5), (3, 3), (0, 2)]:  # past the kernels' fixed-size state, or no step
        with pytest.raises(ValueError, match="takes 0 < n < c <= 4"):
            gls_step_kernel(np.zeros((1, c, c)), n, launch)


def _starting_fits(det, rng):
    """Tracks to start fits of: smeared helices (0.2 GeV loopers to 10 TeV), hits exactly on
    lines through the origin, 2-hit tracks and one straight along x (a zero chord in y): their
    CSR offsets, x, y, z (float64 of float32, as ``fit_tracks`` takes them) and weights."""
    offsets, idx, c, _ = _helices(det, 400, rng, pt=(0.2, 3))
    stiff = _helices(det, 200, rng, pt=(100, 10_000))
    x = np.concatenate([smear(det, c, rng)[idx], smear(det, stiff[2], rng)[stiff[1]]])
    offsets = np.concatenate([offsets, offsets[-1] + stiff[0][1:]])
    r = np.tile(det.r[:4].astype(float), 50)
    phi = np.repeat(rng.uniform(-np.pi, np.pi, 50), 4)
    phi[:4] = 0.0
    line = np.stack([r * np.cos(phi), r * np.sin(phi), 0.5 * r], 1)
    two = rng.normal(0, 300, (20, 3))
    x = np.concatenate([x, line, two]).astype(np.float32).astype(np.float64)
    offsets = np.concatenate([offsets, offsets[-1] + np.arange(4, 201, 4)])
    offsets = np.concatenate([offsets, offsets[-1] + np.arange(2, 21, 2)])
    w = 1 / rng.uniform(0.01, 0.1, len(x)) ** 2
    return offsets, x[:, 0], x[:, 1], x[:, 2], w


def test_host_kernels_of_the_starting_fit_are_the_arrays(host_launcher, det):
    """start_circle and start_line, built for the host, give the NumPy path's starting
    circles and lines: loopers to 10 TeV tracks, collinear hits (the chord's line taken
    over Kasa's) and 2-hit tracks. The sums are the arrays', in order; the 3 x 3 solves
    round as LAPACK's may not, which the Kasa system of a nearly straight track magnifies
    (how much hangs on the machine's LAPACK kernels: on one machine the stiff tracks' came
    3.4e-10 of their radius apart, the collinear tracks' 6.2e-9, their curvatures 5.5e-17
    and 1.5e-18 per mm). So: the circles of the 0.2-3 GeV tracks within a part in 10^12;
    those of the 100 GeV to 10 TeV tracks within 10^-8 of their radius; the collinear
    tracks' curvature (their circles of 10^9 mm and more) within 10^-15 per mm; every
    circle, the 2-hit tracks' too (a circle through two points is any of many), within
    10^-5 mm of the arrays' at its hits; the line bit for bit."""
    offsets, hx, hy, hz, w = _starting_fits(det, np.random.default_rng(19))
    n_tracks = len(offsets) - 1
    tid = np.repeat(np.arange(n_tracks), np.diff(offsets))

    def tsum(v: np.ndarray) -> np.ndarray:
        return np.bincount(tid, v, minlength=n_tracks)

    def normal(columns, res, weights):
        return _normal_sums(columns, res, weights, tsum, np)

    launch = host_launcher(KERNELS)
    with np.errstate(divide="ignore", invalid="ignore"):  # the collinear tracks' Kasa circles
        arrays = _fit_circle(hx, hy, w, offsets, (tsum, normal), tid, np)
    kernel = start_circle_kernel(hx, hy, w, offsets, launch)
    radius = arrays[2]
    assert (radius[:400] < 1e4).all() and (radius[400:600] > 1e5).all()
    assert (radius[600:-10] > 1e8).all()  # collinear
    for got, want in zip(kernel, arrays, strict=True):
        np.testing.assert_allclose(got[:400], want[:400], rtol=1e-12)
        assert (np.abs(got - want)[400:600] <= 1e-8 * radius[400:600]).all()
    np.testing.assert_allclose(1 / kernel[2][600:-10], 1 / radius[600:-10], rtol=0, atol=1e-15)
    got_at, want_at = (
        np.hypot(hx - xc[tid], hy - yc[tid]) - r[tid] for xc, yc, r in (kernel, arrays)
    )
    np.testing.assert_allclose(got_at, want_at, rtol=0, atol=1e-5)
    s = np.random.default_rng(20).normal(0, 500, len(hx))
    radius = np.where(np.arange(n_tracks) % 7 == 0, 1.0, radius)  # under 0.01 GeV: the floor
    lines = (
        _fit_line(s, hz, w, radius, -2.0, offsets, normal),
        start_line_kernel(s, hz, w, radius, -2.0, offsets, launch),
    )
    assert lines[0][3].min() == 0.01  # the momentum's floor
    for want, got in zip(*lines, strict=True):
        np.testing.assert_array_equal(got, want)


def test_host_kernels_of_the_holes_are_the_arrays(host_launcher, det):
    """hole_counts and hole_rows, built for the host, find the NumPy path's holes, in its
    order (track, then layer), and hole_merge places them among the hits as it does:
    helices from 0.3 to 10 GeV up to |eta| 3 with their first or
    third crossing's hit gone (barrels and disks, loopers)."""
    rng = np.random.default_rng(23)
    offsets, idx, c, _ = _helices(det, 400, rng, pt=(0.3, 10), eta=3.0)
    x, y, z = smear(det, c, rng).T
    sizes = np.diff(offsets)
    place = np.arange(len(idx)) - np.repeat(offsets[:-1], sizes)
    gone = np.repeat(np.where(np.arange(len(sizes)) % 2, 2, 0), sizes)
    kept = (place != gone) | (np.repeat(sizes, sizes) < 5)
    idx = idx[kept]
    offsets = np.concatenate(
        [[0], np.cumsum(np.bincount(np.repeat(np.arange(len(sizes)), sizes)[kept]))]
    )
    tid = np.repeat(np.arange(len(sizes)), np.diff(offsets))
    hits = _fit_hits(idx, (x, y, z), c.layer, det)

    def tsum(v: np.ndarray) -> np.ndarray:
        return np.bincount(tid, v, minlength=len(sizes))

    def normal(columns, res, w):
        return _normal_sums(columns, res, w, tsum, np)

    circle = _fit_circle(hits.x, hits.y, hits.w, offsets, (tsum, normal), tid, np)
    h, theta_p, turn, dx, dy = _on_circle(circle, hits.x, hits.y, offsets, tsum, tid, np)
    columns = (hits.x, hits.y, hits.z, hits.res_a, hits.res_b, hits.barrel)
    s, _, _, w_z = _projections(circle[2], turn, dx, dy, columns, tid, np)
    tan_l, z0, _, _ = _fit_line(s, hits.z, w_z, circle[2], det.bfield, offsets, normal)
    given = ((*circle, h, theta_p), (tan_l, z0), turn, c.layer[idx], offsets)
    want = _holes(*given, tid, det)
    got = holes_kernel(*given, det, host_launcher(KERNELS))
    assert want is not None and got is not None and len(want.track) > 150
    assert set(det.kind[want.layer]) == {BARREL, ENDCAP}
    np.testing.assert_array_equal(got.track, want.track)
    np.testing.assert_array_equal(got.layer, want.layer)
    for name in ("turn", "x", "y", "z"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, atol=1e-9)
    # hole_merge: the rows _merged gives, bit for bit (a hole between two hits, before all)
    rows = (hits.x, hits.y, hits.z, hits.res_a, hits.res_b, hits.x0, hits.barrel)
    merged = _merged(rows, turn, want, offsets, tid, det)
    kernel = merged_kernel(rows, turn, want, offsets, det, host_launcher(KERNELS))
    assert merged[-1].sum() == len(want.track)
    for got_column, want_column in zip(kernel, merged, strict=True):
        np.testing.assert_array_equal(got_column, want_column)


def test_host_kernel_turns_are_the_arrays(host_launcher, monkeypatch):
    """circle_turns, built for the host, gives the NumPy path's senses, perigee angles,
    turns and offsets: tracks of 1 to 30 hits either way round their circles, past half a
    turn (loopers) and across the angle's wrap at pi. Both with the C library's atan2:
    NumPy's arctan2 may be its own, by the machine's SIMD (AVX-512's SVML: an ulp apart on
    7% of the perigee angles here), and bit for bit is what shows each track's steps summed
    in its order."""
    rng = np.random.default_rng(14)
    n_tracks = 300
    sizes = rng.integers(1, 31, n_tracks)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tid = np.repeat(np.arange(n_tracks), sizes)
    xc, yc = rng.normal(0, 500, (2, n_tracks))
    radius = np.hypot(xc, yc) * rng.uniform(0.9, 1.1, n_tracks)
    sense = rng.choice([-1.0, 1.0], n_tracks)
    start = rng.uniform(-np.pi, np.pi, n_tracks)
    place = np.arange(len(tid)) - offsets[:-1][tid]
    angle = start[tid] + sense[tid] * place * rng.uniform(0.05, 0.4, len(tid))
    hx = xc[tid] + radius[tid] * np.cos(angle) + rng.normal(0, 0.1, len(tid))
    hy = yc[tid] + radius[tid] * np.sin(angle) + rng.normal(0, 0.1, len(tid))
    circle = (xc, yc, radius)

    def tsum(v: np.ndarray) -> np.ndarray:
        return np.bincount(tid, v, minlength=n_tracks)

    with monkeypatch.context() as m:
        m.setattr(np, "arctan2", np.vectorize(math.atan2, otypes=[np.float64]))
        arrays = _on_circle(circle, hx, hy, offsets, tsum, tid, np)
    kernel = turns_kernel(circle, hx, hy, offsets, host_launcher(KERNELS))
    turn = arrays[2]
    assert np.abs(turn).max() > 2 * np.pi and set(arrays[0]) == {-1.0, 1.0}
    for got, want in zip(kernel, arrays, strict=True):
        np.testing.assert_array_equal(got, want)  # each track's steps summed in its order


def test_host_kernels_of_the_hits_projections_and_scattering_are_the_arrays(host_launcher):
    """hit_projections and hit_scattering, built for the host, give the NumPy path's arc
    lengths, normals, variances, weights, scattering angles and paths: barrel and disk hits,
    curved and stiff tracks, steep and flat ones, incidences under the floor."""
    rng = np.random.default_rng(15)
    n_tracks, sizes = 200, rng.integers(1, 13, 200)
    tid = np.repeat(np.arange(n_tracks), sizes)
    n = len(tid)
    radius = 10.0 ** rng.uniform(2, 7, n_tracks)
    turn, dx, dy = rng.normal(0, 0.5, n), rng.normal(0, 300, n), rng.normal(0, 300, n)
    dx[:5] = 1e-9  # the normal nearly along phi: incidence under the floor
    hits = (*rng.normal(0, 500, (3, n)), rng.uniform(0.01, 0.1, n), rng.uniform(0.05, 1, n))
    barrel = rng.random(n) < 0.6
    kernel = host_launcher(KERNELS)
    projected = _projections(radius, turn, dx, dy, (*hits, barrel), tid, np)
    for g, want in zip(
        projections_kernel(radius, turn, dx, dy, (*hits, barrel), tid, kernel),
        projected,
        strict=True,
    ):
        np.testing.assert_allclose(g, want, rtol=1e-12)
    s, n_phi = projected[0], projected[1]
    tan_l = rng.normal(0, 3, n_tracks)
    cosh = np.sqrt(1 + tan_l * tan_l)
    p = 10.0 ** rng.uniform(-1.5, 3, n_tracks)
    layers = (hits[4], rng.uniform(0.005, 0.05, n), barrel)
    scattered = _scattering((tan_l, cosh, p), n_phi, s, layers, tid, np)
    assert (scattered[1] > 0).all()
    for g, want in zip(
        scattering_kernel((tan_l, cosh, p), n_phi, s, layers, tid, kernel), scattered, strict=True
    ):
        np.testing.assert_allclose(g, want, rtol=1e-12)


def test_host_kernel_hits_are_the_arrays(host_launcher, det):
    """fit_hits, built for the host, gives the NumPy path's per-hit inputs of the fit bit
    for bit: positions of the tracks' hits (float32 and float64 batches), every layer's
    errors and radiation length, barrels and disks."""
    rng = np.random.default_rng(21)
    n_batch = 3000
    layer = rng.integers(0, len(det.kind), n_batch)
    hit_index = rng.permutation(n_batch)[:2000]
    launch = host_launcher(KERNELS)
    for dtype in (np.float32, np.float64):
        positions = tuple(rng.normal(0, 500, (3, n_batch)).astype(dtype))
        arrays = _fit_hits(hit_index, positions, layer, det)
        kernel = fit_hits_kernel(hit_index, positions, layer, det, launch)
        assert set(arrays.barrel) == {False, True} and len(set(arrays.res_a)) > 2
        for got, want in zip(kernel, arrays, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bfield", [2.0, -2.0])
def test_host_kernel_parameters_are_the_arrays(host_launcher, bfield: float):
    """track_parameters, built for the host, gives the NumPy path's reported parameters,
    each of its dtype, bit for bit: either sense and field, tracks of 3 and more hits."""
    rng = np.random.default_rng(16)
    n = 500
    circle = (*rng.normal(0, 1e3, (2, n)), 10.0 ** rng.uniform(2, 6, n))
    h, theta_p = rng.choice([-1.0, 1.0], n), rng.uniform(-np.pi, np.pi, n)
    tan_l, z0, step_z = rng.normal(0, 3, n), rng.normal(0, 50, n), rng.normal(0, 1e-3, (n, 2))
    chi2_c, chi2_z = rng.chisquare(5, n), rng.chisquare(4, n)
    chi2_c[:5] = np.nan  # failed fits (a non-finite hit): no pT either
    a, b = rng.normal(size=(n, 3, 3)), rng.normal(size=(n, 2, 2))
    cov_c, cov_z = a @ a.swapaxes(1, 2), b @ b.swapaxes(1, 2)  # symmetric positive
    sizes = rng.integers(3, 20, n)
    fitted = Fitted(circle, h, theta_p, tan_l, z0, step_z, chi2_c, chi2_z, cov_c, cov_z, sizes)
    arrays = _parameters(fitted, bfield, np)
    kernel = parameters_kernel(fitted, bfield, host_launcher(KERNELS))
    assert list(kernel) == list(arrays) == list(TRACK_PARAM_DTYPES)
    for k, want in arrays.items():
        assert kernel[k].dtype == want.dtype == np.dtype(TRACK_PARAM_DTYPES[k]), k
        np.testing.assert_array_equal(kernel[k], want, err_msg=k)


@pytest.mark.parametrize("path", ["arrays", "host kernel"])
def test_reported_phi_lies_within_pi_and_chi2_is_not_negative(host_launcher, path: str):
    """A direction just below pi (or at -pi) rounds to float32(pi) = 3.1415927 > pi (or
    below -pi): reported as the float32 nearest within; a chi-square of -1e-25 (the hits on
    the helix, its terms cancelling) as 0."""
    n = 3
    phi = np.array([np.pi - 1e-9, -np.pi, 1.0])
    h = np.ones(n)
    circle = (np.zeros(n), np.full(n, 500.0), np.full(n, 600.0))
    cov = np.broadcast_to(np.eye(3), (n, 3, 3)), np.broadcast_to(np.eye(2), (n, 2, 2))
    fitted = Fitted(
        circle, h, phi - np.pi / 2, np.zeros(n), np.zeros(n), np.zeros((n, 2)),
        np.array([-1e-25, 0.0, 1.0]), np.zeros(n), *cov, np.full(n, 4),
    )  # fmt: skip
    if path == "arrays":
        got = _parameters(fitted, 2.0, np)
    else:
        got = parameters_kernel(fitted, 2.0, host_launcher(KERNELS))
    highest = np.nextafter(np.float32(np.pi), np.float32(0))
    assert float(np.float32(np.pi)) > np.pi > float(highest)
    assert got["phi"].dtype == np.float32 and np.all(np.abs(got["phi"].astype(float)) < np.pi)
    np.testing.assert_array_equal(got["phi"], np.array([highest, -highest, 1.0], np.float32))
    np.testing.assert_array_equal(got["chi2"], np.array([0.0, 0.0, 1.0], np.float32))


def test_host_kernel_refuses_more_than_it_holds_and_other_rows(host_launcher):
    offsets, launch = np.array([0, 1]), host_launcher(KERNELS)
    for dims in ((3, 3), (1, 1, 1)):
        with pytest.raises(ValueError, match="at most 2 scatter sets, 5 arms"):
            gram_kernel(np.zeros((1, 16)), 2, dims, offsets, launch)
    for hits in (np.zeros((1, 14)), np.zeros((1, 15), np.float32), np.zeros(15)):
        with pytest.raises(ValueError, match="float64 of 15 columns"):
            gram_kernel(hits, 4, (2, 3), offsets, launch)
    with pytest.raises(ValueError, match="and 4 columns, got \\(2,\\) and 5"):  # 5 > GLS_MAX_C
        gram_kernel(np.zeros((1, 5 + 1 + 2 * 2)), 5, (2,), offsets, launch)


def test_a_batch_without_tracks_gives_empty_columns_of_every_parameter(det) -> None:
    no_hits, no_layer = np.zeros(0), np.zeros(0, np.int32)
    p = fit_tracks(np.array([0]), np.zeros(0, np.int64), no_hits, no_hits, no_hits, no_layer, det)
    assert list(p) == list(TRACK_PARAM_DTYPES)
    for name, dtype in TRACK_PARAM_DTYPES.items():
        assert p[name].shape == (0,) and p[name].dtype == np.dtype(dtype), name


def test_chi2_of_hits_smeared_by_the_resolutions_follows_ndf(det):
    # No material: the hits scatter only by the layer resolutions (pixels, strips, disks),
    # so chi2 / ndf averages 1 and chi2 has the spread of a chi-square with ndf degrees.
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    rng = np.random.default_rng(2)
    offsets, idx, c, _ = _helices(ideal, 600, rng)
    x, y, z = smear(ideal, c, rng).T
    p = fit_tracks(offsets, idx, x, y, z, c.layer, ideal)
    ok = p["ndf"] >= 3
    assert ok.sum() > 500
    chi2, ndf = p["chi2"][ok].astype(float), p["ndf"][ok].astype(float)
    assert chi2.sum() / ndf.sum() == pytest.approx(1, abs=0.06)
    pull = (chi2 - ndf) / np.sqrt(2 * ndf)
    assert np.std(pull) == pytest.approx(1, abs=0.15)


def test_the_circle_is_the_least_squares_one_of_smeared_hits(det):
    """Without material, the fitted circle of hits smeared by their resolutions is the one of
    least weighted squared distances (each hit's errors projected across the circle, as the
    fit weighs them: res_a along phi, on disks res_b along r too), found here from the fitted
    one by scipy's Levenberg-Marquardt: to 0.05 sigma in q/pT, phi and d0 (0.012 seen: the
    fit weighs the hits at its starting circle, this at the fitted one), on curved 0.35 GeV
    tracks, where the curvature terms of the distances' derivatives move the fit's step by
    0.14-0.2 sigma. Exact hits cannot show those terms (their distances are zero at the
    answer)."""
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    rng = np.random.default_rng(1)
    offsets, idx, c, _ = _helices(ideal, 200, rng, pt=0.35, eta=1.0)
    x, y, z = smear(ideal, c, rng).T
    p = fit_tracks(offsets, idx, x, y, z, c.layer, ideal)
    radius = p["pt"].astype(float) / (GEV_PER_TESLA_MM * abs(ideal.bfield))
    sense = -p["charge"] * np.sign(ideal.bfield)  # +1 anticlockwise
    to_centre = p["phi"] + sense * np.pi / 2
    centre = (radius - p["charge"] * p["d0"]) * np.stack([np.cos(to_centre), np.sin(to_centre)])
    worst = 0.0
    for t in range(len(offsets) - 1):
        hits = idx[offsets[t] : offsets[t + 1]]
        position, layer = np.stack([x[hits], y[hits]]), c.layer[hits]
        normal = position - centre[:, t : t + 1]
        normal /= np.hypot(*normal)
        radial = position / np.hypot(*position)
        n_phi = radial[0] * normal[1] - radial[1] * normal[0]
        n_r = (radial * normal).sum(0)
        var = ideal.res_a[layer] ** 2 * np.maximum(n_phi**2, 0.05**2)
        sigma = np.sqrt(
            var + np.where(ideal.kind[layer] == BARREL, 0, (ideal.res_b[layer] * n_r) ** 2)
        )

        def distances(circle, position=position, sigma=sigma):
            return (np.hypot(*(position - circle[:2, None])) - circle[2]) / sigma

        best = least_squares(distances, [*centre[:, t], radius[t]], method="lm", xtol=1e-14)
        xc, yc, r = best.x
        q = p["charge"][t]
        moved = (
            (q / (GEV_PER_TESLA_MM * abs(ideal.bfield) * r) - q / p["pt"][t])
            / p["sigma_q_over_pt"][t],
            np.angle(np.exp(1j * (np.arctan2(yc, xc) - to_centre[t]))) / p["sigma_phi"][t],
            (q * (r - np.hypot(xc, yc)) - p["d0"][t]) / p["sigma_d0"][t],
        )
        worst = max(worst, np.abs(moved).max())
    assert worst < 0.05


def test_resolution_on_simulated_tracks(mu200_events, det):
    # Truth tracks of primaries with 1 <= pT <= 10 GeV, fitted from measured hits.
    rels, right, n_tracks = [], 0, 0
    for ev in mu200_events:
        h, t = ev.hits, ev.truth
        part = t.particles
        pid = t.hits.particle_id
        pt_true = np.where(pid > 0, part.pt[np.maximum(pid - 1, 0)], 0)
        vr = np.where(pid > 0, part.vr[np.maximum(pid - 1, 0)], 99)
        sel = (pt_true >= 1) & (pt_true <= 10) & (vr < 1)
        counts = np.bincount(pid[sel], minlength=len(part) + 1)
        sel &= counts[pid] >= 5
        offsets, idx = _csr(pid[sel], t.hits.hit_order[sel])
        hit_idx = np.flatnonzero(sel)[idx]
        layer = det.layer_index(h.volume_id, h.layer_id)
        p = fit_tracks(offsets, hit_idx, h.x, h.y, h.z, layer, det)
        who = np.unique(pid[sel]) - 1
        rels.append(p["pt"] / part.pt[who] - 1)
        right += int((p["charge"] == part.q[who]).sum())
        n_tracks += len(who)
    rel = np.concatenate(rels)
    assert n_tracks > 1000
    # Resolution as the half-width of the central 68% interval (robust to tails).
    lo, hi = np.percentile(rel, [16, 84])
    assert (hi - lo) / 2 < 0.05
    assert right / n_tracks > 0.99
    assert np.median(rel) == pytest.approx(0, abs=0.01)


def test_chi2_of_simulated_tracks_follows_a_chi_square_of_ndf_degrees(mu200_events, det):
    """Measured hits with multiple scattering: with the hits' full covariance (measurement,
    and each track's scatters correlated along it) the chi2 of true tracks is distributed as
    a chi-square of ndf degrees: its probability is uniform. The fit's diagonal weights alone
    (before the generalised least-squares step) put the median right but not the spread:
    deciles up to 0.09 off, 11% of the tracks above 0.99."""
    probabilities, ratios = [], []
    for ev in mu200_events:
        h, t = ev.hits, ev.truth
        pid = t.hits.particle_id
        pt = np.where(pid > 0, t.particles.pt[np.maximum(pid - 1, 0)], 0)
        sel = (pt >= 1) & (np.bincount(pid, minlength=len(t.particles) + 1)[pid] >= 5)
        offsets, idx = _csr(pid[sel], t.hits.hit_order[sel])
        layer = det.layer_index(h.volume_id, h.layer_id)
        p = fit_tracks(offsets, np.flatnonzero(sel)[idx], h.x, h.y, h.z, layer, det)
        probabilities.append(stats.chi2.cdf(p["chi2"], p["ndf"]))
        ratios.append(p["chi2"] / p["ndf"])
    probability = np.concatenate(probabilities)
    assert len(probability) > 1000
    deciles = np.percentile(probability, np.arange(10, 100, 10))
    assert np.allclose(deciles, np.arange(1, 10) / 10, atol=0.03), deciles
    assert np.mean(probability > 0.99) < 0.03  # the tail: 1% for a chi-square
    assert np.mean(np.concatenate(ratios) > 10) < 0.005


def test_hits_at_one_arc_length_give_a_finite_line(det):
    """All hits at one transverse position (one arc length: the line's normal equations are
    singular) still give finite parameters, not NaN (a NaN chi2 fails every cut silently)."""
    layer = np.arange(4, dtype=np.int32)
    x, y, z = np.full(4, 30.0), np.full(4, 20.0), np.array([100.0, 200.0, 300.0, 400.0])
    with np.errstate(divide="ignore", invalid="ignore"):  # the Kasa circle of one point
        p = fit_tracks(np.array([0, 4]), np.arange(4), x, y, z, layer, det)
    for name, values in p.items():
        assert np.all(np.isfinite(values)), name


def test_layers_beyond_a_loopers_reach_are_no_holes(det):
    """A looper through the origin on a circle of radius 200 mm reaches r = 400 mm at half a
    turn and comes back: its hits on the six barrels within 400 mm, and a last one on its way
    back in, leave no hole; the barrels at 500 mm and beyond are never crossed (its turn of
    half a turn nearest to them is no crossing)."""
    big_r = 200.0
    helix = tuple(np.array([v]) for v in (0.0, big_r, big_r, 1.0, -np.pi / 2))
    line = (np.array([0.1]), np.array([0.0]))
    layer = np.arange(6)  # the barrels at 32-360 mm
    turn = np.arccos(1 - det.r[layer].astype(float) ** 2 / (2 * big_r**2))
    turn = np.append(turn, 2 * np.pi - turn[-1])  # layer 5 again, on the way back in
    hit_layer = np.append(layer, 5)
    offsets = np.array([0, 7])
    holes = _holes(helix, line, turn, hit_layer, offsets, np.zeros(7, np.int64), det)
    assert holes is None


def test_the_hits_of_tracks_without_holes_keep_their_order(det):
    """_merged places a track's holes among its hits by turn, and leaves the rows of a track
    without holes in the order given, whatever their turns."""
    n = 5
    hits = (np.arange(n, dtype=float), *(np.zeros(n) for _ in range(5)), np.ones(n, bool))
    turn = np.array([0.1, 0.2, 0.3, 0.1, 0.2])  # track 1's hits not in turn order
    offsets, tid = np.array([0, 2, 5]), np.array([0, 0, 1, 1, 1])
    hole = Holes(*(np.array([v]) for v in (0, 0, 0.05, 9.0, 9.0, 9.0)))
    x, *_, new_offsets, rows_tid, is_hole = _merged(hits, turn, hole, offsets, tid, det)
    assert x.tolist() == [9.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    assert new_offsets.tolist() == [0, 3, 6] and rows_tid.tolist() == [0, 0, 0, 1, 1, 1]
    assert is_hole.tolist() == [True] + [False] * 5


def test_a_hit_at_its_circles_centre_is_a_radius_inside_it():
    """The root's square root is of 1 + 2 kappa p, 0 at the centre: where rounding takes it
    below 0 the distance is still -1 / kappa, not NaN."""
    kappa, phi, delta = np.array([3.0]), np.array([2.0]), np.array([0.0])
    centre = (delta + 1 / kappa) * np.array([-np.sin(phi), np.cos(phi)])
    eps, _ = _distances(kappa, phi, delta, centre[0], centre[1], np.array([0]), np)
    assert eps[0] == pytest.approx(-1 / 3, abs=1e-12)
