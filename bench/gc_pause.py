"""Pauses of Python's cyclic garbage collector in a process holding a loaded, warmed-up
model, as the daemon does: a full collection (generation 2) scans every object the
collector tracks while every thread waits, then the same once those objects are frozen
(``gc.freeze``, what ``streamtrk serve`` does once its model is installed:
``streamtrk.service.heap``). Also the collections a number of reconstructs of MU=200
events make afterwards, by generation, and their longest pause.

Prints JSON (also written to ``--json``).

Run: PYTHONPATH=. .venv/bin/python bench/gc_pause.py [--device cpu] [--engine eager]
     [--precision fp32] [--events 4] [--mu 200] [--repeats 7] [--json out.json]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import gc
import json
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.load import load_reconstructor
from streamtrk.service.heap import freeze_heap
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate


def full_collection_ms(repeats: int) -> dict[str, float]:
    """Median and largest of ``repeats`` full collections, in ms."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t0)
    return {"median_ms": float(np.median(times)) * 1e3, "max_ms": max(times) * 1e3}


def collections_while(work: Any) -> dict[str, Any]:
    """The collections ``work()`` triggers, by generation: how many, their longest pause."""
    started: list[float] = []
    pauses: dict[int, list[float]] = defaultdict(list)

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        else:
            pauses[info["generation"]].append(time.perf_counter() - started.pop())

    gc.callbacks.append(timed)
    try:
        work()
    finally:
        gc.callbacks.remove(timed)
    return {
        str(g): {"collections": len(p), "max_ms": max(p) * 1e3} for g, p in sorted(pauses.items())
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", default="eager")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--events", type=int, default=4)
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    det = load_detector()
    cfg = SimConfig(generator=replace(GeneratorConfig(), mu=args.mu))
    events = list(simulate(det, cfg, seed=31415, n_events=args.events))
    rec = load_reconstructor(
        device=args.device, engine=args.engine, precision=args.precision, warm_up=True
    )
    rec.reconstruct(events[:1])  # as the daemon's start-up does

    def serving() -> None:
        for ev in events:
            rec.reconstruct([ev])

    out: dict[str, Any] = {
        "device": args.device,
        "engine": args.engine,
        "precision": args.precision,
        "reconstructs": args.events,
        "tracked_objects": len(gc.get_objects()),
        "full_collection": full_collection_ms(args.repeats),
        "collections": collections_while(serving),
    }
    freeze = freeze_heap()
    out["frozen_objects"] = freeze.objects
    out["freeze_ms"] = freeze.seconds * 1e3
    out["tracked_objects_frozen"] = len(gc.get_objects())
    out["full_collection_frozen"] = full_collection_ms(args.repeats)
    out["collections_frozen"] = collections_while(serving)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
