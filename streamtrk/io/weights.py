"""Official TrackML hit weights (see docs/trackml-scoring.md in the shared folder).

weight(hit) = pT weight(particle) x order weight(hit along its particle), normalised so
that the event's weights sum to 1. Noise hits and particles with fewer than 4 hits weigh 0.
"""

from __future__ import annotations

import numpy as np

ORDER_PROPOSAL = (10.0, 8.0, 6.0, 5.0, 3.0, 3.0, 3.0, 5.0, 6.0)
MIN_HITS = 4
MAX_HITS = 20


def _order_weight_table() -> np.ndarray:
    """Table ``[n, order]`` (21 x 20): the proposal interpolated onto n hits, each row summing
    to 1; rows n < 4 are zero."""
    table = np.zeros((MAX_HITS + 1, MAX_HITS))
    for n in range(MIN_HITS, MAX_HITS + 1):
        row = np.interp(np.arange(n), np.linspace(0, n - 1, len(ORDER_PROPOSAL)), ORDER_PROPOSAL)
        table[n, :n] = row / row.sum()
    return table


ORDER_WEIGHTS = _order_weight_table()
ORDER_WEIGHTS.flags.writeable = False


def pt_weight(pt: np.ndarray) -> np.ndarray:
    """Per-particle pT weight: 0 below 0.05 GeV (and for NaN), 0.2 up to 0.5 GeV, rising
    linearly to 1.0 at 3 GeV, 1.0 above."""
    pt = np.asarray(pt, dtype=np.float64)
    ramp = 0.2 + 0.8 * np.clip((pt - 0.5) / 2.5, 0.0, 1.0)
    return np.where(pt >= 0.05, ramp, 0.0)


def hit_order(particle_id: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Index (int32) of each hit along its particle, by increasing ``distance`` (the TrackML
    reference uses |z - vz|); ties keep input order; -1 for noise (particle_id 0)."""
    return _orders(np.asarray(particle_id), np.asarray(distance))[0]


def _orders(pid: np.ndarray, distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hit_order`, and the reference's index for the weights, where a particle's hits
    at one distance share the floor of the mean of their indices (its average rank less 1,
    truncated); both -1 for noise."""
    n = len(pid)
    srt = np.lexsort((distance, pid))  # stable: ties keep input order
    spid, sd = pid[srt], distance[srt]
    first = np.ones(n, dtype=bool)
    first[1:] = spid[1:] != spid[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    along = np.arange(n) - group_start
    tie_start = first.copy()
    tie_start[1:] |= sd[1:] != sd[:-1]
    run = np.cumsum(tie_start) - 1
    starts = np.flatnonzero(tie_start)
    ends = np.append(starts[1:] - 1, n - 1)[: len(starts)]  # none where no hit
    tied = (along[starts] + along[ends]) // 2
    order, tied_order = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    order[srt], tied_order[srt] = along, tied[run]
    order[pid == 0] = tied_order[pid == 0] = -1
    return order, tied_order


def hit_weights(particle_id: np.ndarray, distance: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """Official TrackML weights (float32, summing to 1 unless all are 0) of one event's hits.

    ``particle_id``, ``distance`` (|z - vz| of the hit) and ``pt`` (its particle's
    production pT, GeV) are per hit. A particle's hit count is its number of hits here;
    beyond 20 hits its first 20 take the n = 20 row and the later ones weigh 0, as in the
    TrackML reference code. Hits of a particle at the same distance share an index, as the
    reference's (its average rank less 1, truncated: ties at 1 and 2 both take 1).
    """
    return hit_order_and_weights(particle_id, distance, pt)[1]


def hit_order_and_weights(
    particle_id: np.ndarray, distance: np.ndarray, pt: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hit_order` and :func:`hit_weights` of the same hits, from one sort."""
    pid = np.asarray(particle_id)
    _, inverse, counts = np.unique(pid, return_inverse=True, return_counts=True)
    nhits = counts[inverse]
    along, order = _orders(pid, np.asarray(distance))
    w_order = np.where(
        order < MAX_HITS,
        ORDER_WEIGHTS[np.minimum(nhits, MAX_HITS), np.clip(order, 0, MAX_HITS - 1)],
        0.0,
    )
    w = np.where((pid != 0) & (nhits >= MIN_HITS), pt_weight(pt) * w_order, 0.0)
    total = w.sum()
    return along, (w / total if total > 0 else w).astype(np.float32)
