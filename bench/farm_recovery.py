"""A farm losing a daemon: reply latency with resends, and how long the lost events take.

A distributor and a collector (``streamtrk farm``), ``--daemons`` daemons in connect mode
between them, and ``streamtrk.replay`` sending ``--events`` simulated events at ``--rate``
events/s with ``--retries``/``--retry-after``. Two runs on the same farm: a steady one,
then one in which a daemon is killed (SIGKILL) ``--kill-after`` seconds in. Prints, per
run, the replay's report (sent, answered once, resent, duplicates, latency percentiles,
send to reply): the events the killed daemon held are answered by a resend, so the
largest latency of the second run is the recovery time of an event caught by the kill.

Run: .venv/bin/python bench/farm_recovery.py [--events 300] [--mu 10] [--rate 20]
     [--retry-after 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from daemon_bench import Daemon

KEYS = ("sent", "received", "ok", "missing", "resent", "duplicates", "errors")
LATENCY = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms")


class Forwarder:
    """``streamtrk farm ROLE`` on ports it picks."""

    def __init__(self, log: Path, role: str) -> None:
        from streamtrk.client import wait_listening

        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        any_port = "tcp://127.0.0.1:*"
        cmd = [sys.executable, "-m", "streamtrk", "farm", role, "--from", any_port, "--to"]
        self.process = subprocess.Popen(
            [*cmd, any_port], stdout=self._log, stderr=subprocess.STDOUT
        )
        bound = wait_listening(log, 60, self.process)
        if bound is None:
            raise RuntimeError(f"{role} not listening, see {log}")
        self.front, self.back = bound["front"], bound["back"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self._log.close()


def run(events: list[Any], dist: Forwarder, coll: Forwarder, args, kill=None) -> dict[str, Any]:
    from streamtrk.replay import ReplayOptions, replay

    opts = ReplayOptions(
        to=dist.front,
        from_=coll.back,
        rate=args.rate,
        timeout_s=60,
        retries=args.retries,
        retry_after_s=args.retry_after,
    )
    killer = None
    if kill is not None:
        killer = threading.Timer(args.kill_after, kill.process.kill)
        killer.start()
    result = replay(events, opts)
    if killer is not None:
        killer.join()
    report = result.report(events, args.rate)
    return {k: report[k] for k in (*KEYS, *LATENCY)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--mu", type=float, default=10)
    ap.add_argument("--rate", type=float, default=20.0, help="events per second")
    ap.add_argument("--daemons", type=int, default=3)
    ap.add_argument("--retries", type=int, default=5)
    ap.add_argument("--retry-after", type=float, default=2.0, help="seconds")
    ap.add_argument("--kill-after", type=float, default=5.0, help="seconds into the second run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from streamtrk.detector import load_detector
    from streamtrk.replay import Recorded
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate
    from streamtrk.wire.codec import encode_hits

    sim = SimConfig(generator=GeneratorConfig(mu=args.mu))
    events = [
        Recorded([bytes(f) for f in encode_hits(ev)], ev)
        for ev in simulate(load_detector(), sim, 11, args.events)
    ]
    out: dict[str, Any] = {"settings": vars(args) | {"json": str(args.json)}}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        dist, coll = (
            Forwarder(tmp / "dist.log", "distributor"),
            Forwarder(tmp / "coll.log", "collector"),
        )
        daemons = [
            Daemon(tmp / f"daemon-{k}.log", "--connect", "--input", dist.back, "--output",
                   coll.front, "--rcvhwm", "2", "--queue-capacity", "8")
            for k in range(args.daemons)
        ]  # fmt: skip
        try:
            out["steady"] = run(events, dist, coll, args)
            t0 = time.perf_counter()
            out["daemon_killed"] = run(events, dist, coll, args, kill=daemons[0])
            out["daemon_killed"]["duration_s"] = time.perf_counter() - t0
        finally:
            for d in daemons:
                d.stop()
            for f in (dist, coll):
                f.stop()
    for name in ("steady", "daemon_killed"):
        r = out[name]
        print(
            f"{name:14s} sent {r['sent']} answered {r['received']} (ok {r['ok']}, missing "
            f"{r['missing']}) resent {r['resent']} duplicates {r['duplicates']}; latency ms "
            + " ".join(f"{k.split('_')[1]} {r[k]:.0f}" for k in LATENCY)
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
