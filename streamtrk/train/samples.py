"""Training samples: each event's graph with 0/1 targets and a loss mask, cut into phi sectors.

Targets are true segments of particles with pT >= ``pt_min``; true segments of softer
particles are left out of the loss (the network cannot tell 0.9 from 1.1 GeV) rather than
counted as negatives. Training graphs are cut into overlapping phi sectors (small graphs train
faster per edge on the CPU and give more optimiser steps); each edge counts in the loss of
exactly one sector, the one holding its inner hit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from streamtrk.detector import Detector
from streamtrk.event import Event
from streamtrk.recon.graph import Graph, GraphConfig, event_graph, select_edges
from streamtrk.recon.prune import PruneConfig, prune_edges
from streamtrk.recon.truth import edge_labels


@dataclass
class Sample:
    """One training graph: inputs, 0/1 targets, and which edges count in the loss."""

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    target: Tensor
    counted: Tensor
    home_edges: int  # edges whose inner hit lies in the sector: each edge in one sample

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def _sectors(
    g: Graph, target: np.ndarray, counted: np.ndarray, n: int, margin: float
) -> Iterator[Sample]:
    """The graph cut into ``n`` phi sectors, each with its hits within ``margin`` around it.

    A sector holds every edge touching its extended range; only edges whose inner hit lies
    in the sector itself count in its loss, so every edge counts once over all sectors.
    """
    phi = g.node_features[:, 1].astype(np.float64) * np.pi
    width = 2 * np.pi / n
    sector = np.minimum(((phi + np.pi) / width).astype(np.int64), n - 1)
    src, dst = g.edge_index
    for k in range(n):
        centre = -np.pi + (k + 0.5) * width
        around = np.abs(np.mod(phi - centre + np.pi, 2 * np.pi) - np.pi) < width / 2 + margin
        ext = (sector == k) | around  # its own hits, those on its boundaries too
        sel = ext[src] | ext[dst]
        nodes, inverse = np.unique(g.edge_index[:, sel], return_inverse=True)
        home = sector[src[sel]] == k
        yield Sample(
            x=torch.from_numpy(g.node_features[nodes]),
            edge_index=torch.from_numpy(inverse.reshape(2, -1).astype(np.int64)),
            edge_attr=torch.from_numpy(g.edge_features[sel]),
            target=torch.from_numpy(target[sel].astype(np.float32)),
            counted=torch.from_numpy(counted[sel] & home),
            home_edges=int(home.sum()),
        )


def make_samples(
    events: Iterable[Event],
    det: Detector,
    cfg: GraphConfig,
    pt_min: float,
    sectors: int = 1,
    margin: float = 0.0,
    prune: PruneConfig | None = None,
) -> list[Sample]:
    """Graphs (pruned with ``prune``, as the model will see them) with targets (pT >=
    ``pt_min`` segments) and loss masks (no softer segments)."""
    out: list[Sample] = []
    for ev in events:
        g = event_graph(ev, det, cfg)
        if prune is not None:
            g = select_edges(g, prune_edges(g, prune, det))
        target = edge_labels(ev, g.edge_index, pt_min)
        soft = edge_labels(ev, g.edge_index, 0.0) & ~target
        out.extend(_sectors(g, target, ~soft, sectors, margin))
    return out
