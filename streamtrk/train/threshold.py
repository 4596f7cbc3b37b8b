"""The default edge-score threshold, chosen on validation events by scanning the full
reconstruction and keeping the maximum of ``tracking_efficiency - fake_rate -
duplicate_rate`` among the thresholds that build a track."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamtrk.event import Event
from streamtrk.recon.graph import Graph, GraphConfig
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import EdgeScorer, Reconstructor
from streamtrk.recon.tracks import TrackConfig


class CachedScorer:
    """Scores each batch of events once, whatever the threshold it is reconstructed at."""

    def __init__(self, scorer: EdgeScorer) -> None:
        self.scorer = scorer
        self.cache: dict[tuple[int, ...], Any] = {}

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any:
        key = tuple(id(ev) for ev in events)
        if key not in self.cache:
            self.cache[key] = self.scorer(graph, events)
        return self.cache[key]


def scan_thresholds(
    scorer: EdgeScorer,
    events: Sequence[Event],
    graph: GraphConfig,
    thresholds: Sequence[float],
    *,
    prune: PruneConfig | None = None,
    tracks: TrackConfig | None = None,
) -> dict[str, Any]:
    """Reconstruction metrics of ``events`` at each candidate threshold (edges scored once),
    the objective, and the chosen threshold: the first with the highest objective among
    those that build a track (a threshold passing no edge scores 0, above any whose fakes
    and duplicates outweigh its efficiency; chosen only where none builds one);
    ValueError where no objective is defined (no reconstructable particle)."""
    from streamtrk.eval.evaluate import evaluate

    scorer = CachedScorer(scorer)
    keys = ("tracking_efficiency", "fake_rate", "duplicate_rate")
    scan: dict[str, Any] = {"thresholds": [float(t) for t in thresholds]}
    scan |= {k: [] for k in (*keys, "objective")}
    for t in thresholds:
        rec = Reconstructor(scorer, graph_config=graph, threshold=t, prune=prune, tracks=tracks)
        report = evaluate(rec, events).report()
        for k in keys:
            scan[k].append(float(report[k]))
        # No track (or no real one) makes no fakes (duplicates): those rates count 0 there.
        fake, duplicate = np.nan_to_num([report[keys[1]], report[keys[2]]])
        scan["objective"].append(float(report[keys[0]] - fake - duplicate))
    if np.isnan(scan["tracking_efficiency"]).all():  # argmax would pick the first, unscored
        raise ValueError(
            "no threshold could be scored: the tracking efficiency of the events is undefined "
            "(none holds a reconstructable particle: pT >= 1 GeV, >= 5 hits, a vertex within "
            "10 mm of the axis)"
        )
    objective = np.nan_to_num(np.array(scan["objective"]), nan=-np.inf)
    built = ~np.isnan(scan["fake_rate"])  # a fake rate is defined where a track was built
    if built.any():
        objective[~built] = -np.inf
    scan["chosen"] = scan["thresholds"][int(np.argmax(objective))]
    scan["objective_definition"] = (
        "tracking_efficiency - fake_rate - duplicate_rate (a rate of no tracks counting 0), "
        "the maximum among the thresholds that build a track"
    )
    return scan
