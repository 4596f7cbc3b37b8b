"""Simulator: determinism, truth consistency, geometry, propagation and scattering physics."""

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

import streamtrk.sim.simulate as simulate_module
from streamtrk.detector import BARREL, highland, load_detector
from streamtrk.recon.fit import _MIN_COS_INCIDENCE
from streamtrk.sim.generator import GeneratedParticles, GeneratorConfig, generate
from streamtrk.sim.propagate import _scatter, propagate
from streamtrk.sim.simulate import (
    OVERLAP_GAP,
    SimConfig,
    _noise,
    _noise_on,
    layer_indices,
    overlaps,
    simulate,
    simulate_event,
    smear,
)

DET = load_detector()
SMALL = SimConfig(generator=GeneratorConfig(mu=10))


def _one(pt: float, eta: float, phi: float, q: int, n: int = 1) -> GeneratedParticles:
    mom = np.tile([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], (n, 1))
    return GeneratedParticles(np.zeros((n, 3)), mom, np.full(n, q, np.int32))


def test_same_seed_same_events_different_seed_differs():
    a = list(simulate(DET, SMALL, seed=5, n_events=2))
    b = list(simulate(DET, SMALL, seed=5, n_events=2))
    c = list(simulate(DET, SMALL, seed=6, n_events=1))
    for x, y in zip(a, b, strict=True):
        assert x.truth is not None and y.truth is not None
        assert x.hits.equals(y.hits) and x.truth.equals(y.truth)
    assert not a[0].hits.equals(c[0].hits)


def test_event_streams_do_not_depend_on_run_length():
    short = list(simulate(DET, SMALL, seed=9, n_events=1))
    long = list(simulate(DET, SMALL, seed=9, n_events=3))
    assert short[0].hits.equals(long[0].hits)


def test_truth_is_consistent():
    ev = simulate_event(DET, SMALL, np.random.default_rng(3))
    h, t = ev.hits, ev.truth
    assert t is not None
    assert len(h) > 1000 and np.array_equal(h.hit_id, np.arange(1, len(h) + 1))
    pid = t.hits.particle_id
    # nhits per particle equals the hits in the event; hit order is 0..n-1 per particle.
    counts = np.bincount(pid, minlength=len(t.particles) + 1)[1:]
    assert np.array_equal(counts, t.particles.nhits)
    sig = pid > 0
    o = np.lexsort((t.hits.hit_order[sig], pid[sig]))
    p_sorted, ord_sorted = pid[sig][o], t.hits.hit_order[sig][o]
    first = np.searchsorted(p_sorted, p_sorted)
    assert np.array_equal(ord_sorted, np.arange(len(p_sorted)) - first)
    assert np.all(t.hits.hit_order[~sig] == -1)
    # Hit order along a particle: increasing |z - vz| from its own production vertex.
    vz = np.concatenate([[0.0], t.particles.vz])[pid[sig]]
    dist = np.abs(t.hits.tz[sig] - vz)
    o = np.lexsort((t.hits.hit_order[sig], pid[sig]))
    same = np.diff(pid[sig][o]) == 0
    assert np.all(np.diff(dist[o])[same] >= 0)
    assert t.hits.weight.sum() == pytest.approx(1.0, rel=1e-4)
    assert np.all(t.hits.weight[~sig] == 0)
    # Hits sorted by volume, layer, module as in TrackML files.
    key = (h.volume_id.astype(np.int64) * 100 + h.layer_id) * 100_000 + h.module_id
    assert np.all(np.diff(key) >= 0)


def test_truth_weights_follow_the_trackml_rule():
    """TrackML's weights: 0 for noise and for particles with fewer than 4 hits; along a
    particle, its first hit weighs 10/6 of its last (the ends of the order proposal 10, 8, 6,
    5, 3, 3, 3, 5, 6); a particle's total is its pT weight: the same for all above 3 GeV, a
    fifth of that below 0.5 GeV."""
    ev = simulate_event(DET, SMALL, np.random.default_rng(12))
    assert ev.truth is not None
    t, parts = ev.truth.hits, ev.truth.particles
    w, pid, order = t.weight.astype(np.float64), t.particle_id, t.hit_order
    nhits = np.bincount(pid, minlength=len(parts) + 1)
    assert np.all(w[(pid == 0) | (nhits[pid] < 4)] == 0)
    long = np.flatnonzero((nhits[1:] >= 4) & (nhits[1:] <= 20)) + 1
    assert len(long) > 200
    for p in long[:50]:
        first = w[(pid == p) & (order == 0)]
        last = w[(pid == p) & (order == nhits[p] - 1)]
        assert first / last == pytest.approx(10 / 6, rel=1e-5)
    total = np.bincount(pid, weights=w, minlength=len(parts) + 1)[long]
    pt = np.hypot(parts.px, parts.py)[long - 1]
    hard, soft = total[pt > 3.0], total[pt < 0.5]
    assert len(hard) >= 3 and len(soft) >= 50 and np.all(total > 0)
    assert np.allclose(hard, hard[0], rtol=1e-5) and np.allclose(soft, 0.2 * hard[0], rtol=1e-5)


def test_truth_columns_are_the_crossings_and_the_generated_particles():
    """The particle table is the generated particles (the event's first draws); each signal
    hit's true position lies on its layer, within a few resolutions of the measured one, its
    true momentum has its particle's magnitude (scattering turns it, nothing slows it), and
    its module is the one its measured position falls in."""
    ev = simulate_event(DET, SMALL, np.random.default_rng(13))
    gen = generate(SMALL.generator, np.random.default_rng(13))
    assert ev.truth is not None
    h, t, parts = ev.hits, ev.truth.hits, ev.truth.particles
    f32 = np.float32
    assert np.array_equal(parts.particle_id, np.arange(1, len(gen) + 1))
    for got, want in zip(
        (parts.vx, parts.vy, parts.vz, parts.px, parts.py, parts.pz),
        (*gen.vertex.T, *gen.momentum.T),
        strict=True,
    ):
        assert np.array_equal(got, want.astype(f32))
    assert np.array_equal(parts.q, gen.charge)
    sig = t.particle_id > 0
    layer = DET.layer_index(h.volume_id, h.layer_id)
    barrel = DET.kind[layer] == BARREL
    on = sig & barrel
    assert np.allclose(np.hypot(t.tx, t.ty)[on], DET.r[layer[on]], rtol=1e-6)
    on = sig & ~barrel
    assert np.array_equal(t.tz[on], DET.z[layer[on]].astype(f32))
    res = np.maximum(DET.res_a, DET.res_b)[layer]
    moved = np.sqrt((h.x - t.tx) ** 2 + (h.y - t.ty) ** 2 + (h.z - t.tz) ** 2)
    assert np.all(moved[sig] < 6 * res[sig] + 1e-3)
    p = np.linalg.norm(np.stack([parts.px, parts.py, parts.pz], 1), axis=1)
    tp = np.linalg.norm(np.stack([t.tpx, t.tpy, t.tpz], 1), axis=1)
    assert np.allclose(tp[sig], p[t.particle_id[sig] - 1], rtol=1e-5)
    assert np.all(tp[~sig] == 0)
    assert np.array_equal(h.module_id, DET.module_id(layer, h.x, h.y, h.z))


def test_hits_lie_on_their_surfaces_with_valid_modules():
    ev = simulate_event(DET, SMALL, np.random.default_rng(4))
    h = ev.hits
    layer = DET.layer_index(h.volume_id, h.layer_id)
    assert np.all(layer >= 0)
    barrel = DET.kind[layer] == BARREL
    r = np.hypot(h.x, h.y)
    assert np.allclose(r[barrel], DET.r[layer[barrel]], atol=1e-3)
    assert np.all(np.abs(h.z[barrel]) <= DET.half_length[layer[barrel]] + 15)
    assert np.allclose(h.z[~barrel], DET.z[layer[~barrel]], atol=1e-3)
    assert np.all((h.module_id >= 1) & (h.module_id <= DET.n_modules[layer]))
    assert set(np.unique(h.volume_id)) == {7, 8, 9, 12, 13, 14, 16, 17, 18}


def test_smearing_has_the_layer_resolutions_and_keeps_hits_on_their_surfaces():
    """Barrel hits move by res_a along r-phi and res_b along z, disk hits by res_a along r-phi
    and res_b along r (Gaussian, centred); the other coordinate stays on the surface."""
    det = replace(DET, x0=np.full(len(DET), 1e-30))
    rng = np.random.default_rng(31)
    n = 3000
    pt, eta, phi = np.full(n, 2.0), rng.uniform(-3, 3, n), rng.uniform(-np.pi, np.pi, n)
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1)
    c = propagate(det, GeneratedParticles(np.zeros((n, 3)), mom, np.ones(n, np.int32)), rng)
    m = smear(DET, c, rng)
    r_t, r_m = np.hypot(*c.position[:, :2].T), np.hypot(*m[:, :2].T)
    dphi = np.angle(
        np.exp(1j * (np.arctan2(m[:, 1], m[:, 0]) - np.arctan2(*c.position[:, 1::-1].T)))
    )
    barrel = DET.kind[c.layer] == BARREL
    assert barrel.sum() > 5000 and (~barrel).sum() > 5000
    res_a, res_b = DET.res_a[c.layer], DET.res_b[c.layer]
    pulls = {
        "r-phi": r_m * dphi / res_a,
        "z (barrel)": ((m[:, 2] - c.position[:, 2]) / res_b)[barrel],
        "r (disks)": ((r_m - r_t) / res_b)[~barrel],
    }
    for name, pull in pulls.items():
        assert np.mean(pull) == pytest.approx(0, abs=0.05), name
        assert np.std(pull) == pytest.approx(1, abs=0.03), name
    assert np.allclose(r_m[barrel], r_t[barrel], rtol=0, atol=1e-9)
    assert np.array_equal(m[~barrel, 2], c.position[~barrel, 2])


def test_each_layer_loses_its_inefficiency_share_of_the_crossings():
    """The same event with every layer efficient, and with barrel layers losing 40% and disks
    10% of their crossings (the loss is drawn after propagation: same particles, same
    crossings)."""
    cfg = replace(SMALL, noise_fraction=0.0)
    full = simulate_event(
        replace(DET, inefficiency=np.zeros(len(DET))), cfg, np.random.default_rng(41)
    )
    lossy_det = replace(DET, inefficiency=np.where(DET.kind == BARREL, 0.4, 0.1))
    lossy = simulate_event(lossy_det, cfg, np.random.default_rng(41))
    for ev in (full, lossy):
        assert ev.truth is not None
    kept = [
        np.bincount(DET.kind[DET.layer_index(e.hits.volume_id, e.hits.layer_id)], minlength=2)
        for e in (full, lossy)
    ]
    assert np.min(kept[0]) > 3000
    assert kept[1][BARREL] / kept[0][BARREL] == pytest.approx(0.6, abs=0.03)
    assert kept[1][1 - BARREL] / kept[0][1 - BARREL] == pytest.approx(0.9, abs=0.015)


def test_noise_is_uniform_over_the_modules():
    """Noise hits fall on every module alike (TrackML): counts per module are Poisson around
    one mean (variance = mean), on barrels and on the rings of the disks alike, within the
    layers' extent."""
    n = 400_000
    layer, pos = _noise(DET, n, np.random.default_rng(43))
    x, y, z = pos.T
    mod = DET.module_id(layer, x, y, z)
    first = np.concatenate([[0], np.cumsum(DET.n_modules)[:-1]])
    counts = np.bincount(first[layer] + mod - 1, minlength=DET.n_modules.sum())
    mean = n / DET.n_modules.sum()
    assert np.min(counts) > 0 and counts.mean() == pytest.approx(mean)
    assert counts.var() / mean == pytest.approx(1, abs=0.06)
    barrel = DET.kind[layer] == BARREL
    assert np.allclose(np.hypot(x, y)[barrel], DET.r[layer[barrel]])
    assert np.all(np.abs(z[barrel]) <= DET.half_length[layer[barrel]])
    assert np.std(z[barrel] / DET.half_length[layer[barrel]]) == pytest.approx(3**-0.5, rel=0.01)
    r = np.hypot(x, y)[~barrel]
    assert np.all((r >= DET.r_min[layer[~barrel]]) & (r <= DET.r_max[layer[~barrel]]))
    assert np.array_equal(z[~barrel], DET.z[layer[~barrel]])


def test_disk_noise_is_uniform_across_each_ring():
    """Within a disk's ring, noise radii are uniform (not the ring's centre)."""
    i = int(np.flatnonzero(DET.kind != BARREL)[0])
    _, pos = _noise_on(DET, np.full(20_000, i), np.random.default_rng(1))
    width = (DET.r_max[i] - DET.r_min[i]) / len(DET.rings[i])
    within = ((np.hypot(pos[:, 0], pos[:, 1]) - DET.r_min[i]) / width) % 1
    assert np.std(within) == pytest.approx(12**-0.5, rel=0.02)


def test_noise_fraction_follows_setting():
    cfg = replace(SMALL, noise_fraction=0.3)
    ev = simulate_event(DET, cfg, np.random.default_rng(5))
    assert ev.truth is not None
    assert (ev.truth.hits.particle_id == 0).mean() == pytest.approx(0.3, abs=0.01)
    quiet = simulate_event(DET, replace(SMALL, noise_fraction=0.0), np.random.default_rng(5))
    assert quiet.truth is not None
    assert np.all(quiet.truth.hits.particle_id > 0)


@pytest.mark.parametrize("q", [1, -1])
@pytest.mark.parametrize("field_sign", [1, -1])
def test_helix_crossings_match_analytic_circle(q, field_sign):
    det = replace(DET, x0=np.full(len(DET), 1e-12), bfield=field_sign * DET.bfield)
    pt, phi0 = 1.0, 0.3
    c = propagate(det, _one(pt, 0.1, phi0, q), np.random.default_rng(0))
    barrel = det.kind[c.layer] == BARREL
    assert barrel.sum() == 10
    x, y = c.position[barrel, 0], c.position[barrel, 1]
    rho = np.hypot(x, y)
    R = pt / (0.299792458e-3 * abs(det.bfield))
    # A track from the origin reaches radius rho at phi0 - q * asin(rho / 2R) in +B_z (at
    # phi0 + q * asin(rho / 2R) in -B_z), moving along its momentum.
    expect = phi0 - q * field_sign * np.arcsin(rho / (2 * R))
    assert np.allclose(np.arctan2(y, x), expect, atol=1e-9)
    assert np.allclose(c.position[barrel, 2], R * 2 * np.arcsin(rho / (2 * R)) * np.sinh(0.1))
    assert np.array_equal(c.order, np.arange(len(c.order)))


def _helix(v0, pt, eta, phi0, sense, a):
    """Point of the helix from ``v0`` after turning by ``a`` (rad; transverse arc R a), its
    direction turning at d(phi)/da = ``sense``: integrated from dx/da = R cos(phi0 + sense a),
    dy/da = R sin(phi0 + sense a), dz/da = R sinh(eta)."""
    R = pt / (0.299792458e-3 * abs(DET.bfield))
    x = v0[0] + R / sense * (np.sin(phi0 + sense * a) - np.sin(phi0))
    y = v0[1] - R / sense * (np.cos(phi0 + sense * a) - np.cos(phi0))
    return np.stack([x, y, v0[2] + R * a * np.sinh(eta)], axis=-1)


def _roots(f, a, fa):
    """Turning angles where ``f`` (``fa`` on the grid ``a``) changes sign, refined by
    bisection."""
    i = np.flatnonzero(np.sign(fa[:-1]) * np.sign(fa[1:]) < 0)
    lo, hi = a[i], a[i + 1]
    for _ in range(60):
        mid = (lo + hi) / 2
        left = np.sign(f(mid)) == np.sign(f(lo))
        lo, hi = np.where(left, mid, lo), np.where(left, hi, mid)
    return (lo + hi) / 2


def _expected_crossings(det, v0, pt, eta, phi0, q, max_turns):
    """(turning angle, layer) of the surfaces a massless helix meets before it leaves the
    envelope, found by scanning the helix (no circle algebra): barrel cylinders where its
    radius passes r within the half-length, disks where its z passes the disk's within
    [r_min, r_max]."""
    sense = -q * np.sign(det.bfield)
    a = np.linspace(0.0, max_turns * 2 * np.pi, 400_001)
    rho = lambda s: np.hypot(*_helix(v0, pt, eta, phi0, sense, s)[..., :2].T)  # noqa: E731
    zed = lambda s: _helix(v0, pt, eta, phi0, sense, s)[..., 2]  # noqa: E731
    rho_a, z_a = rho(a), zed(a)
    found = []
    for i in range(len(det)):
        if det.kind[i] == BARREL:
            s = _roots(lambda s, i=i: rho(s) - det.r[i], a, rho_a - det.r[i])
            s = s[np.abs(zed(s)) <= det.half_length[i]]
        else:
            s = _roots(lambda s, i=i: zed(s) - det.z[i], a, z_a - det.z[i])
            s = s[(rho(s) >= det.r_min[i]) & (rho(s) <= det.r_max[i])]
        found += [(x, i) for x in s]
    exits = np.concatenate(
        [
            _roots(lambda s: rho(s) - det.envelope_r, a, rho_a - det.envelope_r),
            _roots(lambda s: np.abs(zed(s)) - det.envelope_z, a, np.abs(z_a) - det.envelope_z),
            [np.inf],
        ]
    )
    found = sorted(f for f in found if f[0] < exits.min())
    angle = np.array([f[0] for f in found])
    return angle, np.array([f[1] for f in found], dtype=np.int64), sense


@pytest.mark.parametrize(
    ("vertex", "pt", "eta", "phi0", "q", "turns"),
    [
        ((0.0, 0.0, 0.0), 1.0, 1.2, 0.3, 1, 0.5),  # barrel, then pixel and strip disks
        ((0.0, 0.0, 0.0), 0.6, 2.6, -2.0, -1, 0.5),  # disks only
        ((0.0, 0.0, 40.0), 0.8, -1.7, 2.5, 1, 0.5),  # the -z endcaps
        ((0.0, 0.0, -5.0), 1.0, -3.3, 0.5, -1, 0.5),  # inside the -z strip disks' r_min
        ((3.0, -2.0, 20.0), 0.7, 0.9, 1.0, -1, 0.5),  # a displaced vertex
        ((150.0, 80.0, -300.0), 2.0, -0.4, -0.7, 1, 0.5),  # a secondary among the layers
        ((0.0, 0.0, 0.0), 0.25, 0.05, 0.8, 1, 1.0),  # a looper over one turn: out and back
    ],
)
def test_crossings_are_the_surfaces_the_helix_meets(vertex, pt, eta, phi0, q, turns):
    """Without material, the crossings are, in order, the layers a helix scanned point by
    point meets (barrel and disk acceptance, the envelope, the turn budget), at the helix's
    positions there, each with the helix's momentum at that point."""
    det = replace(DET, x0=np.full(len(DET), 1e-30))  # no scattering at all
    gen = GeneratedParticles(
        np.array([vertex]),
        np.array([[pt * np.cos(phi0), pt * np.sin(phi0), pt * np.sinh(eta)]]),
        np.array([q], np.int32),
    )
    c = propagate(det, gen, np.random.default_rng(0), max_turns=turns)
    angle, layer, sense = _expected_crossings(det, np.array(vertex), pt, eta, phi0, q, turns)
    assert len(layer) >= 3
    assert c.layer.tolist() == layer.tolist()
    assert np.allclose(c.position, _helix(np.array(vertex), pt, eta, phi0, sense, angle), atol=1e-6)
    phi = phi0 + sense * angle
    expect = np.stack([pt * np.cos(phi), pt * np.sin(phi), np.full_like(phi, pt * np.sinh(eta))], 1)
    assert np.allclose(c.momentum, expect, rtol=0, atol=1e-9)
    if turns == 1.0:  # each cylinder inside the circle crossed outward, then inward
        inside = (det.kind == BARREL) & (det.r < 2 * pt / (0.299792458e-3 * det.bfield))
        assert np.array_equal(np.bincount(c.layer, minlength=len(det)), 2 * inside)


def test_loopers_are_bounded_by_turns():
    p = _one(0.3, 0.05, 0.0, 1)
    half = propagate(DET, p, np.random.default_rng(0), max_turns=0.5)
    more = propagate(DET, p, np.random.default_rng(0), max_turns=3.0)
    assert 0 < len(half.layer) < len(more.layer)
    # Outgoing half turn: each layer the circle reaches is crossed once.
    assert len(np.unique(half.layer)) == len(half.layer)


def test_multiple_scattering_width_follows_highland():
    det = replace(DET, x0=np.where(np.arange(len(DET)) == 0, 0.05, 1e-12))
    n, p = 4000, 2.0
    c = propagate(det, _one(p, 0.0, 0.0, 1, n), np.random.default_rng(1), max_turns=0.5)
    first = c.order == 0
    assert np.all(c.layer[first] == 0)
    # Deflection of the momentum in the z direction after the first (thick) layer.
    theta_z = np.arctan2(c.momentum[first, 2], np.hypot(*c.momentum[first, :2].T))
    expect = highland(np.array([p]), np.array([0.05]))[0]
    assert np.std(theta_z) == pytest.approx(expect, rel=0.06)


def test_scattering_deflects_in_two_independent_planes():
    """The two deflections across the momentum are independent draws of one width."""
    n = 20_000
    mom = np.tile([2.0, 0.0, 0.0], (n, 1))
    normal = np.tile([1.0, 0.0, 0.0], (n, 1))
    out = _scatter(np.random.default_rng(2), mom, normal, np.full(n, 0.02))
    assert abs(np.corrcoef(out[:, 1], out[:, 2])[0, 1]) < 0.05
    assert np.std(out[:, 1]) == pytest.approx(np.std(out[:, 2]), rel=0.05)


@pytest.mark.parametrize("phi0", [0.0, 2.2])
def test_an_inclined_crossing_scatters_over_its_longer_path(phi0):
    """At eta 1.5 a particle crosses the barrel layer along x0 / cos(incidence): Highland's
    width for that path, not for x0; the momentum's magnitude is kept."""
    det = replace(DET, x0=np.where(np.arange(len(DET)) == 0, 0.05, 1e-12))
    n, pt, eta = 4000, 2.0, 1.5
    c = propagate(det, _one(pt, eta, phi0, 1, n), np.random.default_rng(2), max_turns=0.5)
    first = (c.order == 0) & (c.layer == 0)
    assert first.sum() > 0.9 * n
    p = pt * np.cosh(eta)
    assert np.linalg.norm(c.momentum[first], axis=1) == pytest.approx(p, rel=1e-9)
    theta = np.arctan2(c.momentum[first, 2], np.hypot(*c.momentum[first, :2].T))
    expect = highland(np.array([p]), np.array([0.05 * np.cosh(eta)]))[0]  # 1 / cos(incidence)
    assert np.std(theta - np.arctan(np.sinh(eta))) == pytest.approx(expect, rel=0.06)


def test_a_neutral_particle_off_the_axis_leaves_no_crossings():
    mom = np.array([[1.0, 0.0, np.sinh(3.0)]])
    particles = GeneratedParticles(np.array([[100.0, 0.0, 0.0]]), mom, np.zeros(1, np.int32))
    assert len(propagate(DET, particles, np.random.default_rng(0)).layer) == 0


def test_crossings_are_sorted_by_particle_then_order():
    gen = generate(GeneratorConfig(mu=3), np.random.default_rng(0))
    c = propagate(DET, gen, np.random.default_rng(0), max_turns=0.5, min_pt=0.15)
    assert len(np.unique(c.particle)) > 10
    assert np.array_equal(np.lexsort((c.order, c.particle)), np.arange(len(c.layer)))


def test_neutral_particles_leave_no_crossings():
    none = propagate(DET, _one(2.0, 0.0, 0.0, 0, 10), np.random.default_rng(3))
    assert len(none.layer) == len(none.particle) == len(none.order) == 0
    assert none.position.shape == none.momentum.shape == (0, 3)


def test_layers_without_material_do_not_scatter():
    """x0 = 0, which the detector file allows (its default): crossings without scattering,
    every momentum as it started (the field turns it in x-y only)."""
    c = propagate(
        replace(DET, x0=np.zeros(len(DET))), _one(2.0, 0.3, 0.0, 1, 100), np.random.default_rng(3)
    )
    assert len(c.layer) > 100
    np.testing.assert_allclose(c.momentum[:, 2], 2.0 * np.sinh(0.3), rtol=1e-12)
    np.testing.assert_allclose(np.hypot(*c.momentum[:, :2].T), 2.0, rtol=1e-12)


@pytest.mark.parametrize("eta", [2.2, -2.8])
def test_a_disk_crossing_scatters_over_its_longer_path(eta):
    """A disk is crossed along x0 / cos(incidence), cos(incidence) = |pz| / p = |tanh(eta)|:
    the polar angle after the first pixel disk spreads by Highland's width for that path."""
    first = DET.kind != BARREL
    first &= np.abs(DET.z) == np.abs(np.where(first, DET.z, np.inf)).min()
    det = replace(DET, x0=np.where(first, 0.05, 1e-30))
    n, pt = 20_000, 1.5
    c = propagate(det, _one(pt, eta, 1.0, -1, n), np.random.default_rng(4), max_turns=0.5)
    disk = first[c.layer] & (np.sign(DET.z[c.layer]) == np.sign(eta))
    assert disk.sum() == n
    p = pt * np.cosh(eta)
    assert np.linalg.norm(c.momentum[disk], axis=1) == pytest.approx(p, rel=1e-9)
    theta = np.arctan2(np.hypot(*c.momentum[disk, :2].T), c.momentum[disk, 2])
    expect = highland(np.array([p]), np.array([0.05 / abs(np.tanh(eta))]))[0]
    theta_in = 2 * np.arctan(np.exp(-eta))
    assert np.mean(theta - theta_in) == pytest.approx(0, abs=3 * expect / n**0.5)
    assert np.std(theta - theta_in) == pytest.approx(expect, rel=0.025)


def test_a_grazing_crossing_scatters_over_the_fits_longest_path():
    """A looper whose circle just reaches the outer barrel layer (circle diameter 1.0005 times
    its radius) crosses it at cos(incidence) = sqrt(1 - 0.9995**2) = 0.032: the path through
    the layer is taken as x0 / 0.05 at most, the floor the fit's scattering model assumes too
    (not x0 / 0.032, and not a narrower floor)."""
    outer = int(np.argmax(np.where(DET.kind == BARREL, DET.r, 0)))
    x0 = DET.x0[outer]
    det = replace(DET, x0=np.where(np.arange(len(DET)) == outer, x0, 1e-30))
    n = 10_000
    pt = 0.299792458e-3 * DET.bfield * DET.r[outer] / 0.9995 / 2  # 2R = r / 0.9995
    c = propagate(det, _one(pt, 0.0, 0.4, 1, n), np.random.default_rng(7), max_turns=0.5)
    # Each particle's first crossing of it (a scattered one may come back to it).
    where = np.flatnonzero(c.layer == outer)
    at = where[np.unique(c.particle[where], return_index=True)[1]]
    assert len(at) == n  # every particle reaches it
    theta_z = np.arctan2(c.momentum[at, 2], np.hypot(*c.momentum[at, :2].T))
    assert _MIN_COS_INCIDENCE == 0.05
    expect = highland(np.array([pt]), np.array([x0 / _MIN_COS_INCIDENCE]))[0]
    assert np.std(theta_z) == pytest.approx(expect, rel=0.025)


def test_only_charged_particles_above_min_pt_are_propagated():
    """``min_pt`` is a strict lower bound on pT; neutral particles are never propagated,
    whatever their pT and direction."""
    pt = np.array([0.1499, 0.15, 0.1501, 2.0, 2.0])
    mom = np.stack([pt, np.zeros(5), pt * np.sinh(np.array([0.1, 0.1, 0.1, 0.1, 2.0]))], 1)
    gen = GeneratedParticles(np.zeros((5, 3)), mom, np.array([1, -1, 1, 0, 0], np.int32))
    c = propagate(DET, gen, np.random.default_rng(0), min_pt=0.15)
    assert set(c.particle.tolist()) == {2}


@pytest.mark.parametrize("x0", [-0.01, np.nan])
def test_a_single_layer_of_negative_or_unknown_material_is_refused(x0: float) -> None:
    det = replace(DET, x0=np.where(np.arange(len(DET)) == 5, x0, DET.x0))
    with pytest.raises(ValueError, match=r"material thickness x0 >= 0"):
        propagate(det, _one(2.0, 0.0, 0.0, 1), np.random.default_rng(3))


def _nb_truncated(mean: float, k: float) -> tuple[float, float]:
    """Mean and variance of a negative binomial (mean ``mean``, shape ``k``: variance
    mean + mean**2 / k) given that it is above 0."""
    p0 = (k / (k + mean)) ** k
    second = mean + mean**2 * (1 + 1 / k)  # E[X^2]
    m = mean / (1 - p0)
    return m, second / (1 - p0) - m * m


def _primaries(gen: GeneratedParticles) -> np.ndarray:
    """Rows of primaries: produced within 1 mm of the axis (secondaries start beyond)."""
    return np.hypot(gen.vertex[:, 0], gen.vertex[:, 1]) < 1.0


@pytest.mark.parametrize("shape", [1.0, 4.0])
def test_pileup_vertices_and_their_multiplicities(shape):
    """max(1, Poisson(mu)) vertices around the beam spot (sigma_z 6 mm, sigma_r 15 um), each
    with a negative-binomial number of primaries (mean 42, shape k): vertices with primaries
    number mu (1 - P(0)), their counts have the truncated law's mean and variance."""
    spot = (0.3, -0.2, 4.0)
    cfg = GeneratorConfig(mu=10_000, multiplicity_shape=shape, beam_spot=spot)
    gen = generate(cfg, np.random.default_rng(51))
    prim = _primaries(gen)
    vtx, mult = np.unique(gen.vertex[prim], axis=0, return_counts=True)
    p0 = (shape / (shape + 42.0)) ** shape
    assert len(vtx) == pytest.approx(10_000 * (1 - p0), rel=0.04)
    mean, var = _nb_truncated(42.0, shape)
    assert mult.mean() == pytest.approx(mean, rel=0.03)
    assert mult.var() == pytest.approx(var, rel=0.08)
    assert np.allclose(vtx.mean(axis=0), spot, rtol=0, atol=[0.001, 0.001, 0.2])
    assert np.allclose(vtx.std(axis=0), [0.015, 0.015, 6.0], rtol=0.03, atol=0)


def test_primary_and_secondary_spectra_are_the_documented_ones():
    """docs/simulation.md: primary pT median 0.45 GeV with 15% above 1 GeV, flat in
    |eta| < 4, flat in phi, charge symmetric; secondaries 30% of all, produced beyond 1 mm
    from the axis along a random |eta| < 4, isotropic, softer, 68% positive."""
    gen = generate(GeneratorConfig(mu=5000), np.random.default_rng(52))
    prim = _primaries(gen)
    px, py, pz = gen.momentum.T
    pt, eta, phi = np.hypot(px, py), np.arcsinh(pz / np.hypot(px, py)), np.arctan2(py, px)
    assert np.median(pt[prim]) == pytest.approx(0.45, abs=0.01)
    assert (pt[prim] > 1.0).mean() == pytest.approx(0.15, abs=0.01)
    assert pt.min() >= 0.1 and np.median(pt[~prim]) < 0.6 * np.median(pt[prim])
    assert np.abs(eta[prim]).max() <= 4.0
    assert np.std(eta[prim]) == pytest.approx(8 / 12**0.5, rel=0.01)  # flat in [-4, 4]
    assert np.std(phi) == pytest.approx(2 * np.pi / 12**0.5, rel=0.01)
    assert np.mean(np.cos(phi)) == pytest.approx(0, abs=0.01)
    assert (gen.charge[prim] == 1).mean() == pytest.approx(0.5, abs=0.01)
    assert set(np.unique(gen.charge).tolist()) == {-1, 1}

    assert (~prim).mean() == pytest.approx(0.30, abs=0.005)
    r = np.hypot(gen.vertex[~prim, 0], gen.vertex[~prim, 1])
    assert r.min() > 1.0 and r.max() < 1000.0
    # Along a random pseudorapidity: z / r = sinh(eta), |eta| < 4.
    assert np.all(np.abs(gen.vertex[~prim, 2]) <= r * np.sinh(4.0) + 1e-9)
    assert np.median(np.abs(gen.vertex[~prim, 2]) / r) > np.sinh(1.0)
    assert (gen.vertex[~prim, 2] > 0).mean() == pytest.approx(0.5, abs=0.02)
    vphi = np.arctan2(gen.vertex[~prim, 1], gen.vertex[~prim, 0])  # any azimuth
    assert np.std(vphi) == pytest.approx(2 * np.pi / 12**0.5, rel=0.02)
    cos_t = pz[~prim] / np.linalg.norm(gen.momentum[~prim], axis=1)  # isotropic: flat
    assert np.mean(cos_t) == pytest.approx(0, abs=0.01)
    assert np.std(cos_t) == pytest.approx(3**-0.5, rel=0.01)
    assert (gen.charge[~prim] == 1).mean() == pytest.approx(0.68, abs=0.01)


def test_primary_pt_is_log_interpolated_between_quantiles():
    """Above the 99.9% quantile (8.36 GeV) up to 45 GeV, log-uniform: median sqrt(8.36 x 45)."""
    gen = generate(GeneratorConfig(mu=5000, secondary_fraction=0.0), np.random.default_rng(5))
    pt = np.hypot(gen.momentum[:, 0], gen.momentum[:, 1])
    top = pt[pt > 8.3551]
    assert len(top) > 100
    assert np.median(top) == pytest.approx(np.sqrt(8.3551 * 45.0), rel=0.15)


def test_secondary_vertices_end_at_2900_mm():
    """docs/simulation.md: a secondary's vz is clipped at |z| = 2,900 mm (14% of them)."""
    gen = generate(GeneratorConfig(mu=200), np.random.default_rng(1))
    sec = np.hypot(gen.vertex[:, 0], gen.vertex[:, 1]) > 1.0
    vz = np.abs(gen.vertex[sec, 2])
    assert vz.max() == 2900.0
    assert (vz == 2900.0).mean() == pytest.approx(0.14, abs=0.03)


def test_charge_and_secondary_shares_follow_their_settings():
    cfg = GeneratorConfig(mu=2000, positive_fraction=0.8, secondary_fraction=0.1)
    gen = generate(cfg, np.random.default_rng(53))
    prim = _primaries(gen)
    assert (gen.charge[prim] == 1).mean() == pytest.approx(0.8, abs=0.01)
    assert (~prim).mean() == pytest.approx(0.1, abs=0.005)
    narrow = generate(GeneratorConfig(mu=500, eta_max=1.5), np.random.default_rng(53))
    px, py, pz = narrow.momentum[_primaries(narrow)].T
    eta = np.arcsinh(pz / np.hypot(px, py))
    assert eta.max() <= 1.5 and eta.min() >= -1.5 and eta.max() > 1.45 and eta.min() < -1.45


def test_hard_scatter_particles():
    """N extra particles on the first vertex, log-uniform in [lo, hi] GeV, flat in
    |eta| < 2.5, either charge: the particles that the same draw without them lacks (they
    are drawn last)."""
    rng_seed = 54
    base = generate(GeneratorConfig(mu=50), np.random.default_rng(rng_seed))
    cfg = GeneratorConfig(mu=50, hard_scatter=4000, hard_scatter_pt=(2.0, 80.0))
    gen = generate(cfg, np.random.default_rng(rng_seed))
    assert len(gen) == len(base) + 4000
    known = {tuple(row) for row in base.momentum.tolist()}
    hs = np.array([tuple(row) not in known for row in gen.momentum.tolist()])
    assert hs.sum() == 4000
    vtx = np.unique(gen.vertex[hs], axis=0)
    # One vertex, a pileup vertex (that of primaries of the same draw).
    assert len(vtx) == 1 and (base.vertex == vtx[0]).all(axis=1).any()
    px, py, pz = gen.momentum[hs].T
    log_pt = np.log(np.hypot(px, py))
    assert log_pt.min() >= np.log(2.0) and log_pt.max() <= np.log(80.0)
    assert np.mean(log_pt) == pytest.approx((np.log(2.0) + np.log(80.0)) / 2, abs=0.03)
    assert np.std(log_pt) == pytest.approx(np.log(40.0) / 12**0.5, rel=0.02)
    eta = np.arcsinh(pz / np.hypot(px, py))
    assert np.abs(eta).max() <= 2.5 and np.std(eta) == pytest.approx(5 / 12**0.5, rel=0.02)
    assert (gen.charge[hs] == 1).mean() == pytest.approx(0.5, abs=0.03)
    assert set(gen.charge[hs].tolist()) == {-1, 1}
    assert np.std(np.arctan2(py, px)) == pytest.approx(2 * np.pi / 12**0.5, rel=0.03)


def test_the_hard_scatter_is_on_the_first_vertex():
    """The hard scatter comes first, then the first vertex's primaries: the same vertex."""
    cfg = GeneratorConfig(mu=50, hard_scatter=3, primaries_per_vertex=1000.0)
    for seed in range(5):
        gen = generate(cfg, np.random.default_rng(seed))
        assert np.array_equal(gen.vertex[0], gen.vertex[3])


@pytest.mark.parametrize(
    "setting",
    [
        {"primaries_per_vertex": 0.0},
        {"multiplicity_shape": 0.0},
        {"sigma_z": -0.1},
        {"sigma_r": -0.001},
        {"eta_max": 0.0},
        {"positive_fraction": -0.1},
        {"secondary_fraction": -0.1},
        {"secondary_positive_fraction": 1.1},
        {"secondary_positive_fraction": -0.1},
        {"hard_scatter": -1},
        {"hard_scatter": 100_001},
        {"hard_scatter_pt": (0.0, 5.0)},
        {"hard_scatter_pt": (6.0, 5.0)},
        {"hard_scatter_pt": (5.0, 7000.5)},  # past the beam energy
        {"mu": 10_000.5},
    ],
)
def test_generator_settings_out_of_range_are_refused(setting):
    with pytest.raises(ValueError, match=f"{next(iter(setting))} must be"):
        GeneratorConfig(**setting)


def test_generator_settings_at_the_edges_of_their_range_are_taken():
    GeneratorConfig(beam_spot=(20.0, 0.0, 250.0), hard_scatter=100_000)
    GeneratorConfig(mu=0.5, sigma_z=0.0, sigma_r=0.0, positive_fraction=0.0)
    GeneratorConfig(mu=10_000, positive_fraction=1.0, secondary_fraction=0.0)
    GeneratorConfig(hard_scatter=1, hard_scatter_pt=(7000.0, 7000.0))
    GeneratorConfig(secondary_positive_fraction=0.0, hard_scatter_pt=(5.0, 5.0))
    GeneratorConfig(secondary_positive_fraction=1.0, primaries_per_vertex=1e-3)
    GeneratorConfig(eta_max=0.5, hard_scatter_pt=(0.5, 0.5), multiplicity_shape=0.5)


def test_a_crossing_has_one_collision_at_least():
    """At a tiny mu the Poisson draw is 0: the event still holds one vertex (max(1, ...))."""
    vertices = []
    for seed in range(20):
        gen = generate(GeneratorConfig(mu=1e-6), np.random.default_rng(seed))
        vertices.append(len(np.unique(gen.vertex[_primaries(gen)], axis=0)))
    assert max(vertices) == 1 and sum(vertices) >= 15  # a vertex may have no primaries


def test_the_defaults_are_the_documented_ones():
    """docs/simulation.md's figures: mu 200, 42 primaries per vertex, sigma_z 6 mm, sigma_r
    15 um, |eta| < 4, 30% secondaries of which 68% positive, hard scatter 5-50 GeV; noise 19%
    of the hits, loopers followed half a turn, particles below 0.15 GeV not propagated."""
    g = GeneratorConfig()
    assert (g.mu, g.primaries_per_vertex, g.sigma_z, g.sigma_r, g.eta_max) == (
        200.0, 42.0, 6.0, 0.015, 4.0
    )  # fmt: skip
    assert (g.positive_fraction, g.secondary_fraction, g.secondary_positive_fraction) == (
        0.5, 0.30, 0.68
    )  # fmt: skip
    assert (g.hard_scatter, g.hard_scatter_pt, g.beam_spot) == (0, (5.0, 50.0), (0, 0, 0))
    s = SimConfig()
    assert (s.noise_fraction, s.max_turns, s.min_pt) == (0.19, 0.5, 0.15)
    assert s.generator == g and not s.dead_layers and not s.noisy_layers


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SimConfig(noise_fraction=1.0), "noise"),
        (lambda: GeneratorConfig(mu=-1), "mu must be > 0"),
        (lambda: GeneratorConfig(mu=0), "mu must be > 0"),  # an event is one collision at least
        (lambda: GeneratorConfig(mu=float("inf")), "mu must be > 0 and at most 10000"),
        (lambda: GeneratorConfig(positive_fraction=2), "positive_fraction must be in"),
        (lambda: GeneratorConfig(secondary_fraction=1), "secondary_fraction must be in"),
        (lambda: GeneratorConfig(sigma_z=float("nan")), "sigma_z must be"),
        (lambda: SimConfig(max_turns=float("nan")), "max_turns must be"),
        (lambda: SimConfig(max_turns=0), "max_turns must be"),
        (lambda: SimConfig(max_turns=float("inf")), "max_turns must be"),
        (lambda: SimConfig(min_pt=-0.1), "min_pt must be"),
        (lambda: SimConfig(overlap_fraction=float("nan")), "overlap fraction must be in"),
        (lambda: SimConfig(overlap_fraction=-0.1), "overlap fraction must be in"),
        (lambda: SimConfig(overlap_fraction=1.5), "overlap fraction must be in \\[0, 1\\]"),
        (lambda: SimConfig(noisy_layers=(((8, 2), float("inf")),)), "extra noise hits"),
        (lambda: SimConfig(noisy_layers=(((8, 2), float("nan")),)), "extra noise hits"),
        # Huge values: refused in one line, not a MemoryError of tens of GB or more.
        (lambda: SimConfig(noise_fraction=0.9999999), "noise fraction must be in \\[0, 0.99\\]"),
        (lambda: SimConfig(noisy_layers=(((8, 2), 1e18),)), "at most 10000000, got 1e"),
        (lambda: GeneratorConfig(hard_scatter=10**12), "hard_scatter must be >= 0 and at most"),
        # A dead layer drops its noise too: the noisy-layer option would do nothing.
        (
            lambda: SimConfig(dead_layers=frozenset({(8, 4)}), noisy_layers=(((8, 4), 5.0),)),
            "layer 8:4 is both dead and noisy",
        ),
        (lambda: GeneratorConfig(hard_scatter_pt=(1.0, float("inf"))), "hard_scatter_pt must"),
        (lambda: GeneratorConfig(beam_spot=(float("nan"), 0, 0)), "beam_spot must be within"),
        # vertices a kilometre away made hits as if from the axis, without a word
        (lambda: GeneratorConfig(beam_spot=(1e9, 0, 0)), "within 20 mm of the z axis"),
        (lambda: GeneratorConfig(beam_spot=(15, 15, 0)), "within 20 mm of the z axis"),
        (lambda: GeneratorConfig(beam_spot=(0, 0, -251)), "and 250 mm of z = 0"),
        (lambda: simulate(load_detector(), SimConfig(), 0, -1), "n_events must be >= 0"),
        (lambda: simulate(load_detector(), SimConfig(), 0, 1, run=-1), "run must be >= 0"),
        (lambda: simulate(load_detector(), SimConfig(), 0, 2**63 + 1), "must be below 2\\*\\*63"),
    ],
)
def test_invalid_settings_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_settings_at_the_edge_of_their_range_are_taken():
    SimConfig(min_pt=0.0, noise_fraction=0.0, noisy_layers=(((8, 2), 0.0),), max_turns=1e-3)
    SimConfig(noise_fraction=0.99, noisy_layers=(((8, 2), 1e7),))
    SimConfig(overlap_fraction=1.0)
    GeneratorConfig(hard_scatter=100_000)


def test_a_run_continued_from_an_event_number_holds_the_longer_runs_events():
    cfg = replace(SMALL, noise_fraction=0.0)
    whole = list(simulate(DET, cfg, seed=8, n_events=4))
    rest = list(simulate(DET, cfg, seed=8, n_events=2, first_event=2))
    assert [e.event for e in rest] == [2, 3]
    for a, b in zip(whole[2:], rest, strict=True):
        assert a.hits.equals(b.hits)
    assert not whole[0].hits.equals(rest[0].hits)


def test_event_streams_are_spawned_from_the_seed_as_the_events_come():
    """Event k is simulated from ``SeedSequence(seed).spawn(...)[k]`` (recordings made so stay
    reproducible), but no stream is made before its event: a run of a million events starts
    without the 400 MB of a million seed sequences made first."""
    cfg = replace(SMALL, noise_fraction=0.0)
    streams = np.random.SeedSequence(5).spawn(3)
    for k, ev in enumerate(simulate(DET, cfg, seed=5, n_events=3)):
        alone = simulate_event(DET, cfg, np.random.default_rng(streams[k]), run=0, event=k)
        assert ev.hits.equals(alone.hits)
    tracemalloc.start()
    try:
        simulate(DET, cfg, seed=5, n_events=10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6


def _positions(ev, det, excluded) -> set[tuple[float, float, float]]:
    """Hit positions of ``ev`` outside the layers ``excluded`` (table indices)."""
    h = ev.hits
    sel = ~np.isin(det.layer_index(h.volume_id, h.layer_id), excluded)
    return set(zip(h.x[sel].tolist(), h.y[sel].tolist(), h.z[sel].tolist(), strict=True))


def test_dead_layers_read_nothing_and_leave_the_others_alone():
    dead = [(8, 4), (13, 6)]
    index = DET.layer_index(np.array([8, 13]), np.array([4, 6]))
    nominal = simulate_event(DET, SMALL, np.random.default_rng(21))
    faulty = simulate_event(
        DET, replace(SMALL, dead_layers=frozenset(dead)), np.random.default_rng(21)
    )
    layers = DET.layer_index(faulty.hits.volume_id, faulty.hits.layer_id)
    assert not np.isin(layers, index).any()
    lost = np.isin(DET.layer_index(nominal.hits.volume_id, nominal.hits.layer_id), index).sum()
    assert lost > 500 and len(faulty.hits) == len(nominal.hits) - lost
    # The same hits elsewhere (ids and order within a module aside), truth still consistent.
    assert _positions(faulty, DET, index) == _positions(nominal, DET, index)
    assert faulty.truth is not None
    pid = faulty.truth.hits.particle_id
    counts = np.bincount(pid, minlength=len(faulty.truth.particles) + 1)[1:]
    assert np.array_equal(counts, faulty.truth.particles.nhits)


def test_overlaps_give_a_share_of_crossings_a_second_hit_further_across_their_layer():
    """Each crossing drawn (a share ``overlap_fraction`` of them) has a second hit of the same
    particle on the same layer: OVERLAP_GAP further across the surface, along the particle's
    way out of it (outward in the barrel, away from z = 0 on a disk, for particles from the
    vertex)."""
    fraction = 0.3
    ev = simulate_event(DET, replace(SMALL, overlap_fraction=fraction), np.random.default_rng(5))
    assert ev.truth is not None
    pid, layer = ev.truth.hits.particle_id, DET.layer_index(ev.hits.volume_id, ev.hits.layer_id)
    true_pos = np.stack([ev.truth.hits.tx, ev.truth.hits.ty, ev.truth.hits.tz], axis=1)
    sig = np.flatnonzero(pid > 0)
    order = sig[np.lexsort((ev.truth.hits.hit_order[sig], layer[sig], pid[sig]))]
    again = (pid[order][1:] == pid[order][:-1]) & (layer[order][1:] == layer[order][:-1])
    first, second = order[:-1][again], order[1:][again]  # a layer's two hits, along the track
    share = len(first) / (len(sig) - len(first))  # of the crossings; binomial sigma ~0.006
    assert abs(share - fraction) < 0.03, share
    barrel = DET.kind[layer[first]] == BARREL
    assert barrel.any() and (~barrel).any()
    r, z = np.hypot(true_pos[:, 0], true_pos[:, 1]), np.abs(true_pos[:, 2])
    across = np.where(barrel, r[second] - r[first], z[second] - z[first])
    assert abs(np.median(across) - OVERLAP_GAP) < 0.1, np.median(across)  # loopers aside
    step = np.linalg.norm(true_pos[second] - true_pos[first], axis=1)
    assert np.all(step >= OVERLAP_GAP * 0.999)  # inclined crossings go further
    nhits = np.bincount(pid, minlength=len(ev.truth.particles) + 1)[1:]
    assert np.array_equal(nhits, ev.truth.particles.nhits)  # the second hits counted too


def test_an_overlap_hit_is_on_the_module_overlapping_the_first_hits():
    """The second hit's module is the first's neighbour in phi (its z row, or its ring), on
    the side of the first hit's nearer edge: never the first's own module, though the few mm
    between them rarely cross into another module."""
    cfg = replace(SMALL, overlap_fraction=1.0, min_pt=1.0)  # stiff: no loopers back on a layer
    ev = simulate_event(DET, cfg, np.random.default_rng(5))
    assert ev.truth is not None
    pid, layer = ev.truth.hits.particle_id, DET.layer_index(ev.hits.volume_id, ev.hits.layer_id)
    sig = np.flatnonzero(pid > 0)
    pairs = sig[np.lexsort((ev.truth.hits.hit_order[sig], layer[sig], pid[sig]))].reshape(-1, 2)
    assert np.all(pid[pairs[:, 0]] == pid[pairs[:, 1]])  # every crossing and its second
    assert np.all(layer[pairs[:, 0]] == layer[pairs[:, 1]])
    module = ev.hits.module_id.astype(np.int64) - 1
    a, b, lay = module[pairs[:, 0]], module[pairs[:, 1]], layer[pairs[:, 0]]
    assert np.all(a != b)
    rows = np.zeros(len(a), dtype=np.int64)  # modules in the pair's row (z row, or ring)
    row_start = np.zeros(len(a), dtype=np.int64)
    barrel = DET.kind[lay] == BARREL
    rows[barrel] = DET.n_phi[lay[barrel]]
    row_start[barrel] = a[barrel] // rows[barrel] * rows[barrel]
    for i in np.flatnonzero(~barrel):
        ends = np.cumsum(DET.rings[lay[i]])
        ring = int(np.searchsorted(ends, a[i], side="right"))
        rows[i], row_start[i] = DET.rings[lay[i]][ring], ends[ring] - DET.rings[lay[i]][ring]
    assert barrel.any() and (~barrel).any()
    assert np.all((b >= row_start) & (b < row_start + rows))  # the same row
    step = np.mod(b - a, rows)
    assert np.all((step == 1) | (step == rows - 1))  # a neighbour


def test_an_overlap_hit_lies_ahead_of_its_crossing_along_the_momentum():
    """The overlapping module is crossed after the first, on the particle's way out: the
    same particle, layer and momentum, a step along the momentum."""
    rng = np.random.default_rng(3)
    c = propagate(DET, generate(GeneratorConfig(mu=5), rng), rng, max_turns=0.5, min_pt=0.5)
    both, first = overlaps(DET, c, 1.0, np.random.default_rng(0))
    n = len(c.layer)
    assert np.array_equal(first, np.arange(n))  # every crossing, in order
    assert np.array_equal(both.particle[n:], c.particle) and np.array_equal(both.layer[n:], c.layer)
    assert np.array_equal(both.momentum[n:], c.momentum)
    step = both.position[n:] - c.position
    assert np.all(np.einsum("ij,ij->i", step, c.momentum) > 0)


def test_without_overlaps_nothing_is_drawn_for_them(monkeypatch):
    """The default (no overlaps) never reaches ``overlaps``: no draw, events as before the
    option; with them, more hits."""

    def drawn(*args, **kwargs):
        raise AssertionError("overlaps drawn without overlap_fraction")

    some = simulate_event(DET, replace(SMALL, overlap_fraction=0.1), np.random.default_rng(9))
    monkeypatch.setattr(simulate_module, "overlaps", drawn)
    plain = simulate_event(DET, SMALL, np.random.default_rng(9))
    assert len(some.hits) > len(plain.hits)


def test_hits_within_a_module_are_shuffled():
    """Sorted by volume, layer and module, in random order within a module: not noise last,
    nor signal by particle (the hit ids would carry truth)."""
    ev = simulate_event(DET, SMALL, np.random.default_rng(4))
    assert ev.truth is not None
    pid, h = ev.truth.hits.particle_id, ev.hits
    same = (
        (h.volume_id[1:] == h.volume_id[:-1])
        & (h.layer_id[1:] == h.layer_id[:-1])
        & (h.module_id[1:] == h.module_id[:-1])
    )
    assert (same & (pid[:-1] == 0) & (pid[1:] > 0)).any()  # noise before signal
    assert (same & (pid[1:] > 0) & (pid[:-1] > pid[1:])).any()  # particles out of order


def test_noisy_layers_get_extra_noise_hits_on_their_modules():
    cfg = replace(SMALL, noisy_layers=(((9, 2), 2000.0), ((17, 4), 500.0)))
    nominal = simulate_event(DET, SMALL, np.random.default_rng(22))
    noisy = simulate_event(DET, cfg, np.random.default_rng(22))
    index = DET.layer_index(np.array([9, 17]), np.array([2, 4]))
    before = np.bincount(
        DET.layer_index(nominal.hits.volume_id, nominal.hits.layer_id), minlength=len(DET)
    )
    layers = DET.layer_index(noisy.hits.volume_id, noisy.hits.layer_id)
    after = np.bincount(layers, minlength=len(DET))
    extra = after - before
    assert extra[index[0]] == pytest.approx(2000, abs=4 * np.sqrt(2000))
    assert extra[index[1]] == pytest.approx(500, abs=4 * np.sqrt(500))
    assert np.all(np.delete(extra, index) == 0)
    assert noisy.truth is not None and nominal.truth is not None
    assert (noisy.truth.hits.particle_id == 0).sum() == (
        nominal.truth.hits.particle_id == 0
    ).sum() + extra.sum()
    assert np.all((noisy.hits.module_id >= 1) & (noisy.hits.module_id <= DET.n_modules[layers]))
    assert _positions(noisy, DET, index) == _positions(nominal, DET, index)


def test_beam_spot_moves_the_pileup_vertices():
    shift = (0.4, -0.3, 5.0)
    gen = replace(SMALL.generator, beam_spot=shift)
    nominal_truth = simulate_event(DET, SMALL, np.random.default_rng(23)).truth
    moved_truth = simulate_event(
        DET, replace(SMALL, generator=gen), np.random.default_rng(23)
    ).truth
    assert nominal_truth is not None and moved_truth is not None
    nominal, moved = nominal_truth.particles, moved_truth.particles
    delta = np.stack([moved.vx - nominal.vx, moved.vy - nominal.vy, moved.vz - nominal.vz], 1)
    primary = np.hypot(nominal.vx, nominal.vy) < 1.0  # secondaries start at r > 1 mm
    assert primary.sum() > 100 and (~primary).sum() > 100
    assert np.allclose(delta[primary], shift, atol=1e-5)
    assert np.all(delta[~primary] == 0)  # secondaries keep their production points


def test_unknown_fault_layers_are_refused_before_the_first_event():
    with pytest.raises(ValueError, match="no layer 8:3"):
        simulate(DET, replace(SMALL, dead_layers=frozenset({(8, 3)})), seed=1, n_events=1)
    with pytest.raises(ValueError, match="no layer 99:2"):
        simulate(DET, replace(SMALL, noisy_layers=(((99, 2), 10.0),)), seed=1, n_events=1)
    with pytest.raises(ValueError, match="noise hits"):
        replace(SMALL, noisy_layers=(((8, 2), -1.0),))


def test_fault_layers_may_be_any_layer_of_the_table():
    """The first and the last layer of the detector table are layers like the others."""
    last = len(DET) - 1
    pairs = [(int(DET.volume_id[i]), int(DET.layer_id[i])) for i in (0, last)]
    assert layer_indices(DET, pairs).tolist() == [0, last]
    assert layer_indices(DET, []).tolist() == []


def test_event_numbers_up_to_the_wires_last_are_accepted():
    """Event numbers below 2**63 pass (the last one, 2**63 - 1, included); one past does
    not."""
    simulate(DET, SMALL, 0, 1, first_event=2**63 - 1)
    simulate(DET, SMALL, 0, 2, first_event=2**63 - 2, run=2**63 - 1)
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        simulate(DET, SMALL, 0, 2, first_event=2**63 - 1)


def test_layer_index_of_ids_outside_the_table_is_minus_one():
    # Hits come from the wire: negative or oversized ids name no layer (8:1002 is not 9:2).
    got = DET.layer_index(np.array([8, -8, 8, 10**6, 8]), np.array([4, 4, -4, 2, 1002]))
    assert got[0] >= 0 and (got[1:] == -1).all()


def test_an_event_without_particles_holds_its_noisy_layers_noise():
    """A crossing whose one vertex made no charged particle (1 in 43 at the default
    multiplicity) still gets the noise of its noisy layers: hits of no particle, not an
    IndexError on the empty particle table."""
    gen = GeneratorConfig(mu=1e-6, primaries_per_vertex=1e-9)
    cfg = SimConfig(generator=gen, noisy_layers=(((8, 2), 50.0),))
    ev = simulate_event(DET, cfg, np.random.default_rng(1))
    assert ev.truth is not None and len(ev.truth.particles) == 0
    assert len(ev.hits) > 10 and np.all(ev.truth.hits.particle_id == 0)
    assert np.all(ev.truth.hits.hit_order == -1) and np.all(ev.truth.hits.weight == 0)


def test_secondary_directions_reach_the_beam_line() -> None:
    """A secondary's direction is isotropic: cos(theta) is flat up to +-0.9999 (|eta| up to
    4.95), so 1% of them have |cos(theta)| above 0.99, some of them above 0.999."""
    gen = generate(GeneratorConfig(mu=2000), np.random.default_rng(61))
    sec = np.hypot(gen.vertex[:, 0], gen.vertex[:, 1]) >= 1.0
    cos_t = np.abs(gen.momentum[sec, 2]) / np.linalg.norm(gen.momentum[sec], axis=1)
    assert (cos_t > 0.99).mean() == pytest.approx(0.01, abs=0.002)
    assert (cos_t > 0.999).mean() == pytest.approx(0.001, abs=0.0005)
    assert cos_t.max() <= 0.9999 + 1e-12


def test_secondary_radii_are_linearly_interpolated_between_quantiles() -> None:
    """Production radii are drawn linearly between the real event's quantiles (not in log,
    as pT is): the first 2% lie between 1.03 and 3.09 mm, half of them below the midpoint
    2.06 mm (log interpolation put 63% of them there)."""
    gen = generate(GeneratorConfig(mu=2000), np.random.default_rng(62))
    r = np.hypot(gen.vertex[:, 0], gen.vertex[:, 1])
    r = r[r >= 1.0]
    low = r[r <= 3.09]
    assert len(low) / len(r) == pytest.approx(0.02, abs=0.002)
    assert (low < 2.06).mean() == pytest.approx(0.5, abs=0.06)


def test_secondary_pt_is_log_interpolated_between_quantiles() -> None:
    """Between the real event's 99.5% and 99.9% quantiles of secondary pT (3.10 and 13.7 GeV)
    the spectrum is log-uniform: half of those secondaries lie below sqrt(3.10 x 13.7)
    (a linear interpolation put 32% there)."""
    gen = generate(GeneratorConfig(mu=3000), np.random.default_rng(63))
    sec = np.hypot(gen.vertex[:, 0], gen.vertex[:, 1]) >= 1.0
    pt = np.hypot(gen.momentum[sec, 0], gen.momentum[sec, 1])
    band = pt[(pt >= 3.0995) & (pt <= 13.7)]
    assert len(band) / len(pt) == pytest.approx(0.004, abs=0.001)
    assert (band < np.sqrt(3.0995 * 13.7)).mean() == pytest.approx(0.5, abs=0.09)


def test_each_crossing_scatters_by_its_own_layers_material() -> None:
    """Particles crossing different layers in the same step each scatter by the x0 of the
    layer they cross: with material on the innermost barrel layer only, particles from the
    origin scatter there by Highland's width; those produced beyond it (first crossing a
    later layer, in the same step) are not deflected at all."""
    det = replace(DET, x0=np.where(np.arange(len(DET)) == 0, 0.05, 1e-30))
    n, pt = 4000, 2.0
    inner, outer = _one(pt, 0.0, 0.0, 1, n), _one(pt, 0.0, 0.0, 1, n)
    outer.vertex[:, 0] = 0.5 * (DET.r[0] + DET.r[2])  # between the first and third layers
    fields = ("vertex", "momentum", "charge")
    gen = GeneratedParticles(
        *(np.concatenate([getattr(inner, f), getattr(outer, f)]) for f in fields)
    )
    c = propagate(det, gen, np.random.default_rng(8), max_turns=0.5)
    first = c.order == 0
    assert np.all(c.layer[first & (c.particle < n)] == 0)
    assert np.all(c.layer[first & (c.particle >= n)] != 0)
    theta = np.arctan2(c.momentum[first, 2], np.hypot(c.momentum[first, 0], c.momentum[first, 1]))
    from_origin = c.particle[first] < n
    expect = highland(np.array([pt]), np.array([0.05]))[0]
    assert np.std(theta[from_origin]) == pytest.approx(expect, rel=0.06)
    assert np.all(theta[~from_origin] == 0.0)


def test_a_noisy_layers_extra_hits_are_a_poisson_count() -> None:
    """``noisy_layers`` gives a layer's mean number of extra noise hits an event: the count
    is a Poisson draw of that mean (variance = mean), not the mean rounded every event."""
    gen = GeneratorConfig(mu=1e-6, primaries_per_vertex=1e-9)  # no particles: noise alone
    cfg = SimConfig(generator=gen, noise_fraction=0.0, noisy_layers=(((8, 2), 50.5),))
    counts = np.array(
        [len(simulate_event(DET, cfg, np.random.default_rng(s)).hits) for s in range(60)]
    )
    assert counts.mean() == pytest.approx(50.5, abs=4 * np.sqrt(50.5 / 60))
    assert counts.var() == pytest.approx(50.5, rel=0.6)
