"""Track building: junction resolution, components (label propagation vs SciPy), CSR tracks."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from streamtrk.recon.graph import batch_graph
from streamtrk.recon.tracks import (
    KERNELS,
    TrackConfig,
    _junction_edges,
    _mutual_best,
    build_tracks,
    components_label_propagation,
    cuts_kernel,
    doubles_kernels,
    fit_cuts,
    join_doubles,
    junction_kernels,
    merge_labels,
    propagation_kernel,
    resolve_junctions,
    select_tracks,
    split_by_event,
    stitch_edges,
    stitch_kernels,
)
from streamtrk.xp import Array


def components_scipy(edges: np.ndarray, n: int) -> np.ndarray:
    """The reference: SciPy's connected components, each labelled by its smallest hit."""
    adj = coo_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    smallest = np.full(labels.max() + 1 if n else 0, n)
    np.minimum.at(smallest, labels, np.arange(n))
    return smallest[labels]


def test_junctions_keep_the_mutual_best_edges():
    # 0 -> 1 (0.9), 0 -> 2 (0.8), 3 -> 1 (0.95), 1 -> 4 (0.7), 2 -> 4 (0.2: below threshold)
    edges = np.array([[0, 0, 3, 1, 2], [1, 2, 1, 4, 4]])
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.2])
    kept = resolve_junctions(edges, scores, threshold=0.5)
    # 0->1 loses node 1's inbound to 3->1; 0->2 is then not 0's best outbound (0->1 is).
    assert set(map(tuple, kept.T.tolist())) == {(3, 1), (1, 4)}
    out_deg = np.bincount(kept[0], minlength=5)
    in_deg = np.bincount(kept[1], minlength=5)
    assert np.max(out_deg) <= 1 and np.max(in_deg) <= 1


def test_junction_scores_are_compared_as_float32():
    """The scorers' dtype: scores equal in float32 are a tie (the first edge), the better
    one wins from any place, whatever its sign."""
    edges = np.array([[0, 0], [1, 2]])
    tie = resolve_junctions(edges, np.array([0.9, 0.9 + 1e-12]), 0.5)
    assert tie.T.tolist() == [[0, 1]]
    # float32 both (NumPy 1.x made nextafter(float32, int) float64: no step in float32)
    step = np.nextafter(np.float32(0.9), np.float32(1))
    better = resolve_junctions(edges, np.array([0.9, step]), 0.5)
    assert better.T.tolist() == [[0, 2]]
    # Below zero too (a scorer's logits, a negative threshold), and -0.0 is 0.0.
    assert resolve_junctions(edges, np.array([-0.5, -0.2]), -1).T.tolist() == [[0, 2]]
    assert resolve_junctions(edges, np.array([0.0, -0.0]), -1).T.tolist() == [[0, 1]]
    assert resolve_junctions(edges, np.array([-0.0, 0.0]), -1).T.tolist() == [[0, 1]]
    # The threshold too: a float64 score above it by less than float32 resolves is not.
    assert resolve_junctions(edges, np.array([0.5 + 1e-9, 0.4]), 0.5).shape == (2, 0)


def test_junction_scores_rank_in_float32_order_over_their_whole_range():
    """Of two edges at one end (out of a hit, into a hit), the one with the greater float32
    score is kept, the first on a tie, for any two finite scores: huge, tiny, subnormal,
    negative, neighbours one float32 step apart."""
    f32 = np.float32
    ladder = [f32(-3e38), f32(-1e30), np.nextafter(f32(-0.5), f32(-1)), f32(-0.5), f32(-1e-30)]
    ladder += [f32(-1e-45), f32(0), f32(1e-45), f32(1e-30), f32(0.5)]
    ladder += [np.nextafter(f32(0.5), f32(1)), f32(1), f32(1e30), f32(3e38)]
    for a, b in itertools.product(ladder, repeat=2):
        scores = np.array([a, b])
        want = 1 if b > a else 0
        for edges in (np.array([[0, 0], [1, 2]]), np.array([[1, 2], [0, 0]])):
            kept = resolve_junctions(edges, scores, -np.inf)
            assert kept.T.tolist() == [edges[:, want].tolist()], (a, b)


@pytest.mark.parametrize("passes", [0, 1, 3])
def test_host_kernels_resolve_junctions_as_the_arrays(host_launcher, passes: int):
    """track_building.cu's junction kernels, built for the host: the arrays' edges, in
    their order, on random graphs with many ties, on the float32 ladder's scores (-0.0 as
    0.0, subnormals above a threshold of 0), on float64 scores that tie only in float32,
    edges at the threshold (a float64 one compared in float32, as the scores), NaN scores
    (not above any threshold), a NaN threshold (none above), a graph without edges; over
    one pass or several (chains that lost a junction continue)."""
    rng = np.random.default_rng(4)
    f32 = np.float32
    ladder = np.array([-3e38, -0.5, -1e-45, -0.0, 0.0, 1e-45, 0.5, 1.0, 3e38], f32)
    cases: list[tuple[np.ndarray, np.ndarray, int, float]] = []
    for n, m in [(3, 8), (50, 400), (3000, 20000)]:
        edges = rng.integers(0, n, size=(2, m))
        cases.append((edges, rng.choice(ladder, m), n, -np.inf))
        cases.append((edges, rng.integers(0, 4, m) / 4, n, 0.25))  # float64, ties, at 0.25
        cases.append((edges, 0.9 + rng.integers(0, 3, m) * 1e-12, n, 0.5))  # ties in float32
        cases.append((edges, rng.choice(ladder, m), n, 0.0))  # subnormals above 0, -0.0 not
        cases.append((edges, rng.choice([f32(0.1), f32(0.2)], m), n, np.float64(0.1)))
        cases.append((edges, rng.choice([*ladder, np.nan], m).astype(f32), n, -np.inf))
    cases.append((np.zeros((2, 0), np.int64), np.zeros(0, f32), 5, 0.5))
    grew = False
    for edges, scores, n, threshold in cases:
        want = _junction_edges(edges, scores, threshold, passes, n)
        got = junction_kernels(edges, scores, threshold, passes, n, host_launcher(KERNELS))
        assert np.array_equal(got, want)
        nothing = junction_kernels(edges, scores, np.nan, passes, n, host_launcher(KERNELS))
        assert len(nothing) == len(_junction_edges(edges, scores, np.nan, passes, n)) == 0
        if passes and len(scores):
            one = _junction_edges(edges, scores, threshold, 1, n)
            assert 0 < len(one) < len(scores)
            grew |= len(want) > len(one)
    assert grew == (passes > 1)


def test_mutual_best_refuses_2_to_the_31_edges(little_memory):
    """The edge index fills the low 31 bits of the code compared per end."""
    many = 2**31  # read-only broadcast views: no memory for 2^31 edges
    e = np.broadcast_to(np.zeros((2, 1), np.int64), (2, many))
    s = np.broadcast_to(np.float32(0.9), (many,))
    with pytest.raises(ValueError, match="at most 2\\^31 - 1 edges, got 2147483648"):
        _mutual_best(e, s, 1, np)


def test_stitching_kernels_refuse_2_to_the_31_edges_and_hits(host_launcher, little_memory):
    """Their codes' keys (an edge, or the edges' count plus a hit) fill the low 31 bits."""
    many = 2**31 - 10  # read-only broadcast views: no memory for them
    e = np.broadcast_to(np.zeros((2, 1), np.int64), (2, many))
    s = np.broadcast_to(np.float32(0.9), (many,))
    labels = np.arange(10)
    with pytest.raises(ValueError, match="at most 2\\^31 - 1 edges and hits, got 2147483638"):
        stitch_kernels(e, s, e[:, :0], labels, 0.1, host_launcher(KERNELS))


def test_the_junction_threshold_is_exclusive():
    assert resolve_junctions(np.array([[0], [1]]), np.array([0.5]), 0.5).shape == (2, 0)


def test_a_lone_edge_above_the_threshold_is_kept_and_no_edge_keeps_none():
    lone = resolve_junctions(np.array([[0], [1]]), np.array([0.9]), 0.5)
    assert lone.T.tolist() == [[0, 1]]
    assert resolve_junctions(np.zeros((2, 0), int), np.zeros(0), 0.5).shape == (2, 0)


def test_zero_junction_passes_keep_no_edge():
    edges = np.array([[0, 1], [1, 2]])
    assert resolve_junctions(edges, np.array([0.9, 0.9]), 0.5, passes=0).shape == (2, 0)


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
        assert np.max(np.bincount(many[end])) == 1


def test_label_propagation_equals_scipy_on_random_graphs():
    rng = np.random.default_rng(0)
    for n, e in [(1, 0), (10, 0), (50, 30), (2000, 1500), (5000, 12000)]:
        edges = rng.integers(0, n, size=(2, e))
        assert np.array_equal(components_label_propagation(edges, n), components_scipy(edges, n))


def test_host_kernel_labels_as_the_arrays(host_launcher):
    """track_building.cu's label propagation, built for the host (its threads one after
    another, its atomic minimum a plain one), labels random graphs and long chains numbered
    along or against their order as SciPy does; it stops at the first iteration checked
    that lowers no label, and too few iterations raise as the arrays' do."""
    rng = np.random.default_rng(1)
    chain = np.stack([np.arange(2999), np.arange(1, 3000)])[:, ::-1].copy()
    graphs = [(rng.integers(0, n, size=(2, e)), n) for n, e in [(50, 30), (5000, 12000)]]
    for edges, n in [*graphs, (chain, 3000), (chain[::-1].copy(), 3000)]:
        labels = propagation_kernel(edges, n, 1000, host_launcher(KERNELS))
        assert np.array_equal(labels, components_scipy(edges, n))
    pairs = np.array([[0, 2], [1, 3]])  # labels final after one iteration, seen in the second
    assert propagation_kernel(pairs, 5, 2, host_launcher(KERNELS)).tolist() == [0, 0, 2, 2, 4]
    for edges, n in [(pairs, 5), (chain, 3000)]:
        with pytest.raises(RuntimeError, match="did not converge in 1 iterations"):
            propagation_kernel(edges, n, 1, host_launcher(KERNELS))


def test_long_chains_converge():
    n = 3000
    edges = np.stack([np.arange(n - 1), np.arange(1, n)])[:, ::-1].copy()
    labels = components_label_propagation(edges, n)
    assert np.all(labels == 0)


def test_label_propagation_checks_convergence_every_few_iterations_and_at_the_last():
    edges = np.array([[0, 2], [1, 3]])  # labels final after one iteration, seen in the second
    assert components_label_propagation(edges, 5, max_iter=2).tolist() == [0, 0, 2, 2, 4]
    chain = np.stack([np.arange(99), np.arange(1, 100)])  # needs more than one
    with pytest.raises(RuntimeError, match="did not converge in 1 iterations"):
        components_label_propagation(chain, 100, max_iter=1)
    # 30 hits in a chain: labels final after 3 iterations, seen in the 4th; 3 are too few
    chain = chain[:, :29]
    assert components_label_propagation(chain, 30, max_iter=4).tolist() == [0] * 30
    with pytest.raises(RuntimeError, match="did not converge in 3 iterations"):
        components_label_propagation(chain, 30, max_iter=3)


def test_build_tracks_orders_hits_and_drops_short_ones():
    # Two chains: 0-1-2-3 (radii shuffled in index order) and 4-5 (too short).
    edges = np.array([[0, 1, 2, 4], [1, 2, 3, 5]])
    r = np.array([1.0, 2.0, 3.0, 4.0, 1.0, 2.0])
    offsets, hits = build_tracks(edges, np.ones(4), r, threshold=0.5)
    assert offsets.tolist() == [0, 4] and hits.tolist() == [0, 1, 2, 3]
    r2 = np.array([4.0, 3.0, 2.0, 1.0, 1.0, 2.0])
    offsets, hits = build_tracks(edges[::-1].copy(), np.ones(4), r2, threshold=0.5)
    assert hits.tolist() == [3, 2, 1, 0]


def test_tracks_are_ordered_by_their_smallest_hit_index():
    """Not by their innermost hit: 5-0-6 (hit 5 innermost) comes before 1-2-3."""
    edges = np.array([[5, 0, 1, 2], [0, 6, 2, 3]])
    r = np.array([2.0, 1.0, 2.0, 3.0, 0.0, 1.0, 3.0])
    offsets, hits = build_tracks(edges, np.ones(4), r, threshold=0.5)
    tracks = [hits[a:b].tolist() for a, b in itertools.pairwise(offsets.tolist())]
    assert tracks == [[5, 0, 6], [1, 2, 3]]


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


def _tracks(edges, scores, n, **cfg):
    offsets, hits = build_tracks(
        np.array(edges).T.copy(),
        np.array(scores),
        np.arange(n, dtype=float),
        threshold=0.6,
        config=TrackConfig(**cfg),
    )
    return [hits[a:b].tolist() for a, b in itertools.pairwise(offsets)]


# One particle, hits 0..7 by radius, cut in two pieces by a weak segment 3 -> 4.
SPLIT = (
    [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)],
    [0.9, 0.9, 0.9, 0.4, 0.9, 0.9, 0.9],
)


def test_stitching_joins_two_pieces_over_a_weak_edge():
    assert _tracks(*SPLIT, 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _tracks(*SPLIT, 8, stitch_threshold=0.2) == [list(range(8))]
    assert _tracks(*SPLIT, 8, stitch_threshold=0.5) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # an edge exactly at the stitch threshold is not above it, nor one a float64 score
    # puts above it by less than float32 resolves (the scorers' dtype, the kernels')
    assert _tracks(*SPLIT, 8, stitch_threshold=0.4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    just_above = [0.9, 0.9, 0.9, 0.4 + 1e-9, 0.9, 0.9, 0.9]
    assert _tracks(SPLIT[0], just_above, 8, stitch_threshold=0.4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_stitching_reattaches_a_single_hit_between_two_pieces():
    # Hit 3 lost both its segments (0.4, 0.3): pieces 0-1-2 and 4-5-6, hit 3 in none.
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    scores = [0.9, 0.9, 0.4, 0.3, 0.9, 0.9]
    assert _tracks(edges, scores, 7) == [[0, 1, 2], [4, 5, 6]]
    assert _tracks(edges, scores, 7, stitch_threshold=0.2) == [list(range(7))]
    # the bridge is as strong as its weaker edge
    assert _tracks(edges, scores, 7, stitch_threshold=0.35) == [[0, 1, 2], [4, 5, 6]]
    # a hit reached from a piece's end but leading nowhere is not attached
    assert _tracks(edges[:3] + edges[4:], [0.9, 0.9, 0.4, 0.9, 0.9], 7, stitch_threshold=0.2) == [
        [0, 1, 2],
        [4, 5, 6],
    ]


def test_a_free_hit_bridges_from_its_best_entry_only():
    # Pieces A = 0-1-2, B = 3-4-5 and C = 7-8-9; free hit 6 is entered from A (0.3) and from
    # B (0.5) and leads to C (0.5): the bridge starts at B, A stays alone.
    edges = [(0, 1), (1, 2), (3, 4), (4, 5), (7, 8), (8, 9), (2, 6), (5, 6), (6, 7)]
    scores = [0.9] * 6 + [0.3, 0.5, 0.5]
    assert sorted(_tracks(edges, scores, 10, stitch_threshold=0.2)) == [
        [0, 1, 2],
        [3, 4, 5, 6, 7, 8, 9],
    ]


def test_a_bridge_competes_with_its_weaker_edge():
    # A = 0-1-2 ends next to free hit 3 (0.55), which leads to B = 4-5-6 (0.3); A's end also
    # has a direct edge to C = 7-8-9 (0.5). The bridge counts 0.3, so the direct edge wins.
    edges = [(0, 1), (1, 2), (4, 5), (5, 6), (7, 8), (8, 9), (2, 3), (3, 4), (2, 7)]
    scores = [0.9] * 6 + [0.55, 0.3, 0.5]
    assert sorted(_tracks(edges, scores, 10, stitch_threshold=0.2)) == [
        [0, 1, 2, 7, 8, 9],
        [4, 5, 6],
    ]


# One particle crossing a layer twice (overlapping modules): A = 2, B1 = 3, B2 = 4 on one
# layer, C = 5. The graph has no edge B1 -> B2; A's best is A -> B1, C's best is B2 -> C.
DOUBLE = (
    [(0, 1), (1, 2), (2, 3), (2, 4), (3, 5), (4, 5), (5, 6), (6, 7)],
    [0.9, 0.9, 0.9, 0.8, 0.8, 0.9, 0.9, 0.9],
)


def test_pieces_are_joined_over_a_layers_two_hits():
    assert _tracks(*DOUBLE, 8, stitch_threshold=0.2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert _tracks(*DOUBLE, 8, stitch_threshold=0.2, join_doubles=True) == [list(range(8))]


def test_a_double_is_joined_only_where_both_crossings_score_above_the_stitch_threshold():
    for crossing in (3, 4):  # A -> B2, then B1 -> C, at 0.1
        scores = [0.1 if k == crossing else s for k, s in enumerate(DOUBLE[1])]
        got = _tracks(DOUBLE[0], scores, 8, stitch_threshold=0.2, join_doubles=True)
        assert got == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_piece_end_joins_its_best_double_only():
    # A second piece 8-9-10 starts at 8, also a diamond with A (2 -> 8 at 0.7) and B1
    # (3 -> 9 at 0.7): weaker than the one through B2 (0.8), so B1 joins B2's piece only.
    edges = [*DOUBLE[0], (8, 9), (9, 10), (2, 8), (3, 9)]
    scores = [*DOUBLE[1], 0.9, 0.9, 0.7, 0.7]
    got = _tracks(edges, scores, 11, stitch_threshold=0.2, join_doubles=True)
    assert sorted(got) == [list(range(8)), [8, 9, 10]]
    scores[-2:] = [0.85, 0.85]  # now the stronger one
    got = _tracks(edges, scores, 11, stitch_threshold=0.2, join_doubles=True)
    assert sorted(got) == [[0, 1, 2, 3, 8, 9, 10], [4, 5, 6, 7]]


def test_a_double_is_scored_by_its_weaker_crossing():
    # A -> B2 at 0.85 but B1 -> C at 0.3: the double through B2 scores 0.3, below a rival
    # diamond from A and B1 to the piece 8-9-10 (2 -> 8 and 3 -> 9 at 0.6), which B1 joins.
    edges = [*DOUBLE[0], (8, 9), (9, 10), (2, 8), (3, 9)]
    scores = [0.9, 0.9, 0.9, 0.85, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9, 0.6, 0.6]
    got = _tracks(edges, scores, 11, stitch_threshold=0.2, join_doubles=True)
    assert sorted(got) == [[0, 1, 2, 3, 8, 9, 10], [4, 5, 6, 7]]


def test_doubles_join_the_ends_of_the_stitched_pieces():
    # The piece 8-9-10 stitched to 0-1-2-3 (3 -> 8 at 0.5): hit 3 ends no piece any more, so
    # no double joins it to B2's piece too (one hit, two successors: three particles merged).
    edges = [*DOUBLE[0], (8, 9), (9, 10), (3, 8)]
    scores = [*DOUBLE[1], 0.9, 0.9, 0.5]
    got = _tracks(edges, scores, 11, stitch_threshold=0.2, join_doubles=True)
    assert sorted(got) == [[0, 1, 2, 3, 8, 9, 10], [4, 5, 6, 7]]


def test_a_double_joins_only_where_b2_starts_a_piece():
    # B2 = 4 has a kept predecessor, 8 (at r 3.5): it starts no piece, so no double.
    edges = np.array([*DOUBLE[0], (8, 4)]).T.copy()
    scores = np.array([*DOUBLE[1], 0.95])
    r = np.array([0, 1, 2, 3, 4, 5, 6, 7, 3.5])
    cfg = TrackConfig(stitch_threshold=0.2, join_doubles=True)
    offsets, hits = build_tracks(edges, scores, r, threshold=0.6, config=cfg)
    got = [hits[a:b].tolist() for a, b in itertools.pairwise(offsets)]
    assert got == [[0, 1, 2, 3], [8, 4, 5, 6, 7]]


def _pieces(edges: Array, scores: Array, n: int) -> tuple[Array, Array]:
    """The kept edges and labels join_doubles takes in the chain: junctions at 0.6, then
    stitching at 0.1 (labels of the junctions' pieces)."""
    kept = resolve_junctions(edges, scores, 0.6)
    labels = components_scipy(kept, n)
    stitched = stitch_edges(edges, scores, kept, labels, 0.1)
    return np.concatenate([kept, edges[:, stitched]], axis=1), labels


@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_host_kernels_join_doubles_as_the_arrays(host_launcher, small_events, det, threshold):
    """track_building.cu's doubles kernels, built for the host, take the arrays' pairs in
    their order: on a real event's graph scored at random, on 300 diamonds with edges between
    them at random and ties, on the diamonds above, where no edge is a second crossing, and
    where one is there twice (the first one counts, as the arrays' look-up finds it)."""
    rng = np.random.default_rng(8)
    event = batch_graph(small_events[:1], det)
    # 300 particles of 8 hits (DOUBLE's diamond) and 1,000 edges between them at random,
    # scored 0.625, 0.75 or 0.875.
    diamonds = np.concatenate([np.array(DOUBLE[0]).T + 8 * k for k in range(300)], axis=1)
    graph = np.sort(rng.integers(0, 2400, size=(2, 1000)), axis=0)
    graph = np.unique(np.concatenate([diamonds, graph[:, graph[0] != graph[1]]], 1), axis=1)
    with_rival = [*DOUBLE[0], (8, 9), (9, 10), (2, 8), (3, 9)]
    dup_scores = [0.9, 0.9, 0.9, 0.875, 0.875, 0.9, 0.9, 0.9, 0.9, 0.9, 0.85, 0.85, 0.5]
    cases = [
        (event.edge_index, rng.random(event.num_edges, dtype=np.float32), event.num_nodes),
        (graph, (rng.integers(5, 8, graph.shape[1]) / 8).astype(np.float32), 2400),  # ties
        (np.array(with_rival).T, np.array([*DOUBLE[1], 0.9, 0.9, 0.85, 0.85], np.float32), 11),
        (np.array(DOUBLE[0][:4]).T, np.array(DOUBLE[1][:4], np.float32), 8),  # no B1 -> C
        # B1 -> C twice: the first one's score counts (0.875 against the rival's 0.85)
        (np.array([*with_rival, (3, 5)]).T, np.array(dup_scores, np.float32), 11),
    ]
    pairs = []
    for edges, scores, n in cases:
        kept, labels = _pieces(edges, scores, n)
        want = join_doubles(edges, scores, kept, labels, threshold)
        got = doubles_kernels(edges, scores, kept, labels, threshold, host_launcher(KERNELS))
        assert got.dtype == want.dtype and np.array_equal(got, want)
        pairs.append(want.tolist())
    assert len(pairs[0][0]) > 20 and len(pairs[1][0]) > 40
    assert pairs[2:] == [[[3], [8]], [[], []], [[3], [4]]]


def test_joining_doubles_needs_the_stitch_threshold():
    with pytest.raises(ValueError, match="join_doubles must be false without a stitch_threshold"):
        TrackConfig(join_doubles=True)


def test_stitching_does_not_join_two_particles():
    # Particle A: 0-1-2-3 and 4-5-6-7 split at 3 -> 4 (0.45). Particle B ends at 10
    # (8-9-10) and has a weak chance edge 10 -> 4 (0.25), and A's end has a chance edge to
    # B's start (3 -> 8 is impossible: 8 is inner), to B's middle (3 -> 9: not a start).
    edges = SPLIT[0] + [(8, 9), (9, 10), (10, 4), (3, 9), (2, 4)]
    scores = [*SPLIT[1][:3], 0.45, *SPLIT[1][4:], 0.9, 0.9, 0.25, 0.5, 0.55]
    got = _tracks(edges, scores, 11, stitch_threshold=0.2)
    assert sorted(got) == [list(range(8)), [8, 9, 10]]
    # Edges that start inside a piece (2 -> 4) or end inside one (3 -> 9) are never taken,
    # so a piece never branches: every hit keeps at most one edge in and one out.
    assert sorted(_tracks(edges, scores, 11, stitch_threshold=0.5)) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10],
    ]


def test_stitching_takes_the_mutual_best_piece_end():
    # Pieces A = 0-1-2 and B = 3-4-5 both end next to C = 6-7-8 (edges 2->6 0.3, 5->6 0.5):
    # C's first hit takes B, its best; A stays alone.
    edges = [(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (2, 6), (5, 6)]
    scores = [0.9] * 6 + [0.3, 0.5]
    assert sorted(_tracks(edges, scores, 9, stitch_threshold=0.2)) == [
        [0, 1, 2],
        [3, 4, 5, 6, 7, 8],
    ]


def test_min_hits_and_mean_score_drop_tracks():
    edges = [(0, 1), (1, 2), (3, 4), (4, 5), (5, 6), (7, 8), (8, 9), (9, 10), (10, 11)]
    scores = [0.9, 0.9, 0.9, 0.9, 0.9, 0.65, 0.7, 0.65, 0.7]
    assert len(_tracks(edges, scores, 12)) == 3
    assert _tracks(edges, scores, 12, min_hits=4) == [[3, 4, 5, 6], [7, 8, 9, 10, 11]]
    assert _tracks(edges, scores, 12, min_mean_score=0.8) == [[0, 1, 2], [3, 4, 5, 6]]
    # Stitched edges count in the mean: 6 x 0.9 and the stitch 0.4 over 7 edges is 0.83.
    assert _tracks(*SPLIT, 8, stitch_threshold=0.2, min_mean_score=0.8) == [list(range(8))]
    # A join over a layer's two hits is no edge: the mean is of the 6 edges kept, 0.9 (not
    # 5.4 over 7, the joined track's hits less one)
    joined = _tracks(*DOUBLE, 8, stitch_threshold=0.2, join_doubles=True, min_mean_score=0.85)
    assert joined == [list(range(8))]
    # A mean exactly at the setting is not above it: dropped.
    edges, scores = [(0, 1), (1, 2), (3, 4), (4, 5)], [0.75, 0.75, 0.875, 0.75]
    assert _tracks(edges, scores, 6, min_mean_score=0.75) == [[3, 4, 5]]
    # any setting above 0 applies, also one at or below 0.5 (edge threshold 0.3 here)
    weak = np.array([[0, 1], [1, 2]]), np.array([0.4, 0.4]), np.arange(3.0)
    cut = build_tracks(*weak, threshold=0.3, config=TrackConfig(min_mean_score=0.5))
    kept = build_tracks(*weak, threshold=0.3, config=TrackConfig(min_mean_score=0.3))
    assert cut[0].tolist() == [0] and kept[1].tolist() == [0, 1, 2]


def test_stitching_never_joins_a_piece_to_itself():
    """A piece's last hit back to its own first hit, directly or through a free hit, is no
    stitch (the graph's edges run outwards, so only a malformed graph offers one)."""
    edges = np.array([[0, 1, 2, 2, 9], [1, 2, 0, 9, 0]])
    scores = np.array([0.9, 0.9, 0.8, 0.8, 0.8])
    kept = edges[:, :2]  # the piece 0-1-2; hit 9 is in no piece
    labels = components_scipy(kept, 10)
    assert len(stitch_edges(edges, scores, kept, labels, 0.1)) == 0


def test_select_tracks_keeps_csr_and_params_aligned():
    """The kept tracks' hits and every parameter, of each dtype, in the parameters' order."""
    offsets = np.array([0, 3, 7, 9])
    hits = np.arange(9)
    params = {
        "pt": np.array([1.0, 2.0, 3.0], dtype=np.float32),
        "charge": np.array([1, -1, -1], dtype=np.int32),
        "eta": np.array([0.5, 0.6, 0.7], dtype=np.float32),
        "ndf": np.array([1, 3, 5], dtype=np.int32),
    }
    o, h, p = select_tracks(offsets, hits, params, np.array([True, False, True]))
    assert o.tolist() == [0, 3, 5] and h.tolist() == [0, 1, 2, 7, 8]
    assert list(p) == list(params)
    for k, v in params.items():
        assert p[k].dtype == v.dtype and p[k].tolist() == v[[0, 2]].tolist(), k


def test_stitching_on_random_graphs_keeps_chains():
    rng = np.random.default_rng(4)
    n = 3000
    edges = np.sort(rng.integers(0, n, size=(2, 6000)), axis=0)  # outwards, as in the graph
    edges = edges[:, edges[0] != edges[1]]
    scores = rng.random(int(edges.shape[1]))  # (an Any size picks random's float overload)
    kept = resolve_junctions(edges, scores, 0.6)
    extra = stitch_edges(edges, scores, kept, components_scipy(kept, n), 0.1)
    assert len(extra) > 50 and np.all(scores[extra] > 0.1)
    joined = np.concatenate([kept, edges[:, extra]], axis=1)
    for end in (0, 1):
        assert np.max(np.bincount(joined[end])) == 1
    # only piece ends meet: a stitched edge starts where a piece ends and ends where one starts
    assert not np.isin(edges[0, extra], kept[0]).any()
    assert not np.isin(edges[1, extra], kept[1]).any()


@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_host_kernels_stitch_as_the_arrays(host_launcher, small_events, det, threshold):
    """track_building.cu's stitching kernels, built for the host, take the arrays' edges
    (as a set: in index order) on a real event's graph scored at random, on a random graph
    with ties, and where a piece's end reaches its own start."""
    rng = np.random.default_rng(6)
    event = batch_graph(small_events[:1], det)
    graph = np.sort(rng.integers(0, 3000, size=(2, 6000)), axis=0)
    graph = graph[:, graph[0] != graph[1]]
    loop = np.array([[0, 1, 2, 2, 9], [1, 2, 0, 9, 0]])
    # Pieces 10-11, 12-13, 14-15 and free hit 0: from 11 a direct edge to 12 (the last
    # edge) ties with the bridge 11 -> 0 -> 14; the direct one comes first in the arrays'
    # list, so it wins.
    tie = np.array([[10, 12, 14, 11, 0, 11], [11, 13, 15, 0, 14, 12]])
    cases = [
        (event.edge_index, rng.random(event.num_edges, dtype=np.float32), event.num_nodes),
        (graph, (rng.integers(0, 8, graph.shape[1]) / 8).astype(np.float32), 3000),  # ties
        (loop, np.array([0.9, 0.9, 0.8, 0.8, 0.8], np.float32), 10),
        (tie, np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.5], np.float32), 16),
    ]
    taken = []
    for edges, scores, n in cases:
        kept = resolve_junctions(edges, scores, 0.6)
        if edges is loop:
            kept = loop[:, :2]
        labels = components_scipy(kept, n)
        want = stitch_edges(edges, scores, kept, labels, threshold)
        got = stitch_kernels(edges, scores, kept, labels, threshold, host_launcher(KERNELS))
        assert np.array_equal(got, np.sort(want))
        taken.append(want.tolist())
    assert len(taken[0]) > 100 and len(taken[1]) > 20 and taken[2] == [] and taken[3] == [5]


def test_merge_labels_equals_components_of_all_edges():
    rng = np.random.default_rng(5)
    n = 4000
    for k_old, k_new in [(0, 5), (2000, 0), (2500, 300), (1000, 3000)]:
        old = rng.integers(0, n, size=(2, k_old))
        new = rng.integers(0, n, size=(2, k_new))
        merged = merge_labels(components_scipy(old, n), new)
        assert np.array_equal(merged, components_scipy(np.concatenate([old, new], 1), n))


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("min_hits", 2),
        ("junction_passes", -1),
        ("short_hits", -1),
        ("min_mean_score", 1.5),
        ("min_mean_score", 1.0),  # no track's mean is above 1: every track dropped
        ("stitch_threshold", -0.1),
        ("max_chi2_ndf", 0.0),
        ("max_d0", -1.0),
        ("max_d0", 0.0),
        ("min_mean_score", -0.1),
        ("stitch_threshold", 1.5),
    ],
)
def test_settings_out_of_range_are_refused(setting, value):
    with pytest.raises(ValueError, match=f"TrackConfig.{setting} must be"):
        TrackConfig(**{setting: value})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("min_hits", 3),
        ("junction_passes", 0),
        ("short_hits", 0),
        ("min_mean_score", 0.0),
        ("min_mean_score", 0.999),
        ("stitch_threshold", 0.0),
        ("stitch_threshold", 1.0),
        ("max_chi2_ndf", 0.01),  # any value above 0
        ("max_d0", 0.01),
    ],
)
def test_settings_at_the_ends_of_their_range_are_accepted(setting, value):
    assert getattr(TrackConfig(**{setting: value}), setting) == value


@pytest.mark.parametrize("chi2_cut", [None, 2.7, 5.0])
@pytest.mark.parametrize("d0_cut", [None, 0.1, 1.0])
def test_host_kernel_cuts_as_the_arrays(host_launcher, chi2_cut, d0_cut):
    """``track_cuts`` (the kernel's host build) keeps the tracks the arrays keep, in the
    fit's dtypes: chi2 at, just under and just over max_chi2_ndf x ndf (of 5, and of 2.7,
    where a float32 product rounds otherwise); |d0| at the bound as
    a float32 (float32(0.1) is above 0.1, within it as the arrays compare), either side;
    NaNs; tracks long enough to pass whatever they hold."""
    rng = np.random.default_rng(11)
    n = 4000
    sizes = rng.integers(3, 8, n)
    ndf = (2 * sizes - 5).astype(np.int32)
    f32 = np.float32
    at = f32(5.0) * ndf.astype(f32)  # chi2 exactly at 5 per ndf (exact in float32)
    chi2 = rng.choice([0.5, 1.0, 2.0, 3.0], n).astype(f32) * ndf.astype(f32)
    chi2[::7] = at[::7]
    chi2[1::7] = np.nextafter(at[1::7], f32(np.inf))
    chi2[2::7] = np.nextafter(at[2::7], f32(0))
    near = (2.7 * ndf).astype(f32)  # 2.7 is no float32: the product's rounding shows
    chi2[5::11], chi2[6::11] = near[5::11], np.nextafter(near[6::11], f32(np.inf))
    chi2[7::11] = np.nextafter(near[7::11], f32(0))
    chi2[3::97] = np.nan
    d0 = rng.choice([f32(0.1), f32(1.0), f32(0.05), f32(2.0)], n) * rng.choice([-1, 1], n)
    d0 = d0.astype(f32)
    d0[4::7] = np.nextafter(f32(1.0), f32(2))
    d0[5::97] = np.nan
    params = {"chi2": chi2, "ndf": ndf, "d0": d0}
    for short_hits in (3, 5, 8):
        cfg = TrackConfig(short_hits=short_hits, max_chi2_ndf=chi2_cut, max_d0=d0_cut)
        want = fit_cuts(sizes, params, cfg)
        got = cuts_kernel(sizes, params, cfg, host_launcher(KERNELS))
        np.testing.assert_array_equal(got, want)
        assert 0 < want.sum() < n or (chi2_cut is None and d0_cut is None) or short_hits == 3
    # Settings of other types give the same mask (an int bound would make an int32
    # product, a float64 one a float64 comparison): np.float64(0.1) > float32(0.1) > 0.1
    if d0_cut is not None and chi2_cut is not None:
        cfg = TrackConfig(short_hits=8, max_chi2_ndf=chi2_cut, max_d0=d0_cut)
        typed = replace(cfg, max_chi2_ndf=np.float64(chi2_cut), max_d0=np.float64(d0_cut))
        np.testing.assert_array_equal(fit_cuts(sizes, params, typed), fit_cuts(sizes, params, cfg))
        huge = replace(cfg, max_chi2_ndf=10**9, max_d0=1e39)
        assert fit_cuts(sizes, params, huge).sum() == n - (np.isnan(chi2) | np.isnan(d0)).sum()


def test_fit_cuts_apply_to_short_tracks_only():
    sizes = np.array([3, 4, 5, 9])
    params = {
        "chi2": np.array([5.0, 1.0, 500.0, 500.0]),
        "ndf": 2 * sizes - 5,
        "d0": np.array([0.1, 3.0, 9.0, 9.0]),
    }
    assert fit_cuts(sizes, params, TrackConfig()).tolist() == [True] * 4
    cfg = TrackConfig(max_chi2_ndf=2.0)
    assert fit_cuts(sizes, params, cfg).tolist() == [False, True, True, True]
    cfg = TrackConfig(max_chi2_ndf=2.0, max_d0=1.0)
    assert fit_cuts(sizes, params, cfg).tolist() == [False, False, True, True]
    cfg = TrackConfig(short_hits=10, max_chi2_ndf=2.0)
    assert fit_cuts(sizes, params, cfg).tolist() == [False, True, False, False]
    # At the limit is within it: chi2/ndf 5 (3 hits, ndf 1) passes max_chi2_ndf = 5.
    one = {"chi2": np.array([5.0]), "ndf": np.array([1]), "d0": np.array([0.0])}
    assert fit_cuts(np.array([3]), one, TrackConfig(max_chi2_ndf=5.0)).tolist() == [True]
    # |d0| at max_d0 is within it, on either side of the beam
    two = {"chi2": np.zeros(2), "ndf": np.ones(2), "d0": np.array([-1.0, 1.0])}
    assert fit_cuts(np.array([3, 3]), two, TrackConfig(max_d0=1.0)).tolist() == [True, True]
    assert fit_cuts(np.array([3, 3]), two, TrackConfig(max_d0=0.99)).tolist() == [False, False]


def test_a_double_never_closes_a_piece_on_itself():
    """The piece 0-1-2-3 scores a diamond back onto its own first hit (2 -> 0 and 3 -> 1 at
    0.5): a pair (3, 0) of one component joins nothing, so it must not outscore B1's genuine
    double into the piece 4-5-6 (2 -> 4 and 3 -> 5 at 0.4), as the device kernel has it."""
    edges = [(0, 1), (1, 2), (2, 3), (2, 0), (3, 1), (4, 5), (5, 6), (2, 4), (3, 5)]
    scores = [0.9, 0.9, 0.9, 0.5, 0.5, 0.9, 0.9, 0.4, 0.4]
    got = _tracks(edges, scores, 7, stitch_threshold=0.2, join_doubles=True)
    assert got == [list(range(7))]


def test_build_tracks_runs_the_configured_junction_passes():
    """TrackConfig.junction_passes reaches build_tracks: hit 0 loses its best edge (0 -> 1,
    hit 1 prefers 3 -> 1) in pass 1; its next-best 0 -> 2 joins 2 -> 5 in pass 2 only, and
    no pass keeps no edge."""
    edges = [(0, 1), (0, 2), (3, 1), (1, 4), (2, 5)]
    scores = [0.9, 0.8, 0.95, 0.7, 0.9]
    assert _tracks(edges, scores, 6) == [[1, 3, 4]]
    assert _tracks(edges, scores, 6, junction_passes=2) == [[0, 2, 5], [1, 3, 4]]
    assert _tracks(edges, scores, 6, junction_passes=0) == []


def test_a_double_never_joins_a_hit_in_no_piece():
    """B2 must start a piece: the free hit 4, reached from A = 2 (2 -> 4 at 0.5) but
    leading nowhere, is no B2 of the piece 0-1-2-3's last hit, even where the look-up of
    its (missing) successor lands on the key of the edge 2 -> 4 itself."""
    edges = [(0, 1), (1, 2), (2, 3), (2, 4)]
    scores = [0.9, 0.9, 0.9, 0.5]
    got = _tracks(edges, scores, 5, stitch_threshold=0.2, join_doubles=True)
    assert got == [[0, 1, 2, 3]]


def test_junction_kernels_refuse_2_to_the_31_edges(host_launcher, little_memory):
    """Their codes' low 31 bits hold the edge: 2^31 edges are refused before anything is
    allocated."""
    many = 2**31  # read-only broadcast views: no memory for them
    e = np.broadcast_to(np.zeros((2, 1), np.int64), (2, many))
    s = np.broadcast_to(np.float32(0.9), (many,))
    with pytest.raises(ValueError, match="at most 2\\^31 - 1 edges, got 2147483648"):
        junction_kernels(e, s, 0.1, 1, 1, host_launcher(KERNELS))


def test_doubles_kernels_refuse_2_to_the_31_hits(host_launcher, little_memory):
    """A pair's key is B1 x n + B2: 2^31 hits are refused, whatever the edges' count, before
    anything is allocated."""
    many = 2**31  # a read-only broadcast view: no memory for them
    labels = np.broadcast_to(np.int64(0), (many,))
    e = np.array([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="at most 2\\^31 - 1 edges and hits, got 2 and 2147483648"):
        doubles_kernels(e, np.full(2, 0.9, np.float32), e, labels, 0.1, host_launcher(KERNELS))
