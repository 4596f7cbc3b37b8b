"""The daemon's host-side work per MU=200 event, against the GPU targets' budgets.

With the reconstruction on a GPU, the daemon's CPU still does, per event, under one Python
interpreter lock: decoding the hits message (ingest thread); concatenating the batch's
columns and splitting the tracks by event (worker, inside ``reconstruct``); the physics
metrics (worker, after each batch's replies are queued, before the next batch starts); and
encoding the reply (emit thread). At issue 13's targets the host has 2 ms per event for all
of it (500 events/s) or 1 ms (1,000 events/s). Each part is timed here on the same events,
medians of ``--repeats`` calls, divided by the batch's events where it works per batch;
the physics metrics' edge-score histogram is given apart (on a GPU it is counted on the
device). The parts are the daemon's own functions on real reconstructed events (the
shipped model, one batch of ``--events``). With ``--device cuda`` the batch's columns go up
to the device in ``batch_columns`` (timed to the copy's end) and the edge scores are counted
there.

ZeroMQ's transfer runs in libzmq's I/O threads (no interpreter lock): hits messages sent
as fast as taken over TCP loopback from another process, received zero-copy as the
ingest does; also messages of the reference's size (1.6 MB), for the ratio to the
reference figure measured on the device machine. Hits messages both as producers write them
by default (32 bytes a hit) and compact (``encode_hits(..., compact=True)``, wire version 5:
about 20 bytes a hit); the compact message's decode (it widens the ids) is timed apart, in
place of the default one, not in the total.

Prints JSON (also written to ``--json``).

Run: PYTHONPATH=. .venv/bin/python bench/host_path.py [--events 8] [--mu 200] [--repeats 20]
     [--messages 400] [--transfers 3] [--device cpu] [--json out.json]
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()  # before the imports below load torch's OpenMP runtime, as `serve` does

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq
from prometheus_client import CollectorRegistry

from streamtrk.detector import load_detector
from streamtrk.event import Event
from streamtrk.recon.graph import batch_columns
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.tracks import split_by_event
from streamtrk.service.emit import _encode, _with_timing
from streamtrk.service.job import Job, Reply
from streamtrk.service.physics import Observation, PhysicsMetrics
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire import Limits, ModelId, decode, encode_hits

BUDGETS_US = {"500 events/s": 2000.0, "1000 events/s": 1000.0}
NOT_IN_TOTAL = ("physics_edge_scores", "decode_compact")  # a part of one, instead of one
MIN_MESSAGES = 20  # sent in a transfer run, at least
REFERENCE_BYTES = 1_600_000  # the reference's message: 1.6 MB, ~2,200 msgs/s on the device


def median_us(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


#: The sender, in a fresh interpreter that imports only pyzmq: frames from a file, sent
#: ``n`` times (argv: this process's pid, endpoint, n, frame file, its frames' sizes). It
#: ends with this process (killed at the device run's time limit): left alone, it would
#: connect to the port again and again and hand its messages to whatever binds it next.
SENDER = """
import ctypes, os, sys, zmq
parent, endpoint, n, path = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
sizes = sys.argv[5:]
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG: SIGKILL once the parent ends
if os.getppid() != parent:  # it ended before that
    sys.exit(1)
data = open(path, "rb").read()
frames, at = [], 0
for size in map(int, sizes):
    frames.append(data[at : at + size])
    at += size
ctx = zmq.Context()
push = ctx.socket(zmq.PUSH)
push.setsockopt(zmq.SNDHWM, 16)
push.setsockopt(zmq.SNDTIMEO, 30_000)  # the receiver gone: give up
push.connect(endpoint)
try:
    for _ in range(n):
        push.send_multipart(frames, copy=False)
    push.close(linger=30_000)
except zmq.Again:
    push.close(linger=0)
    sys.exit(1)
ctx.term()
"""


def transfer(frames: list[bytes], n: int) -> float:
    """Messages per second of ``frames`` sent ``n`` times over TCP loopback by another
    process, received frame by frame zero-copy."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 16)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"".join(frames))
        f.flush()
        sizes = [str(len(frame)) for frame in frames]
        endpoint = f"tcp://127.0.0.1:{port}"
        cmd = [sys.executable, "-c", SENDER, str(os.getpid()), endpoint, str(n), f.name, *sizes]
        sender = subprocess.Popen(cmd)
        pull.recv_multipart(copy=False)  # the first one starts the clock
        t0 = time.perf_counter()
        for _ in range(n - 1):
            pull.recv_multipart(copy=False)
        seconds = time.perf_counter() - t0
        sender.wait()
    pull.close(linger=0)
    ctx.term()
    return (n - 1) / seconds


def transfers(messages: dict[str, list[bytes]], n: int, runs: int) -> dict[str, dict[str, Any]]:
    """:func:`transfer` of each message ``runs`` times, alternated: medians, and each run's
    messages per second."""
    rates: dict[str, list[float]] = {name: [] for name in messages}
    for _ in range(runs):
        for name, frames in messages.items():
            rates[name].append(transfer(frames, n))
    out: dict[str, dict[str, Any]] = {}
    for name, frames in messages.items():
        size, rate = sum(len(f) for f in frames), float(np.median(rates[name]))
        out[name] = {"bytes": size, "messages_per_s": rate, "mb_per_s": size * rate / 1e6}
        out[name]["runs_messages_per_s"] = rates[name]
    return out


def per_event_parts(
    events: list[Event], repeats: int, device: str
) -> tuple[dict[str, float], float]:
    """Microseconds per event of each host-side part, on one batch of ``events``
    reconstructed on ``device`` (its columns go up, its edge scores stay there); and the
    mean bytes of their replies (all frames)."""
    rec = load_reconstructor(device=device)
    rec.reconstruct(events[:1])  # warm-up
    result = rec.reconstruct(events)
    n = len(events)
    frames = [[bytes(f) for f in encode_hits(ev)] for ev in events]
    compact = [[bytes(f) for f in encode_hits(ev, compact=True)] for ev in events]
    limits = Limits(max_hits=max(len(ev.hits) for ev in events))
    jobs = [Job(decode(f, limits=limits).to_event(), 0.0, None, {"decode": 1e-4}) for f in frames]
    ident = ModelId("in-h32-s6-v2", "0123456789abcdef", rec.threshold)  # as the daemon names it
    replies = [
        Reply.success(job, tracks, {**job.timings, **result.timings}, rec.beam_spot, ident)
        for job, tracks in zip(jobs, result.tracks, strict=True)
    ]
    # the batch's tracks as the fit leaves them: one CSR over the batch's hit numbering
    node_offsets, tracks = result.node_offsets, result.tracks
    batch_tracks = (
        np.concatenate([[0], np.cumsum(np.concatenate([t.sizes for t in tracks]))]),
        np.concatenate([t.hit_index + o for t, o in zip(tracks, node_offsets, strict=False)]),
        {k: np.concatenate([t.params[k] for t in tracks]) for k in tracks[0].params},
    )
    physics = PhysicsMetrics(CollectorRegistry())
    observation = Observation.of(events, result, rec)

    def decode_all(messages: list[list[bytes]]) -> None:
        for f in messages:
            decode(f, limits=limits).to_event()

    def columns_up() -> None:  # on CUDA with its copy up: the call returns before it lands
        batch_columns(events, rec.xp)
        if rec.xp is not np:
            rec.xp.cuda.Device().synchronize()

    def encode_all() -> None:
        for reply in replies:
            _with_timing(_encode(reply), "encode", 1e-4)

    parts = {
        "decode": lambda: decode_all(frames),
        "decode_compact": lambda: decode_all(compact),
        "batch_columns": columns_up,
        "split_by_event": lambda: split_by_event(*batch_tracks, node_offsets),
        "physics": lambda: physics.observe(observation),
        "physics_edge_scores": lambda: physics.edge_score.observe(result.scores),
        "encode": encode_all,
    }
    reply_bytes = np.mean([sum(len(f) for f in _encode(reply)) for reply in replies])
    return {name: median_us(fn, repeats) / n for name, fn in parts.items()}, float(reply_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=31415)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--transfers", type=int, default=3, help="runs of each message, alternated")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where reconstruction runs")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.messages < MIN_MESSAGES:  # a rate of a few back-to-back arrivals is no rate
        ap.error(f"--messages must be at least {MIN_MESSAGES}, got {args.messages}")
    det = load_detector()
    cfg = SimConfig(generator=GeneratorConfig(mu=args.mu))
    events = list(simulate(det, cfg, args.seed, args.events))
    parts, reply_bytes = per_event_parts(events, args.repeats, args.device)
    host_us = sum(v for k, v in parts.items() if k not in NOT_IN_TOTAL)
    hits = [bytes(f) for f in encode_hits(events[0])]
    hits_compact = [bytes(f) for f in encode_hits(events[0], compact=True)]
    reference = [b"\x00" * REFERENCE_BYTES]
    out = {
        "device": args.device,
        "events": args.events,
        "mu": args.mu,
        "hits_per_event": float(np.mean([len(ev.hits) for ev in events])),
        "reply_bytes_per_event": reply_bytes,
        "per_event_us": parts,
        "host_us_per_event": host_us,
        "host_us_per_event_edge_scores_on_device": host_us - parts["physics_edge_scores"],
        "share_of_budget": {k: host_us / v for k, v in BUDGETS_US.items()},
        "zmq_tcp": None,  # until measured: a run cut short (the device run's limit) keeps the rest
    }
    _save(out, args.json)
    messages = {"hits_message": hits, "hits_message_compact": hits_compact}
    messages["reference_message"] = reference
    out["zmq_tcp"] = transfers(messages, args.messages, args.transfers)
    print(_save(out, args.json))


def _save(out: dict[str, Any], path: str | None) -> str:
    """``out`` as JSON, written to ``path`` (when given) in place of what it held."""
    text = json.dumps(out, indent=2)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
