"""The full chain with frozen track settings against the plain chain, for the final report.

Runs ``streamtrk.eval.evaluate`` (graph, GNN, tracks, fit; one event per batch) first with
the setting given as JSON (as ``bench/track_building.py`` prints it), then with the model's
card threshold and default track settings (the plain chain), on simulated events and/or
TrackML events read from a path prefix; the network scores each event once, so the plain
chain's gnn time is a cache lookup. Prints efficiency, fake and duplicate rates, the time per
stage and the median chi2/ndf of matched tracks, as JSON. Report-only: settings are chosen on
validation events with ``bench/track_building.py``, never here.

Run: PYTHONPATH=. .venv/bin/python bench/track_report.py --setting '{...}' --seeds 3000:20 \\
     --real ../shared/data/trackml/qallse_ez-0.5_hpt-1.0/event000001000
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtrk.detector import load_detector
from streamtrk.eval.evaluate import evaluate
from streamtrk.eval.score import match_tracks
from streamtrk.event import Event
from streamtrk.io.trackml import read_event
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import default_model_path
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.recon.tracks import TrackConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.train import CachedScorer

KEYS = (
    "tracking_efficiency",
    "tracking_efficiency_all",
    "fake_rate",
    "duplicate_rate",
    "n_reconstructable",
    "n_reconstructed",
    "n_tracks",
    "n_fake",
    "n_duplicate",
    "trackml_score",
)


class _Chi2:
    """Wraps a reconstructor; keeps the chi2/ndf of matched tracks of each event. Everything
    else ``evaluate`` reads of a reconstructor (threshold, beam spot, detector) is the
    wrapped one's."""

    def __init__(self, rec: Reconstructor) -> None:
        self.rec = rec
        self.values: list[np.ndarray] = []  # per event

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rec, name)

    def reconstruct(self, events: list[Event]) -> Any:
        res = self.rec.reconstruct(events)
        for ev, t in zip(events, res.tracks, strict=True):
            assert ev.truth is not None
            m = match_tracks(t.track_id_per_hit(len(ev.hits)), ev.truth.hits.particle_id)
            ok = m.matched & (m.particle_id != 0)
            chi = t.params["chi2"] / np.maximum(t.params.get("ndf", 1), 1)
            self.values.append(chi[m.track_id[ok] - 1])
        return res


def run(events: list[Event], rec: Reconstructor) -> dict[str, Any]:
    wrapped = _Chi2(rec)
    report = evaluate(wrapped, events).report()  # type: ignore[arg-type]
    chi = np.concatenate(wrapped.values) if wrapped.values else np.zeros(0)
    return {k: report[k] for k in KEYS} | {
        "stage_seconds": report["stage_seconds"],
        "seconds_per_event": report["seconds_per_event"],
        "tracks_fit_share": (report["stage_seconds"]["tracks"] + report["stage_seconds"]["fit"])
        / sum(report["stage_seconds"].values()),
        "chi2_ndf_median_matched": float(np.median(chi)) if len(chi) else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setting", required=True, help="JSON: threshold and TrackConfig fields")
    ap.add_argument("--seeds", nargs="*", default=[], help="seed:events, simulated MU=200")
    ap.add_argument("--real", nargs="*", default=[], type=Path, help="TrackML path prefixes")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    setting = json.loads(args.setting)
    threshold = setting.pop("threshold")
    base = load_reconstructor(default_model_path())
    scorer = CachedScorer(base.scorer)  # score each event once for both settings
    chains = {  # the chosen first: it scores the events, so its GNN time is real
        "chosen": Reconstructor(
            scorer,
            graph_config=base.graph_config,
            threshold=threshold,
            tracks=TrackConfig(**setting),
            prune=base.prune,  # the graphs the model was trained on (its card's [prune])
        ),
        "plain": Reconstructor(
            scorer, graph_config=base.graph_config, threshold=base.threshold, prune=base.prune
        ),
    }
    sets: dict[str, list[Event]] = {}
    for spec in args.seeds:
        seed, n = (int(v) for v in spec.split(":"))
        sets[f"sim seed {seed} ({n} events)"] = list(
            simulate(load_detector(), SimConfig(), seed, n)
        )
    for prefix in args.real:
        sets[f"real {prefix.parent.name}/{prefix.name}"] = [read_event(prefix)]
    for evs in sets.values():  # warm-up (model, SciPy) outside the timings, scores not cached
        base.reconstruct(evs[:1])
    out = {name: {k: run(evs, rec) for k, rec in chains.items()} for name, evs in sets.items()}
    text = json.dumps({"setting": {"threshold": threshold, **setting}, "results": out}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
