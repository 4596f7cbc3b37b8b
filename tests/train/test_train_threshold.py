"""The default threshold, chosen on the validation events."""

from __future__ import annotations

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig
from streamtrk.train import EventSource


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
    from streamtrk.train import scan_thresholds

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
    from streamtrk.train import scan_thresholds

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

    from streamtrk.train import scan_thresholds

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
    from streamtrk.train import scan_thresholds

    events = EventSource(mu=20, seed=5, events=1).load(load_detector())

    def nothing(graph, events):
        return np.zeros(graph.num_edges, dtype=np.float32)

    scan = scan_thresholds(nothing, events, GraphConfig(), (0.5, 0.7))
    assert scan["tracking_efficiency"] == [0.0, 0.0] and scan["objective"] == [0.0, 0.0]
    assert scan["chosen"] == 0.5
