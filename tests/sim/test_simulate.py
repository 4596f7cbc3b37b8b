"""Simulator: determinism, truth consistency, geometry, propagation and scattering physics."""

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from streamtrk.detector import BARREL, highland, load_detector
from streamtrk.sim.generator import GeneratedParticles, GeneratorConfig
from streamtrk.sim.propagate import propagate
from streamtrk.sim.simulate import SimConfig, simulate, simulate_event

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
    assert t.hits.weight.sum() == pytest.approx(1.0, rel=1e-4)
    assert np.all(t.hits.weight[~sig] == 0)
    # Hits sorted by volume, layer, module as in TrackML files.
    key = (h.volume_id.astype(np.int64) * 100 + h.layer_id) * 100_000 + h.module_id
    assert np.all(np.diff(key) >= 0)


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


def test_noise_fraction_follows_setting():
    cfg = replace(SMALL, noise_fraction=0.3)
    ev = simulate_event(DET, cfg, np.random.default_rng(5))
    assert ev.truth is not None
    assert (ev.truth.hits.particle_id == 0).mean() == pytest.approx(0.3, abs=0.03)
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


def test_an_inclined_crossing_scatters_over_its_longer_path():
    """At eta 1.5 a particle crosses the barrel layer along x0 / cos(incidence): Highland's
    width for that path, not for x0; the momentum's magnitude is kept."""
    det = replace(DET, x0=np.where(np.arange(len(DET)) == 0, 0.05, 1e-12))
    n, pt, eta = 4000, 2.0, 1.5
    c = propagate(det, _one(pt, eta, 0.0, 1, n), np.random.default_rng(2), max_turns=0.5)
    first = (c.order == 0) & (c.layer == 0)
    assert first.sum() > 0.9 * n
    p = pt * np.cosh(eta)
    assert np.linalg.norm(c.momentum[first], axis=1) == pytest.approx(p, rel=1e-9)
    theta = np.arctan2(c.momentum[first, 2], np.hypot(*c.momentum[first, :2].T))
    expect = highland(np.array([p]), np.array([0.05 * np.cosh(eta)]))[0]  # 1 / cos(incidence)
    assert np.std(theta - np.arctan(np.sinh(eta))) == pytest.approx(expect, rel=0.06)


def test_neutral_particles_leave_no_crossings_and_layers_need_material():
    assert len(propagate(DET, _one(2.0, 0.0, 0.0, 0, 10), np.random.default_rng(3)).layer) == 0
    with pytest.raises(ValueError, match="positive material thickness"):
        propagate(
            replace(DET, x0=np.zeros(len(DET))), _one(2.0, 0.0, 0.0, 1), np.random.default_rng(3)
        )


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
        (lambda: SimConfig(noisy_layers=(((8, 2), float("nan")),)), "extra noise hits"),
        (lambda: GeneratorConfig(hard_scatter_pt=(1.0, float("inf"))), "hard_scatter_pt must"),
        (lambda: GeneratorConfig(beam_spot=(float("nan"), 0, 0)), "beam_spot must be finite"),
        (lambda: simulate(load_detector(), SimConfig(), 0, -1), "n_events must be >= 0"),
        (lambda: simulate(load_detector(), SimConfig(), 0, 1, run=-1), "run must be >= 0"),
        (lambda: simulate(load_detector(), SimConfig(), 0, 2**63 + 1), "must be below 2\\*\\*63"),
    ],
)
def test_invalid_settings_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


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


def test_layer_index_of_ids_outside_the_table_is_minus_one():
    # Hits come from the wire: negative or oversized ids name no layer (8:1002 is not 9:2).
    got = DET.layer_index(np.array([8, -8, 8, 10**6, 8]), np.array([4, 4, -4, 2, 1002]))
    assert got[0] >= 0 and (got[1:] == -1).all()
