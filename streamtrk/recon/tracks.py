"""Track building from scored edges: threshold, junction resolution, stitching, components.

Every step is vectorised over all edges of a batch and runs on NumPy or CuPy arrays. Each
hit keeps at most its best outgoing and its best incoming edge (an edge survives when it is
the best of both of its ends), so what remains is a set of chains; their connected
components are the track pieces. Pieces of one particle cut by a weak segment are then
joined end to end over weaker edges that are the best at both piece ends (stitching), pieces
cut at a particle's two hits on one layer (overlapping modules) are joined where the graph
holds both crossings between them (``join_doubles``), and short or weak tracks are cut
(``TrackConfig``). Components come from min-label propagation with pointer jumping on both
devices, labelled by their smallest hit index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtrk.recon.kernels import Launch, contiguous, cupy_launcher
from streamtrk.xp import (
    Array,
    array_module,
    bincount,
    compact,
    csr_rows,
    index_of,
    lexsort,
    nonzeros,
    scatter_min,
    to_host,
)

KERNELS = "track_building.cu"  # track building's and the track cuts' kernels on the GPU


def _by_key_then_score(key: Array, s: Array, xp: Any) -> tuple[Array, Array]:
    """Order of the entries by ``key``, best score first within a key (ties: first index),
    and in that order, whether an entry is its key's first (best)."""
    order = lexsort((-s, key))  # stable: ties keep their order
    first = xp.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order, first


def _best_per(key: Array, s: Array, xp: Any) -> Array:
    """Indices of the best-scored entry for each distinct ``key``, in key order."""
    if len(key) == 0:
        return xp.zeros(0, dtype=xp.int64)
    order, first = _by_key_then_score(key, s, xp)
    return order[first]


def _mutual_best(e: Array, s: Array, n_nodes: int, xp: Any) -> Array:
    """Mask of the edges (between nodes below ``n_nodes``; scores ``s`` compared as float32,
    the scorers' dtype, not NaN) that are the best-scored one at both of their ends, ties to
    the first edge: per end, a scatter-min of a code ordered as (score descending, index),
    the score's rank as an integer above the index (no sort; the device's kernels,
    :func:`junction_kernels` and :func:`stitch_kernels`, make the same codes)."""
    if e.shape[1] >= 2**31:  # refused before anything is allocated
        raise ValueError(f"at most 2^31 - 1 edges, got {e.shape[1]}")
    if e.shape[1] == 0:
        return xp.ones(0, dtype=bool)
    best = xp.ones(e.shape[1], dtype=bool)
    code = ((2**32 - 1 - _float32_rank(s, xp)) << 31) | xp.arange(e.shape[1], dtype=xp.int64)
    for end in (0, 1):  # best outgoing edge per source, best incoming per target
        low = xp.full(n_nodes, xp.iinfo(xp.int64).max, dtype=xp.int64)
        scatter_min(low, e[end], code)
        best &= low[e[end]] == code
    return best


def _float32_rank(s: Array, xp: Any) -> Array:
    """The rank of each value of ``s`` as float32 among floats, offset by 2^31 (int64; -0.0
    as 0.0): the kernels' ``score_rank``, from the bits (on the device, where CuPy compiles
    with -ftz=true, a float comparison would take subnormal scores as 0)."""
    bits = (s.astype(xp.float32) + xp.float32(0)).view(xp.int32)  # -0.0 as 0.0
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(xp.int64) + 2**31


def _threshold_rank(threshold: float) -> np.int64:
    """The kernels' rank of a score threshold (float32, as the scores): a score is above it
    when its rank is greater (a NaN threshold's rank is above every score's)."""
    if np.isnan(threshold):
        return np.int64(2**33)
    with np.errstate(over="ignore"):  # past float32's range: its infinity
        return np.int64(_float32_rank(np.array([threshold]), np)[0])


def _above(scores: Array, threshold: float, xp: Any) -> Array:
    """Indices of the scores above ``threshold``, compared as float32 (the scorers' dtype,
    and the kernels' comparison: a float64 score just above it may round to it)."""
    return xp.nonzero(scores.astype(xp.float32, copy=False) > float(threshold))[0]


def _junction_edges(
    edge_index: Array, scores: Array, threshold: float, passes: int, n_nodes: int
) -> Array:
    """Indices of the edges kept by :func:`resolve_junctions` (hits numbered below
    ``n_nodes``). On the device two kernels a pass (:func:`junction_kernels`)."""
    xp = array_module(edge_index)
    if xp is not np:
        return junction_kernels(
            edge_index, scores, threshold, passes, n_nodes, cupy_launcher(KERNELS)
        )
    idx = _above(scores, threshold, xp)
    e, s = edge_index[:, idx], scores[idx]
    if e.shape[1] == 0 or passes < 1:
        return idx[:0]
    chosen = xp.zeros(e.shape[1], dtype=bool)
    out_used, in_used = xp.zeros(n_nodes, dtype=bool), xp.zeros(n_nodes, dtype=bool)
    for _ in range(passes):
        free = xp.nonzero(~chosen & ~out_used[e[0]] & ~in_used[e[1]])[0]
        if len(free) == 0:
            break
        new = free[_mutual_best(e[:, free], s[free], n_nodes, xp)]
        chosen[new] = True
        out_used[e[0, new]] = True
        in_used[e[1, new]] = True
    return idx[chosen]


def junction_kernels(
    edge_index: Array, scores: Array, threshold: float, passes: int, n_nodes: int, launch: Launch
) -> Array:
    """:func:`_junction_edges` as two kernels a pass over all the edges
    (``track_building.cu``: those above ``threshold``, not chosen and with both ends free
    take part; scores compared as float32, the scorers' dtype) for the arrays' thirty-odd
    operations and two compactions a pass: the same edges, in index order. One host
    synchronisation (the result's size); every pass runs (the arrays stop at the first
    with no edge free, where the rest change nothing)."""
    xp, i64 = array_module(edge_index), np.int64
    n_edges = edge_index.shape[1]
    if n_edges >= 2**31:  # refused before anything is allocated
        raise ValueError(f"at most 2^31 - 1 edges, got {n_edges}")
    src, dst, score = contiguous(
        (*edge_index.astype(xp.int64, copy=False), scores.astype(xp.float32, copy=False)), xp
    )
    chosen, used = xp.zeros(n_edges, dtype=xp.uint8), xp.zeros((2, n_nodes), dtype=xp.uint8)
    code, rank = xp.empty(n_edges, dtype=xp.int64), _threshold_rank(threshold)
    for _ in range(passes if n_edges else 0):
        low = xp.full((2, n_nodes), np.iinfo(np.int64).max, dtype=xp.int64)  # out, in
        args = (i64(n_edges), src, dst, score, rank, chosen, *used, code, *low)
        launch("junction_codes", n_edges, args)
        launch("junction_take", n_edges, (i64(n_edges), src, dst, code, *low, chosen, *used))
    return xp.nonzero(chosen)[0]


def resolve_junctions(edge_index: Array, scores: Array, threshold: float, passes: int = 1) -> Array:
    """Edges (2, k) kept: above threshold and the best-scored edge at both of their ends.

    With ``passes`` > 1 the selection is repeated on the edges whose two ends are still free
    (a hit has at most one kept outgoing and one kept incoming edge): a chain that lost a
    junction continues on its next-best edge, like a greedy walk through the scored graph.
    """
    n_nodes = int(edge_index.max()) + 1 if edge_index.shape[1] else 0
    return edge_index[:, _junction_edges(edge_index, scores, threshold, passes, n_nodes)]


def stitch_edges(
    edge_index: Array, scores: Array, kept: Array, labels: Array, threshold: float
) -> Array:
    """Indices of the edges that join track pieces end to end (to add to ``kept``).

    A piece is a chain of ``kept`` edges (``labels``: its component per hit). Candidates are
    graph edges scored above ``threshold`` from a piece's last hit to another piece's first
    hit, and bridges through one hit in no piece: the best edge from a piece's last hit into
    that hit and its best edge out to another piece's first hit, scored by the weaker of the
    two. A candidate is taken when it is the best one at both of its piece ends (mutual best,
    as in :func:`resolve_junctions`), so every hit keeps at most one edge in and one out.
    """
    xp = array_module(edge_index)
    n = len(labels)
    if xp is not np:
        return stitch_kernels(edge_index, scores, kept, labels, threshold, cupy_launcher(KERNELS))
    out_deg = bincount(kept[0], n)
    in_deg = bincount(kept[1], n)
    piece = (out_deg + in_deg) > 0
    last = piece & (out_deg == 0)
    first = piece & (in_deg == 0)
    cand = _above(scores, threshold, xp)  # a few % of the graph: work on those only
    a, b, sc = edge_index[0, cand], edge_index[1, cand], scores[cand]
    direct = xp.nonzero(last[a] & first[b] & (labels[a] != labels[b]))[0]
    into = xp.nonzero(last[a] & ~piece[b])[0]
    into = into[_best_per(b[into], sc[into], xp)]  # per free hit, its best entry
    out = xp.nonzero(~piece[a] & first[b])[0]
    out = out[_best_per(a[out], sc[out], xp)]  # per free hit, its best exit
    has_in = xp.zeros(n, dtype=bool)
    has_in[b[into]] = True
    has_out = xp.zeros(n, dtype=bool)
    has_out[a[out]] = True
    # both lists are sorted by their free hit: keep the hits with both, aligned
    into, out = into[has_out[b[into]]], out[has_in[a[out]]]
    cross = labels[a[into]] != labels[b[out]]
    into, out = into[cross], out[cross]
    src = xp.concatenate([a[direct], a[into]])
    dst = xp.concatenate([b[direct], b[out]])
    s = xp.concatenate([sc[direct], xp.minimum(sc[into], sc[out])])
    take = _mutual_best(xp.stack([src, dst]), s, n, xp)
    nd = len(direct)
    take_direct, take_bridge = take[:nd], take[nd:]
    return cand[xp.concatenate([direct[take_direct], into[take_bridge], out[take_bridge]])]


def join_doubles(
    edge_index: Array, scores: Array, kept: Array, labels: Array, threshold: float
) -> Array:
    """Pairs (2, k) of hits that join track pieces over a particle's two hits on one layer
    (overlapping modules: A -> B1 -> B2 -> C). The graph never joins two hits of a layer, so
    when A's best edge is A -> B1 and C's best is B2 -> C the particle is two pieces, one
    ending at B1 and one starting at B2. A pair (B1, B2) of the last hit of a chain of
    ``kept`` edges and the first hit of another (of another component in ``labels``: with
    stitched edges in ``kept`` and ``labels`` from before them, a pair may close a loop of
    one stitched chain, which changes no component) is a candidate when the graph scores
    both crossings of that diamond above ``threshold``: from B1's predecessor to B2
    (A -> B2) and from B1 to B2's successor (B1 -> C); scored by the weaker. A candidate is
    taken when it is the best one at both of its ends (mutual best, as in
    :func:`stitch_edges`). ``kept`` gives each hit at most one edge in and one out (as the
    chain's junctions and stitching do). On the device five kernels
    (:func:`doubles_kernels`, scores compared as float32, the scorers' dtype)."""
    xp = array_module(edge_index)
    n = len(labels)
    if xp is not np:
        return doubles_kernels(edge_index, scores, kept, labels, threshold, cupy_launcher(KERNELS))
    none = xp.full(n, -1, dtype=xp.int64)
    pred, succ = none.copy(), none.copy()  # along the pieces (at most one edge each way)
    pred[kept[1]] = kept[0]
    succ[kept[0]] = kept[1]
    last = (pred >= 0) & (succ < 0)
    first = (succ >= 0) & (pred < 0)
    cand = _above(scores, threshold, xp)
    a, b = (edge_index[k, cand].astype(xp.int64) for k in (0, 1))
    sc = scores[cand]
    # A -> B2: A's successor B1 ends a piece, B2 starts another one ...
    succ_a = succ[a]
    b1 = xp.maximum(succ_a, 0)
    cross = xp.nonzero((succ_a >= 0) & first[b] & last[b1] & (labels[b1] != labels[b]))[0]
    end, start = succ_a[cross], b[cross]
    # ... and B1 -> C, C the successor of B2.
    at, found = index_of(a * n + b, end * n + succ[start])
    weaker = xp.where(found, xp.minimum(sc[cross], sc[at]), -xp.inf)  # none: never the best
    pairs = xp.stack([end, start])
    return pairs[:, found & _mutual_best(pairs, weaker, n, xp)]


def doubles_kernels(
    edge_index: Array, scores: Array, kept: Array, labels: Array, threshold: float, launch: Launch
) -> Array:
    """:func:`join_doubles` in five kernels (``track_building.cu``; the pieces' links over
    the kept edges, the rest over all the edges), for the arrays' seventy-odd operations:
    the diamonds' second crossings (B1 -> C) go into a hash table keyed by their pair, sized
    by their count; the first crossings (A -> B2) look their pair up there and choose by the
    same codes, scores compared as float32 (the scorers' dtype). The same pairs, in the same
    order (their first crossings'). Two host synchronisations (the count, the result's
    size) for the arrays' three."""
    xp, i64 = array_module(edge_index), np.int64
    n_edges, n = edge_index.shape[1], len(labels)
    if n_edges >= 2**31 or n >= 2**31:  # the codes' key (an edge), a pair's (B1 x n + B2)
        raise ValueError(f"at most 2^31 - 1 edges and hits, got {n_edges} and {n}")
    src, dst, score = contiguous(
        (*edge_index.astype(xp.int64, copy=False), scores.astype(xp.float32, copy=False)), xp
    )
    pred, succ = xp.full((2, n), -1, dtype=xp.int64)
    k_src, k_dst = contiguous(tuple(kept.astype(xp.int64, copy=False)), xp)
    launch("piece_links", len(k_src), (i64(len(k_src)), k_src, k_dst, pred, succ))
    labels = contiguous((labels.astype(xp.int64, copy=False),), xp)[0]
    rank = _threshold_rank(threshold)
    params = (i64(n_edges), src, dst, score, rank, pred, succ, labels, i64(n))
    count = xp.zeros(1, dtype=xp.uint64)
    launch("double_exit_count", n_edges, (*params, count))
    n_exits = int(to_host(count)[0])
    if n_exits == 0:
        return xp.zeros((2, 0), dtype=xp.int64)
    bits = i64((2 * n_exits - 1).bit_length())  # 2^bits slots, at most half of them taken
    keys = xp.full(2**bits, -1, dtype=xp.int64)
    exits = xp.full(2**bits, np.iinfo(np.int64).max, dtype=xp.int64)
    launch("double_exits", n_edges, (*params, bits, keys, exits))
    code = xp.empty(n_edges, dtype=xp.int64)
    low = xp.full((2, n), np.iinfo(np.int64).max, dtype=xp.int64)  # at B1, at B2
    launch("double_codes", n_edges, (*params, bits, keys, exits, code, *low))
    take = xp.zeros(n_edges, dtype=xp.uint8)
    launch("double_take", n_edges, (i64(n_edges), src, dst, succ, code, *low, take))
    first = xp.nonzero(take)[0]
    return xp.stack([succ[src[first]], dst[first]])


def stitch_kernels(
    edge_index: Array, scores: Array, kept: Array, labels: Array, threshold: float, launch: Launch
) -> Array:
    """:func:`stitch_edges` in four kernels (``track_building.cu``), over all the edges
    (those above ``threshold`` take part, their index the arrays' order: no list is made
    but the result), scores compared as float32 (the scorers' dtype). The same edges, in
    index order (the arrays give the direct ones, then the bridges' entries, then their
    exits: an order nothing downstream reads). One host synchronisation (the result's
    size) for the arrays' seven."""
    xp, i64 = array_module(edge_index), np.int64
    n_edges, n = edge_index.shape[1], len(labels)
    if n_edges + n >= 2**31:  # keys of the codes: an edge, or n_edges + a hit
        raise ValueError(f"at most 2^31 - 1 edges and hits, got {n_edges} and {n}")
    src, dst, score = contiguous(
        (*edge_index.astype(xp.int64, copy=False), scores.astype(xp.float32, copy=False)), xp
    )
    ends = xp.zeros((2, n), dtype=xp.uint8)  # has_out, has_in
    k_src, k_dst = contiguous(tuple(kept.astype(xp.int64, copy=False)), xp)
    launch("piece_ends", len(k_src), (i64(len(k_src)), k_src, k_dst, *ends))
    stitch = (i64(n_edges), src, dst, score, _threshold_rank(threshold), *ends)
    free_ends = xp.full((2, n), np.iinfo(np.int64).max, dtype=xp.int64)  # into, out
    launch("stitch_ends", n_edges, (*stitch, *free_ends))
    codes = xp.empty((2, n_edges), dtype=xp.int64)  # direct, bridge
    low = xp.full((2, n), np.iinfo(np.int64).max, dtype=xp.int64)  # at sources, at targets
    labels = contiguous((labels.astype(xp.int64, copy=False),), xp)[0]
    launch("stitch_candidates", n_edges, (*stitch, labels, *free_ends, *codes, *low))
    take = xp.zeros(n_edges, dtype=xp.uint8)
    launch("stitch_take", n_edges, (i64(n_edges), src, dst, free_ends[1], *codes, *low, take))
    return xp.nonzero(take)[0]


def merge_labels(labels: Array, edges: Array) -> Array:
    """Canonical component labels after adding ``edges`` (2, k) to the components ``labels``
    (canonical: each hit's component's smallest hit, as :func:`components_label_propagation`
    gives them): the components of the labels the new edges join (a graph over the labels),
    looked up for every hit."""
    if edges.shape[1] == 0:
        return labels
    return components_label_propagation(labels[edges], len(labels))[labels]


#: Label propagation checks for convergence every this many iterations: each check is a host
#: synchronisation on the device, and iterations past convergence change nothing (the track
#: chains of a MU=200 event converge in 8).
_CHECK_EVERY = 4


def components_label_propagation(edge_index: Array, n_nodes: int, max_iter: int = 1000) -> Array:
    """Connected components (NumPy or CuPy), each labelled by its smallest node. Nodes
    without edges are their own. Min-label propagation with pointer jumping: on NumPy over
    the nodes the edges touch (a few % of a track graph's hits), on the device over all of
    them, one kernel an iteration over the edges (:func:`propagation_kernel`). Its
    iterations grow with the components' length where the nodes' numbers are scrambled along
    it (544 for a chain of 1,000 randomly numbered hits; 8 where they ascend or descend
    along it): fine for track chains, a few dozen
    hits; ``max_iter`` bounds them (RuntimeError)."""
    xp = array_module(edge_index)
    labels = xp.arange(n_nodes, dtype=xp.int64)
    if edge_index.shape[1] == 0:
        return labels
    if xp is not np:
        return propagation_kernel(edge_index, n_nodes, max_iter, cupy_launcher(KERNELS))
    touched = xp.zeros(n_nodes, dtype=bool)
    touched[edge_index[0]] = True
    touched[edge_index[1]] = True
    nodes = xp.nonzero(touched)[0]  # ascending: the smallest local label is the smallest node
    local = xp.empty(n_nodes, dtype=xp.int64)
    local[nodes] = xp.arange(len(nodes))
    step = array_step(local[edge_index])
    labels[nodes] = nodes[iterate_labels(step, len(nodes), max_iter, xp)]
    return labels


def _checked(i: int, max_iter: int) -> bool:
    """Whether label propagation checks for convergence after iteration ``i`` (from 1)."""
    return i % _CHECK_EVERY == 0 or i == max_iter


def _not_converged(max_iter: int) -> RuntimeError:
    return RuntimeError(f"label propagation did not converge in {max_iter} iterations")


def iterate_labels(step: Callable[[Array], Array], n_nodes: int, max_iter: int, xp: Any) -> Array:
    """``step`` from each node's own label until the labels stop changing (checked every
    ``_CHECK_EVERY`` iterations and at the last). RuntimeError past ``max_iter``."""
    labels = xp.arange(n_nodes, dtype=xp.int64)
    for i in range(1, max_iter + 1):
        new = step(labels)
        if _checked(i, max_iter) and bool((new == labels).all()):
            return labels
        labels = new
    raise _not_converged(max_iter)


def array_step(edge_index: Array) -> Callable[[Array], Array]:
    """An iteration in array operations: each edge's ends take the smaller label of the two,
    then every label its label's label, twice (new arrays each time)."""
    xp = array_module(edge_index)
    a, b = edge_index[0], edge_index[1]

    def step(labels: Array) -> Array:
        low = xp.minimum(labels[a], labels[b])
        new = labels.copy()
        scatter_min(new, a, low)
        scatter_min(new, b, low)
        new = new[new]  # pointer jumping: follow labels to their labels
        return new[new]

    return step


def propagation_kernel(edge_index: Array, n_nodes: int, max_iter: int, launch: Launch) -> Array:
    """:func:`components_label_propagation`'s labels as one kernel an iteration
    (``propagate_labels``: over the edges, in place, each end taking the smaller label of
    the two, then its label's label's label), until an iteration checked (as
    :func:`iterate_labels` checks) lowers no label: one host synchronisation a check, a
    flag the kernel sets. The arrays' fixed point; the iterations to reach it may differ.
    RuntimeError past ``max_iter``."""
    xp, i64 = array_module(edge_index), np.int64
    n_edges = edge_index.shape[1]
    a, b = contiguous(tuple(e.astype(xp.int64, copy=False) for e in edge_index), xp)
    labels = xp.arange(n_nodes, dtype=xp.int64)
    changed = xp.zeros(max_iter // _CHECK_EVERY + 2, dtype=xp.int32)  # a flag a check; 0: none
    checks = 0
    for i in range(1, max_iter + 1):
        checked = _checked(i, max_iter)
        checks += checked
        flag = changed[checks:][:1] if checked else changed[:1]
        launch("propagate_labels", n_edges, (i64(n_edges), a, b, labels, flag))
        if checked and int(flag[0]) == 0:
            return labels
    raise _not_converged(max_iter)


@dataclass(frozen=True)
class TrackConfig:
    """Track-building settings past the edge-score threshold (chosen on validation events
    with ``bench/track_building.py``; the defaults are the plain chain: no stitching, no cut).

    - ``junction_passes``: rounds of mutual-best junction resolution (see resolve_junctions).
    - ``stitch_threshold``: join pieces end to end over edges (or one-hit bridges) scored
      above it (see stitch_edges); None: no stitching.
    - ``join_doubles``: then join pieces over a particle's two hits on one layer, where
      both crossings of the diamond score above ``stitch_threshold`` (see join_doubles).
    - ``min_hits``: shortest track kept.
    - ``min_mean_score``: tracks whose edges' mean score is not above it are dropped (0:
      none is, as every edge a track keeps scores above the threshold or the stitching's,
      so above 0; below 1, as no mean is above 1).
    - ``short_hits``, ``max_chi2_ndf``, ``max_d0``: after the fit, tracks with fewer than
      ``short_hits`` hits are dropped when chi2/ndf > ``max_chi2_ndf`` or |d0| > ``max_d0``
      (mm), each cut when set (see fit_cuts). Chance chains are short and do not point back
      to the beam line; long tracks are left alone (a wrong hit raises their chi2 too).
    """

    junction_passes: int = 1
    stitch_threshold: float | None = None
    join_doubles: bool = False
    min_hits: int = 3
    min_mean_score: float = 0.0
    short_hits: int = 5
    max_chi2_ndf: float | None = None
    max_d0: float | None = None

    def __post_init__(self) -> None:
        """ValueError naming the first setting out of range (a helix needs 3 hits: shorter
        tracks would have no fit, ndf = 2 x hits - 5 below 1)."""
        checks = [
            ("junction_passes", self.junction_passes >= 0, ">= 0"),
            ("min_hits", self.min_hits >= 3, ">= 3"),
            ("short_hits", self.short_hits >= 0, ">= 0"),
            (
                "min_mean_score",
                0.0 <= self.min_mean_score < 1.0,
                "in [0, 1) (scores are at most 1: no track's mean is above 1)",
            ),
            (
                "stitch_threshold",
                self.stitch_threshold is None or 0.0 <= self.stitch_threshold <= 1.0,
                "in [0, 1]",
            ),
            (
                "join_doubles",
                not self.join_doubles or self.stitch_threshold is not None,
                "false without a stitch_threshold (its edges score above that)",
            ),
            ("max_chi2_ndf", self.max_chi2_ndf is None or self.max_chi2_ndf > 0, "> 0"),
            ("max_d0", self.max_d0 is None or self.max_d0 > 0, "> 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"TrackConfig.{name} must be {rule}, got {getattr(self, name)}")


def fit_cuts(sizes: Array, params: dict[str, Array], config: TrackConfig) -> Array:
    """Mask of the tracks kept by the fit cuts of ``config`` (see TrackConfig); on the device
    one kernel (:func:`cuts_kernel`)."""
    xp = array_module(sizes)
    if xp is not np:
        return cuts_kernel(sizes, params, config, cupy_launcher(KERNELS))
    keep = xp.ones(len(sizes), dtype=bool)
    short = sizes < config.short_hits
    # The bounds' dtypes whatever the settings' types: chi2 against a float64 product,
    # |d0| against the bound rounded to a float32 (inf past the float32 range)
    if config.max_chi2_ndf is not None:
        keep &= ~short | (params["chi2"] <= float(config.max_chi2_ndf) * params["ndf"])
    if config.max_d0 is not None:
        with np.errstate(over="ignore"):
            max_d0 = np.float32(config.max_d0)
        keep &= ~short | (xp.abs(params["d0"]) <= max_d0)
    return keep


def cuts_kernel(
    sizes: Array, params: dict[str, Array], config: TrackConfig, launch: Launch
) -> Array:
    """:func:`fit_cuts` as one kernel (``track_cuts``), a thread per track, for the arrays'
    dozen operations: the same mask."""
    xp, n = array_module(sizes), len(sizes)
    keep = xp.empty(n, dtype=bool)
    chi2_on, d0_on = config.max_chi2_ndf is not None, config.max_d0 is not None
    columns = (
        sizes.astype(xp.int64, copy=False),
        params["chi2"].astype(xp.float32, copy=False),
        params["ndf"].astype(xp.int32, copy=False),
        params["d0"].astype(xp.float32, copy=False),
    )
    cuts = (
        np.int64(config.short_hits),
        np.int64(chi2_on),
        np.float64(config.max_chi2_ndf if chi2_on else 0.0),
        np.int64(d0_on),
        np.float64(config.max_d0 if d0_on else 0.0),
    )
    launch("track_cuts", n, (np.int64(n), *contiguous(columns, xp), *cuts, keep))
    return keep


def build_tracks(
    edge_index: Array,
    scores: Array,
    r: Array,
    *,
    threshold: float = 0.5,
    config: TrackConfig = TrackConfig(),
) -> tuple[Array, Array]:
    """Track candidates of a batch as CSR ``(offsets, hit_index)``, batch hit numbering.

    Edges above ``threshold`` resolved at junctions, pieces stitched and joined over a
    layer's two hits (``config``), connected components. Hits of a track are ordered by
    radius (edges point outwards, so chains do too). A hit belongs to at most one track;
    tracks have at least ``config.min_hits`` hits and a mean edge score above
    ``config.min_mean_score``; tracks are ordered by their smallest hit index (not their
    innermost hit's), so the tracks of one event are contiguous.
    """
    xp = array_module(edge_index)
    n = int(r.shape[0])
    idx = _junction_edges(edge_index, scores, threshold, config.junction_passes, n)
    labels = components_label_propagation(edge_index[:, idx], n)
    if config.stitch_threshold is not None:
        extra = stitch_edges(
            edge_index, scores, edge_index[:, idx], labels, config.stitch_threshold
        )
        joins = edge_index[:, extra]
        idx = xp.concatenate([idx, extra])
        if config.join_doubles:  # at the stitched pieces' ends; one merge of the labels
            doubles = join_doubles(
                edge_index, scores, edge_index[:, idx], labels, config.stitch_threshold
            )
            joins = xp.concatenate([joins, doubles], axis=1)
        labels = merge_labels(labels, joins)
    kept, kept_scores = edge_index[:, idx], scores[idx]
    size = bincount(labels, n)
    good = size >= config.min_hits
    if config.min_mean_score > 0:  # over the track's edges (a join of doubles is none)
        track_of_edge = labels[kept[0]]
        score_sum = bincount(track_of_edge, n, kept_scores)
        n_edges = bincount(track_of_edge, n)
        good &= score_sum > config.min_mean_score * xp.maximum(n_edges, 1)
    on_track = good[labels]
    # A component's label is its smallest hit: the tracks are the good labels' own hits,
    # counted with the hits on them (one host synchronisation for both).
    own = good & (labels == xp.arange(n))
    n_hits, n_tracks = (int(c) for c in to_host(xp.stack([on_track.sum(), own.sum()])))
    hits = compact(on_track, n_hits)
    order = hits[lexsort((r[hits], labels[hits]))]
    return _csr(labels[order], n_tracks, xp), order


def _csr(group: Array, runs: int, xp: Any) -> Array:
    """CSR offsets of the ``runs`` consecutive runs of equal ``group`` values."""
    first = xp.ones(len(group), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    starts = compact(first, runs)
    return xp.concatenate([starts, xp.asarray([len(group)])]).astype(xp.int64)


def select_tracks(
    offsets: Array, hit_index: Array, params: dict[str, Array], keep: Array
) -> tuple[Array, Array, dict[str, Array]]:
    """The CSR tracks (and their parameters) where ``keep`` is true, order preserved. One
    host synchronisation on the device (the kept tracks' and hits' counts); the parameters
    gathered a dtype at a time (two gathers for the fit's seventeen columns)."""
    xp = array_module(offsets)
    sizes = offsets[1:] - offsets[:-1]
    tid = csr_rows(offsets, len(hit_index))
    kept, kept_hits = nonzeros(keep, keep[tid])
    new_offsets = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(sizes[kept])])
    taken: dict[str, Array] = {}
    for dtype in dict.fromkeys(v.dtype for v in params.values()):
        names = [k for k, v in params.items() if v.dtype == dtype]
        taken |= zip(names, xp.stack([params[k] for k in names])[:, kept], strict=True)
    return (
        new_offsets.astype(xp.int64),
        hit_index[kept_hits],
        {k: taken[k] for k in params},
    )


def split_by_event(
    offsets: Array, hit_index: Array, params: dict[str, Array], node_offsets: np.ndarray
) -> list[tuple[Array, Array, dict[str, Array]]]:
    """Split batch CSR tracks (and their parameters) into per-event ones, local numbering."""
    xp = array_module(offsets)
    first_hit = hit_index[offsets[:-1]]
    track_event = xp.searchsorted(xp.asarray(node_offsets[1:]), first_hit, side="right")
    bounds = xp.searchsorted(track_event, xp.arange(len(node_offsets)), side="left").tolist()
    out = []
    for k in range(len(node_offsets) - 1):
        t0, t1 = bounds[k], bounds[k + 1]
        off = offsets[t0 : t1 + 1]
        hits = hit_index[int(off[0]) : int(off[-1])] - int(node_offsets[k])
        out.append((off - off[0], hits, {name: v[t0:t1] for name, v in params.items()}))
    return out
