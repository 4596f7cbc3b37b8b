"""``bench/real_full_density.py`` scores a dense event on the truth of a subset of its
particles: what it calls exact must equal what the whole truth gives."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from bench_scripts import bench_script

from streamtrk.eval.score import classify, physics_metrics, trackml_score
from streamtrk.event import Event, HitTruth, Particles, Truth


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_script("real_full_density")


def _tracks_with_faults(pid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Track labels from the particles, with stray hits (fakes) and split tracks
    (duplicates)."""
    _, labels = np.unique(pid, return_inverse=True)
    labels = np.where(pid == 0, 0, labels + 1)
    stray = rng.random(len(pid)) < 0.15
    labels[stray] = rng.choice(np.unique(labels[labels != 0]), stray.sum())
    top = int(np.max(labels))
    halves = np.isin(labels, rng.choice(top, top // 10))
    split = halves & (rng.random(len(pid)) < 0.5)
    labels[split] += top
    return labels


def _subset(event: Event, rng: np.random.Generator) -> Event:
    """The hits of half the particles and half the noise, with their truth."""
    t = event.truth
    assert t is not None
    kept = t.particles.particle_id[rng.random(len(t.particles)) < 0.5]
    pid = np.asarray(t.hits.particle_id)
    mask = np.isin(pid, kept) | ((pid == 0) & (rng.random(len(pid)) < 0.5))
    hits = type(event.hits).from_columns({k: v[mask] for k, v in event.hits.columns().items()})
    truth = Truth(
        hits=HitTruth.from_columns({k: v[mask] for k, v in t.hits.columns().items()}),
        particles=Particles.from_columns(
            {k: v[np.isin(t.particles.particle_id, kept)] for k, v in t.particles.columns().items()}
        ),
    )
    return Event(run=event.run, event=event.event, hits=hits, truth=truth)


def test_the_subset_s_particles_and_the_tracks_it_judges_score_as_with_all_truth(
    bench: ModuleType, small_events: list[Event]
) -> None:
    rng = np.random.default_rng(5)
    event = small_events[0]
    t = event.truth
    assert t is not None
    pid = np.asarray(t.hits.particle_id)
    labels = _tracks_with_faults(pid, rng)
    subset = _subset(event, rng)
    assert subset.truth is not None
    partial = bench.with_subset_truth(Event(event.run, event.event, event.hits), subset)
    got = bench.score(partial, labels)

    # with all truth: the subset's particles, the tracks with most hits in the subset
    c = classify(event, labels)
    ours = np.isin(t.particles.particle_id, subset.truth.particles.particle_id)
    reco = c.reconstructable & ours
    assert got["reconstructable"] == reco.sum() > 50
    assert got["tracking_efficiency"] == int((c.found & reco).sum()) / int(reco.sum()) < 1
    in_subset = np.isin(event.hits.hit_id, subset.hits.hit_id)
    judged = np.array([2 * in_subset[labels == k].sum() > (labels == k).sum() for k in c.track_id])
    assert got["tracks"] == len(c.track_id) and got["tracks_judged"] == judged.sum()
    assert 0 < got["fake_rate"] == (judged & c.track_fake).sum() / judged.sum()
    real = judged & ~c.track_fake
    assert 0 < got["duplicate_rate"] == (real & c.track_duplicate).sum() / real.sum()
    weight = np.where(in_subset, t.hits.weight, 0)
    assert got["trackml_score"] == pytest.approx(trackml_score(pid, weight, labels), abs=1e-12)

    # the whole truth known: every track judged, the project's definitions
    whole = bench.score(event, labels)
    expected = physics_metrics(event, labels)
    assert whole["tracks_judged"] == whole["tracks"] == expected["n_tracks"]
    for key in ("tracking_efficiency", "fake_rate", "duplicate_rate"):
        assert whole[key] == pytest.approx(expected[key], abs=1e-12), key


def test_a_subset_with_hits_the_event_lacks_is_refused(
    bench: ModuleType, small_events: list[Event]
) -> None:
    a, b = small_events
    with pytest.raises(ValueError, match=r"holds hits the full event does not|elsewhere"):
        bench.with_subset_truth(Event(a.run, a.event, a.hits), b)
