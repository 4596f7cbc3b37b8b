"""``streamtrk record``: a hits stream tapped into a recording."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtrk.cli.common import (
    allow_insecure_argument,
    check_bound_curve,
    check_curve_pair,
    check_endpoints,
    check_outputs,
    curve_arguments,
    curve_files,
    subcommand,
)
from streamtrk.stop import stop_on_signals


def _record_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--from", dest="from_", required=True, help="endpoint of a PUSH stream")
    s.add_argument("-o", "--output", type=Path, required=True, help="output .stk recording")
    s.add_argument("--bind", action="store_true", help="bind instead of connecting")
    s.add_argument("--events", type=int, help="stop after N hits messages")
    s.add_argument("--duration", type=float, help="stop after S seconds")
    curve_arguments(s)
    allow_insecure_argument(s)


@subcommand(
    "record",
    _record_arguments,
    help="tap a hits stream into a recording",
    description="Store valid hits (and truth) messages from a PUSH stream exactly as "
    "received, until --events hits messages, --duration seconds, SIGTERM or Ctrl-C. Its "
    "socket is a PULL socket: it takes the events it records (use it in place of the "
    "daemon, or on a stream fanned out to it). The file is written from the first message "
    "recorded, a recording already there replaced only then; a write that fails mid-tap "
    "keeps the records written whole. Exit status 0, else 1: nothing recorded (no file "
    "written), a handshake refused, a write failed; 2 a setting refused. See docs/serve.md.",
)
def _record(args: argparse.Namespace) -> int:
    from streamtrk.record import record

    check_endpoints(("--from", args.from_), bind=args.bind)
    check_curve_pair(args)
    check_bound_curve(args, args.from_)
    check_outputs(args.output, inputs=curve_files(args))
    with stop_on_signals() as stop:
        counts = record(
            args.from_,
            args.output,
            bind=args.bind,
            events=args.events,
            duration_s=args.duration,
            stop=stop,
            curve_key=args.curve_key,
            curve_server_key=args.curve_server_key,
            bound=_say_bound,
        )
    past = counts["past_limit"]
    by_reason = sorted(
        (k.removeprefix("invalid:"), n) for k, n in counts.items() if k.startswith("invalid:")
    )
    why = ", ".join(f"{n} {reason}" for reason, n in by_reason)
    invalid = f"{counts['invalid']} invalid" + (f" ({why})" if why else "")
    skipped = f"skipped {invalid} and {counts['other']} other messages"
    if unpaired := counts["unpaired_truth"]:
        skipped += f" and {unpaired} truth messages of no event recorded before them"
    if not counts["hits"] + counts["truth"]:
        print(
            f"streamtrk record: recorded nothing ({skipped}): {args.output} not written",
            file=sys.stderr,
        )
        if hung_up := counts["handshakes_hung_up"]:
            from streamtrk.client import HUNG_UP_HINT

            print(
                f"streamtrk record: --from {args.from_}: its {hung_up} CURVE handshakes were "
                f"hung up on, none succeeding: {HUNG_UP_HINT}",
                file=sys.stderr,
            )
        return 1
    print(
        f"recorded {counts['hits']} hits and {counts['truth']} truth messages to {args.output}; "
        + skipped
        + (f"; {past} more arrived past --events and were not recorded" if past else "")
    )
    return 0


def _say_bound(endpoint: str) -> None:
    """Where a bound tap listens (the port the system chose for ``:*``), for its producers."""
    print(f"streamtrk record: bound --from {endpoint}: producers connect there", file=sys.stderr)
