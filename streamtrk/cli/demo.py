"""``streamtrk demo``: the ``make demo`` job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamtrk.cli.common import check_count, subcommand
from streamtrk.errors import SettingError

STOP_S = 120.0  # a daemon's drain at SIGTERM, before it is killed


def _demo_arguments(s: argparse.ArgumentParser) -> None:
    # MU=50 keeps the demo to about a minute on a 2-core CPU with the eager GNN; MU=200 events
    # take seconds each there (see bench/RESULTS.md).
    s.add_argument("--events", type=int, default=10, help="events to simulate (default 10)")
    s.add_argument("--mu", type=float, default=50.0, help="mean pileup (default 50)")
    s.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness"
    )


@subcommand(
    "demo",
    _demo_arguments,
    help="the `make demo` job",
    description="Simulate a small run, start the daemon with the embedded default "
    "configuration (on ports it chooses; STREAMTRK_<SETTING> variables left out, but "
    "STREAMTRK_MODEL), replay the "
    "run through it, print the report, stop the daemon with SIGTERM.",
)
def _demo(args: argparse.Namespace) -> int:
    import math
    import os
    import subprocess
    import tempfile

    from streamtrk.cli import main  # here: the package, main's module, imports this one
    from streamtrk.client import terminate, wait_listening, wait_ready
    from streamtrk.recon.model import MODEL_ENV
    from streamtrk.service.config import SETTING_VARIABLES
    from streamtrk.sim.generator import GeneratorConfig

    check_count("--events", args.events)  # before a daemon is started for them
    try:  # the generator's rule, said as the demo's option
        GeneratorConfig(mu=args.mu)
    except ValueError as e:
        raise SettingError(f"--{e}") from None
    if not (math.isfinite(args.ready_timeout) and args.ready_timeout > 0):
        raise SettingError(f"--ready-timeout must be a finite number > 0, got {args.ready_timeout}")
    with tempfile.TemporaryDirectory(prefix="streamtrk-demo-") as tmp:
        run, log_path = str(Path(tmp) / "demo.stk"), Path(tmp) / "daemon.log"
        print(f"simulating {args.events} events at mu={args.mu:g} -> {run} (compact)", flush=True)
        sim = ["simulate", "--events", str(args.events), "--mu", str(args.mu), "--seed", "1"]
        if rc := main([*sim, "--compact", "-o", run]):
            return rc
        any_port = "tcp://127.0.0.1:*"
        cmd = [sys.executable, "-m", "streamtrk", "serve", "--input", any_port]
        cmd += ["--output", any_port, "--http", "127.0.0.1:0", "--log-format", "json"]
        print(f"starting the daemon: {' '.join(cmd[1:])}", flush=True)
        # The embedded defaults: the settings' variables of this environment left out, but
        # the model's (docs/reconstruction.md: the demo serves $STREAMTRK_MODEL when set).
        left_out = SETTING_VARIABLES - {MODEL_ENV}
        env = {k: v for k, v in os.environ.items() if k not in left_out}
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            bound = wait_listening(log_path, args.ready_timeout, daemon)
            if bound is None or not wait_ready(bound["http"], args.ready_timeout, daemon):
                print("streamtrk demo: error: the daemon did not become ready", file=sys.stderr)
                print(log_path.read_text(), file=sys.stderr)
                return 1
            _print_daemon_log(log_path, "streamtrk serve ready")
            print(f"replaying {run} (metrics: http://{bound['http']}/metrics)", flush=True)
            rc = main(["replay", run, "--to", bound["input"], "--from", bound["output"]])
        finally:
            code = terminate(daemon, STOP_S)
        _print_daemon_log(
            log_path, "drained, exiting", "drain incomplete: replies could not be sent"
        )
        if code < 0:  # ended by a signal: SIGKILL after STOP_S without exiting
            print(f"daemon did not stop on SIGTERM; ended by signal {-code}")
        else:
            print(f"daemon stopped with SIGTERM, exit code {code}")
        return rc or (1 if code < 0 else code)


def _print_daemon_log(path: Path, *messages: str) -> None:
    """Print the daemon's JSON log records with these messages as ``daemon: message k=v``."""
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") in messages:
            skip = ("time", "level", "logger", "message")
            fields = " ".join(f"{k}={v}" for k, v in record.items() if k not in skip)
            print(f"daemon: {record['message']} {fields}", flush=True)
