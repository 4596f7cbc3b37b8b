"""The evaluate report: edge counts along the chain (built, pruned, scored) and the track
rates by bin."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
from hand_events import metrics_event
from piles import pile

from streamtrk.detector import GEV_PER_TESLA_MM
from streamtrk.eval.evaluate import (
    TRACK_COLUMNS,
    Evaluation,
    _resolution,
    _track_rates,
    binned,
    edge_counts,
    evaluate,
    wilson_interval,
)
from streamtrk.eval.missed import STAGES
from streamtrk.eval.score import trackml_score
from streamtrk.event import PARTICLE_DTYPES, Event, Particles
from streamtrk.io.trackml import by_event_number
from streamtrk.recon.budget import Budget
from streamtrk.recon.fit import fit_tracks
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import OracleScorer, Reconstructor
from streamtrk.recon.truth import true_segments
from streamtrk.sim.generator import GeneratedParticles, GeneratorConfig
from streamtrk.sim.propagate import propagate
from streamtrk.sim.simulate import SimConfig, simulate


def test_edge_counts_along_the_chain(small_events) -> None:
    plain = evaluate(Reconstructor.oracle(), small_events).report()
    assert plain["gnn_edges_per_event"] == plain["graph_edges_per_event"] > 0
    assert plain["pruned_edge_efficiency"] == plain["graph_edge_efficiency"]
    # Oracle scores: every target segment in the graph is above the threshold.
    assert plain["gnn_edge_efficiency"] == plain["graph_edge_efficiency"]

    pruned = evaluate(Reconstructor.oracle(prune=PruneConfig()), small_events).report()
    assert pruned["graph_edges_per_event"] == plain["graph_edges_per_event"]
    assert pruned["gnn_edges_per_event"] < 0.5 * pruned["graph_edges_per_event"]
    assert 0.95 < pruned["pruned_edge_efficiency"] <= pruned["graph_edge_efficiency"]
    assert pruned["pruned_edge_efficiency_all"] <= pruned["graph_edge_efficiency_all"]
    assert pruned["pruned_edge_purity"] > pruned["graph_edge_purity"]
    assert set(pruned["timings"]) == {"upload", "graph", "prune", "gnn", "tracks", "fit"}
    # the graph's edges per hit, as built (before pruning)
    per_hit = pruned["graph_edges_per_event"] / pruned["hits_per_event"]
    assert pruned["edges_per_hit"] == pytest.approx(per_hit)
    assert all(v >= 0 for v in pruned["timings"].values())


def test_track_rates_by_bin() -> None:
    # fitted pt, eta, chi2/ndf, fake, duplicate, matched
    rows = np.array(
        [
            [0.9, 0.5, 9.0, 1, 0, 0],  # fake, 0.85-1 GeV, |eta| 0-1
            [1.2, -1.2, 0.5, 0, 1, 1],  # duplicate, 1-1.5 GeV, |eta| 1-1.5
            [1.3, 1.4, 1.0, 0, 0, 1],
            [5.0, 3.0, 2.0, 0, 0, 1],  # 3-10 GeV, |eta| 2.5-4
            [1.5, 1.0, 9.0, 1, 0, 0],  # fake at the lower edges of 1.5-3 GeV and |eta| 1-1.5
        ]
    )
    out = _track_rates(rows)
    assert out["fake_rate_by_pt"]["0.85-1"] == 1.0
    assert out["fake_rate_by_pt"]["1-1.5"] == 0.0
    assert out["duplicate_rate_by_pt"]["1-1.5"] == 0.5
    assert math.isnan(out["duplicate_rate_by_pt"]["0.85-1"])  # no real track there
    assert math.isnan(out["fake_rate_by_pt"]["0-0.5"])  # no track at all
    assert out["fake_rate_by_pt"]["1.5-3"] == 1.0
    assert out["duplicate_rate_by_abs_eta"]["1-1.5"] == 0.5
    assert out["fake_rate_by_abs_eta"]["1-1.5"] == pytest.approx(1 / 3)
    assert out["fake_rate_by_abs_eta"]["2.5-4"] == 0.0
    assert out["fake_rate_by_pt"]["3-10"] == 0.0 and math.isnan(out["fake_rate_by_pt"]["10-inf"])
    assert out["chi2_ndf_median"] == 1.0  # of the matched tracks only


def row(pt, true_pt, true_q, charge, matched=1, d0=0.0, true_d0=0.0, eta=0.0, sigma=0.0):
    """A track row (TRACK_COLUMNS); z0 and its truth twice d0's, sigma_z0 four times."""
    values = {"pt": pt, "true_pt": true_pt, "true_q": true_q, "charge": charge, "eta": eta}
    values |= {"d0": d0, "true_d0": true_d0, "z0": 2 * d0, "true_z0": 2 * true_d0}
    values |= {"sigma_d0": sigma, "sigma_z0": 4 * sigma}  # sigma 0: unknown
    return [values.get(c, matched if c == "matched" else 0) for c in TRACK_COLUMNS]


def test_pt_resolution_and_charge_by_true_pt() -> None:
    rows = np.array(
        [
            row(2.0 * (1 + d), 2.0, 1, 1)
            for d in np.linspace(-0.1, 0.1, 101)  # 1-3 GeV: errors uniform in +-10%
        ]
        + [
            row(500.0, 1000.0, -1, 1),  # exactly at 1000: the last bin, charge wrong
            row(1500.0, 1200.0, 1, 1),
            row(50.0, 40.0, 1, -1, matched=0),  # not matched: not counted
            row(5.0, np.nan, np.nan, 1, matched=0),  # noise
            row(np.nan, 20.0, 1, 1),  # not fitted
        ]
        + [
            row(5.0, 5.0, 1, 1, d0=0.1 + d, true_d0=0.1, sigma=0.0068)
            for d in np.linspace(-0.02, 0.02, 51)
        ]
        + [row(5.0, 5.0, 1, 1, d0=9.0, true_d0=np.nan)]  # no perigee truth: not in d0
        + [row(510.0, 500.0, 1, 1, eta=1.2), row(520.0, 500.0, 1, 1, eta=-1.3)]  # +2%, +4%
        + [row(0.75, 0.5, 1, 1, eta=1.2)]  # +50%, but under 1 GeV: not in the bias by |eta|
    )
    out = _resolution(rows)
    assert out["matched_tracks_by_true_pt"] == {
        "0-1": 1, "1-3": 101, "3-10": 52, "10-100": 0, "100-1000": 2, "1000-inf": 2
    }  # fmt: skip
    # d0 errors uniform in +-0.02 mm: +-0.0136 mm; z0 twice that
    assert out["d0_resolution_by_true_pt"]["3-10"] == pytest.approx(0.0136)
    assert out["z0_resolution_by_true_pt"]["3-10"] == pytest.approx(0.0272)
    assert out["d0_resolution_by_true_pt"]["1-3"] == 0.0
    # pulls: errors over the standard errors (half the resolution for d0, z0 twice as wide
    # with sigma four times); none where the standard error is unknown
    assert out["d0_pull_by_true_pt"]["3-10"] == pytest.approx(2.0)
    assert out["z0_pull_by_true_pt"]["3-10"] == pytest.approx(1.0)
    assert math.isnan(out["d0_pull_by_true_pt"]["1-3"])
    assert math.isnan(out["q_over_pt_pull_by_true_pt"]["3-10"])
    # by |eta|: 1-1.5 holds the two 500 GeV tracks (the soft one is left out), 0-1 the rest
    assert out["pt_bias_by_abs_eta"]["1-1.5"] == pytest.approx(0.03)
    assert out["pt_bias_by_abs_eta"]["0-1"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(out["pt_bias_by_abs_eta"]["2.5-4"])
    # central 68% of a uniform +-10%: +-6.8%
    assert out["pt_resolution_by_true_pt"]["1-3"] == pytest.approx(0.068, abs=1e-9)
    assert out["charge_misid_rate_by_true_pt"]["1-3"] == 0.0
    assert out["pt_bias_by_true_pt"]["1-3"] == pytest.approx(0, abs=1e-12)
    # q/pT: 2 GeV, +-10% in pT
    q_over_pt = 1 / (2.0 * (1 + np.linspace(-0.1, 0.1, 101))) - 1 / 2.0
    low, high = np.percentile(q_over_pt, [16, 84])
    assert out["q_over_pt_resolution_by_true_pt"]["1-3"] == pytest.approx((high - low) / 2)
    # 1000-inf: errors -0.5 and +0.25, percentiles 16 and 84 interpolated between them
    assert out["pt_resolution_by_true_pt"]["1000-inf"] == pytest.approx(0.68 * 0.75 / 2)
    assert out["pt_bias_by_true_pt"]["1000-inf"] == pytest.approx(-0.125)
    # q/pT errors: 1/500 + 1/1000 (charge wrong) and 1/1500 - 1/1200
    errs = [1 / 500 + 1 / 1000, 1 / 1500 - 1 / 1200]
    q_res = out["q_over_pt_resolution_by_true_pt"]["1000-inf"]
    assert q_res == pytest.approx(0.68 * (errs[0] - errs[1]) / 2)
    assert out["charge_misid_rate_by_true_pt"]["1000-inf"] == 0.5
    assert math.isnan(out["pt_resolution_by_true_pt"]["10-100"])
    assert math.isnan(out["pt_bias_by_true_pt"]["10-100"])
    assert math.isnan(out["q_over_pt_resolution_by_true_pt"]["10-100"])
    assert math.isnan(out["d0_resolution_by_true_pt"]["10-100"])
    assert math.isnan(out["charge_misid_rate_by_true_pt"]["10-100"])


def test_a_width_of_one_track_is_unknown_not_zero() -> None:
    """A pT bin with one matched track has no width to report (NaN, null in the JSON),
    where the central 68% of one value gave 0: a perfect resolution; its bias is its error."""
    out = _resolution(np.array([row(22.0, 20.0, 1, 1, d0=0.3, true_d0=0.1, sigma=0.05)]))
    assert out["matched_tracks_by_true_pt"]["10-100"] == 1
    for name in ("pt_resolution", "q_over_pt_resolution", "d0_resolution", "d0_pull"):
        assert math.isnan(out[f"{name}_by_true_pt"]["10-100"]), name
    assert out["pt_bias_by_true_pt"]["10-100"] == pytest.approx(0.1)


def test_a_particle_of_no_momentum_is_out_of_the_resolutions_without_a_warning() -> None:
    """A matched track's particle of pT 0 (a particles file's zero momentum): its relative
    error is not finite, left out of the widths, not a RuntimeWarning on stderr."""
    rows = np.array([row(2.0, 0.0, 1, 1)] + [row(2.0 + k / 100, 2.0, 1, 1) for k in range(5)])
    out = _resolution(rows)
    assert out["matched_tracks_by_true_pt"]["0-1"] == 1
    assert out["pt_bias_by_true_pt"]["1-3"] == pytest.approx(0.01)


def test_resolution_edges_by_hand() -> None:
    """A particle of 1 GeV exactly is in the pT bias by |eta|, a track of |eta| 1.5 exactly in
    the bin it opens; d0 and z0 errors are fitted minus true (tracks on their particle's d0,
    whatever it is, have none)."""
    rows = np.array(
        [row(1.1, 1.0, 1, 1, eta=-1.5)]
        + [row(5.0, 5.0, 1, 1, d0=d, true_d0=d) for d in np.linspace(-1, 1, 11)]
    )
    out = _resolution(rows)
    assert out["pt_bias_by_abs_eta"]["1.5-2.5"] == pytest.approx(0.1)
    assert math.isnan(out["pt_bias_by_abs_eta"]["1-1.5"])
    assert out["d0_resolution_by_true_pt"]["3-10"] == 0.0
    assert out["z0_resolution_by_true_pt"]["3-10"] == 0.0


def test_resolution_of_the_oracle_chain(small_events) -> None:
    """Matched tracks by their particle's pT: a few percent in pT and the right charge."""
    ev = evaluate(Reconstructor.oracle(), small_events)
    out = ev.report()
    rows = np.concatenate(ev.track_rows)
    matched = rows[:, TRACK_COLUMNS.index("matched")].astype(bool)
    assert sum(out["matched_tracks_by_true_pt"].values()) == matched.sum() > 500
    assert 0.005 < out["pt_resolution_by_true_pt"]["1-3"] < 0.05
    assert out["charge_misid_rate_by_true_pt"]["1-3"] < 0.005
    true_pt = rows[matched, TRACK_COLUMNS.index("true_pt")]
    pt = rows[matched, TRACK_COLUMNS.index("pt")]
    assert np.median(pt / true_pt) == pytest.approx(1, abs=0.01)
    assert out["pt_bias_by_true_pt"]["1-3"] == pytest.approx(0, abs=0.01)
    assert 1e-3 < out["q_over_pt_resolution_by_true_pt"]["1-3"] < 0.03
    assert 0.005 < out["d0_resolution_by_true_pt"]["1-3"] < 0.2  # mm
    assert 0.005 < out["z0_resolution_by_true_pt"]["1-3"] < 2  # all |eta| < 4: 0.76 mm
    assert 1e-4 < out["phi_resolution_by_true_pt"]["1-3"] < 0.01  # rad
    for name in ("q_over_pt", "d0", "z0", "phi"):
        assert 0.85 < out[f"{name}_pull_by_true_pt"]["1-3"] < 1.25, name
    phi = rows[matched, TRACK_COLUMNS.index("phi")]
    true_phi = rows[matched, TRACK_COLUMNS.index("true_phi")]
    assert np.median(np.angle(np.exp(1j * (phi - true_phi)))) == pytest.approx(0, abs=1e-3)


@pytest.mark.parametrize("field", [2.0, -2.0])
def test_perigee_truth_is_what_the_fit_of_an_exact_helix_gives(det, field) -> None:
    """Helices from a vertex 2 mm off the axis, hits without material or smearing, the beam
    line at (0.5, -0.5) mm: the truth d0 and z0 (a helix's perigee to it) are the fitted
    ones, from 0.5 GeV to 3 TeV (a circle kilometres wide: float32 would miss by 0.1 mm), in
    either sense of the field; and d0 is signed by the geometry alone (ATLAS, ACTS): for
    these nearly straight tracks -x sin(phi) + y cos(phi) of the vertex from the beam line
    (in -B_z the truth and the fit both had the opposite sign)."""
    ideal = replace(det, x0=np.full(len(det), 1e-12), bfield=field)
    rng = np.random.default_rng(13)
    n, vertex, beam = 200, (1.6, -1.2, 5.0), (0.5, -0.5)
    pt, phi = np.exp(rng.uniform(np.log(0.5), np.log(3000), n)), rng.uniform(-np.pi, np.pi, n)
    eta, q = rng.uniform(-1.5, 1.5, n), np.where(rng.random(n) < 0.5, 1, -1)
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1)
    c = propagate(ideal, GeneratedParticles(np.tile(vertex, (n, 1)), mom, q.astype(np.int32)), rng)
    order = np.lexsort((c.order, c.particle))
    who, counts = np.unique(c.particle[order], return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x, y, z = c.position.T
    fitted = fit_tracks(offsets, order, x - beam[0], y - beam[1], z, c.layer, ideal)
    columns = {"vx": vertex[0], "vy": vertex[1], "vz": vertex[2], "nhits": 0}
    particles = Particles(
        **{
            k: (np.arange(n) + 1 if k == "particle_id" else
                mom[:, "xyz".index(k[1])] if k in ("px", "py", "pz") else
                q if k == "q" else np.full(n, columns[k])).astype(dt)
            for k, dt in PARTICLE_DTYPES.items()
        }
    )  # fmt: skip
    event = metrics_event([1], {1: (1.0, 0.0, 1)})
    assert event.truth is not None
    event = replace(event, truth=replace(event.truth, particles=particles))
    truth = Evaluation(beam_line=beam, bfield=ideal.bfield).perigee_truth(particles, who + 1)
    assert np.abs(truth["d0"]).max() > 1.0  # displaced enough to matter
    assert np.allclose(fitted["d0"], truth["d0"], atol=2e-3)
    assert np.allclose(fitted["z0"], truth["z0"], atol=2e-3)
    # phi at the perigee: the vertex's direction turned as far as the perigee is (soft
    # tracks turn by milliradians between the two)
    turned = np.abs(np.angle(np.exp(1j * (truth["phi"] - phi[who]))))
    assert turned.max() > 1e-3
    assert np.abs(np.angle(np.exp(1j * (fitted["phi"] - truth["phi"])))).max() < 1e-5
    stiff = pt[who] > 500  # the perigee within 1e-5 mm of the vertex's projection
    assert stiff.sum() > 10
    rx, ry = vertex[0] - beam[0], vertex[1] - beam[1]
    straight = -rx * np.sin(phi[who]) + ry * np.cos(phi[who])
    assert np.allclose(truth["d0"][stiff], straight[stiff], atol=1e-4)
    assert np.array_equal(truth["q"], q[who]) and np.allclose(truth["pt"], pt[who], rtol=1e-6)
    no_field = Evaluation(beam_line=beam).perigee_truth(particles, who + 1)
    assert np.isnan(no_field["d0"]).all() and np.isnan(no_field["phi"]).all()
    at_rest = metrics_event([1], {1: (0.0, 0.0, 1)})  # no helix: NaN, not a warning
    assert at_rest.truth is not None
    assert np.isnan(
        Evaluation(bfield=2.0).perigee_truth(at_rest.truth.particles, np.array([1]))["d0"]
    ).all()


def test_perigee_truth_of_curling_particles_by_hand() -> None:
    """Circles of 100 mm in 2 T from the vertex (30, 30, 5) mm, leaving along +y with pz = pT:
    counter-clockwise (q = -1) about (-70, 30), clockwise (q = +1) about (130, 30). Each
    passes the z axis at |R - |centre|| at the point towards the axis from its centre, seen
    from there atan(30 / 70), resp. atan(30 / 130), behind the vertex: z0 = 5 - R * that
    angle (the second across -x, where atan2 jumps by 2 pi). A particle along the beam makes
    no helix: NaN, not a warning."""
    r, pt = 100.0, 100.0 * GEV_PER_TESLA_MM * 2.0
    event = metrics_event([1, 2, 3], {1: (pt, 30.0, 1), 2: (pt, 30.0, 1), 3: (0.0, 0.0, 1)})
    assert event.truth is not None
    f4 = np.float32
    particles = replace(
        event.truth.particles,
        vy=np.array([30, 30, 0], f4),
        vz=np.array([5, 5, 0], f4),
        px=np.zeros(3, f4),
        py=np.array([pt, pt, 0], f4),
        pz=np.array([pt, pt, 1], f4),
        q=np.array([-1, 1, 1], np.int32),
    )
    truth = Evaluation(bfield=2.0).perigee_truth(particles, np.array([1, 2, 3]))
    d0 = [r - math.hypot(70, 30), math.hypot(130, 30) - r]
    np.testing.assert_allclose(np.abs(truth["d0"][:2]), d0, atol=1e-3)
    z0 = [5 - r * math.atan2(30, 70), 5 - r * math.atan2(30, 130)]
    np.testing.assert_allclose(truth["z0"][:2], z0, atol=1e-3)
    assert np.isnan(truth["d0"][2]) and np.isnan(truth["z0"][2])


def test_perigee_truth_is_of_the_beam_line_the_chain_is_centred_on(det) -> None:
    """Collisions at (1.5, -1) mm, the chain centred there: d0 and z0 errors as small as on
    the axis (truth taken to the z axis instead would be off by up to 1.8 mm), and as large
    as the tracks' standard errors say (pulls near 1: 0.98 to 1.10 on this event); phi too."""
    cfg = SimConfig(generator=GeneratorConfig(mu=20, beam_spot=(1.5, -1.0, 0.0)))
    events = list(simulate(det, cfg, seed=12, n_events=1))
    out = evaluate(Reconstructor.oracle(beam_spot=(1.5, -1.0)), events).report()
    assert out["matched_tracks_by_true_pt"]["1-3"] > 100
    assert 0.005 < out["d0_resolution_by_true_pt"]["1-3"] < 0.2
    assert 0.005 < out["z0_resolution_by_true_pt"]["1-3"] < 2  # all |eta| < 4: 0.76 mm
    assert 1e-4 < out["phi_resolution_by_true_pt"]["1-3"] < 0.01  # rad
    for name in ("q_over_pt", "d0", "z0", "phi"):
        assert 0.85 < out[f"{name}_pull_by_true_pt"]["1-3"] < 1.25, name


def test_the_vertex_cut_is_about_the_beam_line_the_chain_is_centred_on(det) -> None:
    """Collisions 12 mm off the axis: their particles are made within 10 mm of the beam line
    (taken from the axis, none would be: the efficiencies would have nothing to count)."""
    cfg = SimConfig(generator=GeneratorConfig(mu=10, beam_spot=(12.0, 0.0, 0.0)))
    events = list(simulate(det, cfg, seed=5, n_events=1))
    out = evaluate(Reconstructor.oracle(beam_spot=(12.0, 0.0)), events).report()
    assert out["n_reconstructable"] >= 0.8 * out["n_reconstructable_all"] > 0
    assert out["tracking_efficiency"] == 1.0 and out["graph_edge_efficiency"] == 1.0


class _FixedTimings(Reconstructor):
    """The oracle chain reporting a GNN time of 1 s a batch plus 0.1 s an event."""

    def reconstruct(self, events):
        return replace(super().reconstruct(events), timings={"gnn": 1.0 + 0.1 * len(events)})


def test_stage_times_are_per_event_over_batches_of_any_size(small_events) -> None:
    # Batches of 4 and 1 (four numbers of one event: read again, it would be scored once).
    events = [replace(small_events[0], event=100 + k) for k in range(4)] + [small_events[1]]
    t0 = time.perf_counter()
    ev = evaluate(_FixedTimings(OracleScorer()), events, batch_size=4)
    wall = time.perf_counter() - t0
    report = ev.report()
    assert report["seconds_per_event"] == pytest.approx(ev.seconds / 5) and 0 < ev.seconds < wall
    assert report["stage_seconds"]["gnn"] == pytest.approx((1.4 + 1.1) / 5)
    assert report["timings"]["gnn"] == pytest.approx(1.4 / 4)  # four of the five events
    alone = evaluate(_FixedTimings(OracleScorer()), small_events).report()  # one event a batch
    assert alone["timings"]["gnn"] == pytest.approx(1.1)


def test_progress_is_a_bar_of_events_when_asked_for(small_events, capsys) -> None:
    evaluate(Reconstructor.oracle(), small_events)
    assert capsys.readouterr().err == ""
    evaluate(Reconstructor.oracle(), iter(small_events), progress=True)
    err = capsys.readouterr().err
    assert "evaluate: 2event [" in err  # two events, one at a time, their number unknown
    evaluate(Reconstructor.oracle(), small_events, progress=True)
    assert "evaluate: 100%|" in capsys.readouterr().err  # a list: its length known
    evaluate(Reconstructor.oracle(), [*small_events, small_events[0]], progress=True)
    assert "| 3/3 [" in capsys.readouterr().err  # an event read again: read, not scored


def test_events_of_two_runs_keep_their_tracks_and_one_submission_per_number(small_events):
    a, b = small_events[0], small_events[1]
    twin = Event(a.run + 1, a.event, b.hits, b.truth)  # another run, the same event number
    ev = evaluate(Reconstructor.oracle(), [a, twin])
    assert sorted(ev.tracks) == [(a.run, a.event), (a.run + 1, a.event)]
    with pytest.raises(ValueError, match=f"event number {a.event} occurs in more than one run"):
        by_event_number(ev.submission)
    assert list(by_event_number({(a.run, a.event): 1})) == [a.event]


def test_events_over_the_budget_are_counted_refused_and_the_rest_reconstructed(det, small_events):
    """As the daemon answers them too_dense: no tracks for the dense events, the others
    reconstructed as they would be without them."""
    a, b = small_events
    rec = Reconstructor.oracle(detector=det, prune=PruneConfig())
    alone = evaluate(rec, [a, b]).report()
    events = [a, pile(det, 400, 901), b, pile(det, 2000, 902)]
    ev = evaluate(rec, events, batch_size=4)
    report = ev.report()
    assert report["events"] == 4 and report["events_refused"] == 2
    assert report["hits_per_event"] == sum(len(e.hits) for e in events) / 4
    assert [(r["event"], r["what"]) for r in report["refused"]] == [
        (901, "doublets"),
        (902, "doublet candidates"),
    ]
    assert all(r["count"] > r["limit"] for r in report["refused"])
    for key in ("tracking_efficiency", "fake_rate", "trackml_score", "gnn_edge_efficiency"):
        assert report[key] == alone[key]  # the piles have no truth
    assert len(ev.tracks[1, 901]) == 0
    hit_ids, labels = ev.submission[1, 902]
    assert len(hit_ids) == 8000 and not labels.any()
    assert labels.dtype == ev.submission[a.run, a.event][1].dtype  # track ids, integers


def test_refused_events_with_truth_count_their_particles_as_lost(small_events) -> None:
    nothing = Budget(0, 0, 0, allowance=0)  # refuses any event that has a candidate
    report = evaluate(Reconstructor.oracle(budget=nothing), small_events, batch_size=2).report()
    assert report["events_refused"] == report["events"] == 2
    assert report["seconds_per_event"] > 0  # the time spent up to the refusal
    assert report["tracking_efficiency"] == report["graph_edge_efficiency"] == 0.0
    assert report["trackml_score"] == 0.0
    assert math.isnan(report["graph_edge_purity"])  # no edge: no purity
    lost = dict.fromkeys(STAGES, 0) | {"refused": report["n_reconstructable"]}
    assert report["missed_by_stage"] == lost


def test_each_missed_particle_is_counted_at_one_stage(small_events) -> None:
    """Unpruned, the pruning stage's edges are the graph's: it loses nothing; pruning with
    windows a thirtieth of the default's loses particles there."""
    for prune, loses in ((None, False), (PruneConfig(scale=0.05), True)):
        report = evaluate(Reconstructor.oracle(prune=prune), small_events).report()
        missed = report["missed_by_stage"]
        assert sum(missed.values()) == report["n_reconstructable"] - report["n_reconstructed"]
        assert missed["refused"] == 0 and (missed["pruning"] > 0) == loses


def test_particles_keep_their_vertex_distance_and_both_selections(small_events) -> None:
    """The rows efficiency_vs_vertex_r.png draws: reconstructable without the vertex cut,
    at each particle's vertex distance from the beam line."""
    ev = evaluate(Reconstructor.oracle(), small_events)
    _, _, reco, _, reco_all, vr = np.concatenate(ev.particles).T
    reco, reco_all = reco.astype(bool), reco_all.astype(bool)
    assert (reco <= reco_all).all() and (vr[reco] < 10).all() and (vr[reco_all & ~reco] >= 10).all()
    assert (reco_all & ~reco).any()
    truth = [e.truth.particles.vr_from((0.0, 0.0)) for e in small_events if e.truth is not None]
    assert np.array_equal(vr, np.concatenate(truth).astype(vr.dtype))


def test_central_segments_are_of_particles_within_10_mm_of_the_z_axis() -> None:
    """By default the vertex cut is about the z axis: 9.97 mm off it, on either side, is
    central; 10 mm exactly is not (r < 10 mm). Segments: one, two and one."""
    event = metrics_event([1, 1, 2, 2, 2, 3, 3], {1: (2.0, 7.0, 2), 2: (2.0, -7.0, 3),
                                                  3: (2.0, 10.0, 2)})  # fmt: skip
    assert event.truth is not None
    particles = replace(event.truth.particles, vy=np.array([7.1, -7.1, 0], np.float32))
    event = replace(event, truth=replace(event.truth, particles=particles))
    counts = edge_counts(event, np.zeros((2, 0), np.int64))
    assert counts["targets"] == 4 and counts["central"] == 3


def test_edge_counts_of_one_event_by_hand() -> None:
    """Targets are segments of pT >= 1 GeV particles, central ones also from vr < 10 mm;
    purity does not count true segments of softer particles against the edges."""
    # particle 1: 1 GeV from the beam line; 2: 2 GeV from 50 mm; 3: 0.5 GeV
    event = metrics_event([1] * 3 + [2] * 3 + [3] * 3, {1: (1.0, 0.0, 3), 2: (2.0, 50.0, 3),
                                                     3: (0.5, 0.0, 3)})  # fmt: skip
    edges = np.array([[0, 3, 4, 6, 0], [1, 4, 5, 7, 3]])  # particles 1, 2, 2, 3, a fake
    counts = edge_counts(event, edges)
    assert counts == {"targets": 4, "targets_found": 3, "central": 2, "central_found": 1,
                      "edges": 5, "edges_counted": 4}  # fmt: skip
    ev = Evaluation()
    ev.physics.add(event, np.zeros(9))
    ev.graph_edges.update(counts)
    report = ev.report()
    assert report["graph_edge_efficiency"] == 0.5  # central: 1 of 2
    assert report["graph_edge_efficiency_all"] == 0.75  # targets: 3 of 4
    assert report["graph_edge_purity"] == 0.75  # 3 of the 4 edges that count


def test_segments_of_particles_missing_from_the_table_are_no_targets() -> None:
    """Hits may name particles the table lacks (an empty table among them: it raised an
    IndexError); their segments are neither targets nor central, as for an unknown id."""
    event = metrics_event([1, 1, 2, 2], {1: (2.0, 0.0, 2), 2: (2.0, 0.0, 2)})
    assert event.truth is not None
    for keep in ([0], []):
        particles = Particles(**{k: v[keep] for k, v in event.truth.particles.columns().items()})
        partial = replace(event, truth=replace(event.truth, particles=particles))
        counts = edge_counts(partial, np.array([[0, 2], [1, 3]]))
        assert (counts["targets"], counts["central"]) == (len(keep), len(keep))


@pytest.mark.parametrize("prune", [None, PruneConfig()])
def test_a_batch_counts_edges_to_their_own_events(small_events, prune) -> None:
    """An event whose first hit starts an edge: batched, its edges still count as its own,
    in the graph as built too when it is pruned."""
    a, b = small_events
    first = int(true_segments(b, 1.0)[0][0])  # starts a target segment: made its first hit
    order = np.r_[first, np.delete(np.arange(len(b.hits)), first)]
    b = replace(b, hits=b.hits.take(order), truth=replace(b.truth, hits=b.truth.hits.take(order)))
    rec = Reconstructor.oracle(prune=prune)
    one = evaluate(rec, [a, b], batch_size=1).report()
    two = evaluate(rec, [a, b], batch_size=2).report()
    for stage in ("graph", "pruned", "gnn"):
        for what in ("efficiency", "efficiency_all", "purity"):
            key = f"{stage}_edge_{what}"
            assert two[key] == one[key], key


def test_track_rows_carry_each_track_s_own_parameters(small_events) -> None:
    ev = evaluate(Reconstructor.oracle(), small_events[:1])
    [tracks] = ev.tracks.values()
    assert np.array_equal(ev.track_rows[0][:, 0], tracks.params["pt"].astype(float))
    chi2_ndf = ev.track_table()[:, TRACK_COLUMNS.index("chi2_ndf")]
    np.testing.assert_allclose(chi2_ndf, tracks.params["chi2"] / tracks.params["ndf"])
    assert ev.report()["hits_per_event"] == len(small_events[0].hits)  # one event


def test_an_evaluation_of_nothing_reports_zeros() -> None:
    """No event: nothing per event and no track row; the beam line is the z axis."""
    ev = Evaluation()
    report = ev.report()
    assert report["events"] == report["events_with_truth"] == report["events_refused"] == 0
    for key in ("seconds_per_event", "hits_per_event", "edges_per_hit", "graph_edges_per_event"):
        assert report[key] == 0, key
    assert ev.track_table().shape == (0, len(TRACK_COLUMNS))
    assert ev.beam_line == (0.0, 0.0)


def test_edges_scored_at_the_threshold_are_not_kept(small_events) -> None:
    """The GNN keeps the edges scored above the threshold, not those at it."""
    scorer = lambda graph, events: np.full(graph.num_edges, 0.5, np.float32)  # noqa: E731
    report = evaluate(Reconstructor(scorer, threshold=0.5), small_events[:1]).report()
    assert report["graph_edge_efficiency"] > 0 and report["gnn_edge_efficiency"] == 0.0


def test_two_events_of_one_run_and_number_are_refused_unless_the_same(small_events) -> None:
    """The same event twice (a looped replay) is scored once; another one of its run and
    number is refused, reconstructed or over the budget."""
    a, b = small_events
    twice = evaluate(Reconstructor.oracle(), [a, b, a, a])
    assert (twice.n_events, twice.n_repeated) == (2, 2)
    once = evaluate(Reconstructor.oracle(), [a, b]).report()
    report = twice.report()
    assert report.pop("events_repeated") == 2 and once.pop("events_repeated") == 0
    for key in ("tracking_efficiency", "n_reconstructable", "n_tracks", "trackml_score"):
        assert report[key] == once[key], key
    twin = Event(a.run, a.event, b.hits, b.truth)
    for budget in (None, Budget(0, 0, 0, allowance=0)):
        with pytest.raises(ValueError, match=f"both run {a.run}, event {a.event}"):
            evaluate(Reconstructor.oracle(budget=budget), [a, twin])


def test_efficiency_intervals_are_wilson_s_and_not_empty_at_0_or_1_of_n() -> None:
    """The plots' 68.3% intervals, by hand: 5 of 10 is 0.5 +- 0.1508; 100 of 100 is not
    known to be 1 exactly (down to 100/101), nor 0 of 100 to be 0 (up to 1/101), where the
    binomial sqrt(f (1 - f) / n) gives no error at all; no events, no interval."""
    lo, hi = wilson_interval(np.array([5, 100, 0, 0, 3]), np.array([10, 100, 100, 0, 7]))
    half = math.sqrt(0.025 + 0.0025) / 1.1
    np.testing.assert_allclose(lo[[0, 1, 2]], [0.5 - half, 100 / 101, 0], atol=1e-12)
    np.testing.assert_allclose(hi[[0, 1, 2]], [0.5 + half, 1, 1 / 101], atol=1e-12)
    assert np.isnan(lo[3]) and np.isnan(hi[3])
    assert lo[4] < 3 / 7 < hi[4] and hi[4] - 3 / 7 > 3 / 7 - lo[4]  # pulled towards 1/2
    # two standard deviations: 0 of 10 is within z^2 / (n + z^2) = 2/7 of 0
    lo, hi = wilson_interval(np.array([0]), np.array([10]), z=2.0)
    np.testing.assert_allclose([lo[0], hi[0]], [0, 2 / 7], atol=1e-12)
    # at 0 or n, exactly 0 or 1 (rounding gave -1.7e-18 for 0 of 49: "-0.00%" printed)
    n = np.arange(1, 500)
    assert (wilson_interval(np.zeros_like(n), n)[0] == 0).all()
    assert (wilson_interval(n, n)[1] == 1).all()


def test_plotted_fractions_by_bin_by_hand() -> None:
    """Bins [0, 1), [1, 2), [2, 4), [4, 8), [8, 16): 1 of 2, 1 of 1, none, 0 of 1 and 1 of 1
    (values below the first edge and at the last one left out), with Wilson's 68.3% bars:
    1 of 2 is 0.5 +- 1/sqrt(12); 1 of 1 down to 1/2, 0 of 1 up to 1/2."""
    x = np.array([-1.0, 0.0, 0.5, 1.0, 5.0, 9.0, 16.0])
    ok = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    edges = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    centres, frac, err = binned(x, ok, edges)
    np.testing.assert_allclose(centres, [0.5, 1.5, 3.0, 6.0, 12.0])
    np.testing.assert_allclose(frac, [0.5, 1.0, np.nan, 0.0, 1.0])
    half = 1 / math.sqrt(12)
    bars = [[half, 0.5, 0.0, 0.5], [half, 0.0, 0.5, 0.0]]
    np.testing.assert_allclose(err[:, [0, 1, 3, 4]], bars, atol=1e-12)
    # the bins at the end are there too, empty or without an ok value
    tail = binned(x[[1, 4]], ok[[1, 4]], edges)[1]
    np.testing.assert_allclose(tail, [1.0, np.nan, np.nan, 0.0, np.nan])


def test_plots_with_nothing_to_draw_say_why(tmp_path, monkeypatch) -> None:
    """No event with truth: each plot is drawn empty with a note saying so (they were blank
    axes, the pulls a lone reference curve)."""
    from streamtrk.eval import evaluate as module

    notes: dict[str, list[str]] = {}

    def keep_notes(fig, path) -> None:
        notes[path.name] = [t.get_text() for ax in fig.axes for t in ax.texts]

    monkeypatch.setattr(module, "save_png", keep_notes)
    module.plot(Evaluation(n_events=2), tmp_path)
    assert set(notes) == {
        "efficiency_vs_pt.png", "efficiency_vs_eta.png", "efficiency_vs_vertex_r.png",
        "fake_rate_vs_eta.png", "pt_resolution_vs_pt.png", "pulls.png",
    }  # fmt: skip
    for name, texts in notes.items():
        assert texts and set(texts) == {"no event has truth"}, name


def test_a_particle_of_exactly_1_gev_is_of_pt_1_gev_in_every_key() -> None:
    """px 0.28, py 0.96 GeV: pT 1 GeV in float32, as the reconstructable cut takes it, but
    0.99999998 in a float64 hypot of the same values, which put its matched track in the
    0-1 GeV bin and out of the keys of pT >= 1 GeV particles."""
    from types import SimpleNamespace

    from streamtrk.event import TRACK_PARAM_DTYPES, Hits, HitTruth, Tracks, Truth

    n, f32 = 6, np.float32
    zero, ints = np.zeros(n, f32), np.zeros(n, np.int32)
    hits = Hits(np.arange(1, n + 1), np.linspace(30, 300, n).astype(f32), zero, zero, ints,
                ints, ints)  # fmt: skip
    hit_truth = HitTruth(
        particle_id=np.ones(n, np.int64),
        **{k: zero for k in ("tx", "ty", "tz", "tpx", "tpy", "tpz")},
        weight=np.full(n, 1 / n, f32),
        hit_order=np.arange(n, dtype=np.int32),
    )
    f = [np.array([v], f32) for v in (0, 0, 0, 0.28, 0.96, 0)]
    particles = Particles(
        np.array([1]), f[0], f[1], f[2], f[3], f[4], f[5], np.array([1], np.int32),
        np.array([n], np.int32),
    )  # fmt: skip
    event = Event(0, 1, hits, Truth(hit_truth, particles))
    params = {k: np.zeros(1, dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    params["pt"][:], params["charge"][:], params["ndf"][:] = 1.0, 1, 7
    graph = SimpleNamespace(edge_index=np.stack([np.arange(n - 1), np.arange(1, n)]))
    result = SimpleNamespace(tracks=[Tracks(np.array([0, n]), np.arange(n), params)],
                             timings={}, graph=graph, built=graph, node_offsets=np.array([0, n]),
                             scores=np.ones(n - 1, f32))  # fmt: skip
    ev = Evaluation()
    ev.add([event], result, 0.0, 0.5)  # type: ignore[arg-type]  # a result's stand-in
    report = ev.report()
    assert float(particles.pt[0]) == 1.0 and report["n_reconstructable"] == 1
    assert report["matched_tracks_by_true_pt"]["1-3"] == 1
    assert report["pt_bias_by_abs_eta"]["0-1"] == 0.0  # the track is of a pT >= 1 GeV particle


def test_tracks_of_an_event_whose_truth_names_no_particle_are_fakes(small_events) -> None:
    """Truth of noise only (TrackML CSV without -particles.csv whose hits are all noise: an
    empty particle table) and tracks of its hits: scored as fakes, their particles' perigee
    unknown, where the lookup in the empty table raised IndexError."""
    ev = small_events[0]
    assert ev.truth is not None
    noise = np.zeros(len(ev.hits), np.int64)
    empty = Particles(**{k: v[:0] for k, v in ev.truth.particles.columns().items()})
    hits = replace(ev.truth.hits, particle_id=noise)
    ev = replace(ev, truth=replace(ev.truth, hits=hits, particles=empty))
    keep_all = lambda graph, events: np.ones(graph.num_edges, np.float32)  # noqa: E731
    report = evaluate(Reconstructor(keep_all), [ev]).report()
    assert report["n_tracks"] > 0 and report["fake_rate"] == 1.0
    truth = Evaluation(bfield=2.0).perigee_truth(empty, np.array([0, 5]))
    for key in ("pt", "q", "d0", "z0"):
        assert np.isnan(truth[key]).all(), key


def test_events_without_truth_report_no_physics_keys(small_events) -> None:
    """Only events with truth are scored: with none, the report has no physics keys (not
    null rates that read as measured), as streamtrk evaluate documents."""
    keep_all = lambda graph, events: np.ones(graph.num_edges, np.float32)  # noqa: E731
    bare = replace(small_events[0], truth=None)
    report = evaluate(Reconstructor(keep_all), [bare]).report()
    assert report["events"] == 1 and report["events_with_truth"] == 0
    for key in ("tracking_efficiency", "fake_rate", "trackml_score", "missed_by_stage"):
        assert key not in report, key


def test_particle_rows_keep_the_vertex_distance_from_the_beam_line_of_the_chain(det) -> None:
    """efficiency_vs_vertex_r.png bins the particles by their vertex's distance from the beam
    line the chain is centred on (that of the vertex cut), not from the z axis."""
    cfg = SimConfig(generator=GeneratorConfig(mu=10, beam_spot=(12.0, 0.0, 0.0)))
    events = list(simulate(det, cfg, seed=5, n_events=1))
    ev = evaluate(Reconstructor.oracle(beam_spot=(12.0, 0.0)), events)
    _, _, reco, _, _, vr = np.concatenate(ev.particles).T
    assert events[0].truth is not None
    expect = events[0].truth.particles.vr_from((12.0, 0.0))
    assert np.array_equal(vr, expect.astype(vr.dtype))
    assert reco.any() and (vr[reco.astype(bool)] < 10).all()


def test_refused_events_count_their_target_segments_at_every_stage(small_events) -> None:
    """A refused event has no edge at any stage: its target segments are lost in the graph,
    pruned and GNN edge efficiencies alike (0, not undefined)."""
    nothing = Budget(0, 0, 0, allowance=0)
    report = evaluate(Reconstructor.oracle(budget=nothing), small_events, batch_size=2).report()
    for stage in ("graph", "pruned", "gnn"):
        for what in ("efficiency", "efficiency_all"):
            assert report[f"{stage}_edge_{what}"] == 0.0, (stage, what)


def test_events_read_again_count_in_no_per_event_figure(small_events) -> None:
    """An event read again is scored once and counted once in the per-event figures: hits
    and edges per event of a, b, a, a are those of a, b (not divided by four events)."""
    a, b = small_events
    twice = evaluate(Reconstructor.oracle(), [a, b, a, a]).report()
    once = evaluate(Reconstructor.oracle(), [a, b]).report()
    for key in ("hits_per_event", "graph_edges_per_event", "gnn_edges_per_event"):
        assert twice[key] == once[key], key


def test_plotted_error_bars_are_never_negative_at_0_or_all_of_n() -> None:
    """Wilson's bounds at 0 of n and n of n meet the fraction up to rounding (-2e-16 at 6 of
    6): the bars are clipped at 0, as matplotlib refuses a negative one (plot would raise)."""
    for n in range(1, 101):
        for ok in (np.zeros(n), np.ones(n)):
            _, frac, err = binned(np.full(n, 0.5), ok, np.array([0.0, 1.0]))
            assert frac[0] == ok[0] and (err >= 0).all(), (n, ok[0])


def test_the_chi2_median_is_of_matched_tracks_only() -> None:
    """chi2_ndf_median is of matched tracks: a real track that finds no particle (a
    fragment, chi2/ndf 50) and another (60) do not move it from the matched ones' 1.2."""
    # fitted pt, eta, chi2/ndf, fake, duplicate, matched
    rows = np.array(
        [
            [2.0, 0.1, 1.0, 0, 0, 1],
            [2.0, 0.1, 1.2, 0, 0, 1],
            [2.0, 0.1, 1.4, 0, 0, 1],
            [2.0, 0.1, 50.0, 0, 1, 0],  # a duplicate fragment: real, not matched
            [2.0, 0.1, 60.0, 0, 0, 0],  # real, holds too few of its particle's hits
        ]
    )
    assert _track_rates(rows)["chi2_ndf_median"] == pytest.approx(1.2)


def test_hits_on_layers_the_detector_lacks_are_counted_in_events_without_truth(
    small_events,
) -> None:
    """hits_on_no_layer counts the hits whose (volume, layer) the chain's detector lacks in
    every event, those without truth too (another detector's data has none): a quarter of
    the hits moved to volume 999 here, none on layer index 0 counted."""
    keep_all = lambda graph, events: np.ones(graph.num_edges, np.float32)  # noqa: E731
    ev = small_events[0]
    volume = ev.hits.volume_id.copy()
    volume[::4] = 999
    bare = replace(ev, hits=replace(ev.hits, volume_id=volume), truth=None)
    report = evaluate(Reconstructor(keep_all), [bare]).report()
    assert report["hits_on_no_layer"] == len(volume[::4])


def test_refused_events_count_central_segments_about_the_chain_s_beam_line(det) -> None:
    """Collisions 12 mm off the axis, the chain centred there, every event refused: their
    central segments (within 10 mm of the beam line) are all lost, an edge efficiency of 0,
    where taken about the z axis none is central and the efficiencies were undefined."""
    cfg = SimConfig(generator=GeneratorConfig(mu=10, beam_spot=(12.0, 0.0, 0.0)))
    events = list(simulate(det, cfg, seed=5, n_events=1))
    nothing = Budget(0, 0, 0, allowance=0)
    rec = Reconstructor.oracle(beam_spot=(12.0, 0.0), budget=nothing)
    out = evaluate(rec, events).report()
    assert out["events_refused"] == 1 and out["n_reconstructable"] > 0
    for stage in ("graph", "pruned", "gnn"):
        assert out[f"{stage}_edge_efficiency"] == 0.0, stage


def test_the_submission_rows_are_the_hit_ids_and_their_track_labels(small_events) -> None:
    """``Evaluation.submission`` (the rows --submission writes): the event's hit ids and each
    hit's track label, which score as the report's trackml_score."""
    ev = evaluate(Reconstructor.oracle(), small_events[:1])
    a = small_events[0]
    assert a.truth is not None
    hit_ids, labels = ev.submission[a.run, a.event]
    assert np.array_equal(hit_ids, a.hits.hit_id)
    assert np.array_equal(labels, ev.tracks[a.run, a.event].track_id_per_hit(len(a.hits)))
    score = trackml_score(a.truth.hits.particle_id, a.truth.hits.weight, labels)
    assert score == ev.report()["trackml_score"] > 0
