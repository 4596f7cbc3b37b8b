"""One reconstruction API for offline evaluation and the daemon: events in, tracks out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from streamtrk.detector import MAX_BEAM_SPOT, Detector, layer_keys, load_detector
from streamtrk.event import Event, Tracks
from streamtrk.recon.budget import Budget, EventTooDense
from streamtrk.recon.choices import threshold_ok
from streamtrk.recon.fit import fit_tracks
from streamtrk.recon.graph import (
    Graph,
    GraphConfig,
    batch_columns,
    build_graph,
    select_edges,
)
from streamtrk.recon.prune import PruneConfig, prune_edges
from streamtrk.recon.tracks import (
    TrackConfig,
    build_tracks,
    fit_cuts,
    select_tracks,
    split_by_event,
)
from streamtrk.recon.truth import edge_labels
from streamtrk.xp import array_module, bincount, to_host, to_host_packed

#: The stages of ``Reconstructor.reconstruct``, in order: ``upload`` puts the batch's columns
#: on the device (a copy up on CUDA; a concatenation on the CPU), the others are the chain's.
STAGES = ("upload", "graph", "prune", "gnn", "tracks", "fit")


class EdgeScorer(Protocol):
    """Scores the edges of a batched graph; returns an array on the graph's device."""

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any: ...


class OracleScorer:
    """Scores from truth: 1 for edges that are true segments (``recon.truth``), else 0."""

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any:
        edges = to_host(graph.edge_index)
        event_of = np.searchsorted(graph.node_offsets[1:], edges[0], side="right")
        out = np.zeros(graph.num_edges, dtype=np.float32)
        for k, ev in enumerate(events):
            sel = event_of == k
            out[sel] = edge_labels(ev, edges[:, sel] - graph.node_offsets[k])
        return array_module(graph.edge_index).asarray(out)


@dataclass
class ReconResult:
    """Tracks per event (host arrays); the batch's graph as built, the graph after pruning
    (the one scored) and its edge scores (arrays on the reconstructor's device, NumPy or
    CuPy), node offsets; seconds spent in each stage; the batch's hits and its hits on
    tracks per cell of the detector's ``layer_lut`` (host, (2, cells), by ``layer_keys``:
    ids of no layer land in cells of none), counted on the device and brought down with the
    tracks, for the daemon's layer metrics."""

    tracks: list[Tracks]
    timings: dict[str, float]
    graph: Graph  # scored: the built graph less the pruned edges
    scores: Any
    node_offsets: np.ndarray = field(repr=False)
    built: Graph  # as built, before pruning (``graph`` itself without pruning)
    layer_hits: np.ndarray = field(repr=False)


class Reconstructor:
    """Graph construction, edge scoring, track building and helix fit over a batch.

    ``beam_spot`` (x, y in mm) is the beam line the chain is centred on: hits are moved by
    its opposite before the graph is built, so the graph's cuts (made for a luminous region
    on the z axis) and the network see the collisions where they expect them, and the
    tracks' d0, phi and z0 are those of the perigee to that beam line."""

    def __init__(
        self,
        scorer: EdgeScorer,
        *,
        device: str = "cpu",
        detector: Detector | None = None,
        graph_config: GraphConfig | None = None,
        threshold: float = 0.5,
        tracks: TrackConfig | None = None,
        prune: PruneConfig | None = None,
        budget: Budget | None = None,
        beam_spot: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        bx, by = beam_spot
        if not (math.isfinite(bx) and math.isfinite(by) and math.hypot(bx, by) <= MAX_BEAM_SPOT):
            raise ValueError(
                f"beam_spot must be finite and within {MAX_BEAM_SPOT:g} mm of the axis, "
                f"got {beam_spot}"
            )
        if not threshold_ok(threshold):
            raise ValueError(f"threshold must lie in [0, 1) (1 passes no edge), got {threshold}")
        self.beam_spot = (float(bx), float(by))
        self.scorer = scorer
        self.budget = budget or Budget()
        self.tracks = tracks or TrackConfig()
        self.prune = prune
        self.device = device
        self.detector = detector or load_detector()
        self._layer_lut = self.detector.layer_lut  # on the reconstructor's device (CuPy below)
        self.graph_config = graph_config or GraphConfig()
        self.threshold = threshold
        if device == "cpu":
            self.xp: Any = np
            self._sync: Callable[[], None] = lambda: None
        elif device == "cuda":
            import cupy

            self.xp = cupy
            self._layer_lut = cupy.asarray(self._layer_lut)
            # The calling thread's current stream (CuPy's is per thread), looked up per call.
            self._sync = lambda: cupy.cuda.get_current_stream().synchronize()
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")

    @classmethod
    def oracle(cls, **kwargs: Any) -> Reconstructor:
        """A reconstructor whose edge scores come from truth (the ceiling of the chain)."""
        return cls(OracleScorer(), **kwargs)

    def _timed(self, timings: dict[str, float], stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self._sync()
        timings[stage] = time.perf_counter() - t0
        return out

    def _fit(
        self, offsets: Any, hit_index: Any, cols: dict[str, Any], layer: Any
    ) -> tuple[Any, Any, dict[str, Any]]:
        """Helix fit, then the fit cuts of the track settings."""
        params = fit_tracks(
            offsets, hit_index, cols["x"], cols["y"], cols["z"], layer, self.detector
        )
        if self.tracks.max_chi2_ndf is None and self.tracks.max_d0 is None:
            return offsets, hit_index, params
        keep = fit_cuts(offsets[1:] - offsets[:-1], params, self.tracks)
        return select_tracks(offsets, hit_index, params, keep)

    def _columns(self, events: Sequence[Event]) -> tuple[dict[str, Any], np.ndarray]:
        """The batch's columns on the device (``batch_columns``), about the beam spot."""
        cols, node_offsets = batch_columns(events, self.xp)
        for name, shift in zip(("x", "y"), self.beam_spot, strict=True):
            if shift:
                cols[name] = cols[name] - cols[name].dtype.type(shift)
        return cols, node_offsets

    def reconstruct(self, events: Sequence[Event]) -> ReconResult:
        """Reconstruct a batch of events as one disjoint graph. Raises EventTooDense, naming
        them, for events whose graph would pass the work budget (``streamtrk.recon.budget``);
        nothing of the batch is returned then."""
        xp, det = self.xp, self.detector
        timings: dict[str, float] = {}
        cols, node_offsets = self._timed(timings, "upload", lambda: self._columns(events))
        try:
            graph = self._timed(
                timings,
                "graph",
                lambda: build_graph(
                    **cols,
                    node_offsets=node_offsets,
                    det=det,
                    cfg=self.graph_config,
                    budget=self.budget,
                    beam_offset=math.hypot(*self.beam_spot),
                ),
            )
            built = graph
            if self.prune is not None:
                cfg = self.prune
                graph = self._timed(
                    timings,
                    "prune",
                    lambda: select_edges(built, prune_edges(built, cfg, det, self.budget)),
                )
            else:
                timings["prune"] = 0.0
        except EventTooDense as e:
            raise e.naming(events) from None
        scores = self._timed(timings, "gnn", lambda: self.scorer(graph, events))
        r = graph.node_features[:, 0]
        offsets, hit_index = self._timed(
            timings,
            "tracks",
            lambda: build_tracks(
                graph.edge_index,
                scores,
                r,
                threshold=self.threshold,
                config=self.tracks,
            ),
        )
        offsets, hit_index, params = self._timed(
            timings, "fit", lambda: self._fit(offsets, hit_index, cols, graph.layer)
        )
        keys = layer_keys(self._layer_lut, cols["volume_id"], cols["layer_id"])
        cells = self._layer_lut.size
        layer_hits = xp.stack([bincount(keys, cells), bincount(keys[hit_index], cells)])
        # The batch's tracks come down in one copy and are split by event on the host.
        host = to_host_packed(
            {"offsets": offsets, "hit_index": hit_index, "layer_hits": layer_hits, **params}
        )
        offsets, hit_index = host.pop("offsets"), host.pop("hit_index")
        layer_hits = host.pop("layer_hits")
        tracks = [
            Tracks(o, h, p) for o, h, p in split_by_event(offsets, hit_index, host, node_offsets)
        ]
        return ReconResult(tracks, timings, graph, scores, node_offsets, built, layer_hits)
