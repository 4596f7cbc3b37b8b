"""Training samples: phi sectors of the training graphs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig, event_graph, select_edges
from streamtrk.recon.prune import PruneConfig, prune_edges
from streamtrk.recon.truth import edge_labels
from streamtrk.train import EventSource, make_samples
from streamtrk.train.samples import _sectors


def test_sectors_count_every_edge_once() -> None:
    det = load_detector()
    ev = EventSource(mu=20, seed=5, events=1).load(det)
    g = event_graph(ev[0], det, GraphConfig())
    labels = edge_labels(ev[0], g.edge_index, 1.0)
    soft = edge_labels(ev[0], g.edge_index, 0.0) & ~labels
    samples = make_samples(ev, det, GraphConfig(), 1.0, sectors=4, margin=0.1)
    assert len(samples) == 4
    assert sum(int(s.counted.sum()) for s in samples) == int((~soft).sum())
    assert sum(int(s.target[s.counted].sum()) for s in samples) == int(labels.sum())
    # each edge is home in one sample, though the margins put it in two (the card's count)
    assert sum(s.home_edges for s in samples) == g.num_edges < sum(s.num_edges for s in samples)
    for s in samples:
        assert int(s.edge_index.max()) < s.x.shape[0]


def test_an_edge_counts_in_the_sector_of_its_inner_hit() -> None:

    det = load_detector()
    ev = EventSource(mu=20, seed=5, events=1).load(det)
    samples = make_samples(ev, det, GraphConfig(), 1.0, sectors=4, margin=0.1)
    width = 2 * np.pi / 4
    for k, s in enumerate(samples):
        inner = s.edge_index[0][s.counted]
        phi = s.x[inner, 1].double().numpy() * np.pi
        assert ((phi >= -np.pi + k * width - 1e-6) & (phi <= -np.pi + (k + 1) * width + 1e-6)).all()


def test_the_margin_adds_the_edges_around_a_sector() -> None:
    """Edges of hits within ``margin`` of a sector are in it too (the messages of its
    edges near the boundary); they count in another sector's loss alone."""
    det = load_detector()
    ev = EventSource(mu=20, seed=5, events=1).load(det)
    plain = make_samples(ev, det, GraphConfig(), 1.0, sectors=4, margin=0.0)
    wide = make_samples(ev, det, GraphConfig(), 1.0, sectors=4, margin=0.1)
    for a, b in zip(plain, wide, strict=True):
        assert a.num_edges < b.num_edges and a.home_edges == b.home_edges
        assert int(a.counted.sum()) == int(b.counted.sum())


def test_samples_are_of_the_pruned_graph_when_pruning_is_given() -> None:

    det = load_detector()
    ev = EventSource(mu=20, seed=5, events=1).load(det)
    g = event_graph(ev[0], det, GraphConfig())
    pruned = select_edges(g, prune_edges(g, PruneConfig(), det))
    assert pruned.num_edges < g.num_edges
    [s] = make_samples(ev, det, GraphConfig(), 1.0, prune=PruneConfig())
    assert s.num_edges == pruned.num_edges
    assert int(s.target.sum()) == int(edge_labels(ev[0], pruned.edge_index, 1.0).sum())


def test_targets_are_the_segments_of_particles_above_pt_min() -> None:
    det = load_detector()
    ev = EventSource(mu=20, seed=5, events=1).load(det)
    g = event_graph(ev[0], det, GraphConfig())
    for pt_min in (0.5, 2.0):
        [s] = make_samples(ev, det, GraphConfig(), pt_min)
        labels = edge_labels(ev[0], g.edge_index, pt_min)
        soft = edge_labels(ev[0], g.edge_index, 0.0) & ~labels
        assert int(s.target.sum()) == int(labels.sum())
        assert int(s.counted.sum()) == int((~soft).sum())


@pytest.mark.parametrize(("sectors", "margin"), [(4, 0.1), (4, 0.0), (1, 0.0)])
def test_a_hit_at_phi_pi_is_in_the_last_sector(sectors: int, margin: float) -> None:
    """phi = pi (y = 0, x < 0; or phi / pi rounded to 1 in float32) is sector n - 1, not n
    (a sector no loop makes), and in its sample also on the boundary without a margin (the
    validation samples': one sector, no margin): an edge with both hits there counts."""
    det = load_detector()
    [ev] = EventSource(mu=20, seed=5, events=1).load(det)
    g = event_graph(ev, det, GraphConfig())
    features = g.node_features.copy()
    features[g.edge_index[:, :10], 1] = np.float32(1.0)  # both hits at phi = pi
    g = replace(g, node_features=features)
    ones = np.ones(g.num_edges, dtype=bool)
    samples = list(_sectors(g, ones, ones, sectors, margin))
    assert sum(s.home_edges for s in samples) == g.num_edges
    assert sum(int(s.counted.sum()) for s in samples) == g.num_edges


def test_a_sector_holds_the_edges_coming_into_it_from_another() -> None:
    """A sector holds every edge touching it, its outer hit's too: without a margin an edge
    whose two hits lie in two sectors is in both samples (home in its inner hit's)."""
    det = load_detector()
    [ev] = EventSource(mu=20, seed=5, events=1).load(det)
    g = event_graph(ev, det, GraphConfig())
    phi = g.node_features[:, 1].astype(np.float64) * np.pi
    sector = np.minimum(((phi + np.pi) / (np.pi / 2)).astype(np.int64), 3)
    crossing = int((sector[g.edge_index[0]] != sector[g.edge_index[1]]).sum())
    assert crossing > 0
    ones = np.ones(g.num_edges, dtype=bool)
    samples = list(_sectors(g, ones, ones, 4, 0.0))
    assert sum(s.num_edges for s in samples) == g.num_edges + crossing
