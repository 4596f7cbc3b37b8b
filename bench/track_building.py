"""Track building: one junction-resolution pass against repeated passes (a greedy walk).

Scores the validation events of the training recipe (seed 2000, never the test or real
events) once with the shipped model, then builds tracks with ``junction_passes`` 1, 2, 4
and 8 at each threshold and prints the physics metrics as JSON.

Run: .venv/bin/python bench/track_building.py [--events 4] [--thresholds 0.5 0.7]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from streamtrk.detector import load_detector
from streamtrk.eval.evaluate import evaluate
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.model import default_model_path, read_card
from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.train import CachedScorer, load_config

CONFIG = Path(__file__).resolve().parents[1] / "models" / "configs" / "default.toml"
KEYS = ("tracking_efficiency", "tracking_efficiency_all", "fake_rate", "duplicate_rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=4)
    ap.add_argument("--thresholds", type=float, nargs="*", help="default: the model's")
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    path = default_model_path()
    rec = load_reconstructor(path)
    cfg = load_config(CONFIG)
    events = replace(cfg.val, events=args.events).load(load_detector())
    scorer = CachedScorer(rec.scorer)
    thresholds = args.thresholds or [float(read_card(path)["model"]["threshold"])]
    rows = []
    for t in thresholds:
        for p in args.passes:
            r = Reconstructor(scorer, graph_config=rec.graph_config, threshold=t, junction_passes=p)
            report = evaluate(r, events).report()
            rows.append({"threshold": t, "passes": p, **{k: report[k] for k in KEYS}})
    print(json.dumps({"model": str(path), "events": args.events, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
