"""TrackML score, track matching and physics metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hand_events import metrics_event

from streamtrk.eval.score import (
    PhysicsTotals,
    classify,
    match_tracks,
    physics_metrics,
    trackml_score,
)
from streamtrk.io.trackml import read_event
from streamtrk.io.weights import hit_weights


def _many_particles(seed: int = 0, n_particles: int = 3000):
    """Per-hit particle ids (with noise) and official weights of a large random event."""
    rng = np.random.default_rng(seed)
    nhits = rng.integers(4, 16, n_particles)
    pid = np.r_[np.repeat(np.arange(1, n_particles + 1), nhits), np.zeros(2000, np.int64)]
    pt = np.r_[np.repeat(rng.uniform(0.1, 5.0, n_particles), nhits), np.zeros(2000)]
    return pid, hit_weights(pid, rng.uniform(0, 1000, len(pid)), pt)


def test_perfect_and_empty_submissions():
    pid, weight = _many_particles()
    assert trackml_score(pid, weight, pid) == pytest.approx(1.0)
    assert trackml_score(pid, weight, np.zeros_like(pid)) == 0.0
    noise_as_tracks = np.where(pid == 0, np.arange(len(pid)) + 10**6, pid)
    assert trackml_score(pid, weight, noise_as_tracks) == pytest.approx(1.0)


def test_random_reassignment_scores_about_095():
    pid, weight = _many_particles(seed=1)
    rng = np.random.default_rng(1)
    track = pid.copy()
    moved = rng.random(len(pid)) < 0.05
    track[moved] = rng.integers(1, pid.max() + 1, moved.sum())
    assert trackml_score(pid, weight, track) == pytest.approx(0.95, abs=0.02)


def test_hand_computed_score():
    # particle:  1  1  1  1  2  2  2  3  3  0
    pid = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 0])
    weight = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.15, 0.0])
    # track 5: 1,1,1 + 2 -> majority 1 (3/4 track, 3/4 particle): good, 0.3
    # track 6: 1 + 2,2   -> majority 2 (2/3 track, 2/3 particle): good, 0.2
    # track 7: 3 + 0     -> tie 1-1, majority 0 (smallest id): 1/2 of the track, not good
    # one hit of particle 3 unassigned
    track = np.array([5, 5, 5, 6, 5, 6, 6, 7, 0, 7])
    assert trackml_score(pid, weight, track) == pytest.approx(0.5)
    m = match_tracks(track, pid)
    assert m.track_id.tolist() == [5, 6, 7]
    assert m.size.tolist() == [4, 3, 2]
    assert m.particle_id.tolist() == [1, 2, 0]
    assert m.majority_hits.tolist() == [3, 2, 1]
    assert m.particle_hits.tolist() == [4, 3, 1]
    assert m.pure.tolist() == [True, True, False]
    assert m.matched.tolist() == [True, True, False]


def test_tie_goes_to_smallest_particle_and_strict_half():
    pid = np.array([9, 9, 4, 4, 4, 4])
    weight = np.full(6, 1 / 6)
    track = np.array([1, 1, 1, 1, 2, 2])
    m = match_tracks(track, pid)
    assert m.particle_id.tolist() == [4, 4]
    assert not m.pure[0]  # 2 of 4 is not > 50%
    assert not m.matched[1]  # holds 2 of particle 4's 4 hits: not > 50%
    assert trackml_score(pid, weight, track) == 0.0


@pytest.mark.parametrize("bad", [-0.5, np.nan, np.inf])
def test_weights_that_are_negative_or_not_finite_are_refused(bad: float) -> None:
    """A negative weight scored 2.0 here (the readers refuse such truth; the API did not)."""
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        trackml_score(np.array([1, 1, 2, 2]), np.array([1, 1, bad, bad]), np.array([1, 1, 0, 0]))


def test_arrays_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="must be equal 1-D"):
        match_tracks(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="must be equal 1-D"):
        match_tracks(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="weights"):
        match_tracks(np.ones(3), np.ones(3), np.ones(4))


def test_labels_that_are_not_whole_numbers_are_refused() -> None:
    """Labels 1.7 and 2.9 scored as 1 and 2 (two tracks merged: 1/3, where as given each
    hit is a track of its own and the score 1); whole floats score as their integers."""
    pid, weight = np.array([1, 2, 3]), np.ones(3)
    with pytest.raises(ValueError, match="track_id must hold whole numbers"):
        trackml_score(pid, weight, np.array([1.0, 1.7, 2.9]))
    with pytest.raises(ValueError, match="particle ids must hold whole numbers"):
        match_tracks(np.array([1, 2, 3]), np.array([1.5, 2, 3]))
    assert trackml_score(pid, weight, np.array([1.0, 2.0, 3.0])) == 1.0


def test_a_particle_s_hits_count_those_in_no_track():
    # a track of 2 of the particle's 5 hits holds 40% of them: not matched, no score
    m = match_tracks(np.array([1, 1, 0, 0, 0]), np.ones(5))
    assert m.particle_hits.tolist() == [5] and m.matched.tolist() == [False]
    assert trackml_score(np.ones(5), np.full(5, 0.2), np.array([1, 1, 0, 0, 0])) == 0.0


def test_hits_in_no_track_score_as_tracks_of_their_own():
    """As the TrackML scorer reads the submission written: hits in no track are not one
    track (3 of particle 1's 5 hits would make a good one), each is alone (good only for a
    particle with that one hit)."""
    pid = np.array([1, 1, 1, 1, 1, 2])
    weight = np.array([0.1, 0.1, 0.2, 0.2, 0.2, 0.2])
    assert trackml_score(pid, weight, np.array([1, 1, 0, 0, 0, 0])) == pytest.approx(0.2)
    # their ids are new ones: never one of the submission's own (a negative id read back)
    assert trackml_score(pid, weight, np.array([-2, -2, 0, -3, -3, 1])) == pytest.approx(0.2)


def test_zero_total_weight_is_nan():
    assert np.isnan(trackml_score(np.array([1, 1]), np.zeros(2), np.array([1, 1])))


def test_physics_metrics():
    # particle 1: 6 hits, reconstructed twice (one duplicate)
    # particle 2: 5 hits, not found (track is fake: no > 50% majority)
    # particle 3: 5 hits, displaced (vr 50 mm): counts only in tracking_efficiency_all
    # particle 4: 0.5 GeV, not reconstructable; particle 5: only 4 hits here (10 in the file)
    hit_pid = [1] * 6 + [2] * 5 + [3] * 5 + [4] * 5 + [5] * 4 + [0] * 3
    particles = {
        1: (2.0, 0.0, 6),
        2: (2.0, 1.0, 5),
        3: (2.0, 50.0, 5),
        4: (0.5, 0.0, 5),
        5: (2.0, 0.0, 10),
        6: (2.0, 0.0, 8),  # no hits in this event
    }
    track = np.zeros(len(hit_pid), np.int64)
    track[[0, 1, 2, 3]] = 1  # particle 1, 4 of 6 hits: reconstructed
    track[[4, 5]] = 2  # particle 1 again: duplicate
    track[[6, 7, 25]] = 3  # particle 2 x2 + noise: 2/3 pure, 2/5 of particle: not matched
    track[[8, 9, 16, 17]] = 4  # 2 + 2: no majority above 50%: fake
    track[[11, 12, 13]] = 5  # particle 3: reconstructed
    track[[26, 27]] = 6  # noise: fake
    metrics = physics_metrics(metrics_event(hit_pid, particles), track)
    assert metrics["n_reconstructable"] == 2  # particles 1 and 2
    assert metrics["n_reconstructable_all"] == 3  # + particle 3
    assert metrics["tracking_efficiency"] == pytest.approx(1 / 2)
    assert metrics["tracking_efficiency_all"] == pytest.approx(2 / 3)
    assert metrics["n_tracks"] == 6
    assert metrics["fake_rate"] == pytest.approx(2 / 6)
    assert metrics["duplicate_rate"] == pytest.approx(1 / 4)  # pure: tracks 1, 2, 3, 5


def test_reconstructable_boundaries():
    # pT exactly 1 GeV counts; a vertex exactly 10 mm out is displaced (only in the _all
    # figures); a particle table's id 0 (noise) never counts
    hit_pid = [1] * 5 + [2] * 5 + [0] * 5
    ev = metrics_event(hit_pid, {1: (1.0, 0.0, 5), 2: (2.0, 10.0, 5), 0: (2.0, 0.0, 5)})
    m = physics_metrics(ev, np.zeros(15))
    assert (m["n_reconstructable"], m["n_reconstructable_all"]) == (1, 2)


def test_the_vertex_cut_is_about_the_beam_line():
    # particle 1 made 12 mm out along x, particle 2 on the z axis
    ev = metrics_event([1] * 5 + [2] * 5, {1: (2.0, 12.0, 5), 2: (2.0, 0.0, 5)})
    about_x12 = classify(ev, np.zeros(10), beam_line=(12.0, 0.0))
    assert about_x12.reconstructable.tolist() == [True, False]
    assert classify(ev, np.zeros(10)).reconstructable.tolist() == [False, True]
    assert about_x12.reconstructable_all.all()


def test_of_two_alike_the_duplicate_is_the_track_without_the_smallest_hit_id():
    """Whatever the tracks' numbers and the hits' order in the event (the chain numbers
    its tracks by their hits' places in the message: a shuffled event's duplicate was
    another track, and its pT and eta went into other bins)."""
    ev = metrics_event([1] * 6, {1: (2.0, 0.0, 6)})
    for labels in ([2, 2, 2, 1, 1, 1], [1, 1, 1, 2, 2, 2]):
        c = classify(ev, np.array(labels))
        duplicate = dict(zip(c.track_id.tolist(), c.track_duplicate.tolist(), strict=True))
        assert duplicate == {labels[0]: False, labels[-1]: True}
    shuffled = [5, 0, 4, 1, 3, 2]  # the same hits in another order, track 1 first
    ev = replace(ev, hits=ev.hits.take(np.array(shuffled)))
    c = classify(ev, np.array([1, 2, 1, 2, 1, 2]))  # track 2 holds hit ids 0, 1, 2
    assert c.track_duplicate.tolist() == [True, False]
    # the smallest of all their hit ids, not the smallest of their largest: track 1 holds
    # ids 0, 4, 5, track 2 ids 1, 2, 3
    ev = metrics_event([1] * 6, {1: (2.0, 0.0, 6)})
    c = classify(ev, np.array([1, 2, 2, 2, 1, 1]))
    assert c.track_duplicate.tolist() == [False, True]


def test_the_duplicate_is_never_the_track_that_found_the_particle():
    # track 1 holds 2 of the particle's 6 hits, track 2 the 4 that find it: track 1 is the
    # duplicate (its pT and eta go into the binned duplicate rates), whatever the ids
    ev = metrics_event([1] * 6 + [0] * 2, {1: (2.0, 0.0, 6)})
    for first, second in ((1, 2), (2, 1)):
        c = classify(ev, np.array([first] * 2 + [second] * 4 + [0] * 2))
        duplicate = dict(zip(c.track_id.tolist(), c.track_duplicate.tolist(), strict=True))
        matched = dict(zip(c.track_id.tolist(), c.track_matched.tolist(), strict=True))
        assert (duplicate, matched) == ({first: True, second: False}, {first: False, second: True})
    # of two fragments (neither finds it), the one with more of its hits is the primary
    c = classify(ev, np.array([1, 2, 2, 2, 0, 0, 0, 0]))
    assert c.track_matched.tolist() == [False, False]
    assert c.track_duplicate.tolist() == [True, False]


def test_a_track_of_noise_hits_matches_nothing():
    ev = metrics_event([1] * 5 + [0] * 3, {1: (2.0, 0.0, 5)})
    c = classify(ev, np.r_[np.zeros(5), 7, 7, 0])
    assert c.track_matched.tolist() == [False] and c.track_fake.tolist() == [True]


def test_physics_metrics_empty_tracks():
    metrics = physics_metrics(metrics_event([1] * 5, {1: (2.0, 0.0, 5)}), np.zeros(5))
    assert metrics["tracking_efficiency"] == 0.0 and metrics["n_tracks"] == 0
    assert np.isnan(metrics["fake_rate"]) and np.isnan(metrics["duplicate_rate"])


@pytest.mark.realdata
def test_real_perfect_submission(shared_trackml):
    event = read_event(shared_trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000")
    assert event.truth is not None
    pid = event.truth.hits.particle_id
    assert trackml_score(pid, event.truth.hits.weight, pid) == pytest.approx(1.0, abs=1e-6)
    metrics = physics_metrics(event, pid)
    assert metrics["tracking_efficiency"] == 1.0 and metrics["fake_rate"] == 0.0
    assert metrics["duplicate_rate"] == 0.0


def test_totals_of_no_event_report_nothing():
    assert PhysicsTotals().report() == {}


def test_totals_score_the_events_with_truth_weight():
    """An event whose truth weighs nothing (no particle of 4 hits or more) has no TrackML
    score: its counts add up, the mean score and ``events_scored`` leave it out."""
    weightless = metrics_event([1] * 5, {1: (2.0, 0.0, 5)})
    t = weightless.truth
    assert t is not None
    weighted = replace(
        weightless, truth=replace(t, hits=replace(t.hits, weight=np.full(5, 0.2, np.float32)))
    )
    totals = PhysicsTotals()
    totals.add(weightless, np.ones(5))
    assert totals.report()["events_scored"] == 0 and np.isnan(totals.report()["trackml_score"])
    totals.add(weighted, np.r_[1, 1, 1, 0, 0])
    report = totals.report()
    assert report["events_scored"] == 1
    assert report["trackml_score"] == pytest.approx(0.6)
    assert report["n_reconstructable"] == 2  # both events' counts
    totals.add(weighted, np.ones(5))  # scores 1.0: the mean of 0.6 and 1.0
    assert totals.report()["trackml_score"] == pytest.approx(0.8)


def test_score_divides_by_the_total_truth_weight() -> None:
    # weights that do not sum to 1 (total 4): particle 1's good track scores 2 of 4
    pid = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    track = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # particle 2's hits each alone: not good
    assert trackml_score(pid, np.full(8, 0.5), track) == pytest.approx(0.5)


def test_no_track_gives_an_empty_match() -> None:
    m = match_tracks(np.zeros(4), np.array([1, 1, 2, 0]), np.full(4, 0.25))
    assert len(m) == 0
    for values in (m.size, m.particle_id, m.majority_hits, m.particle_hits, m.majority_weight):
        assert values.shape == (0,)


def test_classify_refuses_an_event_without_truth() -> None:
    event = replace(metrics_event([1] * 5, {1: (2.0, 0.0, 5)}), truth=None)
    with pytest.raises(ValueError, match="event 1 has no truth"):
        classify(event, np.ones(5))
    with pytest.raises(ValueError, match="has no truth"):
        PhysicsTotals().add(event, np.ones(5))


def test_the_default_beam_line_is_the_z_axis() -> None:
    # vertices 9.99 mm and 10.5 mm out along x: only the first is within 10 mm of (0, 0)
    ev = metrics_event([1] * 5 + [2] * 5, {1: (2.0, 9.99, 5), 2: (2.0, 10.5, 5)})
    track = np.r_[np.ones(5), np.full(5, 2)]
    assert classify(ev, track).reconstructable.tolist() == [True, False]
    assert physics_metrics(ev, track)["n_reconstructable"] == 1
    totals = PhysicsTotals()
    c = totals.add(ev, track)
    assert c.reconstructable.tolist() == [True, False] and c.found.tolist() == [True, True]
    assert totals.report()["n_reconstructable"] == 1


def test_noise_hits_in_a_track_count_against_its_purity_in_the_score() -> None:
    """trackml-scoring.md step 3: majority hits / *track* hits > 0.5, every hit of the
    track counting, noise too (the official scorer joins all the submission's rows). 4 hits
    of particle 1 with 5 noise hits: 4/9, not good; the same 4 with 3 noise hits: 4/7."""
    pid = np.array([1, 1, 1, 1] + [0] * 5)
    weight = np.array([0.25] * 4 + [0.0] * 5)
    assert trackml_score(pid, weight, np.ones(9, np.int64)) == 0.0
    assert trackml_score(pid, weight, np.r_[np.ones(7, np.int64), 0, 0]) == pytest.approx(1.0)
    # and so in the totals the evaluation reports
    ev = metrics_event(pid.tolist(), {1: (2.0, 0.0, 4)})
    t = ev.truth
    assert t is not None
    ev = replace(ev, truth=replace(t, hits=replace(t.hits, weight=weight.astype(np.float32))))
    totals = PhysicsTotals()
    totals.add(ev, np.ones(9, np.int64))
    assert totals.report()["trackml_score"] == 0.0


def test_efficiency_without_the_vertex_cut_counts_only_reconstructable_particles() -> None:
    """A found particle below 1 GeV (or with too few hits) is in neither the numerator nor
    the denominator of tracking_efficiency_all: it can never exceed 1."""
    hit_pid = [1] * 5 + [2] * 5 + [3] * 4
    ev = metrics_event(hit_pid, {1: (2.0, 50.0, 5), 2: (0.5, 0.0, 5), 3: (2.0, 0.0, 4)})
    track = np.array([1] * 5 + [2] * 5 + [3] * 4)  # every particle found
    m = physics_metrics(ev, track)
    assert m["n_reconstructable_all"] == 1 and m["n_reconstructed_all"] == 1
    assert m["tracking_efficiency_all"] == 1.0
    assert m["n_reconstructable"] == 0 and np.isnan(m["tracking_efficiency"])


def test_the_reported_trackml_score_is_the_mean_of_the_events_scores() -> None:
    """Each event's weights sum to 1: the challenge's figure is the mean of per-event scores
    (0.0, 0.6 and 1.0 here: 8/15, where the median would say 0.6)."""
    ev = metrics_event([1] * 5, {1: (2.0, 0.0, 5)})
    t = ev.truth
    assert t is not None
    ev = replace(ev, truth=replace(t, hits=replace(t.hits, weight=np.full(5, 0.2, np.float32))))
    totals = PhysicsTotals()
    for labels in (np.zeros(5), np.r_[1, 1, 1, 0, 0], np.ones(5)):
        totals.add(ev, labels)
    assert totals.scores == pytest.approx([0.0, 0.6, 1.0])
    assert totals.report()["trackml_score"] == pytest.approx(1.6 / 3)


def test_negative_track_ids_are_tracks() -> None:
    """Only 0 means "in no track": a submission read back may number its tracks below 0,
    and such a track is scored and classified as any other."""
    pid = np.array([1, 1, 1, 2, 2])
    track = np.array([-1, -1, -1, 0, 0])
    m = match_tracks(track, pid)
    assert m.track_id.tolist() == [-1] and m.matched.tolist() == [True]
    assert trackml_score(pid, np.full(5, 0.2), track) == pytest.approx(0.6)
    ev = metrics_event(pid.tolist(), {1: (2.0, 0.0, 3), 2: (2.0, 0.0, 2)})
    assert classify(ev, track).found.tolist() == [True, False]


def test_a_fake_track_between_two_fragments_hides_no_duplicate() -> None:
    """Particle 1 in three tracks: 4 of its 9 hits alone (pure), 3 with 4 of others (fake)
    and 2 alone (pure): the second pure fragment is a duplicate, whatever the fake one's
    count of its hits."""
    hit_pid = [1] * 9 + [2] * 2 + [3] * 2
    track = np.array([1] * 4 + [2] * 3 + [3] * 2 + [2] * 4)
    ev = metrics_event(hit_pid, {1: (2.0, 0.0, 9), 2: (2.0, 0.0, 2), 3: (2.0, 0.0, 2)})
    c = classify(ev, track)
    assert c.track_fake.tolist() == [False, True, False]
    assert c.track_duplicate.tolist() == [False, False, True]
    assert physics_metrics(ev, track)["duplicate_rate"] == pytest.approx(1 / 2)


def test_totals_asked_always_report_every_key_before_any_event() -> None:
    """``report(always=True)`` (a replay of events with truth, none scored yet) has the keys of
    a report of scored events: counts 0, rates and the TrackML score NaN, not an empty dict."""
    scored = PhysicsTotals()
    scored.add(metrics_event([1] * 5, {1: (2.0, 0.0, 5)}), np.ones(5))
    report = PhysicsTotals().report(always=True)
    assert set(report) == set(scored.report())
    assert report["n_tracks"] == report["n_reconstructable"] == report["events_scored"] == 0
    for key in ("trackml_score", "tracking_efficiency", "fake_rate", "duplicate_rate"):
        assert np.isnan(report[key]), key


def test_matching_without_weights_gives_majority_weights_of_zero() -> None:
    """``MatchResult.majority_weight`` is 0 where no truth weights are given (classify's
    matching), not the majority hit count."""
    m = match_tracks(np.array([1, 1, 1, 2, 2]), np.array([4, 4, 5, 6, 6]))
    assert m.majority_hits.tolist() == [2, 2]
    assert m.majority_weight.tolist() == [0.0, 0.0]
