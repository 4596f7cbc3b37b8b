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
