"""Sharing a node: two daemons side by side against one alone, and the GNN beside a busy
process. Both with default settings (threads from the CPUs the process may use, OpenMP
workers waiting passively), on whatever machine runs this (the project's: 2 cores).

1. Throughput: ``--events`` simulated events replayed as fast as taken through one daemon,
   then through two daemons at once (each its own replay of the same events, started
   together); ``--repeats`` alternating passes, medians. Ratio: both daemons' replies per
   second of wall time over one daemon's. Target: at least 0.9. ``--contrast`` adds passes
   with ``OMP_WAIT_POLICY=ACTIVE`` (spinning OpenMP workers) for reference.
2. The GNN beside a busy process: the shipped model's scorer on the real barrel event (55k
   hits), timed in a fresh process alone and beside one busy single-threaded process
   (a Python loop); ``--repeats`` alternating, medians. Target: at most 1.3 times alone.

Prints a JSON summary (also written to ``--json``).

Run: .venv/bin/python bench/node_sharing.py [--events 24] [--mu 50] [--repeats 3]
     [--contrast] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from daemon_bench import REAL, Daemon, print_summary, replayed, shared_trackml, simulated

GNN_TIMINGS = 5  # scorer calls per GNN measurement (after one warm-up call)


def together(daemons: list[Daemon], events: list[Any]) -> float:
    """Replies per second of wall time when every daemon gets its own replay at once."""
    reports: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda d=d: reports.append(replayed(d, events))) for d in daemons
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert all(r["missing"] == 0 for r in reports), reports
    return sum(r["received"] for r in reports) / wall


def throughput(
    run: Path, tmp: Path, repeats: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    from streamtrk.replay import load_recording

    events = load_recording(run)
    daemons = [Daemon(tmp / f"daemon-{i}.log", env=env) for i in range(2)]
    try:
        replayed(daemons[0], events[:4])  # first batches in each daemon, outside the timing
        replayed(daemons[1], events[:4])
        passes = []
        for _ in range(repeats):
            one = together(daemons[:1], events)
            two = together(daemons, events)
            passes.append({"one": one, "two": two, "ratio": two / one})
    finally:
        for d in daemons:
            d.stop()
    return {
        "passes": passes,
        "one_events_per_second": statistics.median(p["one"] for p in passes),
        "two_events_per_second": statistics.median(p["two"] for p in passes),
        "ratio": statistics.median(p["ratio"] for p in passes),
    }


def gnn_seconds(recording: Path) -> float:
    """Median scorer time on the recording's first event, in a fresh process."""
    code = (
        "import statistics, sys, time\n"
        "from streamtrk.threads import set_torch_threads, wait_passively\n"
        "wait_passively()\n"
        "print(set_torch_threads(), file=sys.stderr)\n"
        "from streamtrk.detector import load_detector\n"
        "from streamtrk.recon.graph import event_graph\n"
        "from streamtrk.recon.load import load_reconstructor\n"
        "from streamtrk.replay import load_recording\n"
        f"ev = load_recording({str(recording)!r})[0].event\n"
        "rec = load_reconstructor()\n"
        "g = event_graph(ev, load_detector(), rec.graph_config)\n"
        "rec.scorer(g, [ev])\n"
        "times = []\n"
        f"for _ in range({GNN_TIMINGS}):\n"
        "    t0 = time.perf_counter()\n"
        "    rec.scorer(g, [ev])\n"
        "    times.append(time.perf_counter() - t0)\n"
        "print(statistics.median(times))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return float(done.stdout.split()[-1])


def beside_busy(recording: Path, repeats: int) -> dict[str, Any]:
    passes = []
    for _ in range(repeats):
        alone = gnn_seconds(recording)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            beside = gnn_seconds(recording)
        finally:
            busy.kill()
            busy.wait()
        passes.append({"alone_s": alone, "beside_busy_s": beside, "ratio": beside / alone})
    return {
        "passes": passes,
        "alone_s": statistics.median(p["alone_s"] for p in passes),
        "beside_busy_s": statistics.median(p["beside_busy_s"] for p in passes),
        "ratio": statistics.median(p["ratio"] for p in passes),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=24, help="simulated events (default 24)")
    p.add_argument("--mu", type=float, default=50.0, help="their pileup (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="alternating passes (default 3)")
    p.add_argument("--contrast", action="store_true", help="also with spinning OpenMP workers")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args()

    from streamtrk.cli import main as cli
    from streamtrk.threads import available_cpus

    out: dict[str, Any] = {"events": args.events, "mu": args.mu, "cpus": available_cpus()}
    with tempfile.TemporaryDirectory(prefix="node-sharing-") as tmp:
        run = simulated(Path(tmp), args.events, args.mu)
        out["daemons"] = throughput(run, Path(tmp), args.repeats)
        if args.contrast:
            spin = {"OMP_WAIT_POLICY": "ACTIVE"}
            out["daemons_spinning"] = throughput(run, Path(tmp), args.repeats, spin)
        real = Path(tmp) / "real.stk"
        assert cli(["import-trackml", str(shared_trackml() / REAL), "-o", str(real), "-q"]) == 0
        out["gnn_real_event"] = beside_busy(real, args.repeats)
    print_summary(out, args.json)


if __name__ == "__main__":
    main()
