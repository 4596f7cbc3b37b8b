"""Offline evaluation: reconstruct events in batches and score them against truth."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from streamtrk.detector import GEV_PER_TESLA_MM, lookup_layer
from streamtrk.eval.missed import STAGES, lost_at
from streamtrk.eval.score import (
    RECONSTRUCTABLE_MAX_VR,
    RECONSTRUCTABLE_MIN_PT,
    PhysicsTotals,
    ratio,
)
from streamtrk.event import Event, Particles, Tracks
from streamtrk.io.paths import save_png
from streamtrk.recon.budget import EventTooDense
from streamtrk.recon.reconstructor import ReconResult, Reconstructor
from streamtrk.recon.truth import particle_pt, true_segments
from streamtrk.xp import index_of, lookup, to_host, wrapped_angle

EDGE_PT_MIN = RECONSTRUCTABLE_MIN_PT  # GeV: target particles of the edge efficiency, purity


@dataclass(frozen=True)
class SegmentTruth:
    """One event's true segments (``recon.truth.true_segments``), found once and counted
    against any of its edge sets.

    Targets are segments of particles with pT >= 1 GeV; ``central`` ones also come from
    within 10 mm of the beam line, x, y in mm (the cuts of reconstructable particles).
    Purity ignores true segments of softer particles (they are neither targets nor wrong).
    """

    n_hits: int
    key: np.ndarray  # first hit * n_hits + second hit, per segment
    target: np.ndarray
    central: np.ndarray

    @classmethod
    def of(cls, event: Event, beam_line: tuple[float, float] = (0.0, 0.0)) -> SegmentTruth:
        seg = true_segments(event, 0.0)
        assert event.truth is not None  # true_segments refuses an event without truth
        pid = event.truth.hits.particle_id[seg[0]]
        particles = event.truth.particles
        idx, known = index_of(particles.particle_id, pid)
        vr = np.full(len(pid), np.inf)  # unknown particles: not central
        vr[known] = particles.vr_from(beam_line)[idx[known]]
        target = particle_pt(event, pid) >= EDGE_PT_MIN
        n = len(event.hits)
        return cls(
            n, seg[0].astype(np.int64) * n + seg[1], target, target & (vr < RECONSTRUCTABLE_MAX_VR)
        )

    def counts(self, edges: np.ndarray) -> dict[str, int]:
        """Edge-level truth counts of the edges (2, k) (local hit numbering)."""
        in_graph = np.isin(self.key, edges[0].astype(np.int64) * self.n_hits + edges[1])
        n_soft_true = int((in_graph & ~self.target).sum())
        return {
            "targets": int(self.target.sum()),
            "targets_found": int((self.target & in_graph).sum()),
            "central": int(self.central.sum()),
            "central_found": int((self.central & in_graph).sum()),
            "edges": edges.shape[1],
            "edges_counted": edges.shape[1] - n_soft_true,
        }


def edge_counts(event: Event, edges: np.ndarray) -> dict[str, int]:
    """Edge-level truth counts of one event's edges (see :class:`SegmentTruth`)."""
    return SegmentTruth.of(event).counts(edges)


#: Bins of the fake and duplicate rates by track pT (GeV, fitted) and by track |eta|.
PT_BINS = (0.0, 0.5, 0.85, 1.0, 1.5, 3.0, 10.0, np.inf)
ABS_ETA_BINS = (0.0, 1.0, 1.5, 2.5, 4.0, np.inf)
#: Bins of the pT resolution and charge misidentification by the particle's true pT (GeV).
TRUE_PT_BINS = (0.0, 1.0, 3.0, 10.0, 100.0, 1000.0, np.inf)
#: Columns of ``Evaluation.track_rows``.
TRACK_COLUMNS = (
    "pt",
    "eta",
    "chi2_ndf",
    "fake",
    "duplicate",
    "matched",
    "true_pt",
    "true_q",
    "charge",
    "d0",
    "z0",
    "true_d0",
    "true_z0",
    "sigma_q_over_pt",
    "sigma_d0",
    "sigma_z0",
    "phi",
    "true_phi",
    "sigma_phi",
)


@dataclass
class Evaluation:
    """Accumulates physics, edge and timing figures over batches."""

    n_events: int = 0
    # Events read again (same run, number and hits: a looped replay's recording), scored once.
    n_repeated: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)  # one per event
    physics: PhysicsTotals = field(default_factory=PhysicsTotals)
    graph_edges: Counter[str] = field(default_factory=Counter)
    pruned_edges: Counter[str] = field(default_factory=Counter)
    gnn_edges: Counter[str] = field(default_factory=Counter)
    # Reconstructable particles (vertex cut as the efficiency's) no track found, by the stage
    # that lost them (``streamtrk.eval.missed``).
    missed: Counter[str] = field(default_factory=Counter)
    # Per particle: pt, eta, reconstructable, found, reconstructable without the vertex cut,
    # and its vertex's distance from the beam line (mm).
    particles: list[np.ndarray] = field(default_factory=list)
    # Per track, the TRACK_COLUMNS: fitted pt, eta, chi2/ndf; fake, duplicate, matched; the
    # majority particle's pT and charge (NaN for noise); the fitted charge, d0 and z0; the
    # particle's d0 and z0 (NaN for noise, and without ``bfield``); the fit's standard errors
    # of q/pT, d0 and z0.
    track_rows: list[np.ndarray] = field(default_factory=list)
    # Per (run, event): hit ids and track labels (a submission's rows), the tracks, and a
    # hash of the hits (another event of that run and number is refused).
    submission: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tracks: dict[tuple[int, int], Tracks] = field(default_factory=dict)
    hits_digests: dict[tuple[int, int], bytes] = field(default_factory=dict)
    n_hits: int = 0
    n_built_edges: int = 0
    n_scored_edges: int = 0
    # Events over the work budget (run, event, what, count, limit): the daemon answers them
    # ``too_dense``, so they are scored as events with no edges and no tracks.
    refused: list[dict[str, Any]] = field(default_factory=list)
    # The beam line (x, y in mm) the tracks' d0 and z0 are of, and the field (T) that bends
    # the particles' helices: the reconstructor's (see ``of``).
    beam_line: tuple[float, float] = (0.0, 0.0)
    bfield: float | None = None
    # The detector's layer table (``Detector.layer_lut``): hits on layers it does not have
    # make no edge, and are counted (None: not counted).
    layer_lut: np.ndarray | None = None
    n_hits_no_layer: int = 0

    @classmethod
    def of(cls, rec: Reconstructor) -> Evaluation:
        """An empty evaluation of ``rec``'s tracks (its beam line, field and layers)."""
        return cls(
            beam_line=rec.beam_spot,
            bfield=float(rec.detector.bfield),
            layer_lut=rec.detector.layer_lut,
        )

    def add(
        self, events: list[Event], result: ReconResult, seconds: float, threshold: float
    ) -> None:
        """Count a batch's events and their reconstruction (events of distinct run and event
        numbers: :func:`evaluate` passes :meth:`first_reads`)."""
        self.n_events += len(events)
        self.seconds += seconds
        for stage, v in result.timings.items():  # a batch's time shared by its events
            self.stage_seconds.setdefault(stage, []).extend([v / len(events)] * len(events))
        edges = to_host(result.graph.edge_index)
        scores = to_host(result.scores)
        offsets = result.node_offsets
        event_of = np.searchsorted(offsets[1:], edges[0], side="right")
        unpruned = result.built is result.graph
        built = edges if unpruned else to_host(result.built.edge_index)
        built_of = event_of if unpruned else np.searchsorted(offsets[1:], built[0], side="right")
        self.n_built_edges += built.shape[1]
        self.n_scored_edges += edges.shape[1]
        for k, (ev, tracks) in enumerate(zip(events, result.tracks, strict=True)):
            labels = tracks.track_id_per_hit(len(ev.hits))
            self._count_hits(ev)
            self.submission[ev.run, ev.event] = (np.asarray(ev.hits.hit_id), labels)
            self.tracks[ev.run, ev.event] = tracks
            if ev.truth is None:
                continue
            segments = SegmentTruth.of(ev, self.beam_line)
            mine = event_of == k
            local = edges[:, mine] - offsets[k]
            stage_edges = (
                local if unpruned else built[:, built_of == k] - offsets[k],
                local,
                local[:, scores[mine] > threshold],
            )
            pruned = segments.counts(local)
            self.graph_edges.update(pruned if unpruned else segments.counts(stage_edges[0]))
            self.pruned_edges.update(pruned)
            self.gnn_edges.update(segments.counts(stage_edges[2]))
            c = self._score(ev, labels, stage_edges)
            names: tuple[str, ...] = ("pt", "eta", "phi", "charge", "d0", "z0")
            names += ("sigma_q_over_pt", "sigma_d0", "sigma_z0", "sigma_phi")
            p = {n: _track_param(tracks, c.track_id, n) for n in names}
            ndf = np.maximum(_track_param(tracks, c.track_id, "ndf"), 1)
            chi2_ndf = _track_param(tracks, c.track_id, "chi2") / ndf
            flags = (c.track_fake, c.track_duplicate, c.track_matched)
            assert ev.truth is not None  # add skips events without truth
            truth = self.perigee_truth(ev.truth.particles, c.track_particle)
            row = [p["pt"], p["eta"], chi2_ndf, *flags, truth["pt"], truth["q"], p["charge"]]
            row += [p["d0"], p["z0"], truth["d0"], truth["z0"]]
            row += [p["sigma_q_over_pt"], p["sigma_d0"], p["sigma_z0"]]
            row += [p["phi"], truth["phi"], p["sigma_phi"]]
            self.track_rows.append(np.stack(row, 1))

    def perigee_truth(self, particles: Particles, particle_id: np.ndarray) -> dict[str, np.ndarray]:
        """pT, charge, d0, z0 and phi of the particles ``particle_id`` of ``particles`` (NaN
        where unknown: noise): the perigee to the beam line of the helix from each vertex, in
        the fit's conventions (``streamtrk.recon.fit``; NaN without ``bfield``)."""
        p = particles.to(np)
        idx, known = index_of(p.particle_id, particle_id)
        vx, vy, vz, px, py, pz, q = (  # float64: a TeV track's circle is kilometres wide
            lookup(getattr(p, k), idx, known) for k in ("vx", "vy", "vz", "px", "py", "pz", "q")
        )
        pt = np.hypot(px, py)
        # Binned and cut as the reconstructable selection cuts it (Particles.pt, its float32
        # hypot): a particle of exactly 1 GeV is of "pT >= 1 GeV" in every key.
        out = {"pt": lookup(p.pt, idx, known), "q": q}
        if self.bfield is None:
            return out | {k: np.full(len(q), np.nan) for k in ("d0", "z0", "phi")}
        with np.errstate(divide="ignore", invalid="ignore"):  # a particle at rest: NaN
            radius = pt / (GEV_PER_TESLA_MM * abs(self.bfield))
            h = -q * np.sign(self.bfield)  # +1: counter-clockwise seen from +z
            ux, uy = px / pt, py / pt
            # The circle's centre from the beam line; the turn from the vertex to the perigee.
            cx = vx - self.beam_line[0] - h * radius * uy
            cy = vy - self.beam_line[1] + h * radius * ux
            turn = h * (np.arctan2(-cy, -cx) - np.arctan2(-h * ux, h * uy))
            turn = wrapped_angle(turn)
            return out | {
                "d0": -h * (radius - np.hypot(cx, cy)),  # at d0 (-sin phi, cos phi)
                "z0": vz + pz / pt * radius * turn,
                "phi": wrapped_angle(np.arctan2(uy, ux) + h * turn),  # turned with the position
            }

    @property
    def n_without_kinematics(self) -> int:
        """Events with truth but no particle kinematics (TrackML CSV without -particles.csv:
        every pT unknown, NaN): no particle of theirs is reconstructable, so they count in
        no efficiency."""
        return sum(bool(len(p) and np.isnan(p[:, 0]).all()) for p in self.particles)

    def track_table(self) -> np.ndarray:
        """The track rows of every event as one (tracks, TRACK_COLUMNS) array."""
        return np.concatenate([np.zeros((0, len(TRACK_COLUMNS))), *self.track_rows])

    def _score(
        self, ev: Event, labels: np.ndarray, stage_edges: tuple[np.ndarray, ...] | None
    ) -> Any:
        """Physics counts of one event's track labels; keeps its particles' row and counts
        the stages that lost its missed particles, given its edges at each (None: refused)."""
        c = self.physics.add(ev, labels, self.beam_line)
        assert ev.truth is not None  # physics.add refuses an event without truth
        particles = ev.truth.particles.to(np)
        columns = [c.particle_pt, c.particle_eta, c.reconstructable, c.found]
        columns += [c.reconstructable_all, particles.vr_from(self.beam_line)]
        self.particles.append(np.stack(columns, 1))
        missed = particles.particle_id[c.reconstructable & ~c.found]
        if stage_edges is None:
            self.missed["refused"] += len(missed)
        elif len(missed):
            stages = lost_at(ev.truth.hits.to(np).particle_id, missed, stage_edges)
            self.missed.update(STAGES[k] for k in stages)
        return c

    def refuse(self, events: list[Event], refusal: EventTooDense) -> None:
        """Count the events of a batch that ``refusal`` names as reconstructed with no edges
        and no tracks (what the daemon's ``too_dense`` answer gives), and list them."""
        for k, what, count, limit in zip(
            refusal.events, refusal.whats, refusal.counts, refusal.limits, strict=True
        ):
            ev = events[k]
            self.refused.append(
                {"run": ev.run, "event": ev.event, "what": what, "count": count, "limit": limit}
            )
            self.n_events += 1
            self._count_hits(ev)
            labels = np.zeros(len(ev.hits), dtype=np.int64)
            self.submission[ev.run, ev.event] = (np.asarray(ev.hits.hit_id), labels)
            self.tracks[ev.run, ev.event] = Tracks.empty()
            if ev.truth is None:
                continue
            none = SegmentTruth.of(ev, self.beam_line).counts(np.zeros((2, 0), dtype=np.int64))
            for counts in (self.graph_edges, self.pruned_edges, self.gnn_edges):
                counts.update(none)
            self._score(ev, labels, None)

    def _count_hits(self, ev: Event) -> None:
        """Count the event's hits, and those on layers the detector does not have."""
        self.n_hits += len(ev.hits)
        if self.layer_lut is not None:
            layer = lookup_layer(self.layer_lut, ev.hits.volume_id, ev.hits.layer_id)
            self.n_hits_no_layer += int(np.count_nonzero(layer < 0))

    def first_reads(self, events: Iterable[Event]) -> Iterator[Event]:
        """``events`` but those read before (same run, number and hits: recorded twice, as a
        looped replay records), which are counted in ``n_repeated``: an event is scored once
        however often it was recorded. ValueError where another event of its run and number
        came before: its tracks and submission rows would replace the first one's."""
        for ev in events:
            key, digest = (ev.run, ev.event), ev.hits.digest()
            known = self.hits_digests.setdefault(key, digest)
            if known is digest:  # the first of its run and number
                yield ev
            elif known == digest:
                self.n_repeated += 1
            else:
                raise ValueError(
                    f"two events with other hits are both run {ev.run}, event {ev.event} (two "
                    "producers' runs recorded together?): events are scored, and their tracks "
                    "and submission rows written, by run and number; evaluate each producer's "
                    "events apart"
                )

    def report(self) -> dict[str, Any]:
        """The report JSON (keys documented in ``streamtrk evaluate --help``)."""
        n = max(self.n_events, 1)
        out: dict[str, Any] = {
            "events": self.n_events,
            "events_repeated": self.n_repeated,
            "events_with_truth": len(self.particles),  # one row block per event scored
            "seconds_per_event": self.seconds / n,
            "stage_seconds": {k: sum(v) / len(v) for k, v in self.stage_seconds.items()},
            "timings": {k: float(np.median(v)) for k, v in self.stage_seconds.items()},
            "hits_per_event": self.n_hits / n,
            "hits_on_no_layer": self.n_hits_no_layer,
            "edges_per_hit": self.n_built_edges / max(self.n_hits, 1),
            "graph_edges_per_event": self.n_built_edges / n,
            "gnn_edges_per_event": self.n_scored_edges / n,
            "events_refused": len(self.refused),
            "refused": self.refused,
        }
        if physics := self.physics.report():
            out |= physics
            counts = (
                ("graph", self.graph_edges),
                ("pruned", self.pruned_edges),
                ("gnn", self.gnn_edges),
            )
            for name, c in counts:
                out[f"{name}_edge_efficiency"] = ratio(c["central_found"], c["central"])
                out[f"{name}_edge_efficiency_all"] = ratio(c["targets_found"], c["targets"])
                out[f"{name}_edge_purity"] = ratio(c["targets_found"], c["edges_counted"])
            out["missed_by_stage"] = {stage: self.missed[stage] for stage in STAGES}
            rows = self.track_table()
            out |= _track_rates(rows) | _resolution(rows)
        return out


def _track_rates(rows: np.ndarray) -> dict[str, Any]:
    """Fake and duplicate rates by track pT and |eta| bin, and the median chi2/ndf of
    matched tracks (rows: pt, eta, chi2/ndf, fake, duplicate, matched)."""
    pt, eta, chi2_ndf = rows[:, 0], rows[:, 1], rows[:, 2]
    fake, dup, matched = (rows[:, i].astype(bool) for i in (3, 4, 5))
    out: dict[str, Any] = {}
    for name, x, bins in (("pt", pt, PT_BINS), ("abs_eta", np.abs(eta), ABS_ETA_BINS)):
        fakes, dups = {}, {}
        for lo, hi in itertools.pairwise(bins):
            sel = (x >= lo) & (x < hi)
            label = f"{lo:g}-{hi:g}"
            fakes[label] = ratio(int((sel & fake).sum()), int(sel.sum()))
            dups[label] = ratio(int((sel & dup).sum()), int((sel & ~fake).sum()))
        out[f"fake_rate_by_{name}"] = fakes
        out[f"duplicate_rate_by_{name}"] = dups
    good = chi2_ndf[matched & np.isfinite(chi2_ndf)]
    out["chi2_ndf_median"] = float(np.median(good)) if len(good) else float("nan")
    return out


def _resolution(rows: np.ndarray) -> dict[str, Any]:
    """Helix-fit quality of matched tracks by their particle's true pT (rows: the
    TRACK_COLUMNS): pT resolution (half-width of the central 68% of fitted / true pT - 1),
    pT bias (its median), q/pT resolution (half-width of the central 68% of the error on
    q/pT, 1/GeV: the same at any pT where the hit resolutions dominate, while the relative pT
    error grows with pT), charge misidentification, and d0, z0 and phi resolutions
    (half-widths of the central 68% of their errors, mm and rad; particles with a perigee
    truth only), the pulls of q/pT, d0, z0 and phi (half-widths of the central 68% of error /
    the fit's standard error: 1 where the standard errors are right); and the pT bias of
    matched tracks of particles of 1 GeV or more by the tracks' |eta|."""
    col = _columns(rows)
    matched, errors, pulls = _fit_errors(col)
    true_pt, q, true_q = (col[n][matched] for n in ("true_pt", "charge", "true_q"))
    names: tuple[str, ...] = ("matched_tracks", "pt_resolution", "pt_bias", "q_over_pt_resolution")
    names += ("d0_resolution", "z0_resolution", "phi_resolution")
    names += ("q_over_pt_pull", "d0_pull", "z0_pull", "phi_pull")
    out: dict[str, dict[str, Any]] = {f"{n}_by_true_pt": {} for n in names}
    out["charge_misid_rate_by_true_pt"] = {}
    for lo, hi in itertools.pairwise(TRUE_PT_BINS):
        sel = (true_pt >= lo) & (true_pt < hi)
        label, n = f"{lo:g}-{hi:g}", int(sel.sum())
        out["matched_tracks_by_true_pt"][label] = n
        for kind, values in (("resolution", errors), ("pull", pulls)):
            for name, err in values.items():
                out[f"{name}_{kind}_by_true_pt"][label] = _half_width(err[sel])
        out["pt_bias_by_true_pt"][label] = float(np.median(errors["pt"][sel])) if n else np.nan
        out["charge_misid_rate_by_true_pt"][label] = ratio(int((q != true_q)[sel].sum()), n)
    # The pT scale across the detector (a field or alignment fault shows here).
    abs_eta, hard = np.abs(col["eta"][matched]), true_pt >= RECONSTRUCTABLE_MIN_PT
    out["pt_bias_by_abs_eta"] = {}
    for lo, hi in itertools.pairwise(ABS_ETA_BINS):
        sel = hard & (abs_eta >= lo) & (abs_eta < hi)
        bias = float(np.median(errors["pt"][sel])) if sel.any() else np.nan
        out["pt_bias_by_abs_eta"][f"{lo:g}-{hi:g}"] = bias
    return out


def _fit_errors(
    col: dict[str, np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The matched, fitted tracks of the track columns ``col`` (a mask), their errors against
    their particle (pt relative, q/pT, d0, z0, phi) and the pulls of q/pT, d0, z0 and phi
    (error / the fit's standard error; NaN where that is unknown, as in an older reply)."""
    matched = col["matched"].astype(bool) & np.isfinite(col["pt"])
    true_pt, pt, q, true_q = (col[n][matched] for n in ("true_pt", "pt", "charge", "true_q"))
    with np.errstate(divide="ignore", invalid="ignore"):  # a particle of no momentum: not finite
        errors = {
            "pt": pt / true_pt - 1,
            "q_over_pt": q / pt - true_q / true_pt,
            "d0": col["d0"][matched] - col["true_d0"][matched],
            "z0": col["z0"][matched] - col["true_z0"][matched],
            "phi": wrapped_angle(col["phi"][matched] - col["true_phi"][matched]),
        }
    pulls = {}
    for n in ("q_over_pt", "d0", "z0", "phi"):
        sigma = col[f"sigma_{n}"][matched]
        pulls[n] = np.divide(errors[n], sigma, out=np.full(len(sigma), np.nan), where=sigma > 0)
    return matched, errors, pulls


def _half_width(values: np.ndarray) -> float:
    """Half the width of the central 68% of the finite ``values`` (NaN for fewer than two:
    one value has no width)."""
    known = values[np.isfinite(values)]
    if len(known) < 2:
        return float("nan")
    low, high = np.percentile(known, [16, 84])
    return float(high - low) / 2


def _columns(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Track rows (tracks, TRACK_COLUMNS) by column name."""
    return {name: rows[:, k] for k, name in enumerate(TRACK_COLUMNS)}


def _track_param(tracks: Tracks, track_id: np.ndarray, name: str) -> np.ndarray:
    values = tracks.params.get(name, np.full(len(tracks), np.nan))
    return np.asarray(values, dtype=float)[track_id - 1]


def batches(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    it = iter(events)
    while chunk := list(islice(it, size)):
        yield chunk


def evaluate(
    rec: Reconstructor, events: Iterable[Event], *, batch_size: int = 1, progress: bool = False
) -> Evaluation:
    """Reconstruct ``events`` batch by batch and accumulate the evaluation. An event read
    again (same run, number and hits) is counted, not scored again (see
    :meth:`Evaluation.first_reads`). Events over the work budget are counted as refused (see
    :meth:`Evaluation.refuse`) and the rest of their batch reconstructed without them, as
    the daemon does."""
    from tqdm import tqdm

    ev = Evaluation.of(rec)
    total = len(events) if isinstance(events, Sized) else None
    bar = tqdm(desc="evaluate", total=total, unit="event", disable=not progress)
    for batch in batches(ev.first_reads(events), batch_size):
        t0 = time.perf_counter()
        while batch:
            try:
                result = rec.reconstruct(batch)
            except EventTooDense as e:
                ev.refuse(batch, e)
                dense = set(e.events)
                batch = [x for k, x in enumerate(batch) if k not in dense]
                continue
            ev.add(batch, result, time.perf_counter() - t0, rec.threshold)
            break
        else:  # all refused: the time up to their refusal is the batch's still
            ev.seconds += time.perf_counter() - t0
        bar.update(ev.n_events + ev.n_repeated - bar.n)  # the events read, repeats too
    bar.update(ev.n_events + ev.n_repeated - bar.n)
    bar.close()
    return ev


def plot(ev: Evaluation, directory: str | Path) -> list[Path]:
    """PNG plots: efficiency against pT, eta and (without the vertex cut) the production
    vertex's distance from the beam line, fake rate against eta (68.3% Wilson intervals), the
    q/pT resolution and pT bias of matched tracks against true pT, and their
    pulls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = np.concatenate(ev.particles) if ev.particles else np.zeros((0, 6))
    pt, eta, reco, found, reco_all, vr = parts.T
    reco, found, reco_all = reco.astype(bool), found.astype(bool), reco_all.astype(bool)
    trk = _columns(ev.track_table())
    made = []

    specs = [
        (
            "efficiency_vs_pt.png",
            pt[reco],
            found[reco],
            np.geomspace(1, max(50.0, float(pt[reco].max(initial=0)) * 1.01), 13),
            "pT [GeV]",
            "tracking efficiency",
            True,
        ),
        (
            "efficiency_vs_eta.png",
            eta[reco],
            found[reco],
            np.linspace(-4, 4, 17),
            "eta",
            "tracking efficiency",
            False,
        ),
        (
            "efficiency_vs_vertex_r.png",
            vr[reco_all],
            found[reco_all],
            np.array([0.0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]),
            "production vertex's distance from the beam line [mm]",
            "tracking efficiency, any vertex",
            True,
        ),
        (
            "fake_rate_vs_eta.png",
            trk["eta"],
            trk["fake"].astype(bool),
            np.linspace(-4, 4, 17),
            "track eta",
            "fake rate",
            False,
        ),
    ]
    for name, x, ok, bins, xlabel, ylabel, logx in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        c, f, e = binned(x, ok.astype(float), bins)
        ax.errorbar(c, f, yerr=e, fmt="o", capsize=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if np.isnan(f).all():  # an empty plot that says so, on the axes it would have
            _empty_note(ax, ev, "track" if ylabel == "fake rate" else "particle in range")
            ax.set_xlim(max(bins[0], bins[1] / 2) if logx else bins[0], bins[-1])
            ax.set_ylim(0, 1)
        ax.set_title(f"{ylabel} ({ev.n_events} events)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = directory / name
        save_png(fig, path)
        made.append(path)
    made.append(_plot_resolution(ev, directory / "pt_resolution_vs_pt.png", plt))
    made.append(_plot_pulls(ev, directory / "pulls.png", plt))
    return made


def binned(x: np.ndarray, ok: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, ...]:
    """The bin centres, the fraction of ``ok`` (0 or 1) of the ``x`` in each bin of the
    edges ``bins`` (NaN where none) and its error bars below and above (Wilson's 68.3%)."""
    idx = np.digitize(x, bins) - 1
    inside = (idx >= 0) & (idx < len(bins) - 1)
    n = np.bincount(idx[inside], minlength=len(bins) - 1)
    k = np.bincount(idx[inside], weights=ok[inside], minlength=len(bins) - 1)
    frac = np.divide(k, n, out=np.full(len(n), np.nan), where=n > 0)
    lo, hi = wilson_interval(k, n)
    err = np.maximum(np.stack([frac - lo, hi - frac]), 0)  # not -1e-17 at 0 or 1 of n
    return (bins[1:] + bins[:-1]) / 2, frac, err


def wilson_interval(k: np.ndarray, n: np.ndarray, z: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the fractions ``k / n`` (``z`` standard deviations: 68.3% by
    default), per bin: inside [0, 1], and not empty at 0 or 1 of n, where the binomial
    sqrt(f (1 - f) / n) is (an efficiency of 100 of 100 is not known to be 1 exactly). NaN
    where n is 0."""
    n, k = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = k / n
        shrink = 1 + z * z / n
        centre = (f + z * z / (2 * n)) / shrink
        half = z / shrink * np.sqrt(f * (1 - f) / n + z * z / (4 * n * n))
    # At 0 or n of n the bound is 0 or 1 exactly, not its rounding (0 of 49: -1.7e-18,
    # printed -0.00%).
    low = np.where((k == 0) & (n > 0), 0.0, centre - half)
    return low, np.where((k == n) & (n > 0), 1.0, centre + half)


def _plot_pulls(ev: Evaluation, path: Path, plt: Any) -> Path:
    """Pulls (error / the fit's standard error) of q/pT, d0, z0 and phi of matched tracks,
    with the unit Gaussian they follow when the standard errors are right."""
    _, _, pulls = _fit_errors(_columns(ev.track_table()))
    edges = np.linspace(-5, 5, 51)
    centres = (edges[1:] + edges[:-1]) / 2
    fig, axes = plt.subplots(1, len(pulls), figsize=(4 * len(pulls), 4), sharey=True)
    for ax, (key, pull) in zip(axes, pulls.items(), strict=True):
        name = "q/pT" if key == "q_over_pt" else key
        pull = pull[np.isfinite(pull)]
        if len(pull):
            ax.hist(np.clip(pull, -5, 5), bins=edges, density=True, alpha=0.6)
            ax.set_title(f"{name}: {len(pull)} tracks, width {_half_width(pull):.2f}")
        else:
            _empty_note(ax, ev, "matched track with standard errors")
        ax.plot(centres, np.exp(-(centres**2) / 2) / np.sqrt(2 * np.pi), color="black", lw=1)
        ax.set_xlabel(f"{name} pull (error / sigma; ends hold the tails)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"matched tracks, density ({ev.n_events} events)")
    fig.tight_layout()
    save_png(fig, path)
    return path


def _empty_note(ax: Any, ev: Evaluation, what: str) -> None:
    """The note of a plot with nothing to draw: why, as far as is known."""
    why = "no event has truth" if not ev.particles else f"no {what}"
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)


def _plot_resolution(ev: Evaluation, path: Path, plt: Any) -> Path:
    """q/pT resolution and pT bias of matched tracks against the particle's true pT."""
    col = _columns(ev.track_table())
    ok = col["matched"].astype(bool) & np.isfinite(col["pt"]) & (col["true_pt"] > 0)
    true_pt, pt, q, true_q = (col[n][ok] for n in ("true_pt", "pt", "charge", "true_q"))
    bins = np.geomspace(0.5, max(float(true_pt.max(initial=0)) * 1.01, 50), 16)
    idx = np.digitize(true_pt, bins) - 1
    centre, res, bias = [], [], []
    for k in range(len(bins) - 1):
        sel = idx == k
        if sel.sum() >= 5:  # fewer: no meaningful 68% interval
            centre.append(np.sqrt(bins[k] * bins[k + 1]))
            res.append(_half_width(q[sel] / pt[sel] - true_q[sel] / true_pt[sel]))
            bias.append(100 * np.median(pt[sel] / true_pt[sel] - 1))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    top.plot(centre, res, "o")
    top.set_ylabel("q/pT resolution [1/GeV]")
    top.set_title(f"matched tracks ({ev.n_events} events)")
    bottom.plot(centre, bias, "o")
    bottom.axhline(0, color="grey", lw=0.5)
    bottom.set_ylabel("median pT fitted / true - 1 [%]")
    bottom.set_xlabel("true pT [GeV]")
    if centre:  # log axes need data
        top.set_yscale("log")
        bottom.set_xscale("log")
    else:  # no truth, or too few tracks: an empty plot that says so
        _empty_note(top, ev, "true-pT bin with 5 matched tracks")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return path
