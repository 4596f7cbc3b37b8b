"""Track building: junction resolution, components (SciPy vs label propagation), CSR tracks."""

import numpy as np

from streamtrk.recon.tracks import (
    build_tracks,
    components_label_propagation,
    components_scipy,
    resolve_junctions,
    split_by_event,
)


def test_junctions_keep_the_mutual_best_edges():
    # 0 -> 1 (0.9), 0 -> 2 (0.8), 3 -> 1 (0.95), 1 -> 4 (0.7), 2 -> 4 (0.2: below threshold)
    edges = np.array([[0, 0, 3, 1, 2], [1, 2, 1, 4, 4]])
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.2])
    kept = resolve_junctions(edges, scores, threshold=0.5)
    # 0->1 loses node 1's inbound to 3->1; 0->2 is then not 0's best outbound (0->1 is).
    assert set(map(tuple, kept.T.tolist())) == {(3, 1), (1, 4)}
    out_deg = np.bincount(kept[0], minlength=5)
    in_deg = np.bincount(kept[1], minlength=5)
    assert out_deg.max() <= 1 and in_deg.max() <= 1


def test_a_second_junction_pass_continues_the_chain_that_lost():
    # Same graph: after pass 1 (3->1, 1->4), hit 0 lost its best edge; its next-best 0->2
    # has both ends free, so pass 2 keeps it. 2->4 stays below threshold.
    edges = np.array([[0, 0, 3, 1, 2], [1, 2, 1, 4, 4]])
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.2])
    kept = resolve_junctions(edges, scores, threshold=0.5, passes=3)
    assert set(map(tuple, kept.T.tolist())) == {(3, 1), (1, 4), (0, 2)}


def test_repeated_passes_keep_at_most_one_edge_per_hit_end():
    rng = np.random.default_rng(1)
    edges = rng.integers(0, 400, size=(2, 3000))
    scores = rng.random(3000)
    one = resolve_junctions(edges, scores, 0.3)
    many = resolve_junctions(edges, scores, 0.3, passes=10)
    assert set(map(tuple, one.T.tolist())) <= set(map(tuple, many.T.tolist()))
    assert many.shape[1] > one.shape[1]
    for end in (0, 1):
        assert np.bincount(many[end]).max() == 1


def test_label_propagation_equals_scipy_on_random_graphs():
    rng = np.random.default_rng(0)
    for n, e in [(1, 0), (10, 0), (50, 30), (2000, 1500), (5000, 12000)]:
        edges = rng.integers(0, n, size=(2, e))
        assert np.array_equal(components_label_propagation(edges, n), components_scipy(edges, n))


def test_long_chains_converge():
    n = 3000
    edges = np.stack([np.arange(n - 1), np.arange(1, n)])[:, ::-1].copy()
    labels = components_label_propagation(edges, n)
    assert np.all(labels == 0)


def test_build_tracks_orders_hits_and_drops_short_ones():
    # Two chains: 0-1-2-3 (radii shuffled in index order) and 4-5 (too short).
    edges = np.array([[0, 1, 2, 4], [1, 2, 3, 5]])
    r = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0])
    offsets, hits = build_tracks(edges, np.ones(4), r, threshold=0.5)
    assert offsets.tolist() == [0, 4] and hits.tolist() == [0, 1, 2, 3]
    r2 = np.array([4.0, 3.0, 2.0, 1.0, 1.0, 2.0])
    offsets, hits = build_tracks(edges[::-1].copy(), np.ones(4), r2, threshold=0.5)
    assert hits.tolist() == [3, 2, 1, 0]


def test_split_by_event_gives_local_numbering():
    offsets = np.array([0, 3, 6, 9])
    hits = np.array([0, 1, 2, 5, 6, 7, 10, 11, 12])
    params = {"pt": np.array([1.0, 2.0, 3.0])}
    parts = split_by_event(offsets, hits, params, np.array([0, 5, 10, 13]))
    assert [p[0].tolist() for p in parts] == [[0, 3], [0, 3], [0, 3]]
    assert [p[1].tolist() for p in parts] == [[0, 1, 2], [0, 1, 2], [0, 1, 2]]
    assert [p[2]["pt"].tolist() for p in parts] == [[1.0], [2.0], [3.0]]
    empty = split_by_event(np.array([0]), np.array([], int), {"pt": np.array([])}, np.array([0, 4]))
    assert empty[0][0].tolist() == [0] and len(empty[0][1]) == 0
