"""Official TrackML hit weights."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrk.io.weights import (
    ORDER_PROPOSAL,
    ORDER_WEIGHTS,
    hit_order,
    hit_order_and_weights,
    hit_weights,
    pt_weight,
)


def _event(nhits: list[int], pts: list[float], n_noise: int = 5, seed: int = 0):
    """Per-hit (particle_id, distance, pt) of particles 1..n, shuffled, plus noise."""
    rng = np.random.default_rng(seed)
    pid = np.r_[np.repeat(np.arange(1, len(nhits) + 1), nhits), np.zeros(n_noise, np.int64)]
    pt = np.r_[np.repeat(pts, nhits), np.zeros(n_noise)]
    perm = rng.permutation(len(pid))
    return pid[perm], rng.uniform(0, 1000, len(pid)), pt[perm]


def test_pt_weight_values():
    pts = np.array([0.04, 0.05, 0.3, 0.5, 1.75, 3.0, 5.0, np.nan])
    assert pt_weight(pts) == pytest.approx([0.0, 0.2, 0.2, 0.2, 0.6, 1.0, 1.0, 0.0])


def test_order_table():
    assert ORDER_WEIGHTS.shape == (21, 20)
    assert not ORDER_WEIGHTS[:4].any()
    proposal = np.array(ORDER_PROPOSAL)
    assert ORDER_WEIGHTS[9, :9] == pytest.approx(proposal / proposal.sum())
    for n in range(4, 21):
        row = ORDER_WEIGHTS[n]
        assert row[:n].sum() == pytest.approx(1.0)
        assert not row[n:].any() and np.all(row[:n] > 0)
        # first and last hits weigh most; the first the most of all
        assert row[0] == row[:n].max() and row[n - 1] > row[n // 2]


def test_weights_sum_to_one_and_zero_cases():
    pid, distance, pt = _event([3, 4, 10, 25, 6], [5.0, 5.0, 0.3, 1.0, 0.01])
    w = hit_weights(pid, distance, pt)
    assert w.dtype == np.float32
    assert float(w.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert not w[pid == 0].any()  # noise
    assert not w[pid == 1].any()  # fewer than 4 hits
    assert not w[pid == 5].any()  # pT below 0.05 GeV
    for p in (2, 3):
        assert np.all(w[pid == p] > 0)
    assert np.count_nonzero(w[pid == 4]) == 20  # 25 hits: the hits past the 20th weigh 0


def test_weights_per_particle():
    pid, distance, pt = _event([4, 9, 25], [3.0, 1.75, 10.0], n_noise=0)
    w = hit_weights(pid, distance, pt).astype(np.float64)
    per_particle = np.array([w[pid == p].sum() for p in (1, 2, 3)])
    # 4 and 9 hits: each particle's weights sum to its pT weight (1, 0.6, ...)
    assert per_particle[0] / per_particle[1] == pytest.approx(1.0 / 0.6, rel=1e-5)
    # 9 hits along increasing distance follow the proposal
    sel = pid == 2
    along = w[sel][np.argsort(distance[sel])]
    assert along / along.sum() == pytest.approx(np.array(ORDER_PROPOSAL) / sum(ORDER_PROPOSAL))
    # 25 hits: the n = 20 row for the first 20, weight 0 beyond (the reference's rule)
    sel = pid == 3
    along = w[sel][np.argsort(distance[sel])]
    scale = 1.0 / per_particle[0]  # weight units of a pT-weight-1 particle
    expected = np.r_[ORDER_WEIGHTS[20], np.zeros(5)]
    assert along * scale == pytest.approx(expected, rel=1e-5)


def test_hit_order():
    pid = np.array([5, 0, 5, 7, 5, 7])
    distance = np.array([3.0, 1.0, 1.0, 2.0, 1.0, 0.5])
    assert hit_order(pid, distance).tolist() == [2, -1, 0, 1, 1, 0]


def test_all_zero_weights():
    w = hit_weights(np.array([0, 0, 1]), np.zeros(3), np.ones(3))
    assert not w.any()


def test_order_table_hand_values() -> None:
    # the proposal itself (sum 49) at n = 9; at n = 5 its points 0, 2, 4, 6, 8 (sum 28);
    # at n = 4 the points 0, 2.67, 5.33, 8: 10, 6 - 2/3, 3, 6 (sum 24 + 1/3)
    assert ORDER_WEIGHTS[9, :9] * 49 == pytest.approx([10, 8, 6, 5, 3, 3, 3, 5, 6])
    assert ORDER_WEIGHTS[5, :5] * 28 == pytest.approx([10, 6, 3, 3, 6])
    assert ORDER_WEIGHTS[4, :4] * (24 + 1 / 3) == pytest.approx([10, 6 - 2 / 3, 3, 6])


def test_order_table_is_read_only() -> None:
    with pytest.raises(ValueError, match="read-only"):
        ORDER_WEIGHTS[4, 0] = 1.0


def test_noise_hits_weigh_nothing_whatever_their_pt() -> None:
    # noise hits given a pT (as a caller may): still 0; particle 1 then holds all the weight
    pid = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    w = hit_weights(pid, np.arange(9.0), np.full(9, 2.0))
    assert not w[pid == 0].any()
    assert w[pid == 1] == pytest.approx(ORDER_WEIGHTS[4, :4])


def test_one_light_particle_is_normalised_to_one() -> None:
    # pT 1 GeV weighs 0.36 before normalisation: the event's weights still sum to 1
    w = hit_weights(np.array([3, 3, 3, 3, 3]), np.array([4.0, 0.0, 3.0, 1.0, 2.0]), np.ones(5))
    assert float(w.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-6)
    assert w == pytest.approx(ORDER_WEIGHTS[5, [4, 0, 3, 1, 2]])


def test_hits_at_one_distance_share_the_references_order_weight() -> None:
    """The reference ranks a particle's hits by distance with ties averaged, less 1,
    truncated: |dz| 1, 2, 2, 3, 4 (and 5, 5, 5 after) take the orders 0, 1, 1, 3, 4, 6, 6, 6."""
    distance = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0])
    perm = np.array([3, 6, 0, 2, 7, 5, 1, 4])  # input order does not matter
    pid = np.r_[np.full(8, 4), 0]
    w = hit_weights(pid, np.r_[distance[perm], 5.0], np.full(9, 3.0))
    want = ORDER_WEIGHTS[8, [0, 1, 1, 3, 4, 6, 6, 6]]
    assert w[:8] == pytest.approx((want / want.sum())[perm], rel=1e-6)
    assert w[8] == 0  # noise


def test_an_event_without_hits_has_no_weights() -> None:
    """An empty event (a readout with no hits, an event cut to none) gives empty arrays."""
    empty = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    order, w = hit_order_and_weights(*empty)
    assert order.shape == w.shape == (0,) and w.dtype == np.float32
    assert hit_weights(*empty).shape == (0,) and hit_order(*empty[:2]).shape == (0,)


def test_the_order_given_with_the_weights_is_hit_order_ties_in_input_order() -> None:
    """``hit_order_and_weights`` answers :func:`hit_order` (ties keep input order: 0, 1, 2),
    not the reference's shared index of tied hits (1, 1, 1) that only the weights use."""
    pid = np.array([4, 4, 4, 4, 0])
    distance = np.array([2.0, 2.0, 2.0, 1.0, 0.0])
    order, w = hit_order_and_weights(pid, distance, np.full(5, 3.0))
    assert order.tolist() == hit_order(pid, distance).tolist() == [1, 2, 3, 0, -1]
    assert w.tolist() == hit_weights(pid, distance, np.full(5, 3.0)).tolist()
