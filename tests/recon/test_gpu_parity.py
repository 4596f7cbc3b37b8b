"""CuPy against NumPy on the same events: graph edges, components, tracks, fit, histograms
(GPU only)."""

import numpy as np
import pytest
from gpu_only import cupy_on_cuda
from piles import assert_same_refusals, pile

from streamtrk.recon.budget import EventTooDense
from streamtrk.recon.graph import batch_graph
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import OracleScorer, Reconstructor
from streamtrk.recon.tracks import TrackConfig, components_label_propagation

pytestmark = pytest.mark.gpu
cupy = cupy_on_cuda()


def _edges(events, det, xp):
    g = batch_graph(events, det, xp=xp)
    ei = g.edge_index.get() if xp is cupy else g.edge_index
    return {tuple(e) for e in ei.T.tolist()}, g


def test_cupy_graph_equals_numpy(mu200_events, det):
    cpu, _ = _edges(mu200_events[:2], det, np)
    gpu, g = _edges(mu200_events[:2], det, cupy)
    assert isinstance(g.edge_index, cupy.ndarray)
    assert cpu == gpu


def test_label_propagation_on_gpu_equals_cpu():
    """The same function on NumPy (tested against SciPy in test_tracks.py)."""
    rng = np.random.default_rng(3)
    edges = rng.integers(0, 20000, size=(2, 15000))
    gpu = components_label_propagation(cupy.asarray(edges), 20000).get()
    assert np.array_equal(gpu, components_label_propagation(edges, 20000))


def test_oracle_tracks_identical_on_both_devices(mu200_events):
    cpu = Reconstructor.oracle(device="cpu").reconstruct(mu200_events[:2]).tracks
    gpu = Reconstructor.oracle(device="cuda").reconstruct(mu200_events[:2]).tracks
    for a, b in zip(cpu, gpu, strict=True):
        assert np.array_equal(a.offsets, b.offsets)
        assert np.array_equal(a.hit_index, b.hit_index)
        for k in a.params:
            np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-4, atol=1e-4)


class _NoisyOracle(OracleScorer):
    """Truth scores blurred by a hash of each edge's ends (the same on both devices): true
    segments 0.3-1, others 0-0.2, so stitching and the track cuts have work to do."""

    def __call__(self, graph, events):
        truth = super().__call__(graph, events)
        xp = cupy.get_array_module(truth)
        a, b = (graph.edge_index[k].astype(xp.int64) for k in (0, 1))
        u = ((a * 2654435761 + b * 40503) % 1000003).astype(xp.float64) / 1000003
        return xp.where(truth > 0, 0.3 + 0.7 * u, 0.2 * u).astype(xp.float32)


def test_stitching_and_cuts_identical_on_both_devices(mu200_events):
    cfg = TrackConfig(stitch_threshold=0.05, min_mean_score=0.65, max_chi2_ndf=1.5, max_d0=0.5)
    out = {
        dev: Reconstructor(_NoisyOracle(), device=dev, tracks=cfg, threshold=0.5)
        .reconstruct(mu200_events[:2])
        .tracks
        for dev in ("cpu", "cuda")
    }
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        assert len(a) > 1000
        assert np.array_equal(a.offsets, b.offsets)
        assert np.array_equal(a.hit_index, b.hit_index)
        for k in a.params:
            np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [2000, 400, 60])  # candidates, doublets, triplet candidates
def test_the_budget_refuses_the_same_events_on_both_devices(mu200_events, det, k):
    batch = [mu200_events[0], pile(det, k, 2), mu200_events[1], pile(det, k, 4)]
    refused = {}
    for device in ("cpu", "cuda"):
        rec = Reconstructor.oracle(device=device, detector=det, prune=PruneConfig())
        with pytest.raises(EventTooDense) as e:
            rec.reconstruct(batch)
        refused[device] = e.value
    assert_same_refusals(refused["cpu"], refused["cuda"])
    assert refused["cpu"].events == [1, 3]


def test_array_histograms_count_the_same_on_both_devices():
    """The physics metrics' histograms of device arrays (the edge scores): same buckets,
    float32 values next to bounds float32 cannot hold included."""
    from prometheus_client import CollectorRegistry

    from streamtrk.service.histograms import ArrayHistogram
    from streamtrk.service.physics import EDGE_SCORE_BUCKETS

    at = np.array(EDGE_SCORE_BUCKETS, dtype=np.float32)
    rng = np.random.default_rng(5)
    scores = np.concatenate([at, np.nextafter(at, np.float32(0)), rng.random(100_000), [np.nan]])
    scores = scores.astype(np.float32)
    hists = {}
    for name, values in (("cpu", scores), ("cuda", cupy.asarray(scores))):
        hists[name] = ArrayHistogram("s", "doc", EDGE_SCORE_BUCKETS, CollectorRegistry())
        hists[name].observe(values)
    assert np.array_equal(hists["cpu"]._counts, hists["cuda"]._counts)
    assert hists["cpu"]._counts.sum() == len(scores) - 1
    assert hists["cuda"]._sum == pytest.approx(hists["cpu"]._sum, rel=1e-12)
