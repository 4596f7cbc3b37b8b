"""Physics metrics: one reconstructed batch counted by layer, track and edge, and the beam spot
it gives (the array histograms: ``test_histograms.py``; the beam-spot window on known tracks:
``test_beamspot.py``)."""

from __future__ import annotations

import weakref
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamtrk.detector import load_detector
from streamtrk.event import Event, Hits, Truth
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service.beamspot import BeamSpot
from streamtrk.service.physics import (
    D0_BUCKETS,
    EDGE_SCORE_BUCKETS,
    Z0_BUCKETS,
    Observation,
    PhysicsMetrics,
)
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

DET = load_detector()


@pytest.fixture(scope="module")
def observed() -> dict:
    """24 MU=8 events with a dead layer (8:4), a noisy one (13:2) and the beam spot at
    (0.3, -0.2, 4) mm, and one event of two hits, reconstructed (truth edge scores) and
    observed as one batch."""
    cfg = SimConfig(
        generator=GeneratorConfig(mu=8, beam_spot=(0.3, -0.2, 4.0)),
        dead_layers=frozenset({(8, 4)}),
        noisy_layers=(((13, 2), 300.0),),
    )
    events = list(simulate(DET, cfg, seed=8, n_events=24))
    first, two = events[0], np.array([0, 1])
    assert first.truth is not None
    truth = Truth(first.truth.hits.take(two), first.truth.particles)
    lone = Event(1, 99, first.hits.take(two), truth)
    rec = Reconstructor.oracle(detector=DET)
    result, alone = rec.reconstruct(events), rec.reconstruct([lone])
    result.tracks.append(alone.tracks[0])  # no track
    result.layer_hits = result.layer_hits + alone.layer_hits
    registry = CollectorRegistry()
    physics = PhysicsMetrics(registry)
    batch = [*events, lone]
    observation = Observation.of(batch, result, rec)
    physics.observe(observation)
    return {"events": events, "batch": batch, "result": result, "registry": registry,
            "threshold": rec.threshold, "observation": observation}  # fmt: skip


def _by_layer(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["volume"], s.labels["layer"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_hits_are_counted_by_layer_and_on_tracks(observed: dict) -> None:
    batch, result = observed["batch"], observed["result"]
    volume = np.concatenate([e.hits.volume_id for e in batch])
    layer = np.concatenate([e.hits.layer_id for e in batch])
    expected = np.bincount(DET.layer_index(volume, layer), minlength=len(DET))
    hits = _by_layer(observed["registry"], "streamtrk_layer_hits_total")
    assert len(hits) == len(DET)  # every layer, the dead one at 0
    for i, (v, la) in enumerate(zip(DET.volume_id, DET.layer_id, strict=True)):
        assert hits[(str(v), str(la))] == expected[i]
    assert hits[("8", "4")] == 0 and hits[("13", "2")] > 1.5 * hits[("13", "4")]
    on_tracks = _by_layer(observed["registry"], "streamtrk_layer_track_hits_total")
    assert sum(on_tracks.values()) == sum(len(t.hit_index) for t in result.tracks) > 0
    assert all(on_tracks[k] <= hits[k] for k in hits)
    # noise is on no track: the noisy layer's share falls below its neighbour's
    share = {k: on_tracks[k] / hits[k] for k in [("13", "2"), ("13", "4")]}
    assert share[("13", "2")] < 0.7 * share[("13", "4")]


def test_an_observation_keeps_its_hit_counts_not_its_events(observed: dict) -> None:
    """The physics queue holds observations for batches to come: not their events, whose
    hits may be views of messages of up to max_message_bytes."""
    first = observed["events"][0]
    event = Event(first.run, first.event, replace(first.hits, x=first.hits.x.copy()))
    rec = Reconstructor(lambda graph, events: np.ones(graph.num_edges, np.float32), detector=DET)
    observation, hits = Observation.of([event], rec.reconstruct([event]), rec), event.hits
    x = weakref.ref(hits.x)
    del event, hits
    assert x() is None and observation.n_hits.tolist() == [len(first.hits)]


def test_hits_of_unknown_layers_are_counted_on_no_layer(observed: dict) -> None:
    """Ids of no layer (negative, past the table's, a layer id past its volume's) are
    counted on no layer, on tracks or not, and in streamtrk_hits_on_no_layer_total; the
    others as their layer."""
    event = observed["events"][0]
    volume, layer = event.hits.volume_id.copy(), event.hits.layer_id.copy()
    volume[:3], layer[3:6] = [-1, 99, 2**31 - 1], [-2, 15, 40]
    hits = replace(event.hits, volume_id=volume, layer_id=layer)
    rec = Reconstructor(lambda graph, events: np.ones(graph.num_edges, np.float32), detector=DET)
    result = rec.reconstruct([Event(event.run, event.event, hits)])
    registry = CollectorRegistry()
    PhysicsMetrics(registry).observe(Observation.of([Event(0, 0, hits)], result, rec))
    counted = _by_layer(registry, "streamtrk_layer_hits_total")
    known = event.hits.volume_id[6:], event.hits.layer_id[6:]
    expected = np.bincount(DET.layer_index(*known), minlength=len(DET))
    cells = zip(DET.volume_id, DET.layer_id, strict=True)
    assert [counted[(str(v), str(la))] for v, la in cells] == expected.tolist()
    on_tracks = _by_layer(registry, "streamtrk_layer_track_hits_total")
    on_known = np.isin(result.tracks[0].hit_index, np.arange(6), invert=True)
    assert sum(on_tracks.values()) == np.count_nonzero(on_known) > 0
    assert registry.get_sample_value("streamtrk_hits_on_no_layer_total") == 6  # said, not lost


def test_a_detector_swapped_in_counts_hits_on_its_own_layers(observed: dict) -> None:
    """A reload may bring another detector: its layers are counted, not the first one's (here
    it lacks the first layer, whose count stays at that of the first batch)."""
    o = observed["observation"]
    fewer = replace(DET, volume_id=DET.volume_id[1:], layer_id=DET.layer_id[1:])
    registry = CollectorRegistry()
    physics = PhysicsMetrics(registry)
    physics.observe(o)
    physics.observe(replace(o, detector=fewer))
    twice = _by_layer(registry, "streamtrk_layer_hits_total")
    once = _by_layer(observed["registry"], "streamtrk_layer_hits_total")
    first = (str(DET.volume_id[0]), str(DET.layer_id[0]))
    assert twice == {k: v if k == first else 2 * v for k, v in once.items()} and once[first] > 0


def test_tracks_edges_and_empty_events_are_counted(observed: dict) -> None:
    result, value = observed["result"], observed["registry"].get_sample_value
    assert value("streamtrk_event_tracks_count") == len(observed["batch"])
    assert value("streamtrk_event_tracks_sum") == sum(len(t) for t in result.tracks)
    assert value("streamtrk_event_tracks_bucket", {"le": "0.0"}) == 1  # the two-hit event
    assert value("streamtrk_events_without_tracks_total") == 1
    n_track_hits = sum(len(t.hit_index) for t in result.tracks)
    assert value("streamtrk_track_hits_sum") == n_track_hits
    assert value("streamtrk_track_z0_meters_count") == sum(len(t) for t in result.tracks)
    scores = np.asarray(result.scores)
    assert value("streamtrk_edge_score_count") == len(scores)
    low = EDGE_SCORE_BUCKETS[0]
    assert value("streamtrk_edge_score_bucket", {"le": str(low)}) == np.sum(scores <= low)
    accepted = np.count_nonzero(scores > observed["threshold"])
    assert value("streamtrk_edges_accepted_total") == accepted > 0
    # every track's eta and phi, the negative ones at or below 0
    for name, param in (("streamtrk_track_eta", "eta"), ("streamtrk_track_phi_radians", "phi")):
        values = np.concatenate([t.params[param] for t in result.tracks])
        assert value(f"{name}_count") == len(values), name
        assert value(f"{name}_bucket", {"le": "0.0"}) == np.sum(values <= 0) > 0, name
    # base units: eV for pT, meters for d0 and z0
    params = {k: np.concatenate([t.params[k] for t in result.tracks]) for k in ("pt", "d0", "z0")}
    assert value("streamtrk_track_pt_electronvolts_sum") == pytest.approx(
        float(np.sum(params["pt"], dtype=np.float64)) * 1e9, rel=1e-4
    )
    for name, param, bounds in (("d0", "d0", D0_BUCKETS), ("z0", "z0", Z0_BUCKETS)):
        meters = params[param].astype(np.float64) * 1e-3
        for b in bounds[1:-1]:
            le = {"le": str(b)}
            assert value(f"streamtrk_track_{name}_meters_bucket", le) == np.sum(meters <= b), b


def test_edges_scored_at_the_threshold_are_not_accepted(observed: dict) -> None:
    """Accepted: scored above the threshold, as track building keeps them, not at it."""
    registry = CollectorRegistry()
    scores = np.array([0.1, 0.5, 0.5, 0.7, 1.0], np.float32)
    PhysicsMetrics(registry).observe(replace(observed["observation"], scores=scores, threshold=0.5))
    assert registry.get_sample_value("streamtrk_edges_accepted_total") == 2


def test_d0_significance_leaves_out_tracks_without_a_standard_error(observed: dict) -> None:
    """A standard error of 0 is unknown (an older reply): no significance, not infinity."""
    o = observed["observation"]
    tracks = [
        replace(
            t,
            params=t.params
            | {"sigma_d0": np.where(np.arange(len(t)) % 2, t.params["sigma_d0"], 0)},
        )
        for t in o.tracks
    ]
    registry = CollectorRegistry()
    PhysicsMetrics(registry).observe(replace(o, tracks=tracks))
    known = sum(len(t) // 2 for t in o.tracks)
    assert registry.get_sample_value("streamtrk_track_d0_significance_count") == known > 0
    assert registry.get_sample_value("streamtrk_track_d0_meters_count") == sum(map(len, o.tracks))


def test_an_event_without_hits_is_no_event_without_tracks() -> None:
    """Of an event without hits and one of a single hit, the latter is without tracks."""
    empty, one = (
        Event(1, n, Hits(**{k: np.zeros(n - 7, dt) for k, dt in Hits.DTYPES.items()}))
        for n in (7, 8)
    )
    rec = Reconstructor(lambda graph, events: np.zeros(graph.num_edges, np.float32), detector=DET)
    registry = CollectorRegistry()
    result = rec.reconstruct([empty, one])
    PhysicsMetrics(registry).observe(Observation.of([empty, one], result, rec))
    assert registry.get_sample_value("streamtrk_events_without_tracks_total") == 1
    assert registry.get_sample_value("streamtrk_event_tracks_count") == 2


def test_the_beam_spot_tells_the_events_of_later_batches_apart(observed: dict) -> None:
    """Events are the clusters of the z error: a second batch brings new ones (the same
    tracks again halve the variance of the mean), not more tracks of the first batch's."""
    errors = []
    for batches in (1, 2):
        physics = PhysicsMetrics(CollectorRegistry())
        for _ in range(batches):
            physics.observe(observed["observation"])
        errors.append(physics.beam_spot.estimate().z_error)
    assert errors[1] == pytest.approx(errors[0] / np.sqrt(2), rel=0.05)


def test_beam_spot_gauges_follow_the_simulated_beam_spot(observed: dict) -> None:
    value = observed["registry"].get_sample_value
    assert value("streamtrk_beam_spot_tracks") > 1000
    z, error = value("streamtrk_beam_spot_z_meters"), value("streamtrk_beam_spot_z_error_meters")
    assert 0 < error < 4e-3 / 5  # the 4 mm shift stands out ...
    assert z == pytest.approx(4e-3, abs=3 * error)  # ... and z follows it within its error
    # The transverse position within 20% of the shift: the graph's cuts assume the beam on
    # the axis and thin out the tracks that stray most from it.
    assert value("streamtrk_beam_spot_x_meters") == pytest.approx(0.3e-3, abs=0.06e-3)
    assert value("streamtrk_beam_spot_y_meters") == pytest.approx(-0.2e-3, abs=0.04e-3)


def test_tracks_of_a_chain_centred_on_the_beam_line_give_the_beam_spot(observed: dict) -> None:
    """Centred on the simulated beam line, the chain's d0 are of the perigee to it; the window
    takes them back to the z axis: the beam spot in detector coordinates, closer than the
    chain on the axis gets it (its cuts thin out the tracks that stray most)."""
    rec = Reconstructor.oracle(detector=DET, beam_spot=(0.3, -0.2))
    registry = CollectorRegistry()
    physics = PhysicsMetrics(registry)
    physics.set_beam_line(rec.beam_spot)
    events = observed["events"]
    result = rec.reconstruct(events)
    physics.observe(Observation.of(events, result, rec))
    value = registry.get_sample_value
    assert value("streamtrk_beam_line_x_meters") == pytest.approx(0.3e-3)
    assert value("streamtrk_beam_line_y_meters") == pytest.approx(-0.2e-3)
    assert value("streamtrk_beam_spot_x_meters") == pytest.approx(0.3e-3, abs=0.02e-3)
    assert value("streamtrk_beam_spot_y_meters") == pytest.approx(-0.2e-3, abs=0.02e-3)
    assert value("streamtrk_beam_spot_tracks") == physics.beam_spot.estimate().tracks > 1000


def test_d0_significance_says_whether_the_chain_is_centred_on_the_beam(observed: dict) -> None:
    """|d0| over the fit's standard error: centred on the beam line, a unit Gaussian's size
    for primary tracks (68% below 1, 95% below 2); 0.36 mm off it (the fixture's chain on
    the axis), the stiff tracks' d0 are many standard errors off."""

    def shares(registry: CollectorRegistry) -> tuple[float, float]:
        def value(name: str, labels: dict[str, str] | None = None) -> float:
            got = registry.get_sample_value(name, labels)
            assert got is not None, name
            return got

        n = value("streamtrk_track_d0_significance_count")
        bucket = "streamtrk_track_d0_significance_bucket"
        return value(bucket, {"le": "1.0"}) / n, value(bucket, {"le": "2.0"}) / n

    rec = Reconstructor.oracle(detector=DET, beam_spot=(0.3, -0.2))
    registry = CollectorRegistry()
    events = observed["events"]
    result = rec.reconstruct(events)
    PhysicsMetrics(registry).observe(Observation.of(events, result, rec))
    within_1, within_2 = shares(registry)
    assert 0.6 < within_1 < 0.76 and within_2 > 0.9
    off_1, off_2 = shares(observed["registry"])
    assert off_1 < 0.5 and off_2 < 0.8


def test_a_track_phi_rounded_to_float32_stays_in_a_finite_bucket() -> None:
    """The fit's phi lies in [-pi, pi); stored as float32 it can round to 3.1415927 > pi."""
    from streamtrk.service.physics import PHI_BUCKETS

    highest = np.float32(np.nextafter(np.pi, 0.0))
    assert float(highest) > np.pi
    assert len(PHI_BUCKETS) == 16 and PHI_BUCKETS[-2] == pytest.approx(7 * np.pi / 8)
    registry = CollectorRegistry()
    PhysicsMetrics(registry).phi.observe(np.array([highest, 3.0], np.float32))
    value = registry.get_sample_value
    bucket = "streamtrk_track_phi_radians_bucket"
    assert value(bucket, {"le": str(PHI_BUCKETS[-2])}) == 0
    assert value(bucket, {"le": str(PHI_BUCKETS[-1])}) == value(bucket, {"le": "+Inf"}) == 2


def test_a_parameter_on_a_bucket_bound_counts_in_that_bucket() -> None:
    """Prometheus' ``le`` is "at or below": a fitted d0 of 5 mm (float32, as the fit keeps
    it) is in the 0.005 m bucket; scaled in float32 it was above (float32(1e-3) > 1e-3)."""
    from streamtrk.event import TRACK_PARAM_DTYPES, Tracks

    params = {k: np.zeros(3, dtype=dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    params["d0"][:] = (0.5, 5.0, 10.0)
    params["z0"][:] = (2.5, 7.5, 100.0)
    params["pt"][:] = 2.0
    tracks = Tracks(np.array([0, 3, 6, 9]), np.arange(9), params)
    registry = CollectorRegistry()
    cells = np.zeros((2, DET.layer_lut.size), np.int64)
    obs = Observation(np.array([9]), [tracks], np.zeros(0, np.float32), cells, DET, 0.5)
    PhysicsMetrics(registry).observe(obs)
    value = registry.get_sample_value
    for name, bounds in (("d0", ("0.0005", "0.005", "0.01")), ("z0", ("0.0025", "0.0075", "0.1"))):
        counts = [value(f"streamtrk_track_{name}_meters_bucket", {"le": le}) for le in bounds]
        assert counts == [1, 2, 3], name


def test_a_scrape_reads_the_beam_spot_gauges_from_one_estimate(monkeypatch) -> None:
    """Read one by one, the six gauges could mix windows when a batch lands in between."""
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    window = PhysicsMetrics(registry).beam_spot
    estimate, calls = window.estimate, []

    def counted() -> BeamSpot:
        calls.append(1)
        return estimate()

    monkeypatch.setattr(window, "estimate", counted)
    text = generate_latest(registry).decode()
    assert len(calls) == 1
    assert "streamtrk_beam_spot_tracks 0.0" in text and "streamtrk_beam_spot_x_meters NaN" in text


def test_skipped_batches_are_exported_at_0_before_any_is_skipped() -> None:
    """Both reasons from the start, so that a rate over them is 0, not absent, while healthy."""
    registry = CollectorRegistry()
    PhysicsMetrics(registry)
    for reason in ("behind", "failed"):
        labels = {"reason": reason}
        assert registry.get_sample_value("streamtrk_physics_batches_skipped_total", labels) == 0


def test_histogram_buckets_are_those_of_the_docs() -> None:
    """The bounds docs/metrics.md gives (in GeV and mm there), exported in base units."""
    gev, mm = 1e9, 1e-3
    d0 = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
    z0 = (2.5, 5, 7.5, 10, 15, 20, 30, 50, 100, 250)
    score = (1e-4, 1e-3, 0.01, 0.05, *(k / 10 for k in range(1, 10)), 0.95, 0.99, 0.999)
    documented = {
        "streamtrk_track_pt_electronvolts": [
            gev * b for b in (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100)
        ],
        "streamtrk_track_eta": [k / 2 for k in range(-8, 9)],
        "streamtrk_track_d0_meters": sorted(mm * b for b in (0, *d0, *(-b for b in d0))),
        "streamtrk_track_z0_meters": sorted(mm * b for b in (0, *z0, *(-b for b in z0))),
        "streamtrk_track_d0_significance": [0.5, 1, 2, 3, 5, 10, 30, 100],
        "streamtrk_track_hits": [*range(3, 13), 14, 16, 20],
        "streamtrk_event_tracks": [0, 1, 3, 10, 30, 100, 300, 1000, 2000, 3000, 5000, 10000],
        "streamtrk_edge_score": list(score),
    }
    registry = CollectorRegistry()
    PhysicsMetrics(registry)
    bounds: dict[str, list[str]] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == f"{family.name}_bucket" and s.labels["le"] != "+Inf":
                bounds.setdefault(family.name, []).append(s.labels["le"])
    for name, expected in documented.items():
        got = [float(b) for b in bounds[name]]
        assert got == pytest.approx(expected, rel=1e-12, abs=0), name
    assert "1e+09" in bounds["streamtrk_track_pt_electronvolts"]  # le="1e+09" is 1 GeV
    assert "0.005" in bounds["streamtrk_track_d0_meters"]  # and le="0.005" 5 mm


def test_the_beam_spot_z_width_is_the_luminous_region_s_in_meters(observed: dict) -> None:
    """The fixture's pileup vertices spread by 6 mm in z (GeneratorConfig.sigma_z), widened
    by the z0 resolution: the width gauge says so in meters, as the other beam-spot gauges."""
    value = observed["registry"].get_sample_value
    assert 5e-3 < value("streamtrk_beam_spot_z_width_meters") < 10e-3


def test_edges_are_accepted_above_the_reconstructors_threshold(observed: dict) -> None:
    """A model served at threshold 0.7: the edges scored above 0.7 are accepted (as track
    building keeps them), not those above the default 0.5."""
    events = observed["events"][:2]
    rec = Reconstructor(
        lambda graph, evs: np.linspace(0, 1, graph.num_edges, dtype=np.float32),
        detector=DET,
        threshold=0.7,
    )
    result = rec.reconstruct(events)
    registry = CollectorRegistry()
    PhysicsMetrics(registry).observe(Observation.of(events, result, rec))
    scores = np.asarray(result.scores)
    accepted = registry.get_sample_value("streamtrk_edges_accepted_total")
    assert accepted == np.count_nonzero(scores > 0.7) < np.count_nonzero(scores > 0.5)


def test_batches_of_one_event_each_give_a_beam_spot(observed: dict) -> None:
    """Each batch's events are new events for the beam-spot window: two batches of one
    event are two events, enough for an estimate (one event gives none)."""
    events, rec = observed["events"][:2], Reconstructor.oracle(detector=DET)
    physics = PhysicsMetrics(CollectorRegistry())
    for ev in events:
        physics.observe(Observation.of([ev], rec.reconstruct([ev]), rec))
    spot = physics.beam_spot.estimate()
    assert spot.tracks > 0 and np.isfinite(spot.z_error)
