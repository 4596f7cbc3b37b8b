"""The socket monitor thread's time per TCP port probe (a connection opened and closed
without a handshake), as a probe flood costs it: the daemon's ``SocketMonitor`` against the
same thread reading as it did before 2026-12-06 (one poll per event, and a plain socket's
monitor sent each probe's handshake failure too, which it left).

Each run binds a PULL socket, opens and closes ``--probes`` connections to it while its
monitor thread has not started (its events wait in the monitor's queue: kept under the
libzmq I/O thread's limit, which a few thousand events reach), then starts the thread and
times it until it has counted every probe's disconnection: microseconds per probe, medians
of ``--repeats`` runs of each, alternated in one process. A probe flood takes the thread's
time from the daemon's worker (the interpreter lock), and libzmq's I/O thread waits for a
monitor a few thousand events behind: the less time a probe costs it, the faster a flood
it keeps up with.

Prints JSON (also written to ``--json``).

Run: PYTHONPATH=. .venv/bin/python bench/monitor_cost.py [--probes 500] [--repeats 5]
     [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamtrk.service.monitor import EVENTS, SocketMonitor
from streamtrk.service.telemetry import Metrics


class OneEventAPoll(SocketMonitor):
    """The thread as it read before: every event of ``EVENTS`` (a plain socket's
    handshake failures too), one poll for each."""

    def __init__(self, sockets: dict[str, zmq.Socket[Any]], metrics: Metrics) -> None:
        for sock in sockets.values():
            sock.get_monitor_socket(EVENTS)  # taken over by the base's (pyzmq keeps it)
        super().__init__(sockets, metrics)

    def _read(self, socket: str, mon: zmq.Socket[Any]) -> None:
        self._handle_or_say(socket, recv_monitor_message(mon))


def per_probe_us(kind: type[SocketMonitor], probes: int) -> float:
    """Microseconds of ``kind``'s thread per probe, its events already queued."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        metrics = Metrics()
        monitor = kind({"input": pull}, metrics)
        for _ in range(probes):
            socket.create_connection(("127.0.0.1", port)).close()
        time.sleep(0.5)  # every probe's events queued
        labels = {"socket": "input", "cause": "closed"}
        t0 = time.perf_counter()
        monitor.start()
        while (
            metrics.registry.get_sample_value("streamtrk_disconnects_total", labels) or 0
        ) < probes:
            time.sleep(0.0005)
        took = time.perf_counter() - t0
        monitor.stop()
        return took / probes * 1e6
    finally:
        pull.close(linger=0)
        ctx.term()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--probes", type=int, default=500, help="under ~700: the I/O thread's limit")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    kinds = {"before": OneEventAPoll, "now": SocketMonitor}
    runs: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(args.repeats):
        for name, kind in kinds.items():
            runs[name].append(per_probe_us(kind, args.probes))
    medians = {name: statistics.median(us) for name, us in runs.items()}
    out = {
        "probes": args.probes,
        "repeats": args.repeats,
        "us_per_probe_median": {k: round(v, 1) for k, v in medians.items()},
        "us_per_probe_runs": {k: [round(v, 1) for v in us] for k, us in runs.items()},
        "ratio_before_to_now": round(medians["before"] / medians["now"], 2),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
