"""Truth labels for graph edges and the true segments they should contain."""

from __future__ import annotations

import numpy as np

from streamtrk.event import Event
from streamtrk.xp import index_of


def true_segments(event: Event, pt_min: float = 1.0) -> np.ndarray:
    """(2, s) hit-index pairs of each particle with pT >= ``pt_min``: its hits in order along
    it, taken as runs of hits on one layer (a run of two: overlapping modules), every hit of
    a run joined to every hit of the next one; consecutive hits where each run is one hit.

    A particle's two hits B1, B2 on a layer between A and C give A -> B1, A -> B2, B1 -> C
    and B2 -> C (segments the graph can build: it joins no two hits of one layer), not
    B1 -> B2, as Exa.TrkX's layerwise truth."""
    t = event.truth
    if t is None:
        raise ValueError(f"event {event.event} has no truth")
    pid = t.hits.particle_id
    srt = np.lexsort((t.hits.hit_order, pid))
    p, vol, lay = pid[srt], event.hits.volume_id[srt], event.hits.layer_id[srt]
    n = len(srt)
    starts_run = np.ones(n, dtype=bool)
    starts_run[1:] = (p[1:] != p[:-1]) | (vol[1:] != vol[:-1]) | (lay[1:] != lay[:-1])
    start = np.flatnonzero(starts_run)  # each run's first position, then its length
    size = np.diff(np.append(start, n))
    nxt = np.cumsum(starts_run)  # each position's next run (its own run's index + 1)
    has_next = nxt < len(start)
    pos = np.flatnonzero(has_next)
    pos = pos[(p[pos] > 0) & (p[start[nxt[pos]]] == p[pos])]  # the same particle's next run
    width = size[nxt[pos]]
    a = np.repeat(pos, width)
    within = np.arange(len(a)) - np.repeat(np.cumsum(width) - width, width)
    b = start[nxt[a]] + within
    a, b = srt[a], srt[b]
    keep = particle_pt(event, pid[a]) >= pt_min
    return np.stack([a[keep], b[keep]])


def particle_pt(event: Event, particle_id: np.ndarray) -> np.ndarray:
    """pT of the given particles (0 for unknown ids and noise)."""
    if event.truth is None:
        raise ValueError(f"event {event.event} has no truth")
    p = event.truth.particles
    idx, found = index_of(p.particle_id, particle_id)
    return np.where(found, np.nan_to_num(p.pt[idx]) if len(p) else 0.0, 0.0)


def edge_labels(event: Event, edge_index: np.ndarray, pt_min: float = 0.0) -> np.ndarray:
    """1 where an edge is a true segment (:func:`true_segments`) of a particle with pT >=
    ``pt_min``."""
    seg = true_segments(event, pt_min)
    n = len(event.hits)
    seg_key = seg[0].astype(np.int64) * n + seg[1]
    return index_of(seg_key, edge_index[0].astype(np.int64) * n + edge_index[1])[1]
