"""Where the reconstruction chain's time goes, per batch size: the host's Python (cProfile)
and the device's kernels (torch.profiler, which sees CuPy's kernels too: CUPTI traces the
whole CUDA context).

For each batch size, after two warm-up calls of ``Reconstructor.reconstruct`` on MU=200
simulated events (the shipped model, eager fp32 unless told), each call the next batch of
the events, cycling through them as ``bench/gpu_bench.py`` does:

- ``cprofile-bN.txt``: cProfile over ``--repeats`` calls, the functions by own time and by
  cumulative time (the chain is launch-bound where the host's time per call matches the
  stage's wall time: each CuPy or torch operation costs the host microseconds);
- ``kernels-bN.txt``: torch.profiler over ``--kernel-repeats`` calls, the operations and
  kernels by their own device time;
- ``chain_profile.json``: per batch size, the wall time per call (median, least, most;
  measured apart, neither profiler running), the stages' medians, the device's activities
  (kernels, copies) per call, their device time per call, the device's busy share of the
  wall time.

On the device, with pyzmq's wheel unpacked (``bench/device_run.sh`` does it)::

    PYTHONPATH=/tmp/site:$PWD python3 bench/chain_profile.py --out $OUT

A CPU dry run: ``.venv/bin/python bench/chain_profile.py --device cpu --mu 10 --events 2
--batches 1 2 --out /tmp/chain-profile``.
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()

import argparse
import cProfile
import importlib.util
import io
import itertools
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamtrk.recon.engine import EngineScorer


def _gpu_bench() -> Any:
    """``bench/gpu_bench.py`` as a module (bench/ is no package): its events, model, device."""
    spec = importlib.util.spec_from_file_location(
        "gpu_bench", Path(__file__).with_name("gpu_bench.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _pstats_text(profile: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    for key in ("tottime", "cumulative"):
        out.write(f"==== by {key}\n")
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


def _kernel_profile(run: Any, repeats: int, cuda: bool, top: int) -> tuple[str, dict[str, float]]:
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            run()
    averages = prof.key_averages()
    table = averages.table(
        sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=top
    )
    # The device's activities: kernels (torch's, CuPy's, ours), copies, memsets.
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    device_us = sum(e.device_time_total for e in kernels)
    return table, {
        "device_activities_per_call": len(kernels) / repeats,
        "device_ms_per_call": device_us / 1000 / repeats,
    }


def _cycling(rec: Any, batch: Any, events: list, size: int) -> Callable[[], Any]:
    """Reconstruct the next batch of ``size`` events at each call, cycling through them."""
    calls = itertools.count()
    return lambda: rec.reconstruct(batch(events, size, next(calls)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--events", type=int, default=16, help="simulated events (default 16)")
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=10, help="calls under cProfile")
    ap.add_argument("--kernel-repeats", type=int, default=3, help="calls under torch.profiler")
    ap.add_argument("--engine", choices=["eager", "compile"], default="eager")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--top", type=int, default=60, help="rows of each table")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/chain-profile")))
    ap.add_argument("--json", type=Path, help="the JSON's path (default OUT/chain_profile.json)")
    args = ap.parse_args()
    json_path = args.json or args.out / "chain_profile.json"
    args.out.mkdir(parents=True, exist_ok=True)

    gb = _gpu_bench()
    events = gb.simulate_events(args.events, args.mu, args.seed, args.workers)
    dev = gb.Device(args.device)
    net = gb.load_network()
    scorer = EngineScorer(
        net.model, args.device, args.engine, args.precision, buckets=net.chain.buckets()
    )
    rec = net.chain.reconstructor(scorer, args.device)
    result: dict[str, Any] = {
        "device": args.device,
        "engine": scorer.engine,
        "precision": args.precision,
        "mu": args.mu,
        "hits_per_event": float(np.mean([len(e.hits.x) for e in events])),
        "batches": {},
    }
    for size in args.batches:
        run = _cycling(rec, gb.batch, events, size)

        for _ in range(2):  # first calls: kernel compilation, caches
            run()
        walls, stages = [], []
        for _ in range(args.repeats):
            dev.sync()
            t = time.perf_counter()
            stages.append(run().timings)  # returns host tracks: synchronised
            walls.append(time.perf_counter() - t)
        profile = cProfile.Profile()
        for _ in range(args.repeats):
            profile.enable()
            run()
            profile.disable()
        (args.out / f"cprofile-b{size}.txt").write_text(_pstats_text(profile, args.top))
        table, kernels = _kernel_profile(run, args.kernel_repeats, dev.cuda, args.top)
        (args.out / f"kernels-b{size}.txt").write_text(table)
        wall_ms = float(np.median(walls) * 1000)
        result["batches"][str(size)] = {
            "wall_ms": wall_ms,
            "wall_ms_min_max": [float(np.min(walls) * 1000), float(np.max(walls) * 1000)],
            "stage_ms": {k: float(np.median([t[k] for t in stages]) * 1000) for k in stages[0]},
            **kernels,
            "device_busy_share": kernels["device_ms_per_call"] / wall_ms,
        }
        # After each size: a run cut by its time limit keeps the sizes done.
        json_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
