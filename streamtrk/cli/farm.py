"""``streamtrk farm``: a farm's distributor or collector."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from streamtrk.cli.common import (
    allow_insecure_argument,
    check_curve_pair,
    check_endpoints,
    curve_arguments,
    subcommand,
)
from streamtrk.errors import SettingError
from streamtrk.stop import stop_on_signals


def _farm_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("role", choices=("distributor", "collector"), help="which forwarder")
    s.add_argument(
        "--from",
        dest="from_",
        required=True,
        help="PULL endpoint to bind (producers connect to a distributor's, daemons' outputs "
        "to a collector's)",
    )
    s.add_argument(
        "--to",
        required=True,
        help="PUSH endpoint to bind (daemons' inputs connect to a distributor's, consumers "
        "to a collector's)",
    )
    s.add_argument("--hwm", type=int, default=2, help="high-water marks, messages (default 2)")
    s.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz and /status there (port 0: a free one); "
        "default: none",
    )
    s.add_argument(
        "--max-hits",
        type=int,
        default=1_000_000,
        help="most hits of an event: longer frames drop their sender (the daemons' max_hits)",
    )
    curve_arguments(s)
    s.add_argument(
        "--server-key",
        type=Path,
        metavar="FILE",
        help="own secret certificate: the socket facing producers (distributor) or consumers "
        "(collector) is a CURVE server",
    )
    s.add_argument(
        "--allowed-keys",
        type=Path,
        metavar="DIR",
        help="directory of the public certificates (NAME.key) of the clients admitted there",
    )
    allow_insecure_argument(s)


@subcommand(
    "farm",
    _farm_arguments,
    takes_hangup=True,
    help="run a farm's distributor or collector (a PULL -> PUSH forwarder)",
    description="Forward messages from a bound PULL socket to a bound PUSH socket: as the "
    "distributor, from producers to daemons in connect mode (which join only when ready and "
    "leave first when they stop); as the collector, from the daemons' outputs to consumers. "
    "With --curve-key and --curve-server-key, the socket facing the daemons is a CURVE "
    "client of theirs; with --server-key and --allowed-keys the other one is a CURVE server "
    "for the producers or consumers. A socket bound beyond this host without CURVE is "
    "refused unless --allow-insecure. Prints a JSON 'listening' line with the bound "
    "addresses (front, back); stops on SIGTERM or SIGINT with exit status 0 (1: a socket "
    "could not bind; 2: a setting refused); SIGHUP ignored (nothing to reload). See "
    "docs/farm-topology.md.",
)
def _farm(args: argparse.Namespace) -> int:
    # Nothing to reload: SIGHUP (the daemons' reload, which `pkill -HUP streamtrk` sends a
    # forwarder alike) is ignored, not its default end that loses what it holds uncounted
    # (``main`` held one that came while it read the command line, and puts the handler back).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from streamtrk.farm import forward
    from streamtrk.service.config import MAX_SETTING_INT
    from streamtrk.service.logs import configure

    configure("json", "info")  # refused clients and, with --http, connections: JSON on stderr

    if args.max_hits < 1:
        raise SettingError(f"--max-hits must be at least 1, got {args.max_hits}")
    if args.hwm < 1:  # 0 is no limit to ZeroMQ: no back-pressure at all
        raise SettingError(f"--hwm must be at least 1, got {args.hwm}")
    # The daemon's bounds of max_hits and of its high-water marks.
    for flag, value, setting in (
        ("--max-hits", args.max_hits, "max_hits"),
        ("--hwm", args.hwm, "rcvhwm"),
    ):
        if value > (most := MAX_SETTING_INT[setting]):
            raise SettingError(f"{flag} must be at most {most}, got {value}")
    check_endpoints(("--from", args.from_), ("--to", args.to), bind=True)
    check_curve_pair(args)
    with stop_on_signals() as stop:
        forward(
            args.role,
            args.from_,
            args.to,
            hwm=args.hwm,
            max_hits=args.max_hits,
            curve_key=args.curve_key,
            curve_server_key=args.curve_server_key,
            server_key=args.server_key,
            allowed_keys=args.allowed_keys,
            allow_insecure=args.allow_insecure,
            http=args.http,
            stop=stop,
        )
    return 0
