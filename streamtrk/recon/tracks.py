"""Track building from scored edges: threshold, junction resolution, connected components.

Every step is vectorised over all edges of a batch and runs on NumPy or CuPy arrays. Each
hit keeps at most its best outgoing and its best incoming edge (an edge survives when it is
the best of both of its ends), so what remains is a set of chains; their connected
components are the track candidates. Components come from SciPy on the CPU and from a
label-propagation kernel (min-label propagation with pointer jumping) on the GPU; both are
returned in the same canonical form, labelled by their smallest hit index.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamtrk.xp import Array, array_module


def _mutual_best(e: Array, s: Array, xp: Any) -> Array:
    """Mask of the edges that are the best-scored one at both of their ends."""
    idx = xp.arange(e.shape[1])
    best = xp.ones(e.shape[1], dtype=bool)
    for end in (0, 1):  # best outgoing edge per source, best incoming per target
        order = xp.lexsort(xp.stack([idx, -s, e[end]]))
        first = xp.ones(len(order), dtype=bool)
        first[1:] = e[end][order][1:] != e[end][order][:-1]
        is_best = xp.zeros(e.shape[1], dtype=bool)
        is_best[order[first]] = True
        best &= is_best
    return best


def resolve_junctions(edge_index: Array, scores: Array, threshold: float, passes: int = 1) -> Array:
    """Edges (2, k) kept: above threshold and the best-scored edge at both of their ends.

    With ``passes`` > 1 the selection is repeated on the edges whose two ends are still free
    (a hit has at most one kept outgoing and one kept incoming edge): a chain that lost a
    junction continues on its next-best edge, like a greedy walk through the scored graph.
    """
    xp = array_module(edge_index)
    keep = scores > threshold
    e, s = edge_index[:, keep], scores[keep]
    if e.shape[1] == 0 or passes < 1:
        return e[:, :0]
    n = int(e.max()) + 1
    chosen = xp.zeros(e.shape[1], dtype=bool)
    out_used, in_used = xp.zeros(n, dtype=bool), xp.zeros(n, dtype=bool)
    for _ in range(passes):
        free = xp.nonzero(~chosen & ~out_used[e[0]] & ~in_used[e[1]])[0]
        if len(free) == 0:
            break
        new = free[_mutual_best(e[:, free], s[free], xp)]
        chosen[new] = True
        out_used[e[0, new]] = True
        in_used[e[1, new]] = True
    return e[:, chosen]


def _canonical(labels: Array, xp: Any) -> Array:
    """Relabel components by their smallest member index."""
    n = len(labels)
    order = xp.lexsort(xp.stack([xp.arange(n), labels]))
    first = xp.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    group = xp.cumsum(first) - 1
    root = order[first]
    out = xp.empty(n, dtype=xp.int64)
    out[order] = root[group]
    return out


def components_scipy(edge_index: np.ndarray, n_nodes: int) -> np.ndarray:
    """Connected components with SciPy, labelled by smallest member index."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ones = np.ones(edge_index.shape[1], dtype=np.int8)
    adj = coo_matrix((ones, (edge_index[0], edge_index[1])), shape=(n_nodes, n_nodes))
    _, labels = connected_components(adj, directed=False)
    return _canonical(labels.astype(np.int64), np)


def _scatter_min(xp: Any, target: Array, idx: Array, values: Array) -> None:
    if xp is np:
        np.minimum.at(target, idx, values)
    else:
        import cupyx

        cupyx.scatter_min(target, idx, values)


def components_label_propagation(edge_index: Array, n_nodes: int, max_iter: int = 1000) -> Array:
    """Connected components by min-label propagation with pointer jumping (NumPy or CuPy)."""
    xp = array_module(edge_index)
    labels = xp.arange(n_nodes, dtype=xp.int64)
    a, b = edge_index[0], edge_index[1]
    for _ in range(max_iter):
        low = xp.minimum(labels[a], labels[b])
        new = labels.copy()
        _scatter_min(xp, new, a, low)
        _scatter_min(xp, new, b, low)
        new = new[new]  # pointer jumping: follow labels to their labels
        new = new[new]
        if bool((new == labels).all()):
            return labels
        labels = new
    raise RuntimeError(f"label propagation did not converge in {max_iter} iterations")


def build_tracks(
    edge_index: Array,
    scores: Array,
    r: Array,
    *,
    threshold: float = 0.5,
    min_hits: int = 3,
    junction_passes: int = 1,
) -> tuple[Array, Array]:
    """Track candidates of a batch as CSR ``(offsets, hit_index)``, batch hit numbering.

    Hits of a track are ordered by radius (edges point outwards, so chains do too). A hit
    belongs to at most one track; tracks have at least ``min_hits`` hits; tracks are
    ordered by their first hit, so the tracks of one event are contiguous.
    """
    xp = array_module(edge_index)
    n = int(r.shape[0])
    kept = resolve_junctions(edge_index, scores, threshold, junction_passes)
    if xp is np:
        labels = components_scipy(kept, n)
    else:
        labels = components_label_propagation(kept, n)
    size = xp.bincount(labels, minlength=n)
    in_track = size[labels] >= min_hits
    hits = xp.nonzero(in_track)[0]
    order = hits[xp.lexsort(xp.stack([r[hits], labels[hits]]))]
    lab = labels[order]
    first = xp.ones(len(order), dtype=bool)
    first[1:] = lab[1:] != lab[:-1]
    starts = xp.nonzero(first)[0]
    offsets = xp.concatenate([starts, xp.asarray([len(order)])]).astype(xp.int64)
    return offsets, order


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
