"""The reconstruction's working set for the densest events the work budget admits or refuses.

Each case in a fresh process (the shipped model, the CPU, after a warm-up; peak RSS from
Linux's ``clear_refs``): hits spread uniformly over the four pixel-barrel layers, ``n`` a
layer, no tracks (the doublets grow as the square of the density: the budget's doublets a
hit are what bounds such an event), the same in a band of z (``n`` a layer within
+-``z`` mm: as dense as the budget admits at fewer hits), and hits in ``c`` clusters of
``k`` a layer pointing at the origin (an event of a MU=200 event's size whose doublets pass
the budget). Per case:
hits, the outcome (reconstructed, or what it passed), seconds, peak RSS above the process's
size before, the stages' seconds. What ``docs/serve.md``'s memory bound rests on.

    PYTHONPATH=. .venv/bin/python bench/dense_events.py [--uniform 25000 62500 125000]
        [--bands 25000x85 62500x212] [--clusters 170x150] [--json out.json]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from budget import reconstructed_alone

from streamtrk.event import Event, Hits
from streamtrk.recon.load import load_reconstructor

#: The four pixel-barrel layers (volume 8) and their radii in mm.
BARREL_RADII = {2: 32.0, 4: 72.0, 6: 116.0, 8: 172.0}


def _event(phi: np.ndarray, z: np.ndarray, per_layer: int) -> Event:
    """Hits at (phi, z) on each barrel layer: ``per_layer`` a layer, in the order given."""
    radii = np.repeat(list(BARREL_RADII.values()), per_layer)
    layers = np.repeat(list(BARREL_RADII), per_layer)
    n = len(radii)
    columns = {
        "hit_id": np.arange(n),
        "x": radii * np.cos(phi),
        "y": radii * np.sin(phi),
        "z": z,
        "volume_id": np.full(n, 8),
        "layer_id": layers,
        "module_id": np.ones(n),
    }
    return Event(1, 1, Hits.from_columns(columns))


def uniform(n: int, half_z: float = 490.0) -> Event:
    """``n`` hits a layer, uniform in phi and in z within +-``half_z`` mm (the layers'
    length, or a band of it: denser, up to the budget's doublets a hit)."""
    rng = np.random.default_rng(1)
    return _event(rng.uniform(-np.pi, np.pi, 4 * n), rng.uniform(-half_z, half_z, 4 * n), n)


def clusters(k: int, c: int) -> Event:
    """``c`` clusters of ``k`` hits a layer, each along a straight line from the origin
    (spread 1e-4 in phi and eta)."""
    rng = np.random.default_rng(2)
    phi0, eta0 = rng.uniform(-np.pi, np.pi, c), rng.uniform(-1.0, 1.0, c)
    phi = np.tile(np.repeat(phi0, k), 4) + rng.normal(0, 1e-4, 4 * c * k)
    eta = np.tile(np.repeat(eta0, k), 4) + rng.normal(0, 1e-4, 4 * c * k)
    radii = np.repeat(list(BARREL_RADII.values()), c * k)
    return _event(phi, radii * np.sinh(eta), c * k)


def one(case: str) -> None:
    """Reconstruct the case (``uniform:N``, ``band:NxZ`` or ``clusters:KxC``) after a
    warm-up; print its figures as JSON."""
    kind, _, size = case.partition(":")
    if kind == "uniform":
        event = uniform(int(size))
    elif kind == "band":
        n, half_z = size.split("x")
        event = uniform(int(n), float(half_z))
    else:
        k, c = map(int, size.split("x"))
        event = clusters(k, c)
    rec = load_reconstructor()
    rec.reconstruct([uniform(200)])
    row = reconstructed_alone(rec, event)
    row["peak_rss_above_mib"] = row["peak_rss_mib"] - row["rss_before_mib"]
    print(json.dumps({"case": case, "hits": len(event.hits)} | row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uniform", type=int, nargs="*", default=[25_000, 62_500, 125_000])
    ap.add_argument(
        "--bands", nargs="*", default=["25000x85", "62500x212"], help="N x Z: hits, half-length"
    )
    ap.add_argument("--clusters", nargs="*", default=["170x150"], help="K x C: hits, clusters")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a fresh process's case
    args = ap.parse_args()
    if args.one is not None:
        one(args.one)
        return
    cases = [f"uniform:{n}" for n in args.uniform] + [f"band:{b}" for b in args.bands]
    cases += [f"clusters:{kc}" for kc in args.clusters]
    print("| case | hits | outcome | seconds | peak RSS above the idle process (MiB) |")
    print("| --- | ---: | --- | ---: | ---: |")
    rows = []
    for case in cases:
        cmd = [sys.executable, __file__, "--one", case]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append(row)
        print(f"| {case} | {row['hits']:,} | {row['outcome']} | {row['seconds']:.1f} | "
              f"{row['peak_rss_above_mib']:,.0f} |", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
