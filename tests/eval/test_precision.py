"""bf16 against fp32 on simulated events: the report's mechanics (a random network; the real
figures come from the shipped model on the GPU, bench/gpu_bench.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamtrk.eval.precision import precision_parity, tracks_agreement
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.gnn import GNNConfig, InteractionNetwork
from streamtrk.recon.load import ChainSettings
from streamtrk.recon.reconstructor import Reconstructor


def test_bf16_parity_report(small_events) -> None:
    torch.manual_seed(1)
    model = InteractionNetwork(GNNConfig(hidden=16, edge_hidden=8, steps=3)).eval()
    # A random network's scores crowd together: keep its top fifth of edges.
    one = small_events[:1]
    scores = Reconstructor(EngineScorer(model, "cpu", "eager")).reconstruct(one).scores
    chain = ChainSettings(threshold=float(np.quantile(scores, 0.8)))
    same = precision_parity(model, small_events, precision="fp32", chain=chain, engine="auto")
    assert same["engine"] == "eager"  # what auto runs on the CPU, not what was asked
    assert same["score_abs_diff_max"] == 0 and same["edge_decisions_flipped"] == 0
    assert same["tracking_efficiency_change"] == 0
    assert same["tracks_common"] == same["tracks_a"] == same["tracks_b"] > 0
    r = precision_parity(model, small_events, precision="bf16", chain=chain, batch_size=2)
    assert r["events"] == 2 and r["edges"] == same["edges"]
    assert 0 < r["score_abs_diff_max"] < 0.05
    assert r["score_abs_diff_mean"] <= r["score_abs_diff_p99"] <= r["score_abs_diff_max"]
    assert 0 <= r["edge_decisions_flipped_fraction"] < 0.05
    for k in ("tracking_efficiency", "fake_rate", "duplicate_rate", "trackml_score"):
        # fp32 in batches of two, as fp32 one event at a time: the reference does not move.
        assert r[f"{k}_fp32"] == same[f"{k}_fp32"] and 0 <= r[f"{k}_fp32"] <= 1
    assert tracks_agreement([], []) == {"tracks_a": 0, "tracks_b": 0, "tracks_common": 0}


def test_a_physics_change_is_the_low_precision_s_less_fp32_s(small_events, monkeypatch) -> None:
    """``*_change`` is signed: a loss of efficiency under bf16 reads negative, not as a
    gain (the evaluations' figures fixed: 0.9 for fp32, then 0.8)."""
    from streamtrk.eval import precision
    from streamtrk.eval.evaluate import Evaluation
    from streamtrk.eval.precision import PHYSICS

    figures = iter([0.9, 0.8])

    class Fixed(Evaluation):
        def report(self):
            v = next(figures)
            return {k: v for k in PHYSICS}

    monkeypatch.setattr(precision, "Evaluation", Fixed)
    torch.manual_seed(1)
    model = InteractionNetwork(GNNConfig(hidden=16, edge_hidden=8, steps=3)).eval()
    r = precision_parity(model, small_events[:1], precision="bf16")
    for k in PHYSICS:
        assert (r[f"{k}_fp32"], r[f"{k}_bf16"]) == (0.9, 0.8)
        assert r[f"{k}_change"] == pytest.approx(-0.1)


def _unused_model() -> InteractionNetwork:
    """A network for the signature: the scorer that stands in for its engine ignores it."""
    return InteractionNetwork(GNNConfig(hidden=8, edge_hidden=8, steps=1)).eval()


def _fixed_scorer(monkeypatch, scores_of) -> None:
    """EngineScorer replaced by one giving ``scores_of(precision, n_edges)``."""
    from streamtrk.eval import precision

    class Fixed:
        engine = "eager"

        def __init__(self, model, device, engine, p, buckets=None) -> None:
            self.precision = p

        def warm_up(self) -> None:
            pass

        def __call__(self, graph, events):
            return scores_of(self.precision, graph.num_edges)

    monkeypatch.setattr(precision, "EngineScorer", Fixed)


def test_an_edge_scored_at_the_threshold_in_low_precision_is_flipped(small_events, monkeypatch):
    """The chain keeps edges scored above the threshold: one just above it in fp32 and at it
    exactly in bf16 (its rounding) is a decision flipped, not kept by both."""
    above = np.float32(0.5 + 2**-9)
    _fixed_scorer(
        monkeypatch,
        lambda p, n: np.full(n, above if p == "fp32" else 0.5, np.float32),
    )
    r = precision_parity(_unused_model(), small_events[:1], chain=ChainSettings(threshold=0.5))
    assert r["edge_decisions_flipped"] == r["edges"] > 0
    assert r["edge_decisions_flipped_fraction"] == 1.0


def test_score_differences_by_hand(small_events, monkeypatch) -> None:
    """Differences 0, 0.001, ..., 0.099 over the edges: the mean, 99th percentile and
    largest of them (``score_abs_diff_*``)."""

    def scores_of(p, n):
        base = np.full(n, 0.75, np.float64)
        return (base - (np.arange(n) % 100) / 1000 * (p != "fp32")).astype(np.float32)

    _fixed_scorer(monkeypatch, scores_of)
    r = precision_parity(_unused_model(), small_events[:1], chain=ChainSettings(threshold=0.5))
    diff = np.arange(r["edges"]) % 100 / 1000
    assert r["score_abs_diff_max"] == pytest.approx(0.099, abs=1e-6)
    assert r["score_abs_diff_mean"] == pytest.approx(diff.mean(), abs=1e-6)
    assert r["score_abs_diff_p99"] == pytest.approx(np.quantile(diff, 0.99), abs=1e-6)
    assert r["edge_decisions_flipped"] == 0
    assert r["engine"] == "eager"  # one engine ran both precisions: named once


def test_tracks_in_common_are_those_of_the_same_hits_in_both() -> None:
    """Per event, tracks of the same hits; a track in one only is in neither's common count."""
    from streamtrk.event import Tracks

    def tracks(*hit_lists):
        off = np.cumsum([0, *map(len, hit_lists)])
        return Tracks(off, np.concatenate([np.array(h, np.int64) for h in hit_lists]), {})

    a = [tracks([0, 1, 2], [3, 4, 5]), tracks([0, 1])]
    b = [tracks([0, 1, 2], [3, 4], [5, 6, 7]), tracks([2, 3])]
    assert tracks_agreement(a, b) == {"tracks_a": 3, "tracks_b": 4, "tracks_common": 1}


def test_tracks_a_are_fp32_s_and_tracks_b_the_low_precision_s(small_events, monkeypatch):
    """fp32 keeps every edge and bf16 none: the tracks (``tracks_a``) and the efficiency are
    fp32's, bf16 has no track (``tracks_b``), and none is common."""
    _fixed_scorer(monkeypatch, lambda p, n: np.full(n, 1.0 if p == "fp32" else 0.0, np.float32))
    r = precision_parity(_unused_model(), small_events[:1], chain=ChainSettings(threshold=0.5))
    assert r["tracks_a"] > 0 and r["tracks_b"] == r["tracks_common"] == 0
    assert r["tracking_efficiency_fp32"] > 0 and r["tracking_efficiency_bf16"] == 0.0
    assert r["edge_decisions_flipped"] == r["edges"] > 0


def test_the_engine_named_is_the_one_that_warmed_up(small_events, monkeypatch) -> None:
    """With ``auto``, an engine that fails to warm up gives way to the next one: the report
    names the engine the scorer runs after its warm-up ("eager"), not the one it began with."""
    from streamtrk.eval import precision

    class FallsBack:
        def __init__(self, model, device, engine, p, buckets=None) -> None:
            self.engine = "compile"

        def warm_up(self) -> None:
            self.engine = "eager"  # compile failed to warm up: the next engine

        def __call__(self, graph, events):
            return np.ones(graph.num_edges, np.float32)

    monkeypatch.setattr(precision, "EngineScorer", FallsBack)
    r = precision_parity(_unused_model(), small_events[:1], engine="auto")
    assert r["engine"] == "eager"
