"""Plot simulated events against real TrackML event 1000 (barrel) -> docs/sim-vs-real.png.

Run: .venv/bin/python bench/sim_validation.py [--events 4] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from streamtrk.detector import load_detector
from streamtrk.io.trackml import read_event
from streamtrk.sim import validate
from streamtrk.sim.simulate import SimConfig, simulate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "sim-vs-real.png")
    args = ap.parse_args()

    trackml = args.shared / "data" / "trackml"
    full = read_event(trackml / "qallse_ez-1.0_hpt-1.0_no_truth" / "event000001000")
    half = read_event(trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000")
    sim = validate.summarize(simulate(load_detector(), SimConfig(), args.seed, args.events))
    real_layers = validate.barrel_layer_counts(full)
    real_hpp = validate.barrel_hits_per_particle(half)

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(validate.BARREL_LAYERS))
    ax[0].bar(x - 0.2, real_layers, 0.4, label="real event 1000")
    ax[0].bar(x + 0.2, sim["layer_hits"], 0.4, label=f"simulation (mean of {args.events})")
    ax[0].set_xticks(x, [f"{v}/{l}" for v, l in validate.BARREL_LAYERS], rotation=45)
    ax[0].set_xlabel("barrel volume/layer")
    ax[0].set_ylabel("hits per event")
    ax[0].set_title(
        f"Hits per layer (noise: real {validate.barrel_noise_fraction(half):.1%}, "
        f"sim {sim['noise_fraction']:.1%})"
    )
    ax[0].legend()
    n = np.arange(1, 11)
    ax[1].plot(n, real_hpp[1:11] / real_hpp[1:11].sum(), "o-", label="real event 1000")
    sim_hpp = sim["hits_per_particle"]
    assert isinstance(sim_hpp, np.ndarray)  # summarize's values: arrays, but noise_fraction
    ax[1].plot(n, sim_hpp[1:11] / sim_hpp[1:11].sum(), "s-", label="simulation")
    ax[1].set_xlabel("barrel layers hit per particle")
    ax[1].set_ylabel("fraction of particles")
    ax[1].set_title("Hits per particle (barrel, one per layer)")
    ax[1].legend()
    fig.suptitle("streamtrk simulation (mu=200) vs real TrackML barrel data")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(
        json.dumps(
            {
                "layer_ratio": dict(
                    zip(
                        [f"{v}/{l}" for v, l in validate.BARREL_LAYERS],
                        np.round(sim["layer_hits"] / real_layers, 3).tolist(),
                        strict=True,
                    )
                ),
                "noise_fraction": {
                    "real": validate.barrel_noise_fraction(half),
                    "sim": sim["noise_fraction"],
                },
                "hpp_shares": {
                    "real": validate.binned_shares(real_hpp).round(3).tolist(),
                    "sim": validate.binned_shares(sim_hpp).round(3).tolist(),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
