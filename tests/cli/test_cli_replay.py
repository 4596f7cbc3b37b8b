"""``streamtrk replay``'s errors without a daemon (with one: tests/test_replay.py)."""

import argparse
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from cli_helpers import _run, _run_unread

from streamtrk.cli import main
from streamtrk.cli.replay import _exit_status
from streamtrk.eval.score import PhysicsTotals
from streamtrk.io.recording import RecordingWriter, iter_events
from streamtrk.replay import ReplayOptions, ReplayResult


def test_replay_to_nobody_says_no_reply_came_and_where_it_went(tmp_path):
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"  # nothing listens on ports 1 and 2
    out = _run("replay", str(tmp_path / "e.stk"), "--to", to, "--from", from_, "--timeout", "1")
    assert out.returncode == 1
    assert f"no reply at all: 2 events were sent to {to} and nothing came back from {from_}" in (
        out.stderr
    )


def test_replay_writes_its_files_when_the_reader_of_its_output_has_gone(tmp_path):
    """``streamtrk replay ... | head -0``: its report and submission are written all the same
    (here of a replay nobody answered), and the exit status is a cut pipe's (141)."""
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    report, sub = tmp_path / "r.json", tmp_path / "sub.csv"
    args = ["replay", str(tmp_path / "e.stk"), "--to", "tcp://127.0.0.1:1", "--timeout", "1"]
    args += ["--from", "tcp://127.0.0.1:2", "--report", str(report), "--submission", str(sub)]
    status, err = _run_unread(*args)
    assert status == 141 and "Traceback" not in err, err
    assert json.loads(report.read_text())["sent"] == 2
    assert sub.read_text().startswith("event_id,hit_id,track_id\n")


def test_a_bound_replay_that_sends_nothing_asks_for_a_daemon_that_connects(tmp_path):
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    args = ["--bind", "--to", "tcp://127.0.0.1:*", "--from", "tcp://127.0.0.1:*"]
    out = _run("replay", str(tmp_path / "e.stk"), *args, "--timeout", "1")
    assert out.returncode == 1
    assert "within 1 s: has a daemon connected there (serve --connect; CURVE" in out.stderr


def test_replay_refuses_an_output_it_cannot_write_before_it_sends(tmp_path):
    main(["simulate", "--events", "2", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    (tmp_path / "report.json").mkdir()
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
    args = [
        "--to",
        to,
        "--from",
        from_,
        "--timeout",
        "1",
        "--report",
        str(tmp_path / "report.json"),
    ]
    out = _run("replay", str(tmp_path / "e.stk"), *args)
    assert out.returncode == 1
    assert (
        out.stderr
        == f"streamtrk replay: error: {tmp_path / 'report.json'} is a folder, not a file\n"
    )


def test_replay_refuses_a_submission_of_two_runs_sharing_an_event_number_before_it_sends(
    tmp_path,
):
    """TrackML files name events by number alone: known from the recording, before the
    replay, not after it (the replies would be lost)."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    event = next(iter_events(tmp_path / "e.stk"))
    with RecordingWriter(tmp_path / "runs.stk") as w:
        w.write_event(event)
        w.write_event(replace(event, run=event.run + 1))
    to, from_ = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
    args = ["--to", to, "--from", from_, "--timeout", "1", "--submission", str(tmp_path / "s.csv")]
    out = _run("replay", str(tmp_path / "runs.stk"), *args)
    assert out.returncode == 1
    assert out.stderr.startswith(
        f"streamtrk replay: error: event number {event.event} occurs in more than one run"
    )


def test_replay_help_names_every_report_key(tmp_path, capsys):
    """docs/serve.md sends the reader there for "the full list of keys"."""
    main(["simulate", "--events", "1", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    event = next(iter_events(tmp_path / "e.stk"))
    totals = PhysicsTotals()
    totals.add(event, np.zeros(len(event.hits.hit_id), dtype=np.int64))
    keys = {"recording"} | ReplayResult().report([], None, {}).keys() | totals.report().keys()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    words = " ".join(capsys.readouterr().out.split())
    shorthand = r"latency_\w+_ms|n_\w+"  # latency_p50/p90/p99/max/mean_ms, counts (n_*)
    assert [k for k in keys if k not in words and not re.fullmatch(shorthand, k)] == []


def _status(report: dict, interrupted: bool = False, fail_on_error: bool = False) -> int:
    """``_exit_status`` of ``report`` for a replay to tcp://a:1 from tcp://a:2, --timeout 3."""
    args = argparse.Namespace(
        to="tcp://a:1", from_="tcp://a:2", bind=False, timeout=3.0, fail_on_error=fail_on_error
    )
    return _exit_status(args, report, interrupted=interrupted)


@pytest.mark.parametrize(
    ("counts", "said"),
    [
        ({"missing": 2}, "2 of the 5 events sent got no reply within 3 s"),
        ({"unsent": 4}, "4 events were not sent within 3 s"),
        (
            {"missing": 1, "unsent": 4},
            "1 of the 5 events sent got no reply within 3 s; 4 events were not sent",
        ),
        (  # a second replay on the same output takes a share of the replies
            {"missing": 2, "unexpected": 3},
            "2 of the 5 events sent got no reply within 3 s; 3 replies to no send of this "
            "replay came: another consumer of tcp://a:2 (another replay) takes a share",
        ),
        (  # nothing listens: what was not sent is said too
            {"missing": 5, "unsent": 95},
            "no reply at all: 5 events were sent to tcp://a:1 (95 more not sent) and nothing",
        ),
        (  # every reply taken by another consumer of the output
            {"missing": 5, "unexpected": 4},
            "no reply at all: 5 events were sent to tcp://a:1 and nothing came back from "
            "tcp://a:2 within 3 s; is a daemon listening there (and are --to and --from its "
            "input and output)? 4 replies to no send of this replay came: another consumer of "
            "tcp://a:2 (another replay) takes the replies",
        ),
    ],
)
def test_a_partial_replay_says_on_stderr_why_it_exits_1(capsys, counts, said):
    """Some events answered, others missing or unsent: exit 1, and stderr says so (the
    report on stdout is not the only place to look)."""
    report = ReplayResult().report([], None, {}) | {"sent": 5, "received": 5} | counts
    report["received"] -= report["missing"]
    assert _status(report) == 1
    assert f"streamtrk replay: error: {said}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("counts", "interrupted", "said"),
    [
        (  # every reply unreadable: not "nothing came back"
            {"received": 0, "missing": 3},
            False,
            "error: no reply this replay could read: 3 events were sent to tcp://a:1, and "
            "within 3 s 3 replies came that it cannot decode",
        ),
        (  # said with the rest of a partial replay, which stays said
            {"received": 1, "missing": 2, "unsent": 4, "unexpected": 1},
            False,
            "error: 2 of the 3 events sent got no reply within 3 s; 4 events were not sent "
            "within 3 s; 1 replies to no send of this replay came: another consumer of "
            "tcp://a:2 (another replay) takes a share of the replies; 3 replies came that it "
            "cannot decode",
        ),
        ({"received": 3, "missing": 0}, False, "warning: 3 replies came that it cannot decode"),
        ({"received": 1, "missing": 2}, True, "warning: 3 replies came that it cannot decode"),
    ],
)
def test_replies_that_do_not_decode_are_said_with_the_decoder_s_words(
    capsys, counts, interrupted, said
):
    """Replies of a newer daemon's wire version came: not "no reply at all", which sent the
    operator looking for a daemon that was there, but what the decoder said, and the
    upgrade order; with whatever else went wrong, and a warning where nothing else is."""
    report = ReplayResult().report([], None, {}) | {"sent": 3} | counts
    first = "bad_version: version 7 not supported (supported: [1, 2, 3, 4, 5, 6])"
    report |= {"invalid_replies": 3, "first_invalid_reply": first}
    report["invalid_reply_reasons"] = {"bad_version": 3}
    failed = 130 if interrupted else int(bool(counts["missing"] or counts.get("unsent")))
    assert _status(report, interrupted=interrupted) == failed
    err = capsys.readouterr().err
    assert f"streamtrk replay: {said} (3 bad_version; the first: {first}): a " in err
    assert "Upgrade the consumers of its replies" in err and "no reply at all" not in err
    assert err.count("cannot decode") == 1


def test_no_readable_reply_and_replies_to_no_send_say_both(capsys) -> None:
    """None of the replies readable, and some to no send of this replay: another consumer
    takes a share of them, said after what the decoder said."""
    report = ReplayResult().report([], None, {}) | {"sent": 3, "missing": 3, "unexpected": 2}
    report |= {"invalid_replies": 1, "first_invalid_reply": "bad_version: version 7"}
    report["invalid_reply_reasons"] = {"bad_version": 1}
    assert _status(report) == 1
    err = capsys.readouterr().err
    assert "error: no reply this replay could read: 3 events were sent to tcp://a:1" in err
    assert "; 2 replies to no send of this replay came: another consumer of tcp://a:2" in err
    assert "(another replay) takes a share of the replies" in err  # some came to this one


@pytest.mark.parametrize("fail_on_error", [False, True])
def test_error_replies_are_said_on_stderr_whatever_the_exit_status(capsys, fail_on_error):
    """Events answered 'shutdown' were not reconstructed: exit 0 unless --fail-on-error, but
    said on stderr either way (a canary's log should show them)."""
    report = ReplayResult().report([], None, {}) | {"sent": 10, "received": 10}
    report["errors"] = {"shutdown": 5}
    assert _status(report, fail_on_error=fail_on_error) == int(fail_on_error)
    said = "error" if fail_on_error else "warning"
    assert f"streamtrk replay: {said}: error replies: 5 shutdown" in capsys.readouterr().err
    # said with a mismatched reply too (it returned before them), which makes the exit 1
    report["mismatched_replies"] = 1
    assert _status(report, fail_on_error=fail_on_error) == 1
    err = capsys.readouterr().err
    assert f"streamtrk replay: {said}: error replies: 5 shutdown" in err
    assert "1 replies name hit ids their events do not have, or a hit in two" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--rate", "0"),
        ("--loop", "0"),
        ("--retries", "-1"),
        ("--timeout", "0"),
        ("--events", "0"),
        ("--events", "-3"),
    ],
)
def test_replay_refuses_a_bad_setting_before_it_reads_the_recording(tmp_path, flag, value):
    """A setting out of range is said at once, not after a large recording was read (here
    the recording does not even exist)."""
    out = _run("replay", str(tmp_path / "absent.stk"), flag, value)
    assert out.returncode == 2
    assert out.stderr.startswith(f"streamtrk replay: error: {flag} must be "), out.stderr


@pytest.mark.parametrize("back", ["tcp://127.0.0.1:47101", "tcp://localhost:47101"])
def test_replay_refuses_to_read_replies_where_it_sends_events(tmp_path, back):
    """One endpoint for --to and --from: it waited for replies and said none came (exit 1)."""
    out = _run("replay", str(tmp_path / "absent.stk"), "--to", "tcp://127.0.0.1:47101",
               "--from", back)  # fmt: skip
    assert out.returncode == 2
    assert "--to and --from must be two endpoints, got 'tcp://127.0.0.1:47101' and" in out.stderr


def test_replay_refuses_a_wait_before_resends_without_resends(tmp_path):
    """--retry-after alone would change nothing (no resend without --retries): refused."""
    out = _run("replay", str(tmp_path / "absent.stk"), "--retry-after", "2")
    assert out.returncode == 2
    assert out.stderr == (
        "streamtrk replay: error: --retry-after is the wait before a resend: it needs --retries N\n"
    )


def test_a_replay_interrupted_says_what_its_replies_so_far_say(capsys) -> None:
    """Ctrl-C: exit 130, after the warnings about the replies that came (they were left
    unsaid)."""
    report = ReplayResult().report([], None, {}) | {"sent": 10, "received": 4, "missing": 6}
    report |= {"errors": {"too_dense": 1}, "ambiguous_events": 2}
    assert _status(report, interrupted=True) == 130
    err = capsys.readouterr().err
    assert "warning: error replies: 1 too_dense" in err
    assert "warning: 2 (run, event) numbers name events of different hits" in err
    assert err.rstrip().endswith("interrupted; the report covers the replies so far")
    assert "got no reply" not in err  # stopped early: not the timeout's doing


@pytest.mark.parametrize(
    "counts",
    [
        {"sent": 3, "received": 3, "unsent": 3},  # after 3 events
        {"sent": 0, "received": 0, "unsent": 6},  # at the first: it blamed --timeout too
    ],
)
def test_a_socket_failure_is_said_as_such_not_as_a_timeout(capsys, counts):
    """Sending failed (a socket error): stderr says why, and does not also blame --timeout
    for the events left unsent."""
    report = ReplayResult().report([], None, {}) | counts
    report["send_error"] = "ZMQError: Socket operation on non-socket"
    assert _status(report) == 1
    assert capsys.readouterr().err == (
        "streamtrk replay: error: sending failed: ZMQError: Socket operation on non-socket\n"
    )


def test_replies_of_another_replay_are_not_blamed_when_none_of_ours_is_missing(capsys):
    """Every event sent was answered, some left unsent, and replies of another replay came
    too: nothing is missing, so no other consumer is said to take a share of ours."""
    report = ReplayResult().report([], None, {}) | {"sent": 5, "received": 5}
    report |= {"unsent": 4, "unexpected": 3}
    assert _status(report) == 1
    assert capsys.readouterr().err == "streamtrk replay: error: 4 events were not sent within 3 s\n"


@pytest.mark.parametrize(
    "counts",
    [{"send_error": "ZMQError: Socket operation on non-socket"}, {"refused": {"to": "auth"}}],
)
def test_a_send_failure_or_a_refusal_alone_exits_1(counts):
    """Sending failed (in a resend, every event answered) or a handshake was refused: exit
    status 1 even with nothing missing or unsent (as --help says)."""
    report = ReplayResult().report([], None, {}) | {"sent": 5, "received": 5} | counts
    assert _status(report) == 1


def test_a_refused_handshake_names_the_socket_and_its_address(capsys):
    """Each socket whose handshake was refused is said with its own flag and address (the
    output's under --from): the operator mends the keys of that one."""
    report = ReplayResult().report([], None, {}) | {"sent": 5, "received": 5}
    assert _status(report | {"refused": {"from": "auth"}}) == 1
    err = capsys.readouterr().err
    assert err.startswith("streamtrk replay: error: --from tcp://a:2 refused the handshake (auth)")
    assert "tcp://a:1" not in err


def test_unexpected_replies_without_a_msg_id_point_at_match_by_event(capsys):
    """Replies came, none to a send of this replay, and they carried no msg_id: the daemon
    may echo none, which --match-by-event is for; stderr says so."""
    report = ReplayResult().report([], None, {}) | {"sent": 5, "missing": 5}
    report |= {"unexpected": 5, "unexpected_without_msg_id": 5}
    assert _status(report) == 1
    assert (
        "; 5 carried no msg_id (another producer's, or a daemon that echoes none: "
        "--match-by-event)" in capsys.readouterr().err
    )


def test_replay_of_a_recording_without_hits_says_so_and_exits_1(tmp_path):
    """Nothing to send (a tap that took only truth, or none): an error, not a report of 0
    events sent and exit status 0."""
    empty = tmp_path / "empty.stk"
    with RecordingWriter(empty):
        pass
    out = _run("replay", str(empty), "--to", "tcp://127.0.0.1:47301",
               "--from", "tcp://127.0.0.1:47302")  # fmt: skip
    assert out.returncode == 1
    assert f"streamtrk replay: error: no hits messages in {empty}" in out.stderr


def test_replay_refuses_a_submission_of_one_number_naming_two_events_before_it_sends(tmp_path):
    """Two producers' runs recorded together, (run, event) numbers naming events of other
    hits: a submission would hold one of each; refused before anything is sent, counting
    them and naming the smallest (two runs of the refusal name the same one)."""
    main(["simulate", "--events", "4", "--mu", "2", "-q", "-o", str(tmp_path / "e.stk")])
    a, b, c, d = iter_events(tmp_path / "e.stk")
    with RecordingWriter(tmp_path / "two.stk") as w:
        for ev in (c, replace(d, event=c.event), a, replace(b, event=a.event)):
            w.write_event(ev)
    args = ["--to", "tcp://127.0.0.1:47303", "--from", "tcp://127.0.0.1:47304", "--timeout", "1",
            "--submission", str(tmp_path / "s.csv")]  # fmt: skip
    out = _run("replay", str(tmp_path / "two.stk"), *args)
    assert out.returncode == 1
    assert out.stderr.startswith(
        "streamtrk replay: error: 2 (run, event) numbers name events of other hits"
    ), out.stderr
    assert f"(run {a.run}, event {a.event} among them" in out.stderr, out.stderr
    assert not (tmp_path / "s.csv").exists()


def test_replay_help_gives_the_wait_before_a_resend_that_is_used(capsys):
    """``--retry-after`` left out with ``--retries`` waits ReplayOptions' default, which the
    help states: the two say the same number of seconds."""
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    words = " ".join(capsys.readouterr().out.split())
    assert f"seconds of silence before a resend ({ReplayOptions.retry_after_s:g};" in words
