"""``streamtrk replay``: a recording sent through the daemon, and the report of its replies."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamtrk.cli.common import (
    allow_insecure_argument,
    check_bound_curve,
    check_curve_pair,
    check_endpoints,
    check_outputs,
    compact_argument,
    curve_arguments,
    curve_files,
    results_printed,
    strict_json,
    subcommand,
    write_report,
)
from streamtrk.errors import SettingError
from streamtrk.stop import stop_on_signals


def _replay_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("recording", type=Path, help="a .stk recording")
    s.add_argument(
        "--to",
        default="tcp://127.0.0.1:5555",
        help="daemon input endpoint (default tcp://127.0.0.1:5555, serve's input)",
    )
    s.add_argument(
        "--from",
        dest="from_",
        default="tcp://127.0.0.1:5556",
        help="daemon output endpoint (default tcp://127.0.0.1:5556, serve's output)",
    )
    s.add_argument("--bind", action="store_true", help="bind both sockets (daemons connect)")
    s.add_argument("--rate", type=float, help="events per second (default: as fast as taken)")
    s.add_argument("--events", type=int, help="only the first N events of the recording")
    s.add_argument("--loop", type=int, default=1, help="send the events K times (default 1)")
    compact_argument(s, "send, re-encoded at load,")
    s.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for replies (default 30)"
    )
    s.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="resend an unanswered event N times (one answered 'shutdown', unprocessed by a "
        "daemon that stopped, at once)",
    )
    s.add_argument(
        "--retry-after",
        type=float,
        metavar="S",
        help="seconds of silence before a resend (5; with --retries)",
    )
    curve_arguments(s)
    allow_insecure_argument(s)
    s.add_argument(
        "--match-by-event",
        action="store_true",
        help="match replies without a msg_id to the oldest send of their (run, event): for "
        "a daemon that echoes no msg_id (else they are another producer's: unexpected)",
    )
    s.add_argument("--report", type=Path, help="write the report JSON here")
    s.add_argument(
        "--submission",
        type=Path,
        help="write a TrackML submission CSV (every event; one without an ok reply has no "
        "track: each hit alone); a recording whose (run, event) numbers name events of "
        "other hits is refused before sending",
    )
    s.add_argument("--plot", type=Path, help="write a latency histogram PNG")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit status 1 also when a reply is an error (a check in CI)",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


@subcommand(
    "replay",
    _replay_arguments,
    help="replay a recording through the daemon and report throughput, latency, physics",
    description="Send a recording's hits messages to the daemon (as recorded or, with "
    "--compact, re-encoded compact; the header given a msg_id) and receive the replies, "
    "one per event. Report keys: recording, sent, received, "
    "missing (no reply within the timeout), ok, errors (by reason), unsent (given up: the "
    "daemon took nothing for the timeout, or sending failed), send_error (why sending "
    "failed, else null), refused (the sockets, to and from, whose handshake the daemon "
    "refused: auth or handshake; the replay then stops), handshakes_hung_up (per socket, its "
    "CURVE handshakes hung up on, none succeeding: another server key than the daemon's, "
    "or a proxy that cannot reach it; libzmq tries again), resent, shutdown_resent ('shutdown' "
    "replies, from a daemon that stopped with the event unprocessed, set aside as the event "
    "was resent or a resend was out: --retries), duplicates (second "
    "replies to a resent event, not counted again), unexpected (replies to no message of "
    "this replay), unexpected_without_msg_id (of them, those without a msg_id: another "
    "producer's, or a daemon's that echoes none: --match-by-event), "
    "invalid_replies (not decodable as a reply; invalid_reply_reasons their decoder's "
    "codes, first_invalid_reply its words for the first), mismatched_replies (ok replies "
    "naming hit ids their event lacks, or a hit in two tracks, and replies to one event's message "
    "naming another event), ambiguous_events ((run, event) numbers "
    "of events of different hits, left out of the physics), interrupted, duration_s (first "
    "send to the last send or reply), "
    "events_per_second (received over duration_s: with --rate, above it for a few events), "
    "offered_rate_hz (--rate), send_rate_hz, "
    "latency_p50/p90/p99/max/mean_ms (first send to reply, error replies too), with "
    "--rate latency_from_schedule_p50/p99/max_ms (from when the event was due: after a "
    "stall the events due meanwhile go out at once, as a source that does not wait sends "
    "them) and send_lag_max_ms (the most a first send came after it was due), "
    "beam_lines_mm (the "
    "beam lines, x and y, that the replies' phi, d0 and z0 are about), models (the models "
    "that made the ok replies' tracks, each with its count of them, a looped replay's "
    "too: two around a reload), "
    "plus, when the "
    "recording has truth, tracking_efficiency, tracking_efficiency_all (no vertex cut), "
    "fake_rate, duplicate_rate, their counts (n_*), trackml_score and events_scored (the "
    "events it is the mean of; the rates and score null when none was answered ok). "
    "Exit status 1 when events are missing or unsent, sending "
    "failed, a handshake was refused or a reply is mismatched (with --fail-on-error also when a "
    "reply is an error), 130 after Ctrl-C or SIGTERM (the report covers the replies "
    "received until then).",
)
def _replay(args: argparse.Namespace) -> int:
    import numpy as np

    from streamtrk.io.trackml import by_event_number, write_submission
    from streamtrk.replay import (
        ReplayOptions,
        ambiguous_keys,
        format_report,
        labels_of,
        load_recording,
        plot_latency,
        replay,
    )
    from streamtrk.service.config import one_endpoint
    from streamtrk.service.heap import heap_frozen

    if args.events is not None and args.events < 1:
        raise SettingError(f"--events must be at least 1, got {args.events}")
    check_endpoints(("--to", args.to), ("--from", args.from_), bind=args.bind)
    if one_endpoint(args.to, args.from_):  # sent to the daemon's input, read from its output
        raise SettingError(
            f"--to and --from must be two endpoints, got {args.to!r} and {args.from_!r}"
        )
    check_curve_pair(args)
    check_bound_curve(args, args.to, args.from_)
    check_outputs(
        args.report, args.submission, args.plot, inputs=[args.recording, *curve_files(args)]
    )
    if args.retry_after is not None and not args.retries:
        raise SettingError("--retry-after is the wait before a resend: it needs --retries N")
    retry_after = ReplayOptions.retry_after_s if args.retry_after is None else args.retry_after
    # Checked before a large recording is read.
    opts = ReplayOptions(
        to=args.to,
        from_=args.from_,
        bind=args.bind,
        rate=args.rate,
        loop=args.loop,
        timeout_s=args.timeout,
        progress=not args.quiet,
        retries=args.retries,
        retry_after_s=retry_after,
        curve_key=args.curve_key,
        curve_server_key=args.curve_server_key,
        match_by_event=args.match_by_event,
    )
    events = load_recording(args.recording, args.events, compact=args.compact)
    if not events:
        print(f"streamtrk replay: error: no hits messages in {args.recording}", file=sys.stderr)
        return 1
    if args.submission:  # checked before the replay, as its files name events by number
        by_event_number({ev.key: None for ev in events})
        if ambiguous := ambiguous_keys(events):
            run, event = min(ambiguous)
            raise ValueError(
                f"{len(ambiguous)} (run, event) numbers name events of other hits in "
                f"{args.recording} (run {run}, event {event} among them: two producers' runs "
                "recorded together?): a submission names events by number and would hold one "
                "of each; replay each producer's events apart"
            )
    # Signals caught until the report is out: a second Ctrl-C or SIGTERM (the first stops the
    # replay) while it is written would lose it whole. The recording and the imports frozen
    # out of the collector's scans while replies are timed: a full collection in the
    # receiving thread would delay the replies it times.
    with stop_on_signals() as stop:
        with heap_frozen():
            result = replay(events, opts, stop, _say_bound)
        labels = labels_of(events, result.scored_replies)
        report = {"recording": str(args.recording)} | result.report(events, args.rate, labels)
        text = strict_json(report, indent=2) if args.json else format_report(report)
        with results_printed(text):
            try:
                if args.report:
                    write_report(args.report, strict_json(report, indent=2))
                if args.submission:
                    # Every event (a scorer expects every hit): one without an ok reply (or with
                    # one naming hits it lacks) has no track, each hit one of its own, as
                    # evaluate writes.
                    rows: dict[tuple[int, int], Any] = {}
                    for ev in events:  # an event recorded twice: its first copy, as labels_of
                        ids = ev.event.hits.hit_id
                        found = labels.get(ev.key)
                        rows.setdefault(
                            ev.key, (ids, np.zeros(len(ids)) if found is None else found)
                        )
                    write_submission(args.submission, by_event_number(rows))
                if args.plot:
                    plot_latency(result.latencies, args.plot, title=Path(args.recording).name)
            finally:  # what went wrong in the replay is said before a file the disk refused
                # A signal while the report was made: it is out whole, and the exit says so.
                status = _exit_status(args, report, result.interrupted or stop.is_set())
    return status


def _undecodable(report: dict[str, Any]) -> str:
    """The replies this replay could not decode, said with the decoder's words."""
    reasons = report["invalid_reply_reasons"]
    said = (
        f"{report['invalid_replies']} replies came that it cannot decode "
        f"({', '.join(f'{n} {reason}' for reason, n in reasons.items())}; the first: "
        f"{report['first_invalid_reply']})"
    )
    if "bad_version" in reasons:  # the upgrade order's case
        said += (
            ": a daemon of a newer wire version? Upgrade the consumers of its replies, this "
            "streamtrk among them, before the daemons (docs/wire-protocol.md, Versioning)"
        )
    return said


def _exit_status(args: argparse.Namespace, report: dict[str, Any], interrupted: bool) -> int:
    """The replay's exit status; what went wrong said on stderr."""
    from streamtrk.client import HUNG_UP_HINT, REFUSAL_HINTS

    said_invalid = False  # the replies it could not decode, said in the error
    if report["refused"]:  # what follows "no reply" would mislead
        _per_socket(
            args,
            report["refused"],
            lambda where, cause: (
                f"error: {where} refused the handshake ({cause}): "
                f"{REFUSAL_HINTS[cause]}; nothing more was sent"
            ),
        )
    elif interrupted:  # stopped early: --timeout did not run out, nor is "no reply" news
        pass
    elif report["sent"] and not report["received"] and report["invalid_replies"]:
        # replies came, none it could read: not "nothing came back"
        unsent = f" ({report['unsent']} more not sent)" if report["unsent"] else ""
        print(
            f"streamtrk replay: error: no reply this replay could read: {report['sent']} "
            f"events were sent to {args.to}{unsent}, and within {args.timeout:g} s "
            f"{_undecodable(report)}"
            + (
                f"; {_other_consumer(report, args.from_, 'a share of the')}"
                if report["unexpected"]
                else ""
            ),
            file=sys.stderr,
        )
        said_invalid = True
    elif report["sent"] and not report["received"]:
        unsent = f" ({report['unsent']} more not sent)" if report["unsent"] else ""
        print(
            f"streamtrk replay: error: no reply at all: {report['sent']} events were sent to "
            f"{args.to}{unsent} and nothing came back from {args.from_} within "
            f"{args.timeout:g} s; {_daemon_there(args.bind)} (and are --to and --from its "
            "input and output)?"
            # replies came, none to this replay: another consumer took them
            + (f" {_other_consumer(report, args.from_, 'the')}" if report["unexpected"] else ""),
            file=sys.stderr,
        )
    elif not report["sent"] and report["unsent"] and not report["send_error"]:
        print(
            f"streamtrk replay: error: nothing could be sent to {args.to} within "
            f"{args.timeout:g} s: {_daemon_there(args.bind)} (and is --to its input, not its "
            "output)?",
            file=sys.stderr,
        )
    elif (report["missing"] or report["unsent"]) and not report["send_error"]:  # partial
        within = f"within {args.timeout:g} s"
        parts = []
        if report["missing"]:
            parts.append(
                f"{report['missing']} of the {report['sent']} events sent got no reply {within}"
            )
        if report["unsent"]:
            parts.append(f"{report['unsent']} events were not sent {within}")
        if report["missing"] and report["unexpected"]:  # a collector shares them out
            parts.append(_other_consumer(report, args.from_, "a share of the"))
        if report["missing"] and report["invalid_replies"]:  # some were not readable
            parts.append(_undecodable(report))
            said_invalid = True
        print(f"streamtrk replay: error: {'; '.join(parts)}", file=sys.stderr)
    _per_socket(
        args,
        report["handshakes_hung_up"],
        lambda where, n: (
            f"{where}: its {n} CURVE handshakes were hung up on, none succeeding: {HUNG_UP_HINT}"
        ),
    )
    if report["invalid_replies"] and not said_invalid:  # however it went, said
        print(f"streamtrk replay: warning: {_undecodable(report)}", file=sys.stderr)
    if report["send_error"]:
        print(f"streamtrk replay: error: sending failed: {report['send_error']}", file=sys.stderr)
    if ambiguous := report["ambiguous_events"]:
        print(
            f"streamtrk replay: warning: {ambiguous} (run, event) numbers name events of "
            "different hits in the recording (runs of two producers recorded together?): "
            "replies name events by number, so those are left out of the physics",
            file=sys.stderr,
        )
    failed = report["missing"] or report["unsent"] or report["send_error"] or report["refused"]
    if report["errors"]:  # said either way: the exit status alone would hide them
        reasons = ", ".join(f"{n} {reason}" for reason, n in report["errors"].items())
        if args.fail_on_error:
            print(f"streamtrk replay: error: error replies: {reasons}", file=sys.stderr)
            failed = True
        else:
            print(
                f"streamtrk replay: warning: error replies: {reasons} (events answered without "
                "tracks; --fail-on-error makes them exit status 1)",
                file=sys.stderr,
            )
    if mismatched := report["mismatched_replies"]:
        print(
            f"streamtrk replay: error: {mismatched} replies name hit ids their events do "
            "not have, or a hit in two tracks, or answer one event's message with another "
            "event's numbers (left out of the physics and the submission)",
            file=sys.stderr,
        )
        failed = True
    if interrupted:  # after what the replies so far say
        print(
            "streamtrk replay: interrupted; the report covers the replies so far", file=sys.stderr
        )
        return 130  # 128 + SIGINT
    return 1 if failed else 0


def _per_socket(
    args: argparse.Namespace, by_socket: dict[str, Any], say: Callable[[str, Any], str]
) -> None:
    """A stderr line for each socket (``to``, ``from``) of ``by_socket``: ``say(where,
    value)``, ``where`` the flag and its address."""
    for socket, value in by_socket.items():
        address = args.to if socket == "to" else args.from_
        print(f"streamtrk replay: {say(f'--{socket} {address}', value)}", file=sys.stderr)


def _other_consumer(report: dict[str, Any], from_: str, takes: str) -> str:
    """What replies to no send of this replay say: another consumer of ``from_`` takes
    ``takes`` replies."""
    without = report["unexpected_without_msg_id"]
    return (
        f"{report['unexpected']} replies to no send of this replay came: another consumer of "
        f"{from_} (another replay) takes {takes} replies"
        + (
            f"; {without} carried no msg_id (another producer's, or a daemon that echoes "
            "none: --match-by-event)"
            if without
            else ""
        )
    )


def _say_bound(to: str, from_: str) -> None:
    """Where a bound replay listens (the ports the system chose for ``:*``), for the daemons
    that connect to it."""
    print(
        f"streamtrk replay: bound --to {to} and --from {from_}: daemons connect there "
        "(serve --connect, their input to --to, their output to --from)",
        file=sys.stderr,
        flush=True,
    )


def _daemon_there(bind: bool) -> str:
    """The question to ask when nothing went through: a bound replay waits for daemons in
    connect mode, whose refused CURVE handshakes it does not see."""
    if bind:
        return "has a daemon connected there (serve --connect; CURVE on both sides or neither)"
    return "is a daemon listening there"
