"""Physics metrics of the daemon (data-quality monitoring): what the detector delivered and
what the reconstruction made of it, from each batch's hits, tracks and edge scores alone
(the daemon has no truth). Buckets and healthy values: ``docs/metrics.md``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from streamtrk.detector import Detector
from streamtrk.event import Event, Tracks
from streamtrk.service.beamspot import BeamSpotWindow
from streamtrk.service.histograms import ArrayHistogram
from streamtrk.xp import Array, array_module

if TYPE_CHECKING:
    from streamtrk.recon.reconstructor import ReconResult, Reconstructor

GEV = 1e9  # electronvolts
MM = 1e-3  # meters

#: Bucket bounds, in the base units of the metric names (eV, m, rad).
PT_BUCKETS = tuple(GEV * b for b in (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100))
ETA_BUCKETS = tuple(np.round(np.arange(-4.0, 4.01, 0.5), 1).tolist())
# 16 sectors up to pi; the last bound is float32's pi (just above pi), where a track's phi,
# rounded to float32, can land.
PHI_BUCKETS = (*(np.arange(-7, 8) * math.pi / 8).tolist(), float(np.float32(math.pi)))
D0_BUCKETS = (
    -0.01, -0.005, -0.002, -0.001, -0.0005, -0.0002, -0.0001, -0.00005, 0.0,
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01,
)  # fmt: skip
Z0_BUCKETS = (
    -0.25, -0.1, -0.05, -0.03, -0.02, -0.015, -0.01, -0.0075, -0.005, -0.0025, 0.0,
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
)  # fmt: skip
D0_SIGNIFICANCE_BUCKETS = (0.5, 1, 2, 3, 5, 10, 30, 100)
TRACK_HIT_BUCKETS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 20)
EVENT_TRACK_BUCKETS = (0, 1, 3, 10, 30, 100, 300, 1000, 2000, 3000, 5000, 10000)
EDGE_SCORE_BUCKETS = (
    1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999,
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Observation:
    """What the physics metrics take from one reconstructed batch: not its graphs, nor its
    events (their hits may be views of messages of up to ``max_message_bytes``), which are
    freed once answered; only their hit counts."""

    n_hits: np.ndarray  # per event
    tracks: Sequence[Tracks]
    scores: Array  # the edge scores, on the reconstructor's device
    layer_hits: np.ndarray  # ReconResult.layer_hits
    detector: Detector
    threshold: float  # the edge classifier's
    beam_line: tuple[float, float] = (0.0, 0.0)  # x, y in mm: the reconstruction's centre

    @classmethod
    def of(cls, events: Sequence[Event], result: ReconResult, rec: Reconstructor) -> Observation:
        """The observation of ``rec``'s reconstruction ``result`` of ``events``."""
        return cls(
            np.array([len(ev.hits) for ev in events], dtype=np.int64),
            result.tracks,
            result.scores,
            result.layer_hits,
            rec.detector,
            rec.threshold,
            rec.beam_spot,
        )


class _Layers:
    """The per-layer counter children of one detector (its layer table order)."""

    def __init__(self, det: Detector, hits: Counter, track_hits: Counter) -> None:
        self.detector = det
        self.no_layer = det.layer_lut.ravel() < 0  # the cells of ids the detector lacks
        labels = [(str(v), str(la)) for v, la in zip(det.volume_id, det.layer_id, strict=True)]
        self.hits = [hits.labels(*lv) for lv in labels]
        self.track_hits = [track_hits.labels(*lv) for lv in labels]

    def count(self, per_cell: np.ndarray, children: list[Counter]) -> None:
        """Add hits counted per cell of the detector's ``layer_lut`` (cells of no layer, ids
        unknown to it, are not counted) to ``children``."""
        for child, n in zip(children, per_cell[self.detector.layer_cells].tolist(), strict=True):
            if n:
                child.inc(n)


#: The beam-spot gauges: name, help, field of the estimate, scale to base units.
BEAM_SPOT_GAUGES = (
    ("streamtrk_beam_spot_x_meters", "Beam spot x, from the tracks' d0 against phi.", "x", MM),
    ("streamtrk_beam_spot_y_meters", "Beam spot y, from the tracks' d0 against phi.", "y", MM),
    ("streamtrk_beam_spot_z_meters", "Mean z0 of the tracks in the beam-spot window.", "z", MM),
    ("streamtrk_beam_spot_z_width_meters",
     "Standard deviation of z0 of the tracks in the beam-spot window.", "z_width", MM),
    ("streamtrk_beam_spot_z_error_meters",
     "Statistical error of the beam spot z (events as independent samples).", "z_error", MM),
    ("streamtrk_beam_spot_tracks",
     "Tracks the beam-spot estimate rests on (0: none yet).", "tracks", 1.0),
)  # fmt: skip


class _BeamSpotGauges(Collector):
    """The beam-spot gauges, all from one estimate per scrape (gauges read one by one could
    mix windows when a batch lands between them)."""

    def __init__(self, window: BeamSpotWindow) -> None:
        self.window = window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        estimate = self.window.estimate()
        for name, doc, field, scale in BEAM_SPOT_GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(getattr(estimate, field)) * scale)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, doc, _, _ in BEAM_SPOT_GAUGES:
            yield GaugeMetricFamily(name, doc)


class PhysicsMetrics:
    """The physics metrics, in the daemon's registry; :meth:`observe` once per batch."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.layer_hits = Counter(
            "streamtrk_layer_hits", "Hits per detector layer.", ["volume", "layer"], registry=r
        )
        self.layer_track_hits = Counter(
            "streamtrk_layer_track_hits",
            "Hits per detector layer that are on a track.",
            ["volume", "layer"],
            registry=r,
        )
        self.hits_on_no_layer = Counter(
            "streamtrk_hits_on_no_layer",
            "Hits of the events reconstructed whose (volume, layer) the detector file lacks: in "
            "no graph, on no track.",
            registry=r,
        )
        self.events_without_tracks = Counter(
            "streamtrk_events_without_tracks",
            "Events with hits whose reconstruction produced no track.",
            registry=r,
        )
        self.batches_skipped = Counter(
            "streamtrk_physics_batches_skipped",
            "Reconstructed batches left out of the physics metrics, by reason (behind: the "
            "physics thread's queue was full; failed: counting them raised).",
            ["reason"],
            registry=r,
        )
        for reason in ("behind", "failed"):
            self.batches_skipped.labels(reason)
        self.edges_accepted = Counter(
            "streamtrk_edges_accepted",
            "Graph edges scored above the model's threshold.",
            registry=r,
        )

        h = ArrayHistogram
        self.pt = h("streamtrk_track_pt_electronvolts", "Track pT (eV/c).", PT_BUCKETS, r)
        self.eta = h("streamtrk_track_eta", "Track pseudorapidity.", ETA_BUCKETS, r)
        self.phi = h("streamtrk_track_phi_radians", "Track azimuth.", PHI_BUCKETS, r)
        self.d0 = h("streamtrk_track_d0_meters", "Track transverse impact parameter.",
                    D0_BUCKETS, r)  # fmt: skip
        self.d0_significance = h(
            "streamtrk_track_d0_significance",
            "Track |d0| over its standard error (the fit's), to the beam line the chain is "
            "centred on.",
            D0_SIGNIFICANCE_BUCKETS,
            r,
        )
        self.z0 = h("streamtrk_track_z0_meters", "Track z at the perigee.", Z0_BUCKETS, r)
        self.track_hits = h("streamtrk_track_hits", "Hits per track.", TRACK_HIT_BUCKETS, r)
        self.event_tracks = h("streamtrk_event_tracks", "Tracks per event reconstructed.",
                              EVENT_TRACK_BUCKETS, r)  # fmt: skip
        self.edge_score = h("streamtrk_edge_score", "Edge classifier scores, per graph edge.",
                            EDGE_SCORE_BUCKETS, r)  # fmt: skip

        self.beam_spot = BeamSpotWindow()
        r.register(_BeamSpotGauges(self.beam_spot))
        doc = "of the beam line the reconstruction is centred on (settings beam_spot_*_mm)."
        self.beam_line = {
            axis: Gauge(f"streamtrk_beam_line_{axis}_meters", f"{axis.upper()} {doc}", registry=r)
            for axis in "xy"
        }
        self._layers: _Layers | None = None
        self._events_seen = 0  # tells the beam-spot window's events apart

    def _layers_of(self, det: Detector) -> _Layers:
        if self._layers is None or self._layers.detector is not det:
            self._layers = _Layers(det, self.layer_hits, self.layer_track_hits)
        return self._layers

    def set_beam_line(self, beam_line: tuple[float, float]) -> None:
        """The beam line (x, y in mm) the reconstruction is centred on, in its gauges."""
        for axis, value in zip("xy", beam_line, strict=True):
            self.beam_line[axis].set(value * MM)

    def observe(self, o: Observation) -> None:
        """Count one reconstructed batch: its hits by layer and those on tracks (as the
        reconstruction counted them, ``ReconResult.layer_hits``), its tracks (per event), its
        edge scores (on the reconstructor's device).
        The tracks' d0 are of the perigee to the beam line (the reconstruction's centre); the
        beam-spot window takes them back to the z axis, so that the beam spot is in detector
        coordinates whatever the centre (and across a change of it)."""
        n_hits, tracks, scores = o.n_hits, o.tracks, o.scores
        layers = self._layers_of(o.detector)
        layers.count(o.layer_hits[0], layers.hits)
        layers.count(o.layer_hits[1], layers.track_hits)
        self.hits_on_no_layer.inc(int(o.layer_hits[0][layers.no_layer].sum()))

        n_tracks = np.array([len(t) for t in tracks])
        self.event_tracks.observe(n_tracks)
        self.events_without_tracks.inc(int(np.sum((n_tracks == 0) & (n_hits > 0))))
        params = {k: np.concatenate([t.params[k] for t in tracks]) for k in
                  ("pt", "eta", "phi", "d0", "z0", "sigma_d0")}  # fmt: skip
        # Scaled to base units in float64: float32(1e-3) is above 1e-3, and a d0 of 5 mm
        # would land above the 0.005 m bound (a bucket is "at or below" it).
        self.pt.observe(params["pt"].astype(np.float64) * GEV)
        self.eta.observe(params["eta"])
        self.phi.observe(params["phi"])
        self.d0.observe(params["d0"].astype(np.float64) * MM)
        sigma = params["sigma_d0"]
        self.d0_significance.observe(np.abs(params["d0"]) / np.where(sigma > 0, sigma, np.nan))
        self.z0.observe(params["z0"].astype(np.float64) * MM)
        self.track_hits.observe(np.concatenate([t.sizes for t in tracks]))
        serial = self._events_seen + np.arange(len(n_hits))
        self._events_seen += len(n_hits)
        events_of = np.repeat(serial, n_tracks)
        self.beam_spot.add(params["d0"], params["z0"], params["phi"], events_of, o.beam_line)

        self.edge_score.observe(scores)
        self.edges_accepted.inc(int(array_module(scores).count_nonzero(scores > o.threshold)))
