"""Shape buckets: graphs padded to a few fixed sizes so that compiled code is reused.

A batched graph of ``n`` hits and ``e`` edges is padded to the smallest edge bucket at or
above ``e`` and the smallest node bucket that leaves a padding hit for every
``PAD_EDGES_PER_HIT`` padding edges (one at least). Padding hits have zero features; padding
edges are self-loops spread over the padding hits (not all on a few: their sums would pile
onto one row, serialising a GPU's atomic adds), so no real hit or edge ever reads them: the
network's outputs for the real edges are those of the unpadded graph, and the padded ones
are sliced off.

Buckets form a geometric ladder (``steps`` per doubling, rounded up to a multiple of
``ALIGN``); node counts above the top bucket round up to a multiple of it; edge counts
above it go on up the ladder (``steps`` per doubling) to ``MAX_PADDED_EDGES``, so the set of
shapes stays bounded for any graph up to ``MAX_PADDED_EDGES`` edges, padded by about
``2 ** (1 / steps)`` at most; a larger graph keeps its size (rounded up to ``ALIGN``), so
that edges x features stays within the 32-bit indexing that compiled kernels use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

ALIGN = 1024
#: Most padding edges (self-loops) on one padding hit.
PAD_EDGES_PER_HIT = 256
#: Most padded edges: times the widest per-edge tensor (64 columns), below 2**31.
MAX_PADDED_EDGES = 2**31 // 64 - ALIGN


def ladder(lo: int, hi: int, steps: int = 2) -> tuple[int, ...]:
    """Sizes from ``lo`` to ``hi``, ``steps`` per doubling, multiples of ``ALIGN``."""
    if not 0 < lo <= hi or steps < 1:
        raise ValueError(f"need 0 < lo <= hi and steps >= 1, got {lo}, {hi}, {steps}")
    n = math.ceil(steps * math.log2(hi / lo) - 1e-9)
    sizes = {-(-round(lo * 2 ** (i / steps)) // ALIGN) * ALIGN for i in range(n + 1)}
    return tuple(sorted(sizes))


def bucket(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest size >= ``n``; above the top, ``n`` rounded up to a multiple of it."""
    for s in sizes:
        if s >= n:
            return s
    top = sizes[-1]
    return -(-n // top) * top


#: Edges per hit of the graphs the network scores (hits without an edge are dropped before
#: it): after pruning 1.56-1.71 at MU=200, 1.66 at MU=50, 1.69 on the daemon's MU=5 warm-up
#: event (shipped model, simulated events); without pruning about 8 at MU=200. Graphs of
#: 1.44 to 1.97 edges a hit pad to the shapes the warm-up runs at 1.6.
PRUNED_EDGES_PER_NODE = 1.6
UNPRUNED_EDGES_PER_NODE = 8.0


@dataclass(frozen=True)
class Buckets:
    """Node and edge ladders. ``edges_per_node`` pairs them for warm-up (see ``pairs``)."""

    min_nodes: int = 16 * 1024
    max_nodes: int = 2 * 1024 * 1024
    min_edges: int = 16 * 1024
    max_edges: int = 16 * 1024 * 1024
    steps: int = 2
    edges_per_node: float = PRUNED_EDGES_PER_NODE
    opt_edges: int = 1024 * 1024  # TensorRT tunes for this size: 16 pruned MU=200 events

    @cached_property
    def nodes(self) -> tuple[int, ...]:
        return ladder(self.min_nodes, self.max_nodes, self.steps)

    @cached_property
    def edges(self) -> tuple[int, ...]:
        return ladder(self.min_edges, self.max_edges, self.steps)

    @cached_property
    def edges_above(self) -> tuple[int, ...]:
        """The edge ladder above the top bucket, to ``MAX_PADDED_EDGES`` (its last size)."""
        top = self.edges[-1]
        if top >= MAX_PADDED_EDGES:
            return ()
        going_on = ladder(top, MAX_PADDED_EDGES, self.steps)[1:]
        return (*(s for s in going_on if s < MAX_PADDED_EDGES), MAX_PADDED_EDGES)

    def shape(self, n_nodes: int, n_edges: int) -> tuple[int, int]:
        """Padded (nodes, edges) of a graph: one padding hit at least, and one for every
        ``PAD_EDGES_PER_HIT`` padding edges."""
        edges = bucket(max(n_edges, 1), self.edges)
        if edges > self.edges[-1]:  # up the ladder to the largest padding; past it, its own
            above = (*self.edges_above, -(-n_edges // ALIGN) * ALIGN)
            edges = next(s for s in above if s >= n_edges)
        padding_hits = max(1, -(-(edges - n_edges) // PAD_EDGES_PER_HIT))
        return bucket(n_nodes + padding_hits, self.nodes), edges

    def pairs(self) -> list[tuple[int, int]]:
        """The shapes a warm-up runs, by edge bucket then node bucket: each edge bucket with
        the node buckets (one to three) that graphs of ``edges_per_node`` edges a hit reach,
        up to the top node bucket (larger graphs compile or record on first use: warming
        them would only raise the warm-up's peak memory). Graphs of other ratios reuse the
        same compiled code."""
        out = []
        below = 0  # the edge bucket under this one: its graphs have more edges than that
        for e in self.edges:
            n = self.shape(round((below + 1) / self.edges_per_node), below + 1)[0]
            top = min(self.shape(round(e / self.edges_per_node), e)[0], self.nodes[-1])
            while n <= top:
                out.append((n, e))
                n = bucket(n + 1, self.nodes)
            below = e
        return out

    def opt_pair(self) -> tuple[int, int]:
        """The padded shape of a graph of ``opt_edges`` edges (at most the top edge bucket)
        and ``edges_per_node`` edges a hit, its hits at most the top node bucket."""
        e = min(self.opt_edges, self.edges[-1])
        n, e = self.shape(round(e / self.edges_per_node), e)
        return min(n, self.nodes[-1]), e


def pad_graph(
    x: Tensor, edge_index: Tensor, edge_attr: Tensor, n_to: int, e_to: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The graph padded to ``n_to`` hits (> n) and ``e_to`` edges (>= e); see module doc."""
    n, e = x.shape[0], edge_index.shape[1]
    if n_to <= n or e_to < e:
        raise ValueError(f"cannot pad {n} hits, {e} edges to {n_to} hits, {e_to} edges")
    xp = x.new_zeros((n_to, x.shape[1]))
    xp[:n] = x
    pad = torch.arange(e_to - e, dtype=edge_index.dtype, device=edge_index.device)
    ei = torch.empty((2, e_to), dtype=edge_index.dtype, device=edge_index.device)
    ei[:, :e] = edge_index
    ei[:, e:] = n + pad % (n_to - n)  # self-loops, spread over the padding hits
    ea = edge_attr.new_zeros((e_to, edge_attr.shape[1]))
    ea[:e] = edge_attr
    return xp, ei, ea
