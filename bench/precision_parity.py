"""Low precision against fp32 with the shipped model: edge-score differences and the change
in tracking physics (target: tracking efficiency within 0.2% absolute).

Simulates MU=200 events from the test seed of the training recipe (3000, never trained on),
reconstructs them in fp32 and in ``--precision`` on ``--device`` and prints the comparison
as JSON (tracks in common, score differences, flipped threshold decisions, physics).

Run: .venv/bin/python bench/precision_parity.py [--device cpu] [--precision bf16] [--events 4]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json

from streamtrk.detector import load_detector
from streamtrk.eval.precision import precision_parity
from streamtrk.recon.load import ChainSettings
from streamtrk.recon.model import default_model_path, load_model
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--engine", default="eager", choices=["eager", "compile"])
    ap.add_argument("--events", type=int, default=4)
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=3000)
    args = ap.parse_args()
    model, card = load_model(directory := default_model_path())
    cfg = SimConfig(generator=GeneratorConfig(mu=args.mu))
    events = list(simulate(load_detector(), cfg, args.seed, args.events))
    out = precision_parity(
        model,
        events,
        precision=args.precision,
        device=args.device,
        engine=args.engine,
        chain=ChainSettings.of_card(card, directory),
    )
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
