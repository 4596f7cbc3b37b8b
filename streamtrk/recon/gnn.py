"""Interaction Network edge classifier (plain PyTorch) and the edge scorer built on it.

The network encodes hits to ``hidden`` and edges to ``edge_hidden`` features, runs
``steps`` residual message-passing steps (edge update from both end hits and the edge; hit
update from the hit and the gated sums of its incoming and of its outgoing edge states) and
reads one logit per edge from the edge state. The last step's hit update would go unread,
so it is not computed (its weights stay in the model, untrained: they never reached the
loss). ``edge_hidden`` may be narrower than ``hidden``: an unpruned graph has about eight
edges per hit, and there the cost per edge dominates. The pruned graphs the shipped chain
scores have about 1.6 edges per hit that has one (the others are dropped first), so there
the per-hit work is the larger (``matmul_flops``: 29k per edge, 68k per hit with the
shipped model's 32 and 32).

The first layer of every update is linear in a concatenation, so it is applied per part:
``W [e, h_src, h_dst] = W_a e + (W_b h)[src] + (W_c h)[dst]``, with the hit projections made
once per hit rather than once per edge. Sums over edges are accumulated in float32, also
under autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.dlpack import from_dlpack

from streamtrk.event import Event
from streamtrk.recon.graph import Graph, without_isolated_hits
from streamtrk.tomlio import require
from streamtrk.xp import array_module

NODE_FEATURES = 3  # Graph.node_features columns
EDGE_FEATURES = 6  # Graph.edge_features columns


@dataclass(frozen=True)
class GNNConfig:
    """Architecture: hit and edge widths, message-passing steps, input feature counts."""

    hidden: int = 32
    edge_hidden: int = 32
    steps: int = 6
    node_in: int = NODE_FEATURES
    edge_in: int = EDGE_FEATURES

    def __post_init__(self) -> None:
        require(
            self,
            [
                ("hidden", self.hidden >= 1, ">= 1"),
                ("edge_hidden", self.edge_hidden >= 1, ">= 1"),
                ("steps", self.steps >= 1, ">= 1"),
                ("node_in", self.node_in == NODE_FEATURES, f"{NODE_FEATURES} (the graph's)"),
                ("edge_in", self.edge_in == EDGE_FEATURES, f"{EDGE_FEATURES} (the graph's)"),
            ],
        )

    def matmul_flops(self) -> tuple[int, int]:
        """Matrix-product FLOPs of ``forward`` (2 per multiply-add) per edge and per hit:
        a graph of ``e`` edges and ``n`` hits costs ``e * per_edge + n * per_hit``.
        Element-wise work (norms, activations, gathers, sums) is not counted."""
        h, he, steps = self.hidden, self.edge_hidden, self.steps
        # Edge: encoder, per step its own two he x he layers, the gate but in the last step
        # (no hit update follows it), then the head.
        per_edge = 2 * (self.edge_in * he + he * he) + steps * 2 * 2 * he * he
        per_edge += (steps - 1) * 2 * he + 2 * (he * he + he)
        # Hit: encoder; per step the two projections onto edges (h -> he); but in the last
        # step, its own two h x h layers and the projections of its two sums (he -> h).
        per_hit = 2 * (self.node_in * h + h * h) + steps * 2 * 2 * h * he
        per_hit += (steps - 1) * 2 * (2 * h * he + 2 * h * h)
        return per_edge, per_hit


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class _Update(nn.Module):
    """Residual increment ``out(relu(norm(W_a a + W_b b + W_c c)))`` of the state ``a``.

    ``W_b b`` and ``W_c c`` are passed in already projected (see ``b`` and ``c``), so that
    hit projections can be gathered onto edges instead of projecting every edge's copy.
    """

    def __init__(self, width: int, other: int) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(other, width, bias=False)
        self.c = nn.Linear(other, width, bias=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, width)

    def delta(self, a: Tensor, b_proj: Tensor, c_proj: Tensor) -> Tensor:
        return self.out(torch.relu(self.norm(self.a(a) + b_proj + c_proj)))


def _zeros(h: Tensor, width: int) -> Tensor:
    return torch.zeros(h.shape[0], width, dtype=torch.float32, device=h.device)


class _Step(nn.Module):
    """One message-passing step: edge update, gated sums at the hits, hit update."""

    def __init__(self, hidden: int, edge_hidden: int) -> None:
        super().__init__()
        self.edge = _Update(edge_hidden, hidden)  # a = edge, b = source hit, c = target hit
        self.gate = nn.Linear(edge_hidden, 1)  # how much an edge enters its hits' sums
        self.node = _Update(hidden, edge_hidden)  # a = hit, b = incoming sum, c = outgoing sum

    def message(self, e: Tensor) -> Tensor:
        """What an edge adds to the sums of its end hits (float32)."""
        return (e * torch.sigmoid(self.gate(e))).float()

    def node_delta(self, h: Tensor, incoming: Tensor, outgoing: Tensor) -> Tensor:
        return self.node.delta(h, self.node.b(incoming), self.node.c(outgoing))


class InteractionNetwork(nn.Module):
    """Edge classifier: ``forward(x, edge_index, edge_attr)`` gives one logit per edge.

    The sums at the hits are gated: each edge's state is weighted by a learned sigmoid of
    itself, so that the many wrong edges at a hit can be silenced instead of diluting it.

    ``infer`` computes the same logits without autograd, block of edges by block: the edge
    state is updated in place and every intermediate holds one block, so that each step
    makes one pass over the edge state instead of a dozen; on the CPU, memory traffic and
    page faults of large temporaries cost more than the arithmetic.
    """

    def __init__(self, cfg: GNNConfig = GNNConfig()) -> None:
        super().__init__()
        self.config = cfg
        h, he = cfg.hidden, cfg.edge_hidden
        self.node_encoder = _mlp(cfg.node_in, h, h)
        self.edge_encoder = _mlp(cfg.edge_in, he, he)
        # nn.ModuleList's stubs type its items as Module; the steps are only iterated and
        # counted, as a Sequence of _Step would be (a ModuleList is not one by isinstance).
        self.steps: Sequence[_Step] = nn.ModuleList(  # type: ignore[assignment]
            _Step(h, he) for _ in range(cfg.steps)
        )
        self.head = _mlp(he, he, 1)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        src, dst = edge_index[0], edge_index[1]
        h = self.node_encoder(x)
        e = self.edge_encoder(edge_attr)
        for k, step in enumerate(self.steps):
            hb, hc = step.edge.b(h), step.edge.c(h)
            e = e + step.edge.delta(e, hb.index_select(0, src), hc.index_select(0, dst))
            if k == len(self.steps) - 1:
                break  # the head reads the edges: the last hit update would go unread
            m = step.message(e)
            incoming = _zeros(h, m.shape[1]).index_add(0, dst, m)
            outgoing = _zeros(h, m.shape[1]).index_add(0, src, m)
            h = h + step.node_delta(h, incoming, outgoing)
        return self.head(e).squeeze(-1)

    @torch.no_grad()
    def infer(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, block: int = 16384) -> Tensor:
        """``forward`` without autograd, ``block`` edges at a time."""
        src, dst = edge_index[0], edge_index[1]
        blocks = [slice(i, i + block) for i in range(0, edge_index.shape[1], block)]
        blocks = blocks or [slice(0, 0)]
        h = self.node_encoder(x)
        e = torch.cat([self.edge_encoder(edge_attr[s]) for s in blocks])
        for k, step in enumerate(self.steps):
            hb, hc = step.edge.b(h), step.edge.c(h)
            # (incoming, outgoing) sums; none in the last step: the head reads the edges
            sums = (
                None if k == len(self.steps) - 1 else (_zeros(h, e.shape[1]), _zeros(h, e.shape[1]))
            )
            for s in blocks:
                es = e[s]
                es += step.edge.delta(es, hb.index_select(0, src[s]), hc.index_select(0, dst[s]))
                if sums is not None:
                    m = step.message(es)
                    sums[0].index_add_(0, dst[s], m)
                    sums[1].index_add_(0, src[s], m)
            if sums is not None:
                h = h + step.node_delta(h, *sums)
        return torch.cat([self.head(e[s]).squeeze(-1) for s in blocks])


def _to_torch(a: Any, device: torch.device) -> Tensor:
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else from_dlpack(a)
    return t.to(device)


def edge_scores(
    graph: Graph, device: torch.device, logits: Callable[[Tensor, Tensor, Tensor], Tensor]
) -> Any:
    """Sigmoid of ``logits`` of the graph's features on ``device``, returned in the graph's
    array module (NumPy, or CuPy through DLPack without a copy). Hits without an edge are
    dropped first (the network's per-hit work shrinks; the edge scores do not change)."""
    xp = array_module(graph.edge_index)
    if graph.num_edges == 0:  # nothing to score (and no empty arrays through DLPack)
        return xp.zeros(0, dtype=xp.float32)
    graph = without_isolated_hits(graph)
    x, ei, ea = (
        _to_torch(a, device) for a in (graph.node_features, graph.edge_index, graph.edge_features)
    )
    with torch.inference_mode():
        scores = torch.sigmoid(logits(x, ei, ea).float())
    if xp is np or scores.device.type == "cpu":  # a network and a graph on different devices
        return xp.asarray(scores.cpu().numpy())
    return xp.from_dlpack(scores)


class GNNScorer:
    """EdgeScorer: sigmoid of the network's logits, returned in the graph's array module."""

    def __init__(self, model: InteractionNetwork, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any:
        # Blocks pay off on the CPU; a GPU wants few large kernels.
        run = self.model.infer if self.device.type == "cpu" else self.model
        return edge_scores(graph, self.device, run)
