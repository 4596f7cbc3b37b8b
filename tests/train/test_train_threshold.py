"""The default threshold, chosen on the validation events."""

from __future__ import annotations

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.eval.evaluate import evaluate
from streamtrk.recon.graph import GraphConfig
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.recon.tracks import TrackConfig
from streamtrk.train import EventSource, scan_thresholds


class _TruthWithNoise:
    """Edge scores that a threshold can sort: true segments of pT >= 1 GeV score 0.8-0.9,
    every other edge 0-0.7 (uniform), so only thresholds of 0.7 and up remove the fakes."""

    def __call__(self, graph, events):
        from streamtrk.recon.reconstructor import OracleScorer

        truth = OracleScorer()(graph, events)
        rng = np.random.default_rng(0)
        return np.where(
            truth > 0, rng.uniform(0.8, 0.9, len(truth)), rng.uniform(0, 0.7, len(truth))
        )


def test_threshold_choice_maximises_the_objective() -> None:

    events = EventSource(mu=20, seed=5, events=1).load(load_detector())
    scan = scan_thresholds(_TruthWithNoise(), events, GraphConfig(), (0.2, 0.5, 0.75, 0.95))
    fake, duplicate = np.nan_to_num([scan["fake_rate"], scan["duplicate_rate"]])  # no tracks
    objective = np.array(scan["tracking_efficiency"]) - fake - duplicate
    np.testing.assert_allclose(scan["objective"], objective)
    # Low thresholds keep chance edges (fakes), 0.95 drops every edge: 0.75 wins.
    assert scan["chosen"] == 0.75
    assert scan["fake_rate"][0] > scan["fake_rate"][2] and scan["tracking_efficiency"][3] == 0


def test_a_threshold_that_builds_no_track_is_not_chosen_over_one_that_does() -> None:
    """Scores that say nothing (chance, 0-0.7): at 0.2 the tracks found are outweighed by
    fakes and duplicates (an objective below 0); 0.95 passes no edge, its objective 0. A
    model whose default threshold finds nothing is no choice: 0.2 is chosen."""
    events = EventSource(mu=20, seed=5, events=1).load(load_detector())

    def chance(graph, events):
        return np.random.default_rng(0).uniform(0, 0.7, graph.num_edges)

    scan = scan_thresholds(chance, events, GraphConfig(), (0.95, 0.2))
    assert scan["objective"][0] == 0 and scan["objective"][1] < 0, scan
    assert scan["chosen"] == 0.2


def test_no_threshold_scored_is_an_error_not_the_first() -> None:
    """Events without a reconstructable particle (no momenta) leave every objective NaN:
    the scan refuses to choose, where argmax took the first threshold."""
    from dataclasses import replace

    import pytest

    [event] = EventSource(mu=5, seed=5, events=1).load(load_detector())
    assert event.truth is not None
    p = event.truth.particles
    nan = np.full(len(p.px), np.nan, dtype=p.px.dtype)
    truth = replace(event.truth, particles=replace(p, px=nan, py=nan, pz=nan))
    with pytest.raises(ValueError, match="no threshold could be scored"):
        scan_thresholds(_TruthWithNoise(), [replace(event, truth=truth)], GraphConfig(), (0.5, 0.7))


def test_a_model_that_finds_no_track_is_scored_not_refused() -> None:
    """A scorer passing no edge leaves no track at any threshold: the fake and duplicate
    rates of no tracks count 0 (they were NaN, the objective undefined everywhere), the
    efficiency 0 says what the model does."""
    events = EventSource(mu=20, seed=5, events=1).load(load_detector())

    def nothing(graph, events):
        return np.zeros(graph.num_edges, dtype=np.float32)

    scan = scan_thresholds(nothing, events, GraphConfig(), (0.5, 0.7))
    assert scan["tracking_efficiency"] == [0.0, 0.0] and scan["objective"] == [0.0, 0.0]
    assert scan["chosen"] == 0.5


def test_a_threshold_whose_tracks_are_all_fakes_builds_a_track() -> None:
    """Scores that pass only edges between noise hits: at 0.5 every track
    is a fake (fake rate 1, no real track: the duplicate rate undefined), 0.95 passes no
    edge. Tracks were built at 0.5: it is the choice, the model's failure in plain sight
    (its objective -1), not a threshold that builds nothing."""
    events = EventSource(mu=20, seed=5, events=1).load(load_detector())

    def wrong(graph, events):  # edges joining two noise hits
        noise = events[0].truth.hits.particle_id == 0
        src, dst = np.asarray(graph.edge_index)
        return np.where(noise[src] & noise[dst], 0.85, 0.0).astype(np.float32)

    scan = scan_thresholds(wrong, events, GraphConfig(), (0.95, 0.5))
    assert scan["fake_rate"][1] == 1 and np.isnan(scan["duplicate_rate"][1]), scan
    assert scan["chosen"] == 0.5


def test_the_scan_reconstructs_with_the_pruning_and_track_settings_given() -> None:
    """The scan's figures are those of the chain the model will serve: its pruning and its
    [tracks] settings (here 10 hits at least), as one reconstruction at that threshold
    (0.2: chance edges pass, fakes to cut)."""
    events = EventSource(mu=20, seed=5, events=1).load(load_detector())
    prune, tracks = PruneConfig(), TrackConfig(min_hits=10)
    scan = scan_thresholds(
        _TruthWithNoise(), events, GraphConfig(), (0.2,), prune=prune, tracks=tracks
    )
    rec = Reconstructor(
        _TruthWithNoise(), graph_config=GraphConfig(), threshold=0.2, prune=prune, tracks=tracks
    )
    report = evaluate(rec, events).report()
    keys = ("tracking_efficiency", "fake_rate", "duplicate_rate")
    assert [scan[k] for k in keys] == [[report[k]] for k in keys]
    for other in ({"prune": prune}, {"tracks": tracks}):  # each setting changes the figures
        assert scan_thresholds(_TruthWithNoise(), events, GraphConfig(), (0.2,), **other) != scan


def test_the_scan_scores_each_batch_of_events_once() -> None:
    """Edges are scored once, whatever the number of thresholds (the network is the slow
    part of a scan)."""
    events = EventSource(mu=20, seed=5, events=1).load(load_detector())
    calls: list[int] = []

    def counted(graph, events):
        calls.append(len(events))
        return _TruthWithNoise()(graph, events)

    scan_thresholds(counted, events, GraphConfig(), (0.2, 0.5, 0.75))
    assert len(calls) == 1  # one batch, three thresholds


def test_events_of_one_number_from_two_runs_are_scored_each_on_its_own() -> None:
    """The scores cached are those of the very events (two runs may both hold an event 0):
    renumbering the events to one number changes none of the scan's figures."""
    from streamtrk.event import Event

    events = EventSource(mu=20, seed=5, events=2).load(load_detector())
    same = [Event(run, 0, ev.hits, ev.truth) for run, ev in enumerate(events)]
    thresholds = (0.5, 0.75)
    assert scan_thresholds(_TruthWithNoise(), same, GraphConfig(), thresholds) == scan_thresholds(
        _TruthWithNoise(), events, GraphConfig(), thresholds
    )
