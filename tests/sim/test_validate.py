"""The comparison with real barrel data: per-layer counts, noise fraction, layers per
particle, on hand-made events (``test_vs_real.py`` runs them on both sides alike)."""

import math

import numpy as np
import pytest

from streamtrk.event import Event, Hits, HitTruth, Particles, Truth
from streamtrk.sim import validate


def _event(vol: list[int], lay: list[int], pid: list[int]) -> Event:
    n = len(vol)
    f = np.zeros(n, np.float32)
    hits = Hits(
        hit_id=np.arange(1, n + 1, dtype=np.int64), x=f, y=f, z=f,
        volume_id=np.array(vol, np.int32), layer_id=np.array(lay, np.int32),
        module_id=np.ones(n, np.int32),
    )  # fmt: skip
    ids = np.array(pid, np.int64)
    truth = HitTruth(
        particle_id=ids, tx=f, ty=f, tz=f, tpx=f, tpy=f, tpz=f, weight=f,
        hit_order=np.zeros(n, np.int32),
    )  # fmt: skip
    known = np.unique(ids[ids > 0])
    z = np.zeros(len(known), np.float32)
    particles = Particles(
        particle_id=known, vx=z, vy=z, vz=z, px=z, py=z, pz=z,
        q=np.ones(len(known), np.int32),
        nhits=np.array([(ids == i).sum() for i in known], np.int32),
    )  # fmt: skip
    return Event(run=0, event=0, hits=hits, truth=Truth(hits=truth, particles=particles))


def test_validation_counts_layers_noise_and_layers_per_particle():
    """Per barrel layer (not volume), noise among barrel hits only, distinct layers per
    particle (its second hit on a layer and noise hits counted for no particle), and the
    mean noise fraction of events."""
    # 8:2 has 3 hits, 8:4 two, 13:2 one; an endcap (7:2) hit; particle 1 on 8:2 twice
    ev = _event([8, 8, 8, 13, 8, 8, 7], [2, 4, 4, 2, 2, 2, 2], [1, 1, 0, 1, 2, 1, 0])
    assert validate.barrel_layer_counts(ev).tolist() == [3, 2, 0, 0, 1, 0, 0, 0, 0, 0]
    assert validate.barrel_noise_fraction(ev) == pytest.approx(1 / 6)
    assert validate.barrel_hits_per_particle(ev).tolist() == [0, 1, 0, 1] + [0] * 7
    noisy = _event([8, 8, 8], [2, 2, 2], [0, 0, 1])
    quiet = _event([8, 8], [2, 2], [1, 1])
    summary = validate.summarize([ev, noisy, quiet])
    assert summary["noise_fraction"] == pytest.approx((1 / 6 + 2 / 3 + 0) / 3)


def test_binned_shares_bins_1_2_3_5_6_8_9_10_layers_inclusive() -> None:
    """HPP_BINS are inclusive ranges of layer counts: 1-2, 3-5, 6-8, 9-10 (0 layers: none)."""
    hist = np.array([7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # one particle at each count 1..10
    assert validate.binned_shares(hist).tolist() == [0.2, 0.3, 0.3, 0.2]


def test_events_without_truth_have_an_unknown_noise_fraction() -> None:
    """Without truth the noise cannot be told: NaN and no histogram, not a noise of 0."""
    ev = _event([8, 8], [2, 4], [1, 1])
    bare = Event(ev.run, ev.event, ev.hits, None)
    out = validate.summarize([bare])
    layer_hits, hpp = out["layer_hits"], out["hits_per_particle"]
    assert isinstance(layer_hits, np.ndarray) and isinstance(hpp, np.ndarray)
    assert layer_hits.tolist()[:2] == [1, 1]
    assert math.isnan(out["noise_fraction"]) and len(hpp) == 0
