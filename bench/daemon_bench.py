"""The daemon against the reconstruction API: throughput ratio, latency against offered
rate, and the real TrackML barrel event replayed through it.

1. Throughput: the same simulated events reconstructed by calling
   ``Reconstructor.reconstruct`` directly (batches of ``max_batch_events``, in a fresh
   process set up like the daemon's), and replayed as fast as the daemon takes them
   through a ``streamtrk serve`` subprocess with the embedded default configuration;
   ``--repeats`` alternating passes, medians compared. Target: daemon >= 90% of direct.
2. Latency against offered rate: replays at fixed fractions of the direct throughput
   (about ``--rate-seconds`` each); p50/p90/p99 (send to reply) per rate, plotted to a PNG
   with ``--png`` (none by default: docs/daemon-latency.png is a committed figure).
3. The real barrel event (``qallse_ez-1.0_hpt-1.0_no_truth/event000001000``, 55k hits),
   imported with ``streamtrk import-trackml`` and replayed ``--real-loops`` times.

Prints a JSON summary (also written to ``--json``).

Run: .venv/bin/python bench/daemon_bench.py [--events 32] [--mu 50] [--repeats 3]
     [--real-loops 100] [--png docs/daemon-latency.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REAL = "qallse_ez-1.0_hpt-1.0_no_truth/event000001000"
RATE_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.1)


def shared_trackml() -> Path:
    base = os.environ.get("STREAMTRK_SHARED")
    return (Path(base) if base else ROOT.parent / "shared") / "data" / "trackml"


def simulated(folder: Path, events: int, mu: float) -> Path:
    """``folder/run.stk``: ``events`` events simulated at pileup ``mu`` (seed 7)."""
    from streamtrk.cli import main as cli

    run = folder / "run.stk"
    sim = ["simulate", "--events", str(events), "--mu", str(mu), "--seed", "7"]
    assert cli([*sim, "-q", "-o", str(run)]) == 0
    return run


def print_summary(out: dict[str, Any], path: Path | None) -> None:
    """Print ``out`` as JSON; write it to ``path`` too when given (``--json``)."""
    text = json.dumps(out, indent=2)
    if path:
        path.write_text(text + "\n")
    print(text)


def direct(recording: Path, batch: int, repeat: int = 1) -> float:
    """Events per second of ``reconstruct`` called directly on ``recording``'s events, in
    batches of ``batch``, in a fresh process set up like the daemon's: model loaded and warmed
    up by the main thread, the timed calls made from a worker thread, on the daemon's default
    device. (The arrangement matters on a loaded 2-core machine: torch's OpenMP regions ran
    up to 15x slower when the calling thread was the first or only one to use torch.)
    """
    cmd = [sys.executable, __file__, "--direct", str(recording), "--batch", str(batch)]
    done = subprocess.run([*cmd, "--repeat", str(repeat)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return float(done.stdout.split()[-1])


def _direct_process(recording: Path, batch: int, repeat: int) -> None:
    from streamtrk.recon.device import resolve_device
    from streamtrk.recon.load import load_reconstructor
    from streamtrk.replay import load_recording

    rec = load_reconstructor(device=resolve_device("auto"))
    events = [r.event for r in load_recording(recording)] * repeat
    rec.reconstruct(events[:1])  # warm-up, as the daemon does
    seconds: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        for i in range(0, len(events), batch):
            rec.reconstruct(events[i : i + batch])
        seconds.append(time.perf_counter() - t0)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    print(len(events) / seconds[0])


class Daemon:
    """``python -m streamtrk serve`` on ports it picks, embedded defaults otherwise (plus
    ``args``; ``env`` replaces the environment's variables it names)."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        from streamtrk.client import wait_listening, wait_ready

        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        any_port = "tcp://127.0.0.1:*"
        cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", any_port, "--output"]
        cmd += [any_port, "--http", "127.0.0.1:0", "--log-format", "json", *args]
        self.process = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        bound = wait_listening(log, 300, self.process)
        if bound is None or not wait_ready(bound["http"], 300, self.process):
            raise RuntimeError(f"daemon not ready, see {log}")
        self.input, self.output, self.http = bound["input"], bound["output"], bound["http"]

    def metrics(self) -> dict[str, Any]:
        """What the daemon says about itself: build labels, batch sizes, device memory."""
        from prometheus_client.parser import text_string_to_metric_families

        from streamtrk.client import DIRECT

        with DIRECT.open(f"http://{self.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        get = samples.get
        build = [dict(k[1]) for k in samples if k[0] == "streamtrk_build_info"]
        return {
            "build_info": build[0] if build else {},
            "mean_batch_events": get(("streamtrk_batch_events_sum", ()), 0)
            / max(get(("streamtrk_batch_events_count", ()), 0), 1),
            "device_memory_bytes": {
                dict(k[1])["kind"]: v
                for k, v in samples.items()
                if k[0] == "streamtrk_device_memory_bytes"
            },
        }

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=300)
        self._log.close()
        return code


def replayed(daemon: Daemon, events: list[Any], **options: Any) -> dict[str, Any]:
    from streamtrk.replay import ReplayOptions, replay

    opts = ReplayOptions(to=daemon.input, from_=daemon.output, timeout_s=120, **options)
    result = replay(events, opts)
    report = result.report(events, opts.rate)
    return {k: v for k, v in report.items() if not k.startswith("n_")}


def plot(rows: list[dict[str, Any]], path: Path, capacity: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = [r["offered_rate_hz"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (
        ("latency_p50_ms", "o-"),
        ("latency_p90_ms", "s--"),
        ("latency_p99_ms", "^:"),
    ):
        ax.plot(rate, [r[key] for r in rows], style, label=key.split("_")[1])
    ax.axvline(capacity, color="grey", lw=0.8, label="direct API throughput")
    ax.set_xlabel("offered rate [events/s]")
    ax.set_ylabel("latency, send to reply [ms]")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    bx.plot(rate, [r["events_per_second"] for r in rows], "o-", label="daemon")
    bx.plot(rate, rate, ":", color="grey", label="offered")
    bx.axhline(capacity, color="grey", lw=0.8, label="direct API")
    bx.set_xlabel("offered rate [events/s]")
    bx.set_ylabel("replies per second")
    bx.legend()
    bx.grid(alpha=0.3)
    fig.suptitle("streamtrk serve, CPU, embedded default configuration")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=32, help="simulated events (default 32)")
    p.add_argument("--mu", type=float, default=50.0, help="their pileup (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="direct/daemon passes (default 3)")
    p.add_argument("--rate-seconds", type=float, default=20.0, help="per offered rate (20)")
    p.add_argument("--real-loops", type=int, default=100, help="real event replays (100; 0: none)")
    p.add_argument("--png", type=Path, help="latency against offered rate (no plot by default)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    p.add_argument("--direct", type=Path, help=argparse.SUPPRESS)  # one direct pass
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.direct:
        _direct_process(args.direct, args.batch, args.repeat)
        return

    from streamtrk.cli import main as cli
    from streamtrk.replay import load_recording
    from streamtrk.service.config import ServeConfig

    batch = ServeConfig().max_batch_events
    out: dict[str, Any] = {"events": args.events, "mu": args.mu, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="daemon-bench-") as tmp:
        run = simulated(Path(tmp), args.events, args.mu)
        events = load_recording(run)
        out["hits_per_event"] = sum(len(e.event.hits) for e in events) / len(events)
        daemon = Daemon(Path(tmp) / "daemon.log")
        try:
            # Alternate direct and daemon passes so that both see the same machine load.
            passes = []
            for _ in range(args.repeats):
                direct_eps = direct(run, batch)
                daemon_eps = replayed(daemon, events)["events_per_second"]
                passes.append({"direct": direct_eps, "daemon": daemon_eps})
            out["passes"] = passes
            capacity = statistics.median(p["direct"] for p in passes)
            out["direct_events_per_second"] = capacity
            out["daemon_events_per_second"] = statistics.median(p["daemon"] for p in passes)
            out["ratio"] = out["daemon_events_per_second"] / capacity
            out["daemon_metrics"] = daemon.metrics()  # after the full-speed passes
            out["rates"] = []
            for f in RATE_FRACTIONS:
                n = min(len(events), max(10, round(f * capacity * args.rate_seconds)))
                out["rates"].append(replayed(daemon, events[:n], rate=f * capacity))
            real_dir = shared_trackml() / REAL
            if real_dir.parent.is_dir() and args.real_loops > 0:
                real = Path(tmp) / "real.stk"
                assert cli(["import-trackml", str(real_dir), "-o", str(real), "-q"]) == 0
                real_events = load_recording(real)
                out["real_hits"] = len(real_events[0].event.hits)
                # Direct in the daemon's batches too: 2 x max_batch_events copies.
                out["real_direct_events_per_second"] = direct(real, batch, repeat=2 * batch)
                out["real"] = replayed(daemon, real_events, loop=args.real_loops)
        finally:
            out["daemon_exit_code"] = daemon.stop()
    if args.png:
        plot(out["rates"], args.png, capacity)
    print_summary(out, args.json)


if __name__ == "__main__":
    main()
