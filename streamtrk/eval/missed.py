"""Where the particles no track found were lost: the first stage of the chain whose edges no
longer join more than half of the particle's hits.

A track is good for a particle only when it holds more than half of the particle's hits
(docs/trackml-scoring.md), and the tracks are groups of hits joined by edges: a particle
whose hits the edges of a stage (edges between two of its own hits) join into no group of
more than half of them can no longer be found after that stage. ``STAGES``, in the chain's
order: ``graph`` (the edges as built), ``pruning`` (those the pruning keeps), ``gnn`` (those
scored above the threshold), and ``tracks`` for a particle those still join (lost in track
building or the fit's cuts: its hits split, taken by another particle's track, or its track
cut). An event refused as too dense loses all of its particles at ``refused``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamtrk.recon.tracks import components_label_propagation
from streamtrk.xp import index_of

STAGES = ("refused", "graph", "pruning", "gnn", "tracks")


def largest_groups(
    particle_per_hit: np.ndarray, edges: np.ndarray, particles: np.ndarray
) -> np.ndarray:
    """Per particle of ``particles`` (unique ids, not 0: noise), the most of its hits that
    ``edges`` (2, k; local hit numbers) join through edges between two of its own hits: 1 for
    a particle with hits but no such edge, 0 for one without hits."""
    pid = np.asarray(particle_per_hit, dtype=np.int64)
    own = (pid[edges[0]] == pid[edges[1]]) & np.isin(pid[edges[0]], particles)
    group = components_label_propagation(edges[:, own], len(pid))
    mine = np.isin(pid, particles)
    (owner, _), sizes = np.unique(np.stack([pid[mine], group[mine]]), axis=1, return_counts=True)
    best = np.zeros(len(particles), dtype=np.int64)
    np.maximum.at(best, index_of(particles, owner)[0], sizes)
    return best


def lost_at(
    particle_per_hit: np.ndarray, missed: np.ndarray, stage_edges: Sequence[np.ndarray]
) -> np.ndarray:
    """The stage (an index of ``STAGES``) at which each particle of ``missed`` (unique ids)
    was lost, given the edges (2, k; local hit numbers) of the ``graph``, ``pruning`` and
    ``gnn`` stages, in that order: the first whose edges join at most half of its hits."""
    pid = np.asarray(particle_per_hit, dtype=np.int64)
    n_hits = np.bincount(index_of(missed, pid[np.isin(pid, missed)])[0], minlength=len(missed))
    kept = STAGES.index("tracks")
    stage = np.full(len(missed), kept)
    for k, edges in enumerate(stage_edges, STAGES.index("graph")):
        stage[(stage == kept) & (2 * largest_groups(pid, edges, missed) <= n_hits)] = k
    return stage
