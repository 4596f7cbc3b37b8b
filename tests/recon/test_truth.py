"""Truth segments: a particle's hits joined along it, a layer's two hits as one step."""

from __future__ import annotations

import numpy as np
import pytest

from streamtrk.detector import load_detector
from streamtrk.event import Event, Hits, HitTruth, Particles, Truth
from streamtrk.recon.truth import edge_labels, particle_pt, true_segments
from streamtrk.sim.simulate import SimConfig, simulate


def _event(hits: list[tuple[int, int, int, int]], pt: dict[int, float]) -> Event:
    """Hits (particle, order along it, volume, layer) in this order; particles' pT."""
    pid, order, vol, lay = (np.array(c) for c in zip(*hits, strict=True))
    n, zeros = len(hits), np.zeros(len(hits), np.float32)
    ids = np.array(list(pt), np.int64)
    p = np.zeros(len(ids), np.float32)
    ints = (vol.astype(np.int32), lay.astype(np.int32), np.zeros(n, np.int32))
    hits_ = Hits(np.arange(n, dtype=np.int64), zeros, zeros, zeros, *ints)
    px = np.array(list(pt.values()), np.float32)
    charge, nhits = np.ones(len(ids), np.int32), np.zeros(len(ids), np.int32)
    particles = Particles(ids, p, p, p, px, p, p, charge, nhits)
    z = zeros  # positions, momenta and weights: unused
    hit_truth = HitTruth(pid.astype(np.int64), z, z, z, z, z, z, z, order.astype(np.int32))
    return Event(run=0, event=1, hits=hits_, truth=Truth(hit_truth, particles))


def test_a_layers_two_hits_are_one_step_along_the_particle() -> None:
    """Particle 1 crosses layer 8:4 twice (hits 4 and 1), then 8:6, 8:8; particle 3 goes
    from 8:4 to 13:4 (another volume: another layer); particle 2 is soft; hit 6 is noise."""
    event = _event(
        [(1, 0, 8, 2), (1, 2, 8, 4), (3, 1, 8, 4), (1, 3, 8, 6), (1, 1, 8, 4), (3, 2, 13, 4),
         (0, -1, 8, 4), (2, 0, 8, 2), (1, 4, 8, 8), (3, 0, 8, 2), (2, 1, 8, 4)],
        {1: 2.0, 2: 0.5, 3: 3.0},
    )  # fmt: skip
    pairs = true_segments(event, 1.0).T.tolist()
    assert pairs == [[0, 4], [0, 1], [4, 3], [1, 3], [3, 8], [9, 2], [2, 5]]
    assert true_segments(event, 0.0).T.tolist() == [*pairs[:5], [7, 10], *pairs[5:]]
    # The graph never joins two hits of a layer: 4 -> 1 is no segment.
    labels = edge_labels(event, np.array([[0, 0, 4, 4], [4, 1, 1, 3]]), 1.0)
    assert labels.tolist() == [1, 1, 0, 1]


def test_without_a_layers_two_hits_segments_are_consecutive_hits() -> None:
    """Simulated without overlaps, a particle's segments are its hits in order, but where
    it crosses one layer twice running (a secondary's chord, a looper's turn): no segment
    joins two hits of one layer."""
    event = next(simulate(load_detector(), SimConfig(), 3000, 1))
    assert event.truth is not None
    seg = true_segments(event, 0.0)
    pid, order = event.truth.hits.particle_id, event.truth.hits.hit_order
    srt = np.lexsort((order, pid))
    a, b = srt[:-1], srt[1:]
    same_layer = (event.hits.volume_id[a] == event.hits.volume_id[b]) & (
        event.hits.layer_id[a] == event.hits.layer_id[b]
    )
    consecutive = (pid[a] == pid[b]) & (pid[a] > 0)
    step = consecutive & ~same_layer
    plain = set(map(tuple, np.stack([a[step], b[step]]).T.tolist()))
    got = set(map(tuple, seg.T.tolist()))
    assert plain <= got and 0 < len(got - plain) < 0.01 * len(got)
    vol, lay = event.hits.volume_id, event.hits.layer_id
    assert not ((vol[seg[0]] == vol[seg[1]]) & (lay[seg[0]] == lay[seg[1]])).any()


def test_a_particle_at_the_pt_cut_is_kept() -> None:  # "pT >= pt_min"
    event = _event([(1, 0, 8, 2), (1, 1, 8, 4), (1, 2, 8, 6)], {1: 1.0})
    assert true_segments(event, 1.0).T.tolist() == [[0, 1], [1, 2]]


def test_a_particle_of_unknown_pt_counts_as_zero() -> None:
    event = _event([(1, 0, 8, 2), (1, 1, 8, 4)], {1: float("nan")})
    assert particle_pt(event, np.array([1, 7, 0])).tolist() == [0.0, 0.0, 0.0]
    assert edge_labels(event, np.array([[0], [1]])).tolist() == [1]  # pt_min 0: labelled


def test_an_event_of_noise_alone_has_no_segments() -> None:  # an empty particles table
    event = _event([(0, -1, 8, 2), (0, -1, 8, 4)], {})
    assert particle_pt(event, np.array([0, 0])).tolist() == [0.0, 0.0]
    assert true_segments(event, 0.0).shape == (2, 0)
    assert edge_labels(event, np.array([[0], [1]])).tolist() == [0]


def test_true_segments_default_to_particles_of_1_gev_and_up() -> None:
    """``pt_min`` defaults to 1 GeV: a 0.5 GeV particle's segments are left out."""
    event = _event([(1, 0, 8, 2), (1, 1, 8, 4), (2, 0, 8, 2), (2, 1, 8, 4)], {1: 2.0, 2: 0.5})
    assert true_segments(event).T.tolist() == [[0, 1]]


def test_noise_hits_are_joined_to_nothing_even_at_pt_min_0() -> None:
    """Noise (particle 0) on consecutive layers is no particle: no segment joins it."""
    event = _event([(0, -1, 8, 2), (0, -1, 8, 4), (0, -1, 8, 6)], {})
    assert true_segments(event, 0.0).shape == (2, 0)
    assert edge_labels(event, np.array([[0, 1], [1, 2]]), 0.0).tolist() == [0, 0]


def test_an_event_without_truth_is_refused_by_name() -> None:
    """Segments need truth: an event without it is a ValueError naming the event."""
    event = _event([(1, 0, 8, 2), (1, 1, 8, 4)], {1: 2.0})
    bare = Event(event.run, event.event, event.hits, None)
    with pytest.raises(ValueError, match="event 1 has no truth"):
        true_segments(bare)
