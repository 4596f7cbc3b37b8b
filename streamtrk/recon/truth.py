"""Truth labels for graph edges and the true segments they should contain."""

from __future__ import annotations

import numpy as np

from streamtrk.event import Event
from streamtrk.xp import index_of


def true_segments(event: Event, pt_min: float = 1.0) -> np.ndarray:
    """(2, s) hit-index pairs: consecutive hits of one particle with pT >= ``pt_min``."""
    t = event.truth
    if t is None:
        raise ValueError(f"event {event.event} has no truth")
    pid, order = t.hits.particle_id, t.hits.hit_order
    srt = np.lexsort((order, pid))
    a, b = srt[:-1], srt[1:]
    same = (pid[a] == pid[b]) & (pid[a] > 0)
    a, b = a[same], b[same]
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
    """1 where an edge joins consecutive hits of one particle with pT >= ``pt_min``."""
    seg = true_segments(event, pt_min)
    n = len(event.hits)
    seg_key = seg[0].astype(np.int64) * n + seg[1]
    return index_of(seg_key, edge_index[0].astype(np.int64) * n + edge_index[1])[1]
