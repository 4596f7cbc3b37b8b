"""Training samples: phi sectors of the training graphs."""

from __future__ import annotations

from streamtrk.detector import load_detector
from streamtrk.recon.graph import GraphConfig, event_graph
from streamtrk.recon.truth import edge_labels
from streamtrk.train import EventSource, make_samples


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
