"""What a SIGHUP reload costs the daemon while it serves.

A reload loads the model again in a thread of its own (beside the worker), then the worker,
between two batches, closes the replaced model and freezes the heap again
(``streamtrk.service.heap.refreeze_heap``): a full collection of every object the collector
tracks, every Python thread waiting. A ``streamtrk serve`` on the CPU (embedded defaults,
the shipped model) replays simulated events at a fixed rate twice: without reloads, then
sent SIGHUP every ``--every`` seconds. Reported: each ``heap frozen`` line of its log
(objects and ms; ``installed`` at start-up, ``reload`` after each reload), the full
collections' pauses (``streamtrk_gc_pause_seconds{generation="2"}``), and the replays'
latencies, without and with the reloads. Beside it, in the same run, the same freeze in
``bench/gc_pause.py``'s process (the chain without the daemon's service modules).

Prints JSON (also written to ``--json``).

Run: PYTHONPATH=. .venv/bin/python bench/reload_pause.py [--events 8] [--mu 50] [--rate 2]
     [--seconds 60] [--every 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from daemon_bench import Daemon, print_summary, replayed, simulated

ROOT = Path(__file__).resolve().parents[1]
LATENCY = ("latency_p50_ms", "latency_p99_ms", "latency_max_ms", "received", "sent")


def freezes(log: Path) -> list[dict[str, Any]]:
    """The daemon's ``heap frozen`` lines: after what, objects, ms."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    keys = ("after", "objects", "ms")
    return [{k: line[k] for k in keys} for line in lines if line["message"] == "heap frozen"]


def full_collections(daemon: Daemon) -> dict[str, float]:
    """Count and sum (ms) of the daemon's full collections so far."""
    from prometheus_client.parser import text_string_to_metric_families

    from streamtrk.client import DIRECT

    with DIRECT.open(f"http://{daemon.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"count": 0.0, "sum_ms": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("generation") == "2":
                if s.name == "streamtrk_gc_pause_seconds_count":
                    out["count"] = s.value
                elif s.name == "streamtrk_gc_pause_seconds_sum":
                    out["sum_ms"] = s.value * 1e3
    return out


def bare_freeze() -> dict[str, Any]:
    """``bench/gc_pause.py`` with one reconstruct: its freeze (objects, ms)."""
    cmd = [sys.executable, str(ROOT / "bench" / "gc_pause.py"), "--events", "1", "--mu", "50"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {"objects": out["frozen_objects"], "ms": round(out["freeze_ms"], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=8, help="simulated events (default 8)")
    p.add_argument("--mu", type=float, default=50.0, help="their pileup (default 50)")
    p.add_argument("--rate", type=float, default=2.0, help="events a second offered (2)")
    p.add_argument("--seconds", type=float, default=60.0, help="each replay's length (60)")
    p.add_argument("--every", type=float, default=10.0, help="seconds between SIGHUPs (10)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args()

    from streamtrk.replay import load_recording

    loops = max(1, round(args.rate * args.seconds / args.events))
    out: dict[str, Any] = {k: getattr(args, k) for k in ("events", "mu", "rate", "every")}
    out["events_per_replay"] = loops * args.events
    out["bare_process"] = bare_freeze()
    with tempfile.TemporaryDirectory(prefix="reload-pause-") as tmp:
        events = load_recording(simulated(Path(tmp), args.events, args.mu))
        log = Path(tmp) / "daemon.log"
        daemon = Daemon(log)
        try:
            replayed(daemon, events[:1])  # the first batch's own costs outside the timings
            quiet = replayed(daemon, events, rate=args.rate, loop=loops)
            before = full_collections(daemon)
            stop = threading.Event()

            def reload_every() -> None:
                while not stop.wait(args.every):
                    daemon.process.send_signal(signal.SIGHUP)

            hups = threading.Thread(target=reload_every, name="sighup")
            hups.start()
            try:
                reloading = replayed(daemon, events, rate=args.rate, loop=loops)
            finally:
                stop.set()
                hups.join()
            after = full_collections(daemon)
        finally:
            out["exit_status"] = daemon.stop()
        frozen = freezes(log)
    reloads = [f for f in frozen if f["after"] == "reload"]
    out["daemon_freezes"] = frozen
    out["reload_freeze_ms_median"] = (
        statistics.median(f["ms"] for f in reloads) if reloads else None
    )
    out["full_collections_while_reloading"] = {
        "count": after["count"] - before["count"],
        "sum_ms": round(after["sum_ms"] - before["sum_ms"], 1),
    }
    out["replay_without_reloads"] = {k: quiet[k] for k in LATENCY}
    out["replay_with_reloads"] = {k: reloading[k] for k in LATENCY}
    print_summary(out, args.json)


if __name__ == "__main__":
    main()
