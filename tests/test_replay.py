"""Replay against a real PULL socket that never answers: what is sent, and when resends go."""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from live_daemon import first_line

import streamtrk.replay as replay_module
from streamtrk.cli import main
from streamtrk.cli.common import COMMANDS, strict_json, write_report
from streamtrk.client import Consumer, Producer
from streamtrk.detector import load_detector
from streamtrk.event import TRACK_PARAM_DTYPES, Event, Tracks
from streamtrk.io.recording import RecordingWriter, iter_events
from streamtrk.replay import (
    RESEND_POLL_S,
    Recorded,
    ReplayOptions,
    ReplayResult,
    _count,
    _receive,
    _Send,
    _Sender,
    due_newest_first,
    format_report,
    labels_of,
    load_recording,
    physics,
    replay,
)
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate
from streamtrk.wire.codec import (
    ModelId,
    decode,
    encode_hits,
    encode_tracks,
    encode_truth,
    peek_msg_id,
    with_msg_id,
)


def test_resends_go_out_while_later_events_are_still_being_sent() -> None:
    events = _events(20)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    with ctx.socket(zmq.PULL) as sink, ctx.socket(zmq.PULL) as replies:
        sink.setsockopt(zmq.LINGER, 0)
        replies.setsockopt(zmq.LINGER, 0)
        to = f"tcp://127.0.0.1:{sink.bind_to_random_port('tcp://127.0.0.1')}"
        # The replay's consumer connects here: a PUSH that never sends stands for a daemon
        # that lost every event.
        with ctx.socket(zmq.PUSH) as silent:
            silent.setsockopt(zmq.LINGER, 0)
            from_ = f"tcp://127.0.0.1:{silent.bind_to_random_port('tcp://127.0.0.1')}"
            opts = ReplayOptions(to=to, from_=from_, rate=10.0, timeout_s=1.0, retries=1,
                                 retry_after_s=0.5)  # fmt: skip
            result = replay(events, opts)
        ids: list[int] = []
        while sink.poll(500):
            msg_id = peek_msg_id(sink.recv_multipart())
            assert msg_id is not None
            ids.append(msg_id)
    report = result.report(events, opts.rate)
    assert report["sent"] == 20 and report["missing"] == 20 and report["resent"] == 20
    # The send rate is that of the events' first sends (resends went on 0.5 s longer).
    assert report["send_rate_hz"] == pytest.approx(10.0, rel=0.15)
    assert len(ids) == 40 and len(set(ids)) == 20  # each event sent twice, no more
    first_resend = next(k for k, m in enumerate(ids) if m in ids[:k])
    assert first_resend < ids.index(max(ids))  # a resend went before the last event went once


def test_a_paced_replay_starts_its_schedule_when_a_daemon_takes_the_first_event() -> None:
    """Bound, with the daemon connecting a second late: the events then go at the rate, not
    the second's worth at once (the schedule ran from before the wait)."""
    events, rate = _events(12), 20.0
    ctx: zmq.Context[Any] = zmq.Context.instance()
    arrivals: list[float] = []
    ends: list[str] = []

    def daemon() -> None:
        time.sleep(1.0)
        with ctx.socket(zmq.PULL) as sink, ctx.socket(zmq.PUSH) as out:
            for sock in (sink, out):
                sock.setsockopt(zmq.LINGER, 0)
            sink.connect(ends[0])
            out.connect(ends[1])
            while len(arrivals) < len(events) and sink.poll(5000):
                msg = decode(sink.recv_multipart())
                arrivals.append(time.perf_counter())
                ev = next(r.event for r in events if r.key == (msg.run, msg.event))
                out.send_multipart(
                    encode_tracks(ev.run, ev.event, ev.hits.hit_id, None, msg_id=msg.msg_id)
                )

    anywhere = "tcp://127.0.0.1:*"
    opts = ReplayOptions(to=anywhere, from_=anywhere, bind=True, rate=rate, timeout_s=10)
    thread = threading.Thread(target=daemon, daemon=True)

    def bound(to: str, from_: str) -> None:
        ends.extend([to, from_])
        thread.start()

    result = replay(events, opts, bound=bound)
    thread.join(10)
    report = result.report(events, rate)
    assert report["received"] == len(events)
    # The schedule run from before the wait would send the events due in the 1 s wait at
    # once as the daemon connects (11 of the 11 gaps short, each event up to ~950 ms late,
    # ~1 s of latency from the schedule). The bounds below keep far from that while a
    # loaded machine's pauses (tens of ms, at times one of a few periods) pass: at most
    # half the gaps short, no event 250 ms late (5 periods; 1/4 of the wait).
    gaps = np.diff(arrivals)
    assert np.count_nonzero(gaps < 0.2 / rate) <= len(gaps) // 2, gaps  # no burst after the wait
    assert report["send_lag_max_ms"] < 250, report["send_lag_max_ms"]
    # The first event went once the daemon was there: neither its latency nor the rate
    # achieved holds the wait.
    assert report["latency_from_schedule_max_ms"] < 500 and report["latency_max_ms"] < 500
    # Over the first sends' span: a schedule cannot run faster than the rate (the burst:
    # thousands of Hz); a stall only stretches the span (a first send timed from before
    # the wait: ~7 Hz).
    assert 0.6 * rate < report["send_rate_hz"] < 1.15 * rate, report["send_rate_hz"]


def test_latency_from_the_schedule_holds_the_time_an_event_waited_to_be_sent() -> None:
    """With a rate, an event sent late (a daemon that took nothing meanwhile; those due go
    out at once after it) counts its latency from when it was due as well as from its send;
    without one there is no schedule."""
    (rec,) = _events(1)
    reply = encode_tracks(rec.event.run, rec.event.event, rec.event.hits.hit_id, None)
    msg = decode(reply)
    result = ReplayResult(sent=1, send_lag_max=0.9)
    _count(msg, msg.to_reply(), _Send(rec.key, [], 11.0, 11.0, t_due=10.1), 11.25, result)
    report = result.report([rec], 20.0)
    assert report["latency_max_ms"] == pytest.approx(250)
    assert report["latency_from_schedule_max_ms"] == pytest.approx(1150)
    assert report["send_lag_max_ms"] == pytest.approx(900)
    unpaced = ReplayResult()
    _count(msg, msg.to_reply(), _Send(rec.key, [], 11.0, 11.0), 11.25, unpaced)
    report = unpaced.report([rec], None)
    assert report["latency_from_schedule_max_ms"] is None and report["send_lag_max_ms"] is None


def test_a_reply_to_one_events_message_naming_another_is_mismatched() -> None:
    """A daemon (or a proxy) that answers the message of event 0 with event 1's numbers: a
    daemon's fault, counted, and not scored as event 1's answer."""
    events = _events(2)

    def handle(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        ev = events[1 - msg.event].event  # the other one's numbers
        out.send_multipart(encode_tracks(ev.run, ev.event, ev.hits.hit_id, None, msg_id=msg.msg_id))

    with _stand_in(handle) as (to, from_):
        result = replay(events, ReplayOptions(to=to, from_=from_, timeout_s=2))
    report = result.report(events, None)
    assert report["received"] == 2 and report["mismatched_replies"] == 2
    assert report["missing"] == 0 and report["unexpected"] == 0
    assert result.scored_replies == {} and report["events_scored"] == 0


def _events(n: int) -> list[Recorded]:
    return [
        Recorded([bytes(f) for f in encode_hits(ev)], ev)
        for ev in simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=1)), 3, n)
    ]


@contextmanager
def _daemon_sockets() -> Iterator[tuple[zmq.Socket, zmq.Socket, str, str]]:
    """A stand-in daemon's PULL input and PUSH output, bound, with the endpoints to give
    replay (``--to``, ``--from``)."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    with ctx.socket(zmq.PULL) as sink, ctx.socket(zmq.PUSH) as out:
        for sock in (sink, out):
            sock.setsockopt(zmq.LINGER, 0)
        to = f"tcp://127.0.0.1:{sink.bind_to_random_port('tcp://127.0.0.1')}"
        yield sink, out, to, f"tcp://127.0.0.1:{out.bind_to_random_port('tcp://127.0.0.1')}"


def _replay_to_stand_in(
    events: list[Recorded],
    answer: Callable[[zmq.Socket, zmq.Socket], None],
    match_by_event: bool = False,
) -> ReplayResult:
    """Replay ``events`` to a stand-in daemon whose thread runs ``answer(sink, out)``."""
    with _daemon_sockets() as (sink, out, to, from_):
        daemon = threading.Thread(target=answer, args=(sink, out), daemon=True)
        daemon.start()
        opts = ReplayOptions(to=to, from_=from_, timeout_s=1.0, match_by_event=match_by_event)
        result = replay(events, opts)
        daemon.join(10)
    return result


def _answer_all(sink: zmq.Socket, out: zmq.Socket) -> None:
    """A stand-in daemon answering every message, empty tracks, until 2 s pass without one."""
    while sink.poll(2000):
        msg = decode(sink.recv_multipart())
        out.send_multipart(encode_tracks(msg.run, msg.event, [], None, msg_id=msg.msg_id))


@contextmanager
def _stand_in(handle: Callable[[list[bytes], zmq.Socket], object]) -> Iterator[tuple[str, str]]:
    """A stand-in daemon whose thread hands each message on its input to ``handle(frames,
    out)`` until the block ends (not an idle timeout later); yields ``--to`` and ``--from``."""
    with _daemon_sockets() as (sink, out, to, from_):
        done = threading.Event()

        def serve() -> None:
            while not done.is_set():
                if sink.poll(20):
                    handle(sink.recv_multipart(), out)

        daemon = threading.Thread(target=serve, daemon=True)
        daemon.start()
        try:
            yield to, from_
        finally:
            done.set()
            daemon.join(10)


def _recording(tmp_path: Path, n: int) -> Path:
    run = tmp_path / "run.stk"
    with RecordingWriter(run) as w:
        for rec in _events(n):
            w.write_event(rec.event)
    return run


def test_second_replies_without_message_ids_are_duplicates() -> None:
    """A daemon that echoes no msg_id (``match_by_event``) and answers every event but the
    last twice: one reply each counts, the second is a duplicate (not an unexpected reply).
    The last is answered once: the replay ends at its reply, and a second one could arrive
    after that (replies come in order on the one socket, so the others' second replies are
    all in by then)."""
    events = _events(5)

    def answer_twice(sink: zmq.Socket, out: zmq.Socket) -> None:
        for i, _ in enumerate(events):
            msg = decode(sink.recv_multipart())
            for _ in range(1 if i == len(events) - 1 else 2):
                out.send_multipart(encode_tracks(msg.run, msg.event, [], None))

    report = _replay_to_stand_in(events, answer_twice, match_by_event=True).report(events, None)
    assert (report["received"], report["duplicates"], report["unexpected"]) == (5, 4, 0)


def test_replies_without_a_message_id_are_another_producers() -> None:
    """Every send of a replay carries its msg_id, which daemons echo: a reply without one,
    even for an event number of this replay (another producer's, through a shared collector:
    simulated runs share their numbers), answers none of its events."""
    events = _events(3)

    def answer_with_a_strangers_reply_first(sink: zmq.Socket, out: zmq.Socket) -> None:
        for _ in events:
            frames = sink.recv_multipart()
            msg = decode(frames)
            out.send_multipart(encode_tracks(msg.run, msg.event, [], None))  # no msg_id
            out.send_multipart(_tracks_reply(frames))

    report = _replay_to_stand_in(events, answer_with_a_strangers_reply_first).report(events, None)
    assert (report["received"], report["duplicates"], report["unexpected"]) == (3, 0, 3)
    assert report["unexpected_without_msg_id"] == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_replay_and_still_reports(tmp_path: Path, sig) -> None:
    run = _recording(tmp_path, 3)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    with ctx.socket(zmq.PULL) as sink:  # takes the events, never answers
        sink.setsockopt(zmq.LINGER, 0)
        to = f"tcp://127.0.0.1:{sink.bind_to_random_port('tcp://127.0.0.1')}"
        report = tmp_path / "r.json"
        argv = [sys.executable, "-m", "streamtrk", "replay", str(run), "--to", to,
                "--from", "tcp://127.0.0.1:1", "--timeout", "600", "-q",
                "--report", str(report)]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3):  # all three sent: now it waits for replies
            assert sink.poll(60_000)
            sink.recv_multipart()
        time.sleep(0.5)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # not left running into the next tests
            pytest.fail(f"replay still running 60 s after {sig.name}: {proc.communicate()[1]}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    # Stopped half a second in: the --timeout of 600 s never ran out, so no error says so.
    assert "no reply at all" not in err and "within 600 s" not in err, err
    got = json.loads(report.read_text())
    assert got["interrupted"] is True and (got["sent"], got["received"]) == (3, 0)


def test_a_replay_stopped_before_anything_went_out_does_not_blame_the_timeout(
    tmp_path: Path,
) -> None:
    """Bound with no daemon connected, SIGTERM a second in: nothing was sent, but not
    because the daemon took nothing for --timeout seconds (which have not passed)."""
    run = _recording(tmp_path, 2)
    argv = [sys.executable, "-m", "streamtrk", "replay", str(run), "--bind", "--to",
            "tcp://127.0.0.1:*", "--from", "tcp://127.0.0.1:*", "--timeout", "600"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        started = ""
        while "replay:" not in started:  # where it is bound: the replay is about to send
            line = proc.stderr.read(1)
            assert line, f"replay ended before it started: {proc.communicate()}"
            started += line
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "within 600 s" not in err, err
    assert '"unsent": 2' in out or re.search(r"unsent\s+2", out), out


def test_a_bound_replay_says_the_ports_it_took_and_sends_there(tmp_path: Path) -> None:
    """``--bind`` on ``:*``: the ports the system chose are said on stderr before anything
    is sent, and a daemon's input connected to the first takes the events."""
    run = _recording(tmp_path, 2)
    anywhere = "tcp://127.0.0.1:*"
    argv = [sys.executable, "-m", "streamtrk", "replay", str(run), "--bind", "--to", anywhere,
            "--from", anywhere, "--timeout", "600", "-q"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    try:
        assert proc.stderr is not None
        said = first_line(proc.stderr)
        port = r"tcp://127\.0\.0\.1:(\d+)"
        bound = re.fullmatch(f"streamtrk replay: bound --to {port} and --from {port}: .*\n", said)
        assert bound and bound[1] != bound[2], said
        pull.connect(f"tcp://127.0.0.1:{bound[1]}")
        assert pull.poll(60_000), "nothing came to the port said"
        assert decode(pull.recv_multipart()).kind == "hits"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        pull.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130


def test_a_stop_is_not_held_up_by_a_daemon_that_takes_nothing() -> None:
    """Bound with no daemon connected, each send would wait the whole timeout (600 s): a stop
    (what the CLI's signal handlers set) ends the replay at once, its events unsent."""
    anywhere = "tcp://127.0.0.1:*"  # bound to a port of the system's choosing
    opts = ReplayOptions(to=anywhere, from_=anywhere, bind=True, timeout_s=600)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    result = replay(_events(3), opts, stop)
    assert time.monotonic() - t0 < 10
    assert result.interrupted and (result.sent, result.unsent) == (0, 3)
    report = result.report(_events(3), None)
    assert report["duration_s"] == 0.0 and report["events_per_second"] is None


def test_a_long_loop_holds_no_list_of_its_sends() -> None:
    """``--loop`` as "for as long as it runs" (10**15 times over): the sends are taken as
    they go, so the replay starts at once, and a stop counts the rest unsent."""
    anywhere = "tcp://127.0.0.1:*"
    opts = ReplayOptions(to=anywhere, from_=anywhere, bind=True, timeout_s=600, loop=10**15)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    result = replay(_events(2), opts, stop)
    assert time.monotonic() - t0 < 10
    assert result.send_error is None, result.send_error
    assert result.interrupted and (result.sent, result.unsent) == (0, 2 * 10**15)


@pytest.mark.parametrize("failure", ["socket", "timeout"])
def test_a_send_that_fails_leaves_it_and_the_rest_unsent(monkeypatch, failure) -> None:
    """The sender's 4th send fails: its socket raises (injected: no natural trigger is
    known), or the daemon takes nothing more (the send times out). 3 sent, the 4th and the
    2 after it unsent; the socket's failure said (not "all answered"), a timeout none."""
    events = _events(6)
    sends = 0
    real_send = Producer.send_frames

    def failing_send(self, frames, timeout_ms=None):
        nonlocal sends
        sends += 1
        if sends >= 4:
            if failure == "socket":
                raise zmq.ZMQError(zmq.ENOTSOCK)
            time.sleep((timeout_ms or 0) / 1000)
            return False
        return real_send(self, frames, timeout_ms=timeout_ms)

    monkeypatch.setattr(Producer, "send_frames", failing_send)
    report = _replay_to_stand_in(events, _answer_all).report(events, None)
    assert (report["sent"], report["received"], report["unsent"]) == (3, 3, 3)
    if failure == "socket":
        assert report["send_error"].startswith("ZMQError: ")
    else:
        assert report["send_error"] is None


def test_a_record_that_does_not_decode_stops_the_load_with_its_offset(tmp_path: Path) -> None:
    """``record`` stores only valid messages: a record that does not decode is damage, not
    an event to skip without a word."""
    from streamtrk.io.recording import RecordingError

    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=1)), 1, 2))
    path = tmp_path / "damaged.stk"
    with RecordingWriter(path) as w:
        w.write_event(events[0])
        bad = w.write([b"\xc1"])  # one frame that is not msgpack, with a valid CRC
        w.write_event(events[1])
    with pytest.raises(RecordingError, match=rf"damaged\.stk: record at offset {bad}: not_msgpack"):
        load_recording(path)


def test_a_recording_loads_compact_when_asked(tmp_path: Path) -> None:

    events = list(simulate(load_detector(), SimConfig(generator=GeneratorConfig(mu=1)), 2, 2))
    path = tmp_path / "run.stk"
    with RecordingWriter(path) as w:
        for ev in events:
            w.write_event(ev)
    as_recorded, compact = load_recording(path), load_recording(path, compact=True)
    assert [decode(r.frames).version for r in as_recorded] == [2, 2]
    assert [decode(r.frames).version for r in compact] == [5, 5]
    for a, b, ev in zip(as_recorded, compact, events, strict=True):
        assert sum(map(len, b.frames[1:])) < 0.7 * sum(map(len, a.frames[1:]))
        assert decode(b.frames).to_event().hits.equals(ev.hits)
        assert b.event.truth is not None and ev.truth is not None
        assert b.event.truth.equals(ev.truth)


def test_error_replies_fail_the_replay_only_when_asked(tmp_path: Path, capsys) -> None:
    """A daemon that answers every event with an error: exit 0 by default (an overload test
    expects error replies), 1 with --fail-on-error, naming the reasons. Run in-process, the
    command leaves the signal handlers as they were."""
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    run = _recording(tmp_path, 3)
    with _daemon_sockets() as (sink, out, to, from_):

        def refuse(n: int) -> None:
            for _ in range(n):
                msg = decode(sink.recv_multipart())
                refusal = encode_tracks(
                    msg.run,
                    msg.event,
                    [],
                    None,
                    status="error",
                    reason="too_dense",
                    msg_id=msg.msg_id,
                )
                out.send_multipart(refusal)

        args = ["replay", str(run), "--to", to, "--from", from_, "--timeout", "5", "-q"]
        for extra, status in (([], 0), (["--fail-on-error"], 1)):
            daemon = threading.Thread(target=refuse, args=(3,), daemon=True)
            daemon.start()
            assert main([*args, *extra]) == status
            daemon.join(10)
            err = capsys.readouterr().err
            said = "error" if extra else "warning"  # said either way, failing only when asked
            assert f"replay: {said}: error replies: 3 too_dense" in err, err
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_signal_while_the_report_is_written_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C or SIGTERM while the report is written (a second one, the first having
    stopped the replay): caught as during the replay, the report written whole, exit status
    130; it went to the handlers from before the command, which ended it with no report and
    no output."""
    run, report = _recording(tmp_path, 2), tmp_path / "report.json"

    def interrupted(path: Path, text: str) -> None:
        signal.raise_signal(signal.SIGINT)
        write_report(path, text)

    monkeypatch.setattr("streamtrk.cli.replay.write_report", interrupted)
    reached: list[int] = []
    before = signal.signal(signal.SIGINT, lambda sig, _: reached.append(sig))
    try:
        with _daemon_sockets() as (sink, out, to, from_):

            def refuse(n: int) -> None:
                for _ in range(n):
                    msg = decode(sink.recv_multipart())
                    refusal = encode_tracks(
                        msg.run, msg.event, [], None, status="error", reason="too_dense",
                        msg_id=msg.msg_id,
                    )  # fmt: skip
                    out.send_multipart(refusal)

            daemon = threading.Thread(target=refuse, args=(2,), daemon=True)
            daemon.start()
            args = ["replay", str(run), "--to", to, "--from", from_, "--timeout", "5", "-q"]
            assert main([*args, "--report", str(report)]) == 130
            daemon.join(10)
    finally:
        signal.signal(signal.SIGINT, before)
    assert reached == [] and json.loads(report.read_text())["received"] == 2


def _truth_tracks(ev: Event) -> Tracks:
    """The event's particles as tracks (what a perfect daemon would answer)."""
    assert ev.truth is not None
    pid = ev.truth.hits.particle_id
    order = np.argsort(pid, kind="stable")
    order = order[pid[order] != 0]
    _, starts = np.unique(pid[order], return_index=True)
    offsets = np.append(starts, len(order)).astype(np.int64)
    params = {k: np.zeros(len(starts), dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    return Tracks(offsets, order.astype(np.int64), params)


def test_the_report_counts_each_event_by_its_first_ok_reply() -> None:
    """A stand-in daemon answers events 0 and 1 with their true tracks, event 2 with an
    error, event 3 first with an error and in the second loop with its true tracks, sends one
    reply that does not decode, and in the second loop answers 0 and 1 with no tracks (and no
    beam line): ok, errors, invalid replies, physics and the beam lines (from the first ok
    replies) say so. (An error overtaking an ok reply to the same event left it out of the
    physics.)"""
    events = _events(4)
    by_key = {rec.key: rec.event for rec in events}
    with _daemon_sockets() as (sink, out, to, from_):

        def answer() -> None:
            out.send_multipart([b"\xc1"])  # not a reply at all
            for n in range(8):
                msg = decode(sink.recv_multipart())
                ev, msg_id = by_key[(msg.run, msg.event)], msg.msg_id
                hit_ids = ev.hits.hit_id
                if msg.event == 2 or (msg.event == 3 and n < 4):
                    reason = "too_dense" if msg.event == 2 else "overloaded"
                    reply = encode_tracks(ev.run, ev.event, hit_ids, None, status="error",
                                          reason=reason, msg_id=msg_id)  # fmt: skip
                elif n < 4 or msg.event == 3:  # model b, then a (a reload) for the second loop
                    line = (0.25, 1) if msg.event == 3 else (0.5, 0)
                    model = ModelId("a", "1", 0.5) if n >= 4 else ModelId("b", "2", 0.7)
                    reply = encode_tracks(ev.run, ev.event, hit_ids, _truth_tracks(ev),
                                          beam_line=line, msg_id=msg_id, model=model)  # fmt: skip
                else:
                    reply = encode_tracks(ev.run, ev.event, hit_ids, None, msg_id=msg_id,
                                          model=ModelId("a", "1", 0.5))  # fmt: skip
                out.send_multipart(reply)

        daemon = threading.Thread(target=answer, daemon=True)
        daemon.start()
        result = replay(events, ReplayOptions(to=to, from_=from_, timeout_s=2.0, loop=2))
        daemon.join(10)
    report = result.report(events, None)
    assert (report["sent"], report["received"], report["ok"]) == (8, 8, 5)
    assert report["errors"] == {"overloaded": 1, "too_dense": 2}
    assert report["invalid_replies"] == 1
    assert report["invalid_reply_reasons"] == {"not_msgpack": 1}
    assert report["first_invalid_reply"].startswith("not_msgpack: frame 0 (1 bytes)")
    assert report["tracking_efficiency"] == 1.0 and report["n_reconstructable"] > 0
    assert report["n_tracks"] == sum(len(_truth_tracks(events[k].event)) for k in (0, 1, 3))
    assert report["beam_lines_mm"] == [[0.25, 1.0], [0.5, 0.0]]
    # every ok reply's model, not only those of the replies the events are scored by (b's):
    # the model a reload put in answered the second loop
    assert report["models"] == {"a (hash 1, threshold 0.5)": 3, "b (hash 2, threshold 0.7)": 2}
    # Every key but the physics ones (named as a group) is described in `replay --help`.
    (description,) = [p["description"] for name, *_, p in COMMANDS if name == "replay"]
    named = set(re.findall(r"[a-z][a-z0-9_]*", description))
    physics_keys = physics(events, result.scored_replies, labels_of(events, result.scored_replies))
    keys = set(report) - set(physics_keys)
    assert {k for k in keys if not k.startswith("latency_")} - named == set()
    assert {k for k in keys if k.startswith("latency_")} == {
        f"latency_{q}_ms" for q in ["p50", "p90", "p99", "max", "mean"]
    } | {f"latency_from_schedule_{q}_ms" for q in ["p50", "p99", "max"]}
    assert "latency_p50/p90/p99/max/mean_ms" in description
    assert "latency_from_schedule_p50/p99/max_ms" in description
    assert report["latency_from_schedule_p99_ms"] is None  # no --rate: no schedule


def test_physics_cuts_vertices_about_the_beam_line_each_reply_names() -> None:
    """Collisions 12 mm off the axis, answered with their true tracks about that beam line:
    their particles count as made near it (about the axis, none would)."""
    cfg = SimConfig(generator=GeneratorConfig(mu=5, beam_spot=(12.0, 0.0, 0.0)))
    events = [Recorded([], ev) for ev in simulate(load_detector(), cfg, 4, 2)]
    line = (12.0, 0.0)
    ids = {rec.key: rec.event.hits.hit_id for rec in events}
    tracks = {rec.key: _truth_tracks(rec.event) for rec in events}
    replies = {k: decode(encode_tracks(*k, ids[k], tracks[k], beam_line=line)) for k in ids}
    out = physics(events, replies, labels_of(events, replies))
    assert out["n_reconstructable"] >= 0.8 * out["n_reconstructable_all"] > 0
    assert out["tracking_efficiency"] == 1.0


def test_a_recording_with_truth_and_no_ok_reply_reports_its_physics_as_unknown() -> None:
    """Every event answered with an error: the physics keys are there, null in the JSON
    (``events_scored`` 0), not missing (a CI check reading them would fail on a KeyError);
    a recording without truth has none."""
    events = _events(2)
    report = ReplayResult().report(events, None)
    assert report["events_scored"] == 0 and report["n_reconstructable"] == 0
    assert math.isnan(report["tracking_efficiency"]) and math.isnan(report["trackml_score"])
    assert json.loads(strict_json(report))["fake_rate"] is None
    table = dict(line.split(maxsplit=1) for line in format_report(report).splitlines())
    assert (table["fake_rate"], table["events_scored"]) == ("-", "0")
    bare = [Recorded(rec.frames, replace(rec.event, truth=None)) for rec in events]
    assert "tracking_efficiency" not in ReplayResult().report(bare, None)


def test_a_reply_naming_hit_ids_not_in_its_event_is_counted_and_left_out() -> None:
    events = _events(2)
    foreign = {events[0].key: 10**9}  # the first event's reply names ids it does not have
    result = ReplayResult()
    for rec in events:
        hit_ids = rec.event.hits.hit_id + foreign.get(rec.key, 0)
        reply = encode_tracks(*rec.key, hit_ids, _truth_tracks(rec.event))
        result.scored_replies[rec.key] = decode(reply)
    report = result.report(events, None)  # the report is made, not lost to the one reply
    assert report["mismatched_replies"] == 1
    assert report["n_tracks"] == len(_truth_tracks(events[1].event))


def test_events_of_different_hits_under_one_number_are_left_out_of_the_physics() -> None:
    """Two producers' runs recorded together: one (run, event) names two events. Replies
    name events by number: the reply to the second was scored against the first's hits (a
    "mismatched" daemon, or another event's tracks on this one's truth); now those events
    are counted as ambiguous and left out, and an event recorded twice is one event."""
    a, b, c = _events(3)
    b = Recorded(b.frames, replace(b.event, event=a.event.event))  # a's number, b's hits
    events = [a, b, c, c]
    result = ReplayResult()
    for rec in (b, c):  # b's reply came last: the one kept for the number
        reply = encode_tracks(*rec.key, rec.event.hits.hit_id, _truth_tracks(rec.event))
        result.scored_replies[rec.key] = decode(reply)
    report = result.report(events, None)
    assert (report["ambiguous_events"], report["mismatched_replies"]) == (1, 0)
    assert report["n_tracks"] == len(_truth_tracks(c.event))


def test_a_reply_with_a_hit_in_two_tracks_is_counted_and_left_out() -> None:
    """A daemon's tracks share no hit, and a label holds one track: the first event's reply
    repeats its first track (a duplicate), which one label a hit hid (1 track, none
    duplicate); it is a daemon's fault, counted and not scored."""
    events = _events(2)
    result = ReplayResult()
    for rec in events:
        tracks = _truth_tracks(rec.event)
        if rec is events[0]:
            first = tracks.hit_index[: tracks.offsets[1]]
            params = {k: np.append(v, v[:1]) for k, v in tracks.params.items()}
            tracks = Tracks(np.append(tracks.offsets, tracks.offsets[-1] + len(first)),
                            np.append(tracks.hit_index, first), params)  # fmt: skip
        result.scored_replies[rec.key] = decode(encode_tracks(*rec.key, rec.event.hits.hit_id,
                                                              tracks))  # fmt: skip
    report = result.report(events, None)
    assert report["mismatched_replies"] == 1
    assert report["n_tracks"] == len(_truth_tracks(events[1].event))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"rate": 0.0}, "--rate must be a positive number, got 0.0"),  # not "unlimited"
        ({"timeout_s": float("nan")}, "--timeout must be a positive number"),
        ({"loop": 0}, f"--loop must be 1 to {sys.maxsize}, got 0"),
        ({"loop": 10**20}, f"--loop must be 1 to {sys.maxsize}, got {10**20}"),  # not islice's
        ({"retries": -1}, "--retries must be 0 or more"),
        ({"retry_after_s": 0.0}, "--retry-after must be a positive number"),  # a resend storm
    ],
)
def test_replay_settings_out_of_range_are_refused(setting, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ReplayOptions(**setting)


def test_the_submission_holds_every_event_those_without_an_ok_reply_without_tracks(
    tmp_path: Path,
) -> None:
    """A scorer expects every hit of every event: an event answered with an error (or not at
    all) is written with no track, each hit one of its own, as ``evaluate`` writes it."""
    recorded = _events(2)
    run = tmp_path / "two.stk"
    with RecordingWriter(run) as w:
        for rec in recorded:
            w.write_event(rec.event)

    def refuse(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        out.send_multipart(encode_tracks(msg.run, msg.event, [], None, status="error",
                                         reason="too_dense", msg_id=msg.msg_id))  # fmt: skip

    sub = tmp_path / "sub.csv"
    with _stand_in(refuse) as (to, from_):
        argv = ["replay", str(run), "--to", to, "--from", from_, "--timeout", "5", "-q"]
        assert main([*argv, "--submission", str(sub)]) == 0
    rows = [tuple(map(int, r.split(","))) for r in sub.read_text().splitlines()[1:]]
    for rec in recorded:
        mine = [(hit, track) for event, hit, track in rows if event == rec.event.event]
        assert [hit for hit, _ in mine] == rec.event.hits.hit_id.tolist()
        assert len({track for _, track in mine}) == len(mine)  # each hit alone


def test_resends_wait_retry_after_from_the_last_send() -> None:
    events = _events(1)
    times: list[float] = []
    with _stand_in(lambda frames, out: times.append(time.perf_counter())) as (to, from_):
        # a daemon that takes every send and never answers
        opts = ReplayOptions(to=to, from_=from_, timeout_s=0.5, retries=2, retry_after_s=0.5)
        replay(events, opts)
    assert len(times) == 3  # sent, then resent twice
    assert np.min(np.diff(times)) >= 0.3  # each resend 0.5 s after the send before it


def test_an_event_answered_while_resends_go_out_is_not_resent() -> None:
    """Resends go out one by one (each may wait for room): a reply that comes meanwhile
    stops its event's resend, which would only have drawn a duplicate."""
    events = _events(2)
    with _daemon_sockets() as (sink, _out, to, from_), Producer(to, linger_ms=0) as producer:

        class ReplyDuringTheFirstResend(_Sender):
            def _send(self, frames: list[Any]) -> bool:
                sent = super()._send(frames)
                msg_id = peek_msg_id(frames)
                assert msg_id is not None
                self.match(msg_id ^ 1, (0, 0))  # the other one's reply
                return sent

        opts = ReplayOptions(to=to, from_=from_, retries=1, retry_after_s=1.0)
        sender = ReplyDuringTheFirstResend(producer, events, opts, ReplayResult())
        for k, rec in enumerate(events):
            sender.pending[k] = _Send(rec.key, with_msg_id(rec.frames, k), 0.0, float(k))
        assert sender._resend_due()
        assert sender.result.resent == 1 and sender.result.duplicates == 0
        assert [peek_msg_id(sink.recv_multipart())] == [1]  # the newest, alone
        assert not sink.poll(200)


def test_a_long_replay_keeps_eight_bytes_per_event_answered() -> None:
    """A ``--loop`` run for days answers millions of sends: the replay keeps each one's
    latency (8 bytes), not also a record of its message id (119 bytes an event in all before:
    1 GB a day at 100 events/s). A second reply to an answered send is still a duplicate,
    a reply to no send of this replay still unexpected."""
    events, n = _events(1), 10_000
    with _daemon_sockets() as (_sink, _out, to, from_), Producer(to, linger_ms=0) as producer:

        class AnsweredAtOnce(_Sender):
            def _send(self, frames: list[Any]) -> bool:  # sent, and its reply received
                _receive(_tracks_reply(frames), self, self.result)
                return True

        opts = ReplayOptions(to=to, from_=from_)
        sender = AnsweredAtOnce(producer, events, opts, ReplayResult())
        sender._send_all(1)  # warm: the event's scored reply
        sender.opts = replace(opts, loop=n)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sender._send_all(n)
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert sender.result.received == 1 + n and not sender.pending
    assert kept < 16 * n, f"{kept / n:.0f} bytes an event"
    first = with_msg_id(events[0].frames, sender.prefix)
    _receive(_tracks_reply(first), sender, sender.result)
    _receive(_tracks_reply(with_msg_id(events[0].frames, sender.prefix - 1)), sender, sender.result)
    assert (sender.result.duplicates, sender.result.unexpected) == (1, 1)
    assert sender.prefix % 2**39 == 0  # room for 2**39 sends (8.7 years at 2,000 a second)


def test_resends_go_newest_first() -> None:
    """An event lost behind a frame that dropped the connection (sent after it) goes out
    ahead of that frame on the resend."""
    sends = [_Send((0, k), [], t_first=t, t_last=t) for k, t in enumerate([1.0, 1.2, 3.0, 1.1])]
    due = due_newest_first(sends, now=2.5, retry_after_s=1.0, answered_seq=0, quiet_since=0.0)
    assert [p.t_last for p in due] == [1.2, 1.1, 1.0]  # the one sent at 3.0 is not due yet


def test_only_sends_that_look_lost_are_due() -> None:
    """Past ``retry_after_s``, a send is due once a later send has been answered, or no
    reply has come for ``retry_after_s``; not while replies keep coming to earlier sends
    (it is likely queued in a slow farm); one whose ``shutdown`` reply was set aside is due
    at once."""
    sends = [_Send((0, k), [], 0.0, t_last=1.0, seq=k + 1) for k in range(3)]
    sends[2].t_last = -math.inf  # set aside
    busy = {"now": 5.0, "retry_after_s": 1.0, "quiet_since": 4.5}
    assert due_newest_first(sends, answered_seq=0, **busy) == [sends[2]]
    assert due_newest_first(sends, answered_seq=2, **busy) == [sends[0], sends[2]]
    quiet = busy | {"quiet_since": 3.9}
    assert due_newest_first(sends, answered_seq=0, **quiet) == [sends[0], sends[1], sends[2]]


def test_replies_after_a_silence_draw_no_second_round_of_resends() -> None:
    """A daemon silent past ``retry_after_s`` (warming up) draws one round of resends, the
    oldest resent last; its first reply, to the oldest event, may answer the first send or
    the resend (one msg_id): it counts as of the first, so the events resent after it are
    not taken for lost (as the resend's number they were all due again)."""
    events = _events(3)
    sender = _Sender(None, events, ReplayOptions(retries=3), ReplayResult())  # type: ignore[arg-type]
    sends = {k: _Send(rec.key, [], 0.0, 0.0) for k, rec in enumerate(events)}
    for k, p in sends.items():
        sender.pending[k] = p
        sender._taken(p, first=True)
    for k in sorted(sends, reverse=True):  # the resends, newest first
        sender._taken(sends[k])
    assert sender.match(0, events[0].key) is not None  # the oldest event's reply
    now = time.perf_counter() + 10.0  # long past every send ...
    due = due_newest_first(
        list(sender.pending.values()), now, 5.0, sender.answered_seq, quiet_since=now
    )  # ... with replies coming
    assert due == []


def test_a_slow_daemon_that_answers_every_event_draws_no_resend() -> None:
    """A daemon slower than the replay sends (20 events a second, every one answered in
    turn): the later events wait in the queues twice ``retry_after_s``, yet replies keep
    coming to earlier sends, so none is resent (before: most were, again and again)."""
    events = _events(40)

    def slowly(frames: list[bytes], out: zmq.Socket) -> None:
        time.sleep(0.05)
        out.send_multipart(_tracks_reply(frames))

    with _stand_in(slowly) as (to, from_):
        opts = ReplayOptions(to=to, from_=from_, timeout_s=5.0, retries=3, retry_after_s=1.0)
        report = replay(events, opts).report(events, None)
    assert report["received"] == 40 and report["missing"] == 0
    assert report["resent"] == 0 and report["duplicates"] == 0


def test_replays_number_their_messages_apart() -> None:
    """Two replays through one collector must not answer each other's events."""
    events = _events(3)
    with _daemon_sockets() as (sink, _out, to, from_):
        ids = []
        for _ in range(2):
            replay(events, ReplayOptions(to=to, from_=from_, timeout_s=0.2))
            ids.append({peek_msg_id(sink.recv_multipart()) for _ in events})
    assert len(ids[0]) == len(ids[1]) == 3 and not ids[0] & ids[1]


def test_load_recording_stops_at_the_limit_and_attaches_only_matching_truth(
    tmp_path: Path,
) -> None:

    evs = [rec.event for rec in _events(3)]
    path = tmp_path / "mixed.stk"
    with RecordingWriter(path) as w:
        w.write(encode_hits(evs[0]))
        assert evs[1].truth is not None
        w.write(encode_truth(evs[1].run, evs[1].event, evs[1].truth))  # another event's
        w.write_event(evs[1])
        w.write_event(evs[2])
    loaded = load_recording(path)
    assert [r.event.event for r in loaded] == [0, 1, 2]
    assert loaded[0].event.truth is None and loaded[1].event.truth is not None
    assert [r.event.event for r in load_recording(path, limit=2)] == [0, 1]


def test_load_recording_pairs_interleaved_truth_as_readers_do(tmp_path: Path) -> None:
    """Two producers' pairs, tapped together: hits A, hits B, truth A, truth B."""

    a, b = (rec.event for rec in _events(2))
    assert a.truth is not None and b.truth is not None
    path = tmp_path / "interleaved.stk"
    with RecordingWriter(path) as w:
        w.write(encode_hits(a))
        w.write(encode_hits(b))
        w.write(encode_truth(a.run, a.event, a.truth))
        w.write(encode_truth(b.run, b.event, b.truth))
    loaded = load_recording(path)
    assert [(r.event.event, r.event.truth is not None) for r in loaded] == [(0, True), (1, True)]
    assert [e.truth is not None for e in iter_events(path)] == [True, True]
    # With a limit, the last event kept still gets its truth recorded after the next hits.
    assert [(r.event.event, r.event.truth is not None) for r in load_recording(path, 1)] == [
        (0, True)
    ]


def test_load_recording_with_a_limit_reads_past_it_only_for_truth_within_the_window(
    tmp_path: Path,
) -> None:
    """Past the limit a truth still pairs while its hits are within ``PAIR_WINDOW`` hits
    messages of the last read, as every reader pairs them; past the window, none does."""
    from streamtrk.io.recording import PAIR_WINDOW

    a, b = (rec.event for rec in _events(2))
    assert a.truth is not None
    for later, paired in ((PAIR_WINDOW - 1, True), (PAIR_WINDOW, False)):
        path = tmp_path / f"late-{later}.stk"
        with RecordingWriter(path) as w:
            w.write(encode_hits(a))
            for k in range(later):
                w.write(encode_hits(replace(b, event=100 + k)))
            w.write(encode_truth(a.run, a.event, a.truth))
        assert next(e.truth is not None for e in iter_events(path)) is paired
        assert [r.event.truth is not None for r in load_recording(path, 1)] == [paired]


def test_replies_to_resends_after_the_last_event_is_answered_are_duplicates() -> None:
    """A daemon slow on event 0 answers its resend, then its first send: the replay waits for
    that late reply and counts it a duplicate (it ended at the first reply of each event)."""
    events = _events(3)

    def answer_resend_first(sink: zmq.Socket, out: zmq.Socket) -> None:
        held = None
        for _ in range(len(events) + 1):  # event 0 comes twice
            frames = sink.recv_multipart()
            msg = decode(frames)
            if msg.event == events[0].event.event and held is None:
                held = frames  # answered after its resend
                continue
            out.send_multipart(_tracks_reply(frames))
        time.sleep(0.2)
        if out.poll(1000, zmq.POLLOUT):  # a replay that did not wait has closed its socket
            with contextlib.suppress(zmq.Again):
                assert held is not None
                out.send_multipart(_tracks_reply(held), flags=zmq.NOBLOCK)

    with _daemon_sockets() as (sink, out, to, from_):
        daemon = threading.Thread(target=answer_resend_first, args=(sink, out), daemon=True)
        daemon.start()
        opts = ReplayOptions(to=to, from_=from_, timeout_s=5.0, retries=1, retry_after_s=0.5)
        report = replay(events, opts).report(events, None)
        daemon.join(10)
    assert (report["received"], report["resent"], report["duplicates"]) == (3, 1, 1)
    assert report["unexpected"] == 0


def _tracks_reply(frames: list[bytes]) -> list[Any]:
    msg = decode(frames)
    return encode_tracks(msg.run, msg.event, [], None, msg_id=msg.msg_id)


@pytest.mark.parametrize(
    ("retries", "then"), [(0, "ok"), (1, "ok"), (1, "shutdown"), (2, "shutdown"), (1, "no reply")]
)
def test_events_answered_shutdown_are_resent_with_retries(retries: int, then: str) -> None:
    """A daemon that stops with an event unprocessed answers it ``shutdown`` (in a farm,
    another daemon could take it): with resends left the replay sends it again at once, and
    the event counts by the reply to that; without (or when the resend is answered
    ``shutdown`` too, or not at all), the ``shutdown`` reply is its answer."""
    events = _events(3)
    shut = events[1].event.event

    sends = 0

    def answer(frames: list[bytes], out: zmq.Socket) -> None:
        nonlocal sends
        msg = decode(frames)
        sends += msg.event == shut
        if msg.event == shut and (sends == 1 or then == "shutdown"):
            reply = encode_tracks(msg.run, msg.event, [], None, status="error",
                                  reason="shutdown", msg_id=msg.msg_id)  # fmt: skip
        elif msg.event == shut and then == "no reply":
            return
        else:
            reply = _tracks_reply(frames)
        out.send_multipart(reply)

    with _stand_in(answer) as (to, from_):
        # retry_after_s far past the test: only a resend at once can come in time, and a
        # resend unanswered for timeout_s is not awaited retry_after_s longer
        opts = ReplayOptions(to=to, from_=from_, timeout_s=2.0, retries=retries,
                             retry_after_s=60.0)  # fmt: skip
        t0 = time.perf_counter()
        result = replay(events, opts)
        took = time.perf_counter() - t0
    report = result.report(events, None)
    assert (report["sent"], report["received"], report["missing"]) == (3, 3, 0)
    assert report["duplicates"] == 0 and report["resent"] == retries and took < 10
    if retries and then == "ok":
        assert report["errors"] == {} and report["ok"] == 3
        assert report["shutdown_resent"] == 1
    else:  # the shutdown reply answers: the first one set aside, if any, counted there
        assert report["errors"] == {"shutdown": 1} and report["ok"] == 2
        assert report["shutdown_resent"] == (retries if then == "shutdown" else 0)
    if then == "shutdown":  # the last 'shutdown' answers at once: no reply is still due
        assert took < opts.timeout_s, took


def test_a_shutdown_reply_to_a_resend_not_yet_booked_still_makes_it_due_at_once(
    monkeypatch,
) -> None:
    """A daemon answers a resend ``shutdown`` before the sender has booked it (its time and
    count, after ZeroMQ took it): the event is still resent at once, not --retry-after later
    (the booking overwrote the reply's "due now": now and then a 60 s wait in the test above)."""
    events = _events(3)
    shut = events[1].event.event

    def answer(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        if msg.event != shut:
            out.send_multipart(_tracks_reply(frames))
            return
        out.send_multipart(encode_tracks(msg.run, msg.event, [], None, status="error",
                                         reason="shutdown", msg_id=msg.msg_id))  # fmt: skip

    taken = _Sender._taken

    def booked_late(self, p, *args, **kwargs):
        if not kwargs.get("first"):  # a resend: its reply handled first
            time.sleep(0.5)
        return taken(self, p, *args, **kwargs)

    monkeypatch.setattr(_Sender, "_taken", booked_late)
    with _stand_in(answer) as (to, from_):
        opts = ReplayOptions(to=to, from_=from_, timeout_s=2.0, retries=2, retry_after_s=20.0)
        t0 = time.perf_counter()
        result = replay(events, opts)
        took = time.perf_counter() - t0
    report = result.report(events, None)
    assert (report["resent"], report["shutdown_resent"]) == (2, 2)
    assert report["errors"] == {"shutdown": 1} and report["ok"] == 2
    assert took < 10, took


def test_a_shutdown_reply_waits_for_a_resend_already_out() -> None:
    """Event 1's first send is slow to be answered, so it is resent (its one retry) after
    ``retry_after_s``; then the first daemon stops and answers it ``shutdown``, and another
    answers the resend ``ok``. No resend is left, but one is out: the ``shutdown`` reply
    is set aside for it, not the event's answer (with the ok a duplicate)."""
    events = _events(3)
    shut = events[1].event.event
    held: list[list[bytes]] = []

    def answer(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        if msg.event != shut:
            out.send_multipart(_tracks_reply(frames))
        elif not held:  # the first send: not answered yet
            held.append(frames)
        else:  # the resend: the first daemon stops, then another answers
            first = decode(held[0])
            out.send_multipart(encode_tracks(first.run, first.event, [], None, status="error",
                                             reason="shutdown", msg_id=first.msg_id))  # fmt: skip
            out.send_multipart(_tracks_reply(frames))

    with _stand_in(answer) as (to, from_):
        opts = ReplayOptions(to=to, from_=from_, timeout_s=5.0, retries=1, retry_after_s=0.5)
        result = replay(events, opts)
    report = result.report(events, None)
    assert (report["sent"], report["received"], report["missing"], report["resent"]) == (3, 3, 0, 1)
    assert report["errors"] == {} and report["ok"] == 3, report
    assert (report["duplicates"], report["shutdown_resent"]) == (0, 1)


def test_a_refused_output_still_leaves_the_replay_s_own_errors_said(tmp_path: Path) -> None:
    """A report the disk refuses (past the file size limit, as ENOSPC) is one error; what
    went wrong in the replay itself (here: no reply at all) is still said."""
    import resource

    run = _recording(tmp_path, 2)
    report = tmp_path / "report.json"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    with _daemon_sockets() as (_, _, to, from_):  # a daemon that takes events, answers none
        done = subprocess.run(
            [sys.executable, "-m", "streamtrk", "replay", str(run), "--to", to, "--from", from_,
             "-q", "--json", "--timeout", "1", "--report", str(report)],
            capture_output=True, text=True, timeout=120, preexec_fn=small_files,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "error: no reply at all: 2 events were sent" in done.stderr
    assert f"error: cannot write {report}: File too large" in done.stderr
    assert json.loads(done.stdout)["missing"] == 2 and not report.exists()


def test_outputs_a_full_disk_refuses_are_named_and_the_report_still_printed(
    tmp_path: Path,
) -> None:
    """The replay's files are written after the replay: one that a full disk refuses (here
    past the process's file size limit, EFBIG, as ENOSPC) is named in the error, left
    absent rather than cut short (a scorer would take a cut submission for a whole one),
    and the report is still printed: the replay's results are not lost with the file."""
    import resource

    run = _recording(tmp_path, 3)
    report, submission = tmp_path / "report.json", tmp_path / "sub.csv"

    def small_files() -> None:  # the report fits, the submission (a row a hit) does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    with _stand_in(lambda frames, out: out.send_multipart(_tracks_reply(frames))) as (to, from_):
        done = subprocess.run(
            [sys.executable, "-m", "streamtrk", "replay", str(run), "--to", to, "--from", from_,
             "-q", "--json", "--report", str(report), "--submission", str(submission)],
            capture_output=True, text=True, timeout=120, preexec_fn=small_files,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"streamtrk replay: error: cannot write {submission}: File too large" in done.stderr
    assert json.loads(done.stdout)["received"] == 3
    assert json.loads(report.read_text())["received"] == 3
    assert not submission.exists() and not list(tmp_path.glob("sub.csv*"))


def test_replies_to_no_event_of_this_replay_are_counted_unexpected() -> None:
    """A daemon that answers every event once and also sends a reply with a message id of
    no send of this replay, and one to an event never sent: each such reply is counted once
    as unexpected, and neither answers an event."""
    events = _events(3)

    def answer(sink: zmq.Socket, out: zmq.Socket) -> None:
        out.send_multipart(encode_tracks(9, 9, [], None))  # an event never sent, no id
        for _ in events:
            frames = sink.recv_multipart()
            msg = decode(frames)
            assert msg.msg_id is not None
            foreign = msg.msg_id ^ (1 << 62)  # nobody's message id
            out.send_multipart(encode_tracks(msg.run, msg.event, [], None, msg_id=foreign))
            out.send_multipart(_tracks_reply(frames))

    report = _replay_to_stand_in(events, answer).report(events, None)
    assert (report["sent"], report["received"], report["missing"]) == (3, 3, 0)
    assert (report["unexpected"], report["duplicates"]) == (4, 0)


def test_replies_to_other_replays_do_not_hold_up_the_wait_for_late_duplicates() -> None:
    """Event 0's first send is lost, its resend answered: the replay then waits for that
    first send's reply until none comes for --retry-after. Another replay's replies (on a
    shared collector, every 0.1 s for 30 s) are not that reply: they do not keep the
    replay waiting (taking each from the replay it was meant for)."""
    events = _events(2)
    lost = events[0].event.event
    with _daemon_sockets() as (sink, out, to, from_):
        done = threading.Event()

        def serve() -> None:
            firsts: set[int | None] = set()
            t_end = time.perf_counter() + 30
            next_foreign = time.perf_counter()
            while not done.is_set() and time.perf_counter() < t_end:
                if sink.poll(20):
                    frames = sink.recv_multipart()
                    msg = decode(frames)
                    if msg.event == lost and msg.msg_id not in firsts:
                        firsts.add(msg.msg_id)  # its first send: lost
                    else:
                        out.send_multipart(_tracks_reply(frames))
                if time.perf_counter() >= next_foreign:  # another replay's reply
                    with contextlib.suppress(zmq.Again):
                        out.send_multipart(encode_tracks(7, 7, [], None, msg_id=1), zmq.NOBLOCK)
                    next_foreign += 0.1

        daemon = threading.Thread(target=serve, daemon=True)
        daemon.start()
        opts = ReplayOptions(to=to, from_=from_, timeout_s=5.0, retries=1, retry_after_s=0.5)
        report = replay(events, opts).report(events, None)
        done.set()
        daemon.join(10)
    assert (report["received"], report["missing"], report["resent"]) == (2, 0, 1)
    assert report["unexpected"] < 100, report  # 300 had it waited for the stream to end


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"timeout_s": math.inf}, "--timeout must be a positive number"),  # waits forever
        ({"retry_after_s": math.inf}, "--retry-after must be a positive number"),
        ({"rate": math.inf}, "--rate must be a positive number"),
    ],
)
def test_replay_settings_without_end_are_refused(setting, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ReplayOptions(**setting)


def test_the_report_spans_first_send_to_last_send_or_reply_and_rates_over_it() -> None:
    """duration_s runs to the later of the last send (a resend after the last reply) and
    the last reply; events_per_second counts replies over it; send_rate_hz the gaps between
    first sends over their span; send_lag_max_ms is about a schedule, none without --rate."""
    result = ReplayResult(
        sent=5, latencies=array("d", [0.1, 0.1]), t_first_send=10.0,
        t_last_first_send=12.0, t_last_send=14.0, t_last_reply=13.0,
    )  # fmt: skip
    report = result.report([], None, {})
    assert report["duration_s"] == pytest.approx(4.0)
    assert report["events_per_second"] == pytest.approx(0.5)
    assert report["send_rate_hz"] == pytest.approx(2.0)  # 4 gaps in 2 s
    assert report["send_lag_max_ms"] is None
    silent = ReplayResult(sent=2, t_first_send=10.0, t_last_first_send=11.0, t_last_send=11.0)
    assert silent.report([], None, {})["duration_s"] == pytest.approx(1.0)  # no reply: not < 0


def test_a_paced_replay_times_every_event_from_its_schedule_and_says_a_stall(
    monkeypatch,
) -> None:
    """With a rate every event, the first too, has a latency from its schedule; a send the
    daemon held up 0.3 s shows in send_lag_max_ms (the most any event went late), though
    the events after it caught up with the schedule and went on time."""
    events, rate = _events(30), 50.0
    sends = 0
    real_send = Producer.send_frames

    def stalling(self, frames, timeout_ms=None):
        nonlocal sends
        sends += 1
        if sends == 2:
            time.sleep(0.3)  # a daemon that took nothing meanwhile
        return real_send(self, frames, timeout_ms=timeout_ms)

    monkeypatch.setattr(Producer, "send_frames", stalling)
    with _daemon_sockets() as (sink, out, to, from_):
        daemon = threading.Thread(target=_answer_all, args=(sink, out), daemon=True)
        daemon.start()
        result = replay(events, ReplayOptions(to=to, from_=from_, rate=rate, timeout_s=2.0))
        daemon.join(10)
    report = result.report(events, rate)
    assert report["received"] == len(events)
    assert len(result.schedule_latencies) == len(result.latencies) == len(events)
    assert report["send_lag_max_ms"] >= 250


def test_the_timeout_runs_from_the_last_resend() -> None:
    """A daemon that lost the first send and answers the resend late, within --timeout of
    the resend but not of the first send: the reply is waited for, and counted."""
    events = _events(1)
    seen: list[int | None] = []

    def handle(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        seen.append(msg.msg_id)
        if len(seen) == 2:  # the resend (at 0.5 s), answered 1.6 s later
            time.sleep(1.6)
            reply = encode_tracks(msg.run, msg.event, [], None, msg_id=msg.msg_id)
            with contextlib.suppress(zmq.Again):  # a replay gone already: no one takes it
                out.send_multipart(reply, flags=zmq.NOBLOCK)

    with _stand_in(handle) as (to, from_):
        opts = ReplayOptions(to=to, from_=from_, timeout_s=2.0, retries=1, retry_after_s=0.5)
        result = replay(events, opts)
    report = result.report(events, None)
    assert (report["sent"], report["resent"], report["received"]) == (1, 1, 1), report


def test_a_reply_with_an_id_this_replay_has_not_sent_is_unexpected() -> None:
    """Only the ids sent (the prefix up to ``next_id``) and no longer pending are answered
    ones: a reply naming one past them is another's, not a duplicate."""
    events = _events(1)
    with _daemon_sockets() as (_sink, _out, to, from_), Producer(to, linger_ms=0) as producer:
        sender = _Sender(producer, events, ReplayOptions(to=to, from_=from_), ReplayResult())
        sender.next_id = sender.prefix + 3  # three sent, all answered
        for msg_id in (sender.prefix + 2, sender.next_id, sender.next_id + 100):
            _receive(_tracks_reply(with_msg_id(events[0].frames, msg_id)), sender, sender.result)
    assert (sender.result.duplicates, sender.result.unexpected) == (1, 2)


def test_an_answer_to_an_earlier_event_does_not_make_later_sends_look_queued() -> None:
    """``answered_seq`` is the latest first send answered: a reply to an earlier event
    coming after does not lower it (the sends between still look lost)."""
    events = _events(2)
    with _daemon_sockets() as (_sink, _out, to, from_), Producer(to, linger_ms=0) as producer:
        sender = _Sender(producer, events, ReplayOptions(to=to, from_=from_), ReplayResult())
        for k, (rec, seq) in enumerate(zip(events, (2, 5), strict=True)):
            sender.pending[sender.prefix + k] = _Send(rec.key, [], 0.0, 0.0, seq=seq, first_seq=seq)
        sender.next_id = sender.prefix + 2
        for k in (1, 0):  # the later event answered first
            _receive(_tracks_reply(with_msg_id(events[k].frames, sender.prefix + k)), sender,
                     sender.result)  # fmt: skip
    assert sender.answered_seq == 5 and sender.result.received == 2


def test_replies_without_ids_answer_the_oldest_send_of_their_event() -> None:
    """--match-by-event, an event sent twice (--loop 2, 0.5 s apart) and both sends
    answered later, in turn: each reply answers the oldest send still unanswered, so each
    latency runs from its own send (about 0.6 s each, not 0.1 s and 1.1 s)."""
    events = _events(1)
    got: list[tuple[int, int]] = []

    def handle(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        got.append((msg.run, msg.event))
        if len(got) == 2:  # both sends in: answered 0.1 s and 0.6 s after the second
            for wait in (0.1, 0.5):
                time.sleep(wait)
                out.send_multipart(encode_tracks(msg.run, msg.event, [], None))  # no msg_id

    with _stand_in(handle) as (to, from_):
        opts = ReplayOptions(to=to, from_=from_, rate=2.0, loop=2, timeout_s=2.0,
                             match_by_event=True)  # fmt: skip
        result = replay(events, opts)
    assert result.received == 2 and result.duplicates == 0
    # Each from its own send: both at least the 0.5 s + 0.1 s slept (a loaded machine only
    # adds), and about equal. Paired the other way round they are ~0.1 s and ~1.1 s: the
    # shorter under 0.35 s and 1 s apart (that gap only grows with the load).
    lats = sorted(result.latencies)
    assert lats[0] > 0.35 and lats[1] - lats[0] < 0.5, lats


def test_an_event_recorded_twice_as_two_records_is_one_event() -> None:
    """A recording that holds an event twice (a looped source tapped): two records of the
    same hits under one number are not ambiguous, and the event is scored."""
    (a,) = _events(1)
    again = Recorded(list(a.frames), replace(a.event))  # read back from its own record
    events = [a, again]
    result = ReplayResult()
    reply = encode_tracks(*a.key, a.event.hits.hit_id, _truth_tracks(a.event))
    result.scored_replies[a.key] = decode(reply)
    report = result.report(events, None)
    assert (report["ambiguous_events"], report["mismatched_replies"]) == (0, 0)
    assert report["events_scored"] == 1


def test_a_shutdown_reply_set_aside_is_a_reply_for_the_quiet_that_draws_resends() -> None:
    """A ``shutdown`` reply set aside still shows the daemon answers: the other sends do
    not look lost by a silence (``t_reply`` moves), only the event it answers is due."""
    events = _events(2)
    with _daemon_sockets() as (_sink, _out, to, from_), Producer(to, linger_ms=0) as producer:

        class Sending(_Sender):  # its thread still sending: the event is resent
            def is_alive(self) -> bool:
                return True

        opts = ReplayOptions(to=to, from_=from_, retries=1, retry_after_s=1.0)
        sender = Sending(producer, events, opts, ReplayResult())
        for k, rec in enumerate(events):
            sender.pending[sender.prefix + k] = _Send(rec.key, [], 0.0, 0.0, seq=k + 1)
        sender.next_id = sender.prefix + 2
        run, event = events[0].key
        shut: list[Any] = encode_tracks(run, event, [], None, status="error", reason="shutdown",
                                        msg_id=sender.prefix)  # fmt: skip
        _receive(shut, sender, sender.result)
    assert sender.result.shutdown_resent == 1 and sender.t_reply > -math.inf


def test_resends_are_looked_for_at_most_every_poll(monkeypatch) -> None:
    """A fast replay with --retries does not scan its pending sends before each send (a
    large backlog would make that quadratic): at most once per RESEND_POLL_S."""
    events = _events(50) * 4
    looks = 0

    def counted(*args, **kwargs):
        nonlocal looks
        looks += 1
        return due_newest_first(*args, **kwargs)

    def handle(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        out.send_multipart(encode_tracks(msg.run, msg.event, [], None, msg_id=msg.msg_id))

    monkeypatch.setattr(replay_module, "due_newest_first", counted)
    with _stand_in(handle) as (to, from_):
        t0 = time.perf_counter()
        result = replay(events, ReplayOptions(to=to, from_=from_, timeout_s=5, retries=1))
        took = time.perf_counter() - t0
    assert result.received == len(events)
    assert looks <= took / RESEND_POLL_S + 2, (looks, took)


def test_replay_compact_sends_the_events_compact(tmp_path: Path) -> None:
    """``--compact``: the events go out re-encoded compact (wire version 5)."""
    versions: list[int] = []

    def handle(frames: list[bytes], out: zmq.Socket) -> None:
        msg = decode(frames)
        versions.append(msg.version)
        out.send_multipart(encode_tracks(msg.run, msg.event, [], None, msg_id=msg.msg_id))

    run = _recording(tmp_path, 2)
    with _stand_in(handle) as (to, from_):
        code = main(["replay", str(run), "--to", to, "--from", from_, "--compact", "-q",
                     "--timeout", "5"])  # fmt: skip
    assert code == 0 and versions == [5, 5]


def test_the_report_gives_the_percentiles_mean_and_max_of_each_latency() -> None:
    """latency_p50/p90/p99/max/mean_ms are those of the reply latencies, in ms; the
    latency_from_schedule_* ones those of the latencies from the schedule (not the others)."""
    lat = array("d", [0.001] * 9 + [0.091])  # 9 replies in 1 ms, one in 91 ms
    due = array("d", [x + 1.0 for x in lat])  # each was due 1 s before it went
    result = ReplayResult(sent=10, latencies=lat, schedule_latencies=due)
    report = result.report([], 10.0, {})
    assert report["latency_p50_ms"] == pytest.approx(1.0)
    assert report["latency_p90_ms"] == pytest.approx(10.0)  # 1 + 0.1 * 90, interpolated
    assert report["latency_p99_ms"] == pytest.approx(82.9)
    assert report["latency_max_ms"] == pytest.approx(91.0)
    assert report["latency_mean_ms"] == pytest.approx(10.0)  # not the median's 1 ms
    assert report["latency_from_schedule_p50_ms"] == pytest.approx(1001.0)
    assert report["latency_from_schedule_p99_ms"] == pytest.approx(1082.9)
    assert report["latency_from_schedule_max_ms"] == pytest.approx(1091.0)


def test_duplicates_are_not_counted_off_the_missing_replies() -> None:
    """``missing`` is the events sent without a reply: a second reply to an answered event
    (a duplicate) does not stand in for a missing one."""
    result = ReplayResult(sent=3, latencies=array("d", [0.1, 0.1]), duplicates=1)
    report = result.report([], None, {})
    assert (report["received"], report["missing"], report["duplicates"]) == (2, 1, 1)


def test_the_table_gives_numbers_to_four_significant_digits() -> None:
    """``format_report``: floats to 4 significant digits, an empty count as ``none``,
    an unknown value as ``-``."""
    table = format_report({"duration_s": 1.23456, "errors": {}, "send_error": None})
    assert table.splitlines() == ["duration_s  1.235", "errors      none", "send_error  -"]


def test_the_report_spans_to_a_late_reply() -> None:
    """An event answered 0.6 s after it went: duration_s runs to that reply (the replay's
    last moment), and events_per_second is over that span."""
    events = _events(1)

    def handle(frames: list[bytes], out: zmq.Socket) -> None:
        time.sleep(0.6)
        out.send_multipart(_tracks_reply(frames))

    with _stand_in(handle) as (to, from_):
        report = replay(events, ReplayOptions(to=to, from_=from_, timeout_s=2.0)).report(
            events, None
        )
    assert report["received"] == 1
    assert 0.55 <= report["duration_s"] < 1.5
    assert report["events_per_second"] == pytest.approx(1 / report["duration_s"])


def test_load_recording_reads_no_further_than_the_limit_needs(tmp_path: Path) -> None:
    """With a limit, the load stops once the last event kept has its truth: damage further on
    (a record that does not decode) is not read, as ``--events`` promises a part of a file."""
    a, b = (rec.event for rec in _events(2))
    path = tmp_path / "damaged-later.stk"
    with RecordingWriter(path) as w:
        w.write_event(a)
        w.write([b"\xc1"])  # damage past the part asked for
        w.write_event(b)
    (loaded,) = load_recording(path, 1)
    assert loaded.key == (a.run, a.event)
    assert loaded.event.truth is not None


def test_a_compact_load_keeps_the_header_fields(tmp_path: Path) -> None:
    """``compact``: the hits are re-encoded, their header fields (send time, deadline,
    message id) kept as recorded."""
    (rec,) = _events(1)
    path = tmp_path / "deadline.stk"
    with RecordingWriter(path) as w:
        w.write(encode_hits(rec.event, t_send_ns=123, deadline_ms=250.0, msg_id=7))
    (loaded,) = load_recording(path, compact=True)
    msg = decode(loaded.frames)
    assert (msg.version, msg.t_send_ns, msg.deadline_ms, msg.msg_id) == (5, 123, 250.0, 7)


def test_handshakes_hung_up_are_said_only_when_none_succeeded(monkeypatch) -> None:
    """A proxy that could not reach the daemon at first, then did: its hang-ups are not news
    (``handshakes_hung_up`` is for CURVE handshakes hung up on, none succeeding)."""
    events = _events(1)
    for shook, said in [(True, {}), (False, {"from": 3})]:

        def refusal(self: Consumer, shook: bool = shook) -> None:
            self.hung_up, self.shook = 3, shook  # as its monitor would have read them

        monkeypatch.setattr(Consumer, "refusal", refusal)
        with _stand_in(lambda frames, out: out.send_multipart(_tracks_reply(frames))) as (
            to,
            from_,
        ):
            result = replay(events, ReplayOptions(to=to, from_=from_, timeout_s=2.0))
        assert result.received == 1 and result.hung_up == said


def test_a_replay_no_daemon_takes_gives_up_when_the_timeout_runs_out() -> None:
    """Bound, and no daemon connects: the first event waits --timeout for one (0.5 s here),
    then the replay ends with every event unsent, not a second later."""
    events = _events(2)
    anywhere = "tcp://127.0.0.1:*"
    t0 = time.perf_counter()
    result = replay(events, ReplayOptions(to=anywhere, from_=anywhere, bind=True, timeout_s=0.5))
    took = time.perf_counter() - t0
    assert (result.sent, result.unsent) == (0, 2)
    assert 0.45 <= took < 1.2, took
