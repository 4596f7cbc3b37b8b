"""Soak: the daemon offered twice what it can take, for minutes, with ``overload = block``
and with ``reject``; memory must level off and every event must be answered.

For each mode: a daemon with the embedded defaults (plus ``--overload``) is fed simulated
events by ``streamtrk replay`` at twice the rate it sustained in a short full-speed pass,
for ``--minutes``; the daemon's RSS (``/proc/PID/status``) is sampled every second.
Targets: the peak RSS after the first minute within 10% of the RSS at one minute; every
event sent answered (tracks, or ``overloaded`` with ``reject``). Writes a JSON summary
(``--json``) and an RSS-against-time plot (``--png``).

Run: .venv/bin/python bench/soak.py [--minutes 10] [--events 16] [--mu 50]
     [--png docs/soak-rss.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from daemon_bench import Daemon, replayed, simulated

SAMPLE_S = 1.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """Within ``with``: process ``pid``'s RSS every ``SAMPLE_S`` seconds, as ``samples`` of
    (seconds since the ``with`` began, MiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_S):
            self.samples.append((time.monotonic() - self._t0, rss_mib(self.pid)))

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def soak(run: Path, tmp: Path, mode: str, minutes: float, events: list[Any]) -> dict[str, Any]:
    daemon = Daemon(tmp / f"daemon-{mode}.log", "--overload", mode)
    try:
        capacity = replayed(daemon, events)["events_per_second"]  # full speed, warm
        rate = 2 * capacity
        loops = max(1, round(rate * minutes * 60 / len(events)))
        report = tmp / f"replay-{mode}.json"
        cmd = [sys.executable, "-m", "streamtrk", "replay", str(run), "--to", daemon.input,
               "--from", daemon.output, "--rate", f"{rate:.4f}", "--loop", str(loops),
               "--timeout", "120", "-q", "--report", str(report)]  # fmt: skip
        with RssSampler(daemon.process.pid) as rss:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        samples = rss.samples
        got = json.loads(report.read_text())
    finally:
        exit_code = daemon.stop()
    after = [rss for t, rss in samples if t >= 60]
    if not after:
        last = samples[-1][0] if samples else 0.0
        raise SystemExit(f"{mode}: the run ended after {last:.0f} s, before its one-minute RSS")
    at_minute, later = after[0], max(after)
    return {
        "mode": mode,
        "capacity_events_per_second": capacity,
        "offered_rate_hz": rate,
        "seconds": samples[-1][0],
        "sent": got["sent"],
        "received": got["received"],
        "missing": got["missing"],
        "unsent": got["unsent"],
        "errors": got["errors"],
        "events_per_second": got["events_per_second"],
        "latency_p99_ms": got["latency_p99_ms"],
        "rss_at_1_min_mib": at_minute,
        "rss_peak_after_1_min_mib": later,
        "rss_growth_after_1_min": later / at_minute - 1,
        "daemon_exit_code": exit_code,
        "rss_mib": samples,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        t, rss = zip(*r["rss_mib"], strict=True)
        ax.plot(t, rss, label=f"overload = {r['mode']} ({r['offered_rate_hz']:.2f} Hz offered)")
    ax.axvline(60, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("seconds since the overload started")
    ax.set_ylabel("daemon RSS [MiB]")
    ax.set_title("streamtrk serve at twice its capacity (MU=50 events, CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="per mode (default 10)")
    p.add_argument("--events", type=int, default=16, help="simulated events (default 16)")
    p.add_argument("--mu", type=float, default=50.0, help="their pileup (default 50)")
    p.add_argument("--png", type=Path, help="RSS against time (no plot by default)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args()
    if args.minutes < 2:
        p.error("--minutes must be at least 2: RSS is compared with its value at one minute")

    from streamtrk.replay import load_recording

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        run = simulated(Path(tmp), args.events, args.mu)
        events = load_recording(run)
        results = [soak(run, Path(tmp), m, args.minutes, events) for m in ("block", "reject")]
    if args.png:
        plot(results, args.png)
    summary = [{k: v for k, v in r.items() if k != "rss_mib"} for r in results]
    text = json.dumps(summary, indent=2)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
