"""glibc's malloc arenas: the daemon with its default arenas and with ``MALLOC_ARENA_MAX``,
alternating; throughput and RSS under a sustained full-speed replay.

glibc gives threads that allocate at once arenas of their own (up to 8 per core), and
memory freed in one arena serves only that arena: a daemon's RSS can creep up for tens of
minutes as its threads (ingest, worker, torch's, the HTTP server) touch new arenas. Fewer
arenas hold RSS flatter and can cost throughput where threads allocate at once.

Each round starts one daemon per setting (embedded defaults; the order alternates from
round to round so that both see the same machine load), replays the events once to warm
it, then replays them in a loop as fast as it takes them for ``--seconds``, sampling its
RSS (``/proc/PID/status``) every second. Reported per setting: events/s of the sustained
replay (median over rounds) and the RSS at its end and its peak (medians), every event
answered; and the ratios of ``MALLOC_ARENA_MAX`` to the default.

Run: .venv/bin/python bench/malloc_arenas.py [--events 16] [--mu 50] [--rounds 3]
     [--seconds 120] [--arenas 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from daemon_bench import Daemon, replayed, simulated
from soak import RssSampler


def sustained(
    tmp: Path, name: str, env: dict[str, str], events: list[Any], seconds: float
) -> dict[str, Any]:
    """One daemon with ``env``: a warm pass, then a full-speed loop of about ``seconds``."""
    daemon = Daemon(tmp / f"daemon-{name}.log", env=env)
    try:
        warm = replayed(daemon, events)["events_per_second"]
        loops = max(1, round(warm * seconds / len(events)))
        with RssSampler(daemon.process.pid) as rss:
            report = replayed(daemon, events, loop=loops)
        samples = rss.samples
    finally:
        exit_code = daemon.stop()
    return {
        "env": env,
        "warm_events_per_second": warm,
        "events_per_second": report["events_per_second"],
        "sent": report["sent"],
        "received": report["received"],
        "missing": report["missing"],
        "errors": report["errors"],
        "seconds": samples[-1][0] if samples else 0.0,
        "rss_end_mib": samples[-1][1] if samples else None,
        "rss_peak_mib": max(r for _, r in samples) if samples else None,
        "daemon_exit_code": exit_code,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=16, help="simulated events (default 16)")
    p.add_argument("--mu", type=float, default=50.0, help="their pileup (default 50)")
    p.add_argument("--rounds", type=int, default=3, help="daemons per setting (default 3)")
    p.add_argument("--seconds", type=float, default=120.0, help="sustained replay (120)")
    p.add_argument("--arenas", type=int, default=2, help="MALLOC_ARENA_MAX to compare (2)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args()

    from streamtrk.replay import load_recording

    settings = {"default": {}, f"arenas_{args.arenas}": {"MALLOC_ARENA_MAX": str(args.arenas)}}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="malloc-arenas-") as tmp:
        run = simulated(Path(tmp), args.events, args.mu)
        events = load_recording(run)
        for i in range(args.rounds):
            order = list(settings) if i % 2 == 0 else list(settings)[::-1]
            for name in order:
                r = sustained(Path(tmp), f"{name}-{i}", settings[name], events, args.seconds)
                runs[name].append(r)
                print(json.dumps({"round": i, "setting": name, **r}), flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    summary: dict[str, Any] = {"events": args.events, "mu": args.mu, "seconds": args.seconds}
    for name in settings:
        summary[name] = {
            "events_per_second": median(name, "events_per_second"),
            "rss_end_mib": median(name, "rss_end_mib"),
            "rss_peak_mib": median(name, "rss_peak_mib"),
            "all_answered": all(r["missing"] == 0 and not r["errors"] for r in runs[name]),
            "exit_codes": [r["daemon_exit_code"] for r in runs[name]],
        }
    base, fewer = (summary[name] for name in settings)
    summary["throughput_ratio"] = fewer["events_per_second"] / base["events_per_second"]
    summary["rss_end_ratio"] = fewer["rss_end_mib"] / base["rss_end_mib"]
    summary["runs"] = runs
    text = json.dumps(summary, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
