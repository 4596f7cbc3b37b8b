"""TrackML score, track-to-particle matching and physics metrics (efficiency, fakes, duplicates).

Definitions follow docs/trackml-scoring.md in the shared folder. Track id 0 means "in no
track": such hits belong to no track and count for no particle's efficiency; the TrackML
score scores them as a submission gives them, each a track of its own (``alone_as_tracks``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from streamtrk.event import Event, alone_as_tracks, as_int64

RECONSTRUCTABLE_MIN_PT = 1.0  # GeV
RECONSTRUCTABLE_MIN_HITS = 5
RECONSTRUCTABLE_MAX_VR = 10.0  # mm


@dataclass(frozen=True)
class MatchResult:
    """Per-track majority matching; tracks sorted by id (track 0 excluded).

    The majority particle has the most hits in the track (ties: smallest particle_id;
    0 is noise). ``particle_hits`` counts its hits among all hits of the event.
    """

    track_id: np.ndarray
    size: np.ndarray
    particle_id: np.ndarray
    majority_hits: np.ndarray
    particle_hits: np.ndarray
    majority_weight: np.ndarray  # summed truth weight of the majority hits (0 without weights)

    def __len__(self) -> int:
        return len(self.track_id)

    @property
    def pure(self) -> np.ndarray:
        """The majority particle owns > 50% of the track's hits."""
        return 2 * self.majority_hits > self.size

    @property
    def matched(self) -> np.ndarray:
        """Good in the TrackML score sense: pure and holds > 50% of the particle's hits."""
        return self.pure & (2 * self.majority_hits > self.particle_hits)


def _occurrences(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """How often each of ``values`` occurs in ``among``."""
    srt = np.sort(among)
    return np.searchsorted(srt, values, "right") - np.searchsorted(srt, values, "left")


def match_tracks(
    track_id_per_hit: np.ndarray,
    particle_id_per_hit: np.ndarray,
    weight_per_hit: np.ndarray | None = None,
) -> MatchResult:
    """Match each track (hits sharing a non-zero track id) to its majority particle."""
    track = as_int64(track_id_per_hit, "track ids")
    pid = as_int64(particle_id_per_hit, "particle ids")
    if track.shape != pid.shape or track.ndim != 1:
        raise ValueError(f"track ids {track.shape} and particle ids {pid.shape} must be equal 1-D")
    weight = np.zeros(len(pid)) if weight_per_hit is None else np.asarray(weight_per_hit, float)
    if weight.shape != pid.shape:
        raise ValueError(f"weights {weight.shape} do not match particle ids {pid.shape}")
    assigned = track != 0
    srt = np.lexsort((pid[assigned], track[assigned]))
    t, p, w = track[assigned][srt], pid[assigned][srt], weight[assigned][srt]
    if len(t) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return MatchResult(empty, empty, empty, empty, empty, np.zeros(0))
    # (track, particle) pairs and their hit counts / weights
    pair_start = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (p[1:] != p[:-1])])
    pair_t, pair_p = t[pair_start], p[pair_start]
    pair_n = np.diff(np.r_[pair_start, len(t)])
    pair_w = np.add.reduceat(w, pair_start)
    # per track: the pair with most hits, ties to the smallest particle id
    best = np.lexsort((pair_p, -pair_n, pair_t))
    first = best[np.r_[True, pair_t[best][1:] != pair_t[best][:-1]]]
    track_start = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    return MatchResult(
        track_id=pair_t[first],
        size=np.diff(np.r_[track_start, len(t)]),
        particle_id=pair_p[first],
        majority_hits=pair_n[first],
        particle_hits=_occurrences(pair_p[first], pid),
        majority_weight=pair_w[first],
    )


def trackml_score(
    truth_particle_id: np.ndarray, truth_weight: np.ndarray, track_id: np.ndarray
) -> float:
    """TrackML score of one event (arrays aligned per hit; track id 0: hit in no track).

    The truth weight of the majority hits in good tracks over the total truth weight;
    NaN if the total weight is 0; ValueError for a negative or non-finite weight. A hit in
    no track scores as a track of its own, as in a submission (``write_submission``), where
    the TrackML scorer reads every id as a track: good only for a particle with that one hit
    in the event.
    """
    weight = np.asarray(truth_weight, dtype=np.float64)
    if not np.all(np.isfinite(weight) & (weight >= 0)):  # the readers refuse such truth
        raise ValueError("truth weights must be finite and >= 0")
    total = weight.sum()
    if total == 0:
        return float("nan")
    m = match_tracks(alone_as_tracks(track_id), truth_particle_id, weight)
    return float(m.majority_weight[m.matched].sum() / total)


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den`` is 0."""
    return num / den if den else float("nan")


@dataclass(frozen=True)
class Classification:
    """One event's particles and tracks classified by the definitions in physics_metrics."""

    particle_pt: np.ndarray
    particle_eta: np.ndarray
    reconstructable: np.ndarray  # pT >= 1 GeV, >= 5 hits, vertex < 10 mm from the beam line
    reconstructable_all: np.ndarray  # the same without the vertex cut
    found: np.ndarray  # some track is good for the particle
    track_id: np.ndarray
    track_fake: np.ndarray
    track_duplicate: np.ndarray
    track_matched: np.ndarray  # good in the TrackML sense (see MatchResult.matched)
    track_particle: np.ndarray  # majority particle id (0: noise)


def classify(
    event: Event, track_id_per_hit: np.ndarray, beam_line: tuple[float, float] = (0.0, 0.0)
) -> Classification:
    """Classify particles (reconstructable, found) and tracks (fake, duplicate); the vertex
    cut is about ``beam_line`` (x, y in mm)."""
    if event.truth is None:
        raise ValueError(f"event {event.event} has no truth")
    hit_pid = event.truth.hits.to(np).particle_id
    particles = event.truth.particles.to(np)
    m = match_tracks(track_id_per_hit, hit_pid)
    nhits = _occurrences(particles.particle_id, hit_pid)  # in this event, not the nhits column
    selected = (
        (particles.particle_id != 0)
        & (particles.pt >= RECONSTRUCTABLE_MIN_PT)
        & (nhits >= RECONSTRUCTABLE_MIN_HITS)
    )
    central = selected & (particles.vr_from(beam_line) < RECONSTRUCTABLE_MAX_VR)
    found = np.isin(particles.particle_id, m.particle_id[m.matched & (m.particle_id != 0)])
    real = m.pure & (m.particle_id != 0)
    # A duplicate is a real track whose particle already has another: each particle's
    # best real track (the one matched, else the one holding most of its hits, else the
    # one with the smallest hit id: not the lowest track id, which follows the hits' order
    # in the message) is not, so that the binned rates see the fragments' pT and eta.
    first_hit = _smallest_hit_ids(track_id_per_hit, event.hits.to(np).hit_id)
    order = np.lexsort((first_hit, -m.majority_hits, ~m.matched, ~real, m.particle_id))
    later = np.zeros(len(m), dtype=bool)
    same = m.particle_id[order][1:] == m.particle_id[order][:-1]
    later[order[1:]] = same & real[order][1:] & real[order][:-1]
    return Classification(
        particle_pt=particles.pt,
        particle_eta=particles.eta,
        reconstructable=central,
        reconstructable_all=selected,
        found=found,
        track_id=m.track_id,
        track_fake=~real,
        track_duplicate=later,
        track_matched=m.matched & (m.particle_id != 0),
        track_particle=m.particle_id,
    )


def _smallest_hit_ids(track_id_per_hit: np.ndarray, hit_id: np.ndarray) -> np.ndarray:
    """Per track (non-zero id) in the order of their ids, as :func:`match_tracks` gives
    them, the smallest id of its hits."""
    track = as_int64(track_id_per_hit, "track ids")
    assigned = track != 0
    order = np.argsort(track[assigned])
    grouped = track[assigned][order]
    starts = np.flatnonzero(np.diff(grouped, prepend=grouped[:1] - 1))  # none without tracks
    return np.minimum.reduceat(as_int64(hit_id, "hit ids")[assigned][order], starts)


def physics_metrics(
    event: Event, track_id_per_hit: np.ndarray, beam_line: tuple[float, float] = (0.0, 0.0)
) -> dict[str, float]:
    """Tracking efficiency, fake and duplicate rates of one event's track labels.

    - ``tracking_efficiency``: matched / reconstructable particles (pT >= 1 GeV, >= 5 hits
      in this event, production vertex within 10 mm of ``beam_line``, x, y in mm);
      ``tracking_efficiency_all`` drops the vertex cut. A particle is matched when some
      track is good for it (see ``matched``).
    - ``fake_rate``: tracks with no majority particle over 50% of the hits, or a noise
      majority, over all tracks.
    - ``duplicate_rate``: pure (non-noise) tracks whose particle already has another pure
      track, over all pure tracks (the particle's best track is not the duplicate:
      :func:`classify`).
    Also returns the counts behind them. Rates with an empty denominator are NaN.
    """
    return metrics_from_counts(counts(classify(event, track_id_per_hit, beam_line)))


COUNT_NAMES = (
    "n_tracks",
    "n_reconstructable",
    "n_reconstructable_all",
    "n_reconstructed",
    "n_reconstructed_all",
    "n_fake",
    "n_duplicate",
)


def counts(c: Classification) -> dict[str, int]:
    """The counts behind the physics metrics (they add up over events), named as in
    :data:`COUNT_NAMES`."""
    return {
        "n_tracks": len(c.track_id),
        "n_reconstructable": int(c.reconstructable.sum()),
        "n_reconstructable_all": int(c.reconstructable_all.sum()),
        "n_reconstructed": int((c.found & c.reconstructable).sum()),
        "n_reconstructed_all": int((c.found & c.reconstructable_all).sum()),
        "n_fake": int(c.track_fake.sum()),
        "n_duplicate": int(c.track_duplicate.sum()),
    }


def metrics_from_counts(n: dict[str, int]) -> dict[str, float]:
    """Rates from (summed) counts; NaN where a denominator is empty."""
    return {
        "tracking_efficiency": ratio(n["n_reconstructed"], n["n_reconstructable"]),
        "tracking_efficiency_all": ratio(n["n_reconstructed_all"], n["n_reconstructable_all"]),
        "fake_rate": ratio(n["n_fake"], n["n_tracks"]),
        "duplicate_rate": ratio(n["n_duplicate"], n["n_tracks"] - n["n_fake"]),
        **n,
    }


@dataclass
class PhysicsTotals:
    """Physics counts and TrackML scores summed over events (offline and replayed alike)."""

    counts: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)

    def add(
        self,
        event: Event,
        track_id_per_hit: np.ndarray,
        beam_line: tuple[float, float] = (0.0, 0.0),
    ) -> Classification:
        """Score one event's track labels (its vertex cut about ``beam_line``); returns its
        classification."""
        c = classify(event, track_id_per_hit, beam_line)
        self.counts.update(counts(c))
        t = event.truth
        assert t is not None  # classify refuses an event without truth
        self.scores.append(trackml_score(t.hits.particle_id, t.hits.weight, track_id_per_hit))
        return c

    def report(self, *, always: bool = False) -> dict[str, float]:
        """Rates and counts (``metrics_from_counts``) of every event added, the mean TrackML
        score over the events that have one (a total truth weight above 0) and their number,
        ``events_scored``; when no event was added, empty, or with ``always`` the same keys
        (counts 0, rates and score NaN)."""
        if not self.scores and not always:
            return {}
        defined = [s for s in self.scores if not np.isnan(s)]
        n = {k: self.counts[k] for k in COUNT_NAMES}
        return metrics_from_counts(n) | {
            "trackml_score": float(np.mean(defined)) if defined else float("nan"),
            "events_scored": len(defined),
        }
