"""GPU benchmark of the reconstruction chain: stages, throughput, latency, memory, daemon.

On MU=200 simulated events (simulated once, in a process pool, then reused), most wanted
first (a short device session may not reach the end):

1. ``info``: GPU, versions, model, hits and edges per event.
2. ``transfers``: the chain's hit upload and track download at batch 1 and 16 (one copy
   each way per batch; milliseconds, bytes, medians).
3. The configurations (``CONFIGS``), the headline ``compile_bf16`` and the daemon's own
   first, for batch sizes 1, 4, 16, 64: ``Reconstructor.reconstruct`` timed end to end
   (events/s, wall percentiles; p99 at batch 1 is the latency figure) and per stage
   (upload: the host-side batching and the hits' copy up; graph, prune, gnn, tracks,
   fit; "other", the median of each batch's rest, is the tracks' copy down and their split
   by event); on CUDA the host synchronisations of one reconstruct (``host_syncs``: CuPy's
   and torch's); first-call seconds (compilation included), peak device memory, the graphs
   Inductor ran without CUDA graphs (``cudagraph_skips``); on CUDA the GNN's edges/s
   against the reference (133 M edges/s) and against the GPU's limit for the graph
   (``gnn_figures``: matrix-product FLOPs and least memory traffic, from the card's
   datasheet in GPU_LIMITS).
4. ``daemon``: ``streamtrk serve --device cuda`` in the ``--daemon-config`` configuration as
   a subprocess (batches of up to 16 events, no queue delay), the events replayed through
   ZeroMQ with ``streamtrk replay`` as fast as taken (large batches: throughput), at 100 Hz,
   and at half the rate its configuration reached at batch 1 in this run (10 Hz if not
   measured; batches of one: the p99 latency target, which a rate the daemon cannot keep
   up with would turn into queueing), as compact hits messages (wire version 5, 20 bytes a
   hit); each replay's mean batch size from the daemon's metrics; start-up to ready; what
   it served (``status_model``, its ``/status``: an engine note where it fell back).
5. The baseline ``eager_fp32`` (where not run before), then ``kernels``: graph
   construction's candidate search, pruning's triplet cuts and the fit's least-squares
   sums (over the batch's oracle tracks, random columns), each as its CUDA kernels and as
   CuPy array operations, on the same inputs at batch 1 and 16 (milliseconds, medians;
   whether both give the same edges, mask and sums; on the CPU the kernels run as their
   host build); ``bf16_parity``: edge-score differences and physics, bf16 against fp32
   (target: tracking efficiency within 0.2% absolute); the other configurations.

The summary has the MU=200 ``end_to_end`` rows (events/s, p50, p99 per configuration and
batch size) and ``against_reference``: each stage's milliseconds per event beside the
reference figure for it (docs/gpu.md, "Reference figures": graph: naive CuPy doublets
15 ms; GNN: the reference network's edges/s over our edges; tracks: label-propagation
components 0.8 ms; the daemon: pyzmq's 2,200 messages/s).

Every part is timed against a budget (``--budget-s``) and skipped with a note when too
little is left; a part that fails records its error and what it measured, and the run goes
on; one cut by SIGINT (the device run's time limit) records ``interrupted`` and what it
measured, and the run ends. The JSON is rewritten after every part
(``OUT/gpu_bench.json``) and printed at the end.

Device command: ``sh bench/device_run.sh`` (its header says how to bring pyzmq's wheel):
import checks, the ``gpu`` tests, then this script at batches 1, 16 and 64 on 16 events in
compiled bf16, with CUDA graphs (the daemon's configuration) and eager fp32, then
``bench/host_path.py`` and ``bench/chain_profile.py``, each step under ``timeout``.
The whole benchmark, for a longer device session:

    PYTHONPATH=/tmp/site:$PWD timeout 560 python3 bench/gpu_bench.py --out $OUT --budget-s 420

A CPU dry run of the script itself (small events, eager only):

    .venv/bin/python bench/gpu_bench.py --device cpu --events 2 --mu 10 --batches 1 2
        --configs eager_fp32 --out /tmp/gpu-bench --budget-s 300
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamtrk.detector import load_detector
from streamtrk.event import Event
from streamtrk.recon import fit as fit_stage
from streamtrk.recon import graph as graph_stage
from streamtrk.recon import prune as prune_stage
from streamtrk.recon.device import release_cached_memory
from streamtrk.recon.engine import EngineScorer
from streamtrk.recon.fit import fit_tracks
from streamtrk.recon.gnn import InteractionNetwork
from streamtrk.recon.graph import batch_columns, batch_graph, build_graph, select_edges
from streamtrk.recon.host_syncs import count_host_syncs, counting_unavailable
from streamtrk.recon.kernels import Launch, cupy_launcher, host_launcher
from streamtrk.recon.load import ChainSettings
from streamtrk.recon.prune import prune_edges
from streamtrk.recon.reconstructor import STAGES, OracleScorer, Reconstructor
from streamtrk.recon.tracks import build_tracks
from streamtrk.service.heap import heap_frozen
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate_event
from streamtrk.xp import csr_rows, to_host, to_host_packed

ROOT = Path(__file__).resolve().parents[1]
# name: (engine, precision, CUDA graphs, seconds the part needs at least; the H200 took 27 s
# for eager fp32 and 14 s for compiled bf16 at batches 1, 4 and 16 on 2026-12-04)
CONFIGS = {
    "eager_fp32": ("eager", "fp32", False, 30),
    "compile_fp32": ("compile", "fp32", False, 45),
    "compile_bf16": ("compile", "bf16", False, 45),
    "compile_bf16_cudagraphs": ("compile", "bf16", True, 45),
    "eager_bf16": ("eager", "bf16", False, 30),
}
ITERATIONS = {1: 100, 4: 20, 16: 8, 64: 3}  # timed batches per batch size
RANDOM = "random (seed 0): no shipped model"
TARGETS = {"events_per_s_batch16": 500.0, "p99_ms_batch1": 25.0}
# Datasheet limits by a word of the device's name (first match; the H100 PCIe before the
# SXM): dense tensor-core bf16/fp16, fp32 without TF32 (off here), memory bandwidth. The
# targets and the reference figures are of an H200: a run on another card is said so.
GPU_LIMITS: dict[str, dict[str, Any]] = {
    "H200": {"tflops": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0}, "tb_per_s": 4.8},
    "H100 PCIe": {"tflops": {"fp32": 51.0, "bf16": 756.0, "fp16": 756.0}, "tb_per_s": 2.0},
    "H100": {"tflops": {"fp32": 67.0, "bf16": 989.0, "fp16": 989.0}, "tb_per_s": 3.35},
}


def gpu_limits(name: str) -> tuple[str, dict[str, Any]] | None:
    """The datasheet limits of the GPU called ``name`` (and the key they are under), or
    None for a card not in GPU_LIMITS."""
    return next(((k, v) for k, v in GPU_LIMITS.items() if k in name), None)


# The reference figures of docs/gpu.md (H200, plain reference code, a 100k-hit event with
# 1.9M doublets): per stage, what it did and its milliseconds per event; the GNN's as edges/s
# (eager: 1.9M edges in 123 ms), set against the edges our graph gives it.
REFERENCE_STAGES = {
    "graph": ("naive CuPy doublets, 100k-hit event", 15.0),
    "tracks": ("label-propagation components, 100k-hit event", 0.8),
}
REFERENCE_GNN = {
    "eager": ("Interaction Network H=64, 8 steps, eager", 1.9e6 / 0.123),
    "compile": ("Interaction Network H=64, 8 steps, torch.compile bf16", 133e6),
}
REFERENCE_ZMQ_MSGS_PER_S = 2200.0  # pyzmq TCP loopback, messages of 1.6 MB


def log(msg: str) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- events


def _simulate_one(args: tuple[float, np.random.SeedSequence, int]) -> Event:
    mu, seed, i = args
    cfg = SimConfig(generator=replace(GeneratorConfig(), mu=mu))
    return simulate_event(load_detector(), cfg, np.random.default_rng(seed), run=1, event=i)


def simulate_events(n: int, mu: float, seed: int, workers: int) -> list[Event]:
    """``n`` events in a process pool (forked before any CUDA use)."""
    jobs = [(mu, s, i) for i, s in enumerate(np.random.SeedSequence(seed).spawn(n))]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(_simulate_one, jobs))


def batch(events: list[Event], size: int, k: int) -> list[Event]:
    """The ``k``-th batch of ``size`` events, cycling through ``events``."""
    return [events[(k * size + j) % len(events)] for j in range(size)]


# --------------------------------------------------------------------------- device


class Device:
    """Synchronisation and memory figures for ``cpu`` or ``cuda`` (CuPy and torch pools)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cuda = name == "cuda"
        if self.cuda:
            import cupy

            self.cupy = cupy
            self.xp: Any = cupy
        else:
            self.xp = np

    def sync(self) -> None:
        if self.cuda:
            self.cupy.cuda.get_current_stream().synchronize()
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict[str, Any]:
        if not self.cuda:
            return {}
        free, total = torch.cuda.mem_get_info()
        return {
            "torch_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "cupy_pool_gib": self.cupy.get_default_memory_pool().total_bytes() / 2**30,
            "device_used_gib": (total - free) / 2**30,
        }

    def release(self) -> None:
        gc.collect()
        release_cached_memory(self.name)


def ms_stats(seconds: list[float]) -> dict[str, float]:
    """Percentiles, largest and mean of ``seconds`` in ms, and how many there are (``n``: a
    p99 of fewer than 100 is about the largest; the report says so)."""
    a = np.asarray(seconds) * 1000
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(np.max(a)),
        "mean": float(a.mean()),
        "n": len(a),
    }


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Network:
    """The network and the chain settings of its card."""

    model: InteractionNetwork
    chain: ChainSettings
    name: str


def load_network() -> Network:
    """The shipped model with its card's settings, else a random one (no pruning)."""
    from streamtrk.recon.model import default_model_path, load_model

    path = default_model_path()
    try:
        model, card = load_model(path)
    except FileNotFoundError:
        torch.manual_seed(0)
        return Network(InteractionNetwork(), ChainSettings(), RANDOM)
    return Network(model, ChainSettings.of_card(card, path), str(path))


def gnn_traffic_bytes(cfg: Any, act_bytes: int) -> tuple[float, float]:
    """Least memory traffic of the network per edge and per hit, every step fused into one
    pass (an estimate): per step an edge reads and writes its state, reads its two hit
    indices and the two gathered hit projections, and (but in the last step, which has no
    hit update) adds its float32 message to two hit sums; a hit reads its state and writes
    its two projections, and but in the last step writes its state and reads its two sums.
    Plus the encoders' inputs and the head's score."""
    he, h, steps = cfg.edge_hidden, cfg.hidden, cfg.steps
    per_edge = steps * (4 * he * act_bytes + 16) + (steps - 1) * 2 * he * 4
    per_edge += cfg.edge_in * 4 + 4
    per_hit = steps * (h * act_bytes + 2 * he * act_bytes) + (steps - 1) * (
        h * act_bytes + 2 * he * 4
    )
    return float(per_edge), float(per_hit + cfg.node_in * 4)


def gnn_figures(
    cfg: Any, engine: str, precision: str, edges: float, hits: float, seconds: float, gpu: str
) -> dict:
    """The GNN stage's achieved rates (the whole stage: compaction, padding and DLPack with
    the network) against the reference of its engine (REFERENCE_GNN; none for TensorRT)
    and against the limits of ``gpu`` (its name) for this graph (matrix-product FLOPs and
    least traffic per edge and hit; none for a card without limits in GPU_LIMITS)."""
    f_edge, f_hit = cfg.matmul_flops()
    b_edge, b_hit = gnn_traffic_bytes(cfg, 4 if precision == "fp32" else 2)
    flops, traffic = edges * f_edge + hits * f_hit, edges * b_edge + hits * b_hit
    what, rate = REFERENCE_GNN.get(engine, (None, None))
    out = {
        "edges_per_s": edges / seconds,
        "reference": what,
        "reference_edges_per_s": rate,
        "over_reference": None if rate is None else edges / seconds / rate,
        "achieved_tflops": flops / seconds / 1e12,
        "achieved_tb_per_s_at_least_traffic": traffic / seconds / 1e12,
    }
    if (found := gpu_limits(gpu)) is None:
        return out | {"limits_of": None}
    card, limits = found
    compute_s = flops / (limits["tflops"][precision] * 1e12)
    memory_s = traffic / (limits["tb_per_s"] * 1e12)
    return out | {
        "limits_of": card,
        "limit_ms": max(compute_s, memory_s) * 1000,
        "limit_bound_by": "memory" if memory_s > compute_s else "compute",
        "of_limit": max(compute_s, memory_s) / seconds,
    }


# --------------------------------------------------------------------------- parts


class Bench:
    """Parts run in order against a time budget; results rewritten after each part."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.partial: dict[str, Any] = {}  # the running part's results so far (see part)
        self.result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
            "summary": {},
            "parts": {},
        }

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def part(self, name: str, need_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        if self.left() < need_s:
            self.result["parts"][name] = {
                "skipped": f"time budget: {self.left():.0f} s left, the part needs ~{need_s} s"
            }
            log(f"{name}: skipped (budget)")
            self.write()
            return
        log(f"{name}: start ({self.left():.0f} s of budget left)")
        t = time.monotonic()
        self.partial = {}
        try:
            data = fn()
        except Exception as exc:
            data = self.partial | {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            log(f"{name}: FAILED {data['error']}")
        except KeyboardInterrupt:  # the step's time limit (SIGINT): what was measured, kept
            _no_more_interrupts()
            self.result["parts"][name] = self.partial | {"interrupted": "SIGINT (time limit)"}
            log(f"{name}: interrupted")
            self.write()
            raise
        data["part_seconds"] = round(time.monotonic() - t, 2)
        self.result["parts"][name] = data
        log(f"{name}: done in {data['part_seconds']} s")
        self.write()

    def write(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.result["summary"] = summary(self.result["parts"])
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_bench.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=2, default=str) + "\n")
        tmp.replace(self.out / "gpu_bench.json")


def _no_more_interrupts() -> None:
    """Ignore SIGINT from here on: ``timeout`` sends its signal to the process and to its
    group, and a second one would cut the saving of what was measured."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def summary(parts: dict[str, Any]) -> dict[str, Any]:
    """Headline figures of the configurations measured so far, against docs/gpu.md's
    targets; ``end_to_end``: one row per configuration and batch size."""
    info = parts.get("info", {})
    rows: dict[str, Any] = {}
    end_to_end = []
    for name, p in parts.items():
        b = p.get("batches", {})
        if not b:
            continue
        rows[name] = {
            "events_per_s": {k: v.get("events_per_s") for k, v in b.items()},
            "p99_ms_batch1": b.get("1", {}).get("wall_ms", {}).get("p99"),
            "first_call_s": p.get("first_call_s"),
            "gnn_batch16": b.get("16", {}).get("gnn"),
        }
        end_to_end += [
            {
                "mu": info.get("mu"),
                "batch": int(size),
                "engine": p.get("engine"),
                "precision": p.get("precision"),
                "cuda_graphs": p.get("cuda_graphs"),
                "events_per_second": v.get("events_per_s"),
                "p50_ms": v.get("wall_ms", {}).get("p50"),
                "p99_ms": v.get("wall_ms", {}).get("p99"),
                "host_syncs": v.get("host_syncs"),
            }
            for size, v in b.items()
        ]
    daemon = parts.get("daemon", {}).get("replay_max_rate", {})
    slow = parts.get("daemon", {}).get("replay_100hz", {})
    single = parts.get("daemon", {}).get("replay_batch1", {})
    # Each best with the configuration that reached it (not one configuration reaching both).
    rates = {n: r["events_per_s"]["16"] for n, r in rows.items() if r["events_per_s"].get("16")}
    p99s = {n: r["p99_ms_batch1"] for n, r in rows.items() if r["p99_ms_batch1"]}
    fastest = max(rates, key=rates.__getitem__, default=None)
    steadiest = min(p99s, key=p99s.__getitem__, default=None)
    return {
        "gpu": info.get("gpu", info.get("device")),
        "configs": rows,
        "end_to_end": end_to_end,
        "against_reference": against_reference(parts, daemon.get("events_per_second")),
        "best_events_per_s_batch16": rates.get(fastest) if fastest else None,
        "best_events_per_s_batch16_config": fastest,
        "target_events_per_s_batch16": TARGETS["events_per_s_batch16"],
        "best_p99_ms_batch1": p99s.get(steadiest) if steadiest else None,
        "best_p99_ms_batch1_config": steadiest,
        "target_p99_ms_batch1": TARGETS["p99_ms_batch1"],
        "daemon": {
            "events_per_s_max_rate": daemon.get("events_per_second"),
            "latency_p50_ms_100hz": slow.get("latency_p50_ms"),
            "latency_p99_ms_100hz": slow.get("latency_p99_ms"),
            # from when each event was due (the time it waited to be taken included)
            "latency_from_schedule_p99_ms_100hz": slow.get("latency_from_schedule_p99_ms"),
            "send_lag_max_ms_100hz": slow.get("send_lag_max_ms"),
            "mean_batch_events_100hz": slow.get("mean_batch_events"),
            "rate_hz_batch1": single.get("offered_rate_hz"),
            "mean_batch_events_batch1": single.get("mean_batch_events"),
            "latency_p50_ms_batch1": single.get("latency_p50_ms"),
            "latency_p99_ms_batch1": single.get("latency_p99_ms"),
            "latency_from_schedule_p99_ms_batch1": single.get("latency_from_schedule_p99_ms"),
            "target_p99_ms": TARGETS["p99_ms_batch1"],
        },
    }


def against_reference(parts: dict[str, Any], daemon_events_per_s: float | None) -> list[dict]:
    """Each stage's milliseconds per event beside its reference figure (docs/gpu.md),
    one row per configuration, batch size and stage with a reference (``ratio``: ours over
    the reference; below 1 is faster), then the daemon's events/s against ZeroMQ's message
    rate (``ratio``: ours over it; the transport alone caps it near 1)."""
    out = []
    for name, p in parts.items():
        for size, b in p.get("batches", {}).items():
            if "stage_ms" not in b:
                continue
            per_event = {s: ms / int(size) for s, ms in b["stage_ms"].items()}
            refs = dict(REFERENCE_STAGES)
            if p.get("engine") in REFERENCE_GNN:
                what, rate = REFERENCE_GNN[p["engine"]]
                refs["gnn"] = (what, b["edges_per_batch"] / int(size) / rate * 1000)
            for stage, (what, ref_ms) in refs.items():
                ours = per_event[stage]
                row = {"config": name, "batch": int(size), "stage": stage, "ms_per_event": ours}
                out.append(
                    row | {"reference": what, "reference_ms": ref_ms, "ratio": ours / ref_ms}
                )
    if daemon_events_per_s:
        out.append(
            {
                "config": "daemon",
                "stage": "events/s through ZeroMQ, as fast as taken",
                "events_per_second": daemon_events_per_s,
                "reference": "pyzmq TCP loopback, messages of 1.6 MB",
                "reference_per_second": REFERENCE_ZMQ_MSGS_PER_S,
                "ratio": daemon_events_per_s / REFERENCE_ZMQ_MSGS_PER_S,
            }
        )
    return out


def info_part(dev: Device, events: list[Event], mu: float, net: Network) -> dict:
    out: dict[str, Any] = {
        "device": dev.name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "model": net.name,
        "prune": net.chain.prune is not None,
        "events": len(events),
        "mu": mu,
        "hits_per_event": float(np.mean([len(e.hits) for e in events])),
    }
    if dev.cuda:
        props = torch.cuda.get_device_properties(0)
        out |= {
            "gpu": props.name,
            "gpu_memory_gib": props.total_memory / 2**30,
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
            "cupy": dev.cupy.__version__,
        }
    out["edges_per_event_first"] = batch_graph(
        events[:1], load_detector(), net.chain.graph, dev.xp
    ).num_edges
    return out


def transfers_part(dev: Device, events: list[Event], rec: Reconstructor) -> dict[str, Any]:
    """The chain's own transfers at batch 1 and 16, medians over 16 batches of one and 5 of
    16, each size's first batch untimed (kernel compilation, pool growth): the hits up as
    ``Reconstructor.reconstruct`` sends them (``batch_columns``: the NaN checks, the
    columns concatenated into the thread's page-locked buffer, one copy up: ``upload_*``,
    the whole path, not the link alone) and the tracks down (``to_host_packed``: the track
    arrays packed on the device, one copy). On the CPU both are host copies only."""
    det = rec.detector
    out: dict[str, Any] = {"by_batch": {}}
    for size in sorted({1, min(16, len(events))}):
        up, down, bytes_in, bytes_out = [], [], [], []
        for k in range(1 + max(5, 16 // size)):
            b = batch(events, size, k)
            dev.sync()
            t = time.perf_counter()
            cols, offsets = batch_columns(b, dev.xp)
            dev.sync()
            t_up = time.perf_counter() - t
            g = build_graph(**cols, node_offsets=offsets, det=det, cfg=rec.graph_config)
            if rec.prune is not None:
                g = select_edges(g, prune_edges(g, rec.prune, det))
            scores = rec.scorer(g, b)
            first, hits = build_tracks(
                g.edge_index,
                scores,
                g.node_features[:, 0],
                threshold=rec.threshold,
                config=rec.tracks,
            )
            params = fit_tracks(first, hits, cols["x"], cols["y"], cols["z"], g.layer, det)
            dev.sync()
            t = time.perf_counter()
            host = to_host_packed({"offsets": first, "hit_index": hits, **params})
            if k > 0:
                up.append(t_up)
                down.append(time.perf_counter() - t)
                bytes_in.append(sum(a.nbytes for a in cols.values()))
                bytes_out.append(sum(a.nbytes for a in host.values()))
        out["by_batch"][str(size)] = {
            "batches": len(up),
            "upload_ms": float(np.median(up) * 1000),
            "d2h_ms": float(np.median(down) * 1000),
            "upload_bytes": float(np.median(bytes_in)),
            "d2h_bytes": float(np.median(bytes_out)),
            "upload_gb_per_s": float(np.median(bytes_in) / np.median(up) / 1e9),
        }
    return out


def config_part(
    bench: Bench,
    dev: Device,
    events: list[Event],
    net: Network,
    config: str,
    batches: list[int],
    scale: float,
) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    engine, precision, graphs, _ = CONFIGS[config]
    torch._dynamo.reset()
    graphs_before = counters["stats"]["unique_graphs"]
    skips_before = counters["inductor"]["cudagraph_skips"]
    scorer = EngineScorer(
        net.model, dev.name, engine, precision, buckets=net.chain.buckets(), cuda_graphs=graphs
    )
    rec = net.chain.reconstructor(scorer, dev.name)
    dev.reset_peak()
    t = time.perf_counter()
    rec.reconstruct(events[:1])
    out: dict[str, Any] = {
        "engine": scorer.engine,
        "precision": precision,
        "cuda_graphs": scorer.cuda_graphs,
        "fallback_reason": scorer.fallback_reason,
        "first_call_s": round(time.perf_counter() - t, 2),
        "batches": {},
    }
    bench.partial = out  # kept if the step's time limit interrupts the part
    for size in batches:
        if bench.left() < 10:
            out["batches"][str(size)] = {"skipped": "time budget"}
            continue
        try:
            row = time_batches(rec, dev, events, size, scale)
            if dev.cuda:
                row["gnn"] = gnn_figures(
                    net.model.config,
                    scorer.engine,
                    precision,
                    row["edges_per_batch"],
                    row["gnn_hits_per_batch"],
                    row["stage_ms"]["gnn"] / 1000,
                    torch.cuda.get_device_name(0),
                )
            out["batches"][str(size)] = row
        except Exception as exc:  # e.g. out of memory at the largest batch
            out["batches"][str(size)] = {"error": f"{type(exc).__name__}: {exc}"}
            dev.release()
        log(f"  {config} batch {size}: {out['batches'][str(size)].get('events_per_s')}")
    out["compiled_graphs"] = counters["stats"]["unique_graphs"] - graphs_before
    # Graphs Inductor ran without CUDA graphs (it says so in a log line only): with
    # cuda_graphs on, anything but 0 means the timings are partly without them.
    out["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"] - skips_before
    out["memory"] = dev.memory()
    if engine == "compile" and bench.left() > 60:
        try:  # compiled already: a lower bound
            out["warm_up_again_s"] = round(scorer.warm_up(), 2)
        except Exception as exc:  # the batches measured are kept
            out["warm_up_again_s"] = f"failed: {type(exc).__name__}: {exc}"
    scorer.close()  # its CUDA graphs' memory pool and thread, now, not at a later collection
    del rec, scorer
    dev.release()
    return out


def time_batches(
    rec: Reconstructor, dev: Device, events: list[Event], size: int, scale: float
) -> dict[str, Any]:
    iterations = max(2, round(ITERATIONS.get(size, 3) * scale))
    rec.reconstruct(batch(events, size, 0))  # this size's first run: autotuning, caches
    if getattr(rec.scorer, "cuda_graphs", False):
        # torch's CUDA-graph trees run a (hits, edges) bucket pair's first call in the graph
        # pool and record it on the second: run every batch the timing will see twice
        # first, so that no recording falls inside it.
        distinct = len(events) // math.gcd(len(events), size)
        for k in range(1, 1 + min(iterations, distinct)):
            for _ in range(2):
                rec.reconstruct(batch(events, size, k))
    syncs: dict[str, Any] | None = None
    if dev.cuda:  # host synchronisations of one reconstruct (an untimed run)
        why = counting_unavailable()
        if why is None:
            try:  # a failed count (its calibration) is recorded; the timing goes on
                with count_host_syncs() as counted:
                    rec.reconstruct(batch(events, size, 0))
                syncs = {"cupy": counted.cupy, "torch": counted.torch}
            except RuntimeError as exc:
                syncs = {"error": str(exc)}
        else:
            syncs = {"error": why}
    walls: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    edges: list[int] = []
    hits: list[int] = []  # the hits the GNN sees: those with an edge
    # As the daemon's heap (streamtrk.service.heap): frozen out of the collector's scans, a
    # full one (about 200 ms with the compiled engine) cannot fall inside a timed batch;
    # the collections that still do are counted.
    with heap_frozen():
        before = [g["collections"] for g in gc.get_stats()]
        for k in range(iterations):
            b = batch(events, size, k + 1)
            dev.sync()
            t = time.perf_counter()
            result = rec.reconstruct(b)  # returns host tracks: synchronised
            walls.append(time.perf_counter() - t)
            for s in STAGES:
                stages[s].append(result.timings[s])
            edges.append(result.graph.num_edges)
            hits.append(int(dev.xp.unique(result.graph.edge_index).size))
        collections = [g["collections"] - n for g, n in zip(gc.get_stats(), before, strict=True)]
    wall = float(np.median(walls))
    stage_ms = {s: float(np.median(v) * 1000) for s, v in stages.items()}
    # Each batch's own rest: the wall's median less the stages' medians is no time of any
    # batch, and of a few batches it can be negative.
    others = [w - sum(stages[s][k] for s in STAGES) for k, w in enumerate(walls)]
    return {
        "iterations": iterations,
        # the events over the time they took (as the daemon's rate is), not over the median
        "events_per_s": size * len(walls) / sum(walls),
        "wall_ms": ms_stats(walls),
        "per_event_ms": wall * 1000 / size,
        "stage_ms": stage_ms,
        "other_ms": float(np.median(others) * 1000),
        "edges_per_batch": float(np.median(edges)),
        "gnn_hits_per_batch": float(np.median(hits)),
        "host_syncs": syncs,
        "gc_collections": collections,  # while timed, by generation
        "memory": dev.memory(),
    }


def parity_part(dev: Device, events: list[Event], net: Network) -> dict[str, Any]:
    from streamtrk.eval.precision import precision_parity

    n = min(8, len(events))
    engine = "eager"  # the compiled engine's bf16 is not measured here (its compile time)
    return {"engine": engine} | precision_parity(
        net.model,
        events[:n],
        precision="bf16",
        device=dev.name,
        engine=engine,
        chain=net.chain,
        batch_size=n,
    )


def kernels_part(
    bench: Bench, dev: Device, events: list[Event], net: Network, sizes: list[int]
) -> dict:
    """The graph search, the triplet cuts and the fit's least-squares sums as kernels and as
    array operations, timed on the same prepared inputs (medians of 5 after one warm-up
    call), and compared."""
    det, xp, chain = load_detector(), dev.xp, net.chain
    build_dir = Path(tempfile.mkdtemp(prefix="streamtrk-kernels-"))

    def launcher(name: str) -> Launch:
        return cupy_launcher(name) if dev.cuda else host_launcher(name, build_dir)

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        out = fn()
        seconds = []
        for _ in range(5):
            dev.sync()
            t = time.perf_counter()
            fn()
            dev.sync()
            seconds.append(time.perf_counter() - t)
        return float(np.median(seconds) * 1000), out

    search_launch = launcher(graph_stage.KERNELS)
    prune_launch = launcher(prune_stage.KERNELS)
    fit_launch = launcher(fit_stage.KERNELS)

    def gls(b: list[Event], g: Any) -> dict[str, Any]:
        """The circle's sums (4 columns, scatter sets of 2 and 3 arms) over the oracle tracks
        of graph ``g``: the fit's shapes; random values (the time does not depend on them)."""
        offsets, _ = build_tracks(g.edge_index, OracleScorer()(g, b), g.node_features[:, 0])
        n_hits = int(offsets[-1])
        tid = csr_rows(offsets, n_hits)
        rng = np.random.default_rng(0)
        values = rng.normal(size=(n_hits, 15))
        values[:, 4] = rng.uniform(0.5, 2.0, n_hits)  # the variances
        hits = xp.asarray(values)
        columns = list(hits.T)
        arrays_ms, sums = timed(lambda: fit_stage.gram_arrays(columns, 4, (2, 3), offsets, tid))
        kernel_ms, ksums = timed(
            lambda: fit_stage.gram_kernel(hits, 4, (2, 3), offsets, fit_launch)
        )
        a, k = to_host(sums), to_host(ksums)
        return {
            "tracks": len(offsets) - 1,
            "gls_ms": {"arrays": arrays_ms, "kernels": kernel_ms},
            "same_gls": bool(np.allclose(k, a, rtol=1e-9, atol=1e-9 * np.abs(a).max())),
        }

    def measure(size: int) -> dict[str, Any]:
        b = batch(events, size, 0)
        cols, offsets = batch_columns(b, xp)
        ctx, _, _ = graph_stage.prepare_search(
            **cols, node_offsets=offsets, det=det, cfg=chain.graph
        )
        arrays_ms, (i, j, f) = timed(lambda: graph_stage.search_arrays(ctx))
        kernels_ms, (ki, kj, kf) = timed(lambda: graph_stage.search_kernels(ctx, search_launch))
        row: dict[str, Any] = {
            "queries": len(ctx.qi),
            "edges": len(i),
            "search_ms": {"arrays": arrays_ms, "kernels": kernels_ms},
            "same_edges": all(
                np.array_equal(to_host(a), to_host(b)) for a, b in ((i, ki), (j, kj))
            ),
            "same_features": bool(np.array_equal(to_host(f), to_host(kf))),
        }
        g = build_graph(**cols, node_offsets=offsets, det=det, cfg=chain.graph)
        row |= gls(b, g)
        if chain.prune is None:
            return row
        geo, usable, t = prune_stage.triplet_inputs(g, chain.prune, det)
        args = (geo, usable, t, len(det), chain.prune.min_hits)
        p_arrays_ms, mask = timed(lambda: prune_stage.keep_arrays(*args))
        p_kernels_ms, kmask = timed(lambda: prune_stage.keep_kernels(*args, prune_launch))
        row["triplets_ms"] = {"arrays": p_arrays_ms, "kernels": p_kernels_ms}
        row["same_mask"] = bool(np.array_equal(to_host(mask), to_host(kmask)))
        row["kept"] = int(to_host(kmask).sum())
        return row

    out: dict[str, Any] = {}
    bench.partial = out  # the batch sizes done, kept if a later one fails or is cut
    for size in sizes:
        out[str(size)] = measure(size)
        log(f"  kernels batch {size}: {out[str(size)]}")
        dev.release()
    return out


# --------------------------------------------------------------------------- daemon


def batch1_rate_hz(parts: dict[str, Any], config: str) -> float:
    """The rate of the daemon's latency replay: half the events/s the chain reached at
    batch 1 in ``parts`` in the daemon's ``config`` (else in the slowest configuration
    measured), from 0.1 to 100 Hz; 10 Hz if none was. Each event then finds the daemon
    idle, and is a batch of one."""
    rates = {
        name: p["batches"]["1"]["events_per_s"]
        for name, p in parts.items()
        if isinstance(p, dict) and "events_per_s" in p.get("batches", {}).get("1", {})
    }
    if not rates:
        return 10.0
    return round(min(100.0, max(0.1, 0.5 * rates.get(config, min(rates.values())))), 2)


def daemon_part(
    bench: Bench,
    dev: Device,
    events: list[Event],
    net: Network,
    config: str,
    rate_batch1_hz: float,
) -> dict[str, Any]:
    """``streamtrk serve`` in a subprocess, replayed through ZeroMQ by ``streamtrk replay``
    (serving the benchmark's random network from a temporary model directory when there is
    no shipped model): as fast as taken, at 100 Hz and at ``rate_batch1_hz``, each replay's
    mean batch size from the daemon's metrics. ``config``: one of CONFIGS, its engine,
    precision and CUDA graphs on CUDA (eager fp32 on the CPU); eager starts in seconds,
    compile first warms up every shape bucket (31 for the shipped model), twice with CUDA
    graphs."""
    if not (ROOT / "streamtrk" / "service" / "serve.py").is_file():
        return {"skipped": "streamtrk serve is not in this checkout"}
    try:
        import zmq  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"pyzmq is not importable ({exc}); put the wheel on PYTHONPATH"}
    from streamtrk.client import terminate, wait_listening, wait_ready
    from streamtrk.io.recording import RecordingWriter
    from streamtrk.service.config import ServeConfig

    settings = {f.name for f in fields(ServeConfig)}
    engine, precision, graphs, _ = CONFIGS[config]
    flags = ["--device", dev.name]
    if "engine" in settings:
        flags += ["--engine", engine if dev.cuda else "eager"]
    if "precision" in settings and dev.cuda:  # bf16 is 8x slower on CPUs without it
        flags += ["--precision", precision]
    if "cuda_graphs" in settings and dev.cuda and graphs:
        flags += ["--cuda-graphs"]
    if "max_queue_delay_ms" in settings:
        # Batches of up to 16 MU=200 events when events queue up (as fast as taken), and no
        # wait for a second event when they do not (the latency replay: batches of one);
        # room in the queue for the next full batch.
        flags += ["--max-batch-events", "16", "--max-batch-hits", "2000000"]
        flags += ["--max-queue-delay-ms", "0", "--queue-capacity", "32"]
    tmp = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    if net.name == RANDOM:
        from streamtrk.recon.card import model_card
        from streamtrk.recon.model import save_model

        card = model_card("random-seed0", net.model.config, net.chain.graph, net.chain.threshold)
        save_model(tmp / "model", net.model, card)
        flags += ["--model", str(tmp / "model")]
    run = tmp / "run.stk"  # compact: what a farm aiming at 1,000 events/s sends
    with RecordingWriter(run) as w:
        for ev in events:
            w.write_event(ev, compact=True)
    any_port = "tcp://127.0.0.1:*"  # the daemon binds, then says where (no port race)
    cmd = [sys.executable, "-m", "streamtrk", "serve", *flags, "--log-format", "json"]
    cmd += ["--input", any_port, "--output", any_port, "--http", "127.0.0.1:0"]
    log_path = tmp / "serve.log"
    out: dict[str, Any] = {
        "serve_flags": flags,
        "recording_events": len(events),
        "hits_messages": "compact (wire version 5)",
    }
    bench.partial = out  # the replays done, kept if the step's time limit interrupts
    t = time.monotonic()
    grace_s = 40.0  # for the daemon to drain and exit
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_s = max(10.0, min(240.0, bench.left() - 40))
            bound = wait_listening(log_path, wait_s, proc)
            ready = bound is not None and wait_ready(bound["http"], wait_s, proc)
            out["start_to_ready_s"] = round(time.monotonic() - t, 2)
            if bound is None or not ready:
                out["error"] = f"not ready (exit code {proc.poll()})"
                return out
            ep_in, ep_out, http = bound["input"], bound["output"], bound["http"]
            # The latency replay: 2 to 6 passes, about 20 s (a slow chain's replay must end
            # before its time out, which would lose its report).
            passes = max(2, min(6, int(rate_batch1_hz * 20 / len(events))))
            replays = (
                ("replay_max_rate", ["--loop", "4"]),
                ("replay_100hz", ["--rate", "100", "--loop", "4"]),
                ("replay_batch1", ["--rate", str(rate_batch1_hz), "--loop", str(passes)]),
            )
            for name, extra in replays:
                if bench.left() < 15:
                    out[name] = {"skipped": "time budget"}
                    continue
                report = tmp / f"{name}.json"
                before = _batches(http)
                replay = [sys.executable, "-m", "streamtrk", "replay", str(run), "--quiet"]
                replay += ["--to", ep_in, "--from", ep_out, "--report", str(report), *extra]
                try:
                    done = subprocess.run(
                        replay,
                        cwd=ROOT,
                        capture_output=True,
                        text=True,
                        timeout=max(15.0, bench.left() - 10),
                    )
                except subprocess.TimeoutExpired as exc:  # the replays before it are kept
                    out[name] = {"error": f"timed out after {exc.timeout:.0f} s"}
                    continue
                if report.is_file():
                    out[name] = json.loads(report.read_text()) | {"exit_code": done.returncode}
                else:
                    out[name] = {"exit_code": done.returncode, "stderr": done.stderr[-2000:]}
                after = _batches(http)
                if before and after and after[1] > before[1]:
                    mean = (after[0] - before[0]) / (after[1] - before[1])
                    out[name]["mean_batch_events"] = round(mean, 3)
                log(f"  daemon {name}: {out[name].get('events_per_second')} events/s")
            try:
                out["metrics"] = _scrape(http)
                # What it served: engine_note says where CUDA graphs or an engine fell back.
                status = json.loads(_http_get(http, "/status"))
                out["status_model"] = status.get("model")
            except (OSError, ValueError) as exc:
                out.setdefault("metrics", f"not read: {exc}")
                out["status_model"] = f"not read: {exc}"
        except KeyboardInterrupt:  # the step's time limit: seconds left before its SIGKILL
            _no_more_interrupts()
            grace_s = 5.0
            raise
        finally:
            out["exit_code"] = terminate(proc, grace_s)
            out["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    return out


def _http_get(http: str, path: str) -> str:
    """The daemon's page ``path`` (/metrics, /status)."""
    from streamtrk.client import DIRECT

    with DIRECT.open(f"http://{http}{path}", timeout=5) as r:
        return r.read().decode()


def _batches(http: str) -> tuple[float, float] | None:
    """The events in the daemon's batches so far and the batches: its
    ``streamtrk_batch_events`` histogram's sum and count; None where /metrics cannot be
    read (the replays' reports are kept)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = _http_get(http, "/metrics")
    except OSError as exc:
        log(f"  daemon /metrics not read: {exc}")
        return None
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "streamtrk_batch_events"
        for s in family.samples
    }
    names = ("streamtrk_batch_events_sum", "streamtrk_batch_events_count")
    return (samples[names[0]], samples[names[1]]) if set(names) <= set(samples) else None


def _scrape(http: str) -> list[str]:
    """The build-info, per-stage and garbage-collector lines of the daemon's /metrics (the
    objects frozen, the collections' pauses by generation)."""
    keep = (
        "streamtrk_build_info",
        "streamtrk_stage_seconds_sum",
        "streamtrk_stage_seconds_count",
        "streamtrk_gc_frozen_objects",
        "streamtrk_gc_pause_seconds_sum",
        "streamtrk_gc_pause_seconds_count",
    )
    return [line for line in _http_get(http, "/metrics").splitlines() if line.startswith(keep)]


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "/tmp/gpu-bench")),
        help="default: $OUT, else /tmp/gpu-bench",
    )
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--events", type=int, default=32, help="events simulated (then reused)")
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--iterations-scale", type=float, default=1.0, help="scales ITERATIONS")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument(
        "--daemon-config",
        choices=list(CONFIGS),
        default="eager_bf16",
        help="the daemon part's engine, precision and CUDA graphs on CUDA (eager fp32 on the CPU)",
    )
    args = ap.parse_args()

    bench = Bench(args.out, args.budget_s)
    log(f"simulating {args.events} events at mu={args.mu:g} on {args.workers} processes")
    t = time.monotonic()
    events = simulate_events(args.events, args.mu, args.seed, args.workers)
    bench.result["simulation_s"] = round(time.monotonic() - t, 1)
    dev = Device(args.device)
    net = load_network()
    bench.part("info", 5, lambda: info_part(dev, events, args.mu, net))
    rec = net.chain.reconstructor(EngineScorer(net.model, dev.name, "eager"), dev.name)
    bench.part("transfers", 10, lambda: transfers_part(dev, events, rec))

    def entry(name: str) -> tuple[str, float, Callable[[], dict[str, Any]]]:
        """A configuration's part: its name, the seconds it needs, the call."""

        def run() -> dict[str, Any]:
            return config_part(bench, dev, events, net, name, args.batches, args.iterations_scale)

        return name, CONFIGS[name][3], run

    # Most wanted first (a short device session may not reach the end): the headline
    # configuration, the daemon's own (the latency replay's rate comes from it; on the CPU
    # the daemon serves eager fp32), the daemon, the baseline, bf16 parity (12.7 s on the
    # H200 on 2026-12-04), the kernels, then the rest.
    small = [b for b in args.batches if b <= 16]  # the kernels part's batch sizes
    served = args.daemon_config if args.device == "cuda" else "eager_fp32"
    need = CONFIGS[served][3] + 15 if args.device == "cuda" else 40  # replays, start and stop
    first = [c for c in dict.fromkeys(("compile_bf16", served)) if c in args.configs]
    rest = [c for c in CONFIGS if c not in first]  # the baseline, eager fp32, first
    parts: list[tuple[str, float, Callable[[], dict[str, Any]]]] = [entry(c) for c in first]
    parts += [
        (
            "daemon",
            need,
            lambda: daemon_part(
                bench, dev, events, net, served, batch1_rate_hz(bench.result["parts"], served)
            ),
        ),
        entry(rest[0]),
        ("bf16_parity", 25, lambda: parity_part(dev, events, net)),
        ("kernels", 20, lambda: kernels_part(bench, dev, events, net, small)),
        *(entry(c) for c in rest[1:]),
    ]
    for name, need_s, fn in parts:
        if name in CONFIGS and name not in args.configs:
            continue
        bench.part(name, need_s, fn)
    bench.write()
    print(json.dumps(bench.result, indent=2, default=str))
    print("SUMMARY " + json.dumps(bench.result["summary"], default=str), flush=True)


if __name__ == "__main__":
    main()
