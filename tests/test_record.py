"""``streamtrk record`` stores a hits stream byte for byte."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import cycle, islice
from pathlib import Path

import pytest
from live_daemon import first_line, wait_for

import streamtrk.record as record_module
from streamtrk.cli import main
from streamtrk.client import HUNG_UP_HINT, Producer
from streamtrk.io.recording import RecordingWriter, iter_events, iter_records
from streamtrk.record import record
from streamtrk.stop import StopFlag
from streamtrk.wire import Message, decode, encode_truth
from streamtrk.wire.codec import encode_tracks


@contextmanager
def _tap(*flags: str) -> Iterator[subprocess.Popen[str]]:
    """``streamtrk record`` with ``flags`` in a process of its own (stdout and stderr piped),
    killed at the block's end when a failed test leaves it running."""
    tap = subprocess.Popen(
        [sys.executable, "-m", "streamtrk", "record", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield tap
    finally:
        tap.kill()
        tap.wait()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"events": 0}, "--events must be at least 1, got 0"),
        ({"duration_s": float("nan")}, "--duration must be a positive number, got nan"),
        ({"duration_s": -1.0}, "--duration must be a positive number, got -1.0"),
        ({"duration_s": 0.0}, "--duration must be a positive number, got 0.0"),
        ({"duration_s": float("inf")}, "--duration must be a positive number, got inf"),
    ],
)
def test_limits_that_would_record_nothing_or_never_stop_are_refused(
    tmp_path: Path, limits: dict[str, float], message: str
) -> None:
    stop = StopFlag()
    stop.set()  # a limit let through returns at once instead of tapping (for ever)
    with pytest.raises(ValueError, match=re.escape(message)):
        record("tcp://127.0.0.1:1", tmp_path / "r.stk", stop=stop, **limits)  # type: ignore[arg-type]
    assert not (tmp_path / "r.stk").exists()


def test_record_taps_a_stream_byte_for_byte(sim_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "taps" / "tap.stk"  # its folder made at the first message
    records = [frames for _, frames in islice(iter_records(sim_run), 10)]  # hits, truth x 5
    # The producer binds (a port of its choice) and the tap connects: a bound PUSH socket
    # holds messages until its peer is there, so nothing is sent before the tap listens.
    with (
        Producer("tcp://127.0.0.1:*", bind=True, linger_ms=5000) as producer,
        _tap(
            "--from", producer.endpoint, "-o", str(out), "--events", "3", "--duration", "120"
        ) as tap,
    ):
        for frames in [[b"not a message"], *records]:
            assert producer.send_frames(frames, timeout_ms=60_000)
        stdout, _ = tap.communicate(timeout=120)
    assert tap.returncode == 0
    # Three events with their truth; what arrived after them is counted, not lost silently.
    assert "recorded 3 hits and 3 truth messages" in stdout
    assert "skipped 1 invalid (1 not_msgpack)" in stdout  # the decoder's reason: what to mend
    assert "more arrived past --events and were not recorded" in stdout
    assert [frames for _, frames in iter_records(out)] == records[:6]


def test_a_truth_that_does_not_fit_its_event_is_skipped_as_invalid(
    sim_run: Path, tmp_path: Path
) -> None:
    """A truth of event 0 with another event's hits (another number of them): recorded, it
    made the whole file unreadable to every reader (``truth has N hits, event has M``) while
    the tap said it recorded it. Skipped as invalid; the right one after it is recorded."""

    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 4)]  # hits, truth x 2
    first, second = decode(records[0]), decode(records[3])
    assert len(first.columns["hit_id"]) != len(second.columns["hit.particle_id"])
    wrong = [bytes(f) for f in encode_truth(first.run, first.event, second.to_truth())]
    with (
        Producer("tcp://127.0.0.1:*", bind=True, linger_ms=5000) as producer,
        _tap("--from", producer.endpoint, "-o", str(out), "--events", "2", "--duration", "120")
        as tap,
    ):  # fmt: skip
        for frames in [records[0], wrong, *records[1:]]:
            assert producer.send_frames(frames, timeout_ms=60_000)
        stdout, _ = tap.communicate(timeout=120)
    assert tap.returncode == 0
    assert "recorded 2 hits and 2 truth messages" in stdout
    assert "skipped 1 invalid (1 truth_hit_count)" in stdout
    assert [frames for _, frames in iter_records(out)] == records
    assert [e.truth is not None for e in iter_events(out)] == [True, True]


def test_a_bound_tap_says_the_port_it_took_and_records_what_is_pushed_there(
    sim_run: Path, tmp_path: Path
) -> None:
    """``--bind`` on ``:*``: the port the system chose is said on stderr before the tap
    takes anything, and a producer that connects there is recorded."""
    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 2)]  # hits, truth
    flags = ["--from", "tcp://127.0.0.1:*", "-o", str(out), "--events", "1", "--duration", "120"]
    with _tap("--bind", *flags) as tap:
        assert tap.stderr is not None
        said = first_line(tap.stderr)
        bound = re.fullmatch(r"streamtrk record: bound --from (tcp://127\.0\.0\.1:\d+): .*\n", said)
        assert bound, said
        with Producer(bound[1], linger_ms=5000) as producer:
            for frames in records:
                assert producer.send_frames(frames, timeout_ms=60_000)
            stdout, _ = tap.communicate(timeout=120)
    assert tap.returncode == 0 and "recorded 1 hits and 1 truth messages" in stdout
    assert [frames for _, frames in iter_records(out)] == records


def test_events_stop_the_tap_on_a_stream_that_does_not_pause(sim_run: Path, tmp_path: Path) -> None:
    """Past --events the tap takes arrivals for 0.1 s, not until the stream pauses: on a
    steady stream it stops, its recording whole."""
    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 10)]
    done = threading.Event()
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        tap = subprocess.Popen(
            [sys.executable, "-m", "streamtrk", "record", "--from", producer.endpoint, "-o",
             str(out), "--events", "2"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

        def stream() -> None:  # until the tap has stopped (a message each 10 ms at most)
            for frames in cycle(records):
                if done.wait(0.002) or tap.poll() is not None:
                    return
                producer.send_frames(frames, timeout_ms=100)

        pusher = threading.Thread(target=stream, daemon=True)
        pusher.start()
        try:
            stdout, _ = tap.communicate(timeout=60)
        finally:
            done.set()
            pusher.join(10)
            tap.kill()
    assert tap.returncode == 0
    assert "recorded 2 hits and" in stdout  # (a truth first: the tap joined after its hits)
    got = [frames for _, frames in iter_records(out)]
    assert all(f in records for f in got)
    kinds = [(m.kind, m.event) for m in map(decode, got)]
    hits = [k for k, (kind, _) in enumerate(kinds) if kind == "hits"]
    assert len(hits) == 2 and all(kinds[k + 1] == ("truth", kinds[k][1]) for k in hits)


def test_a_tap_that_records_nothing_leaves_the_recording_there_as_it_was(
    sim_run: Path, tmp_path: Path, capsys
) -> None:
    """A silent stream (or a stop before anything came) writes no file: a recording already
    at ``-o`` is kept, and the exit status says nothing was recorded."""
    out = tmp_path / "tap.stk"
    out.write_bytes(sim_run.read_bytes())
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as silent:
        code = main(["record", "--from", silent.endpoint, "-o", str(out), "--duration", "0.5"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"recorded nothing (skipped 0 invalid and 0 other messages): {out} not written" in err
    assert out.read_bytes() == sim_run.read_bytes()


def test_a_recording_that_cannot_be_written_is_refused_before_the_tap_opens(
    tmp_path: Path, capsys
) -> None:
    """Not at the first message, which would be lost (the tap would wait for it first)."""
    out = tmp_path / "a-folder"
    out.mkdir()
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as silent:
        code = main(["record", "--from", silent.endpoint, "-o", str(out), "--duration", "5"])
    assert code == 1
    assert f"streamtrk record: error: {out} is a folder, not a file" in capsys.readouterr().err


def test_a_recording_another_process_writes_is_refused_before_the_tap_and_at_its_first_record(
    sim_run: Path, tmp_path: Path, capsys
) -> None:
    """Two taps given one ``-o``: the later one's file took the place of the first's, which
    went on writing into a file no longer there (both said "recorded", one recording
    was left). A writer's lock is looked for when the tap opens, and again at its first
    record (the other may have started meanwhile); the other's file is kept."""
    out = tmp_path / "tap.stk"
    busy = "another process is writing it (a tap, a daemon's dead letters): choose another output"
    with RecordingWriter(out), Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as silent:
        code = main(["record", "--from", silent.endpoint, "-o", str(out), "--duration", "5"])
    assert code == 1 and f"streamtrk record: error: {out}: {busy}\n" == capsys.readouterr().err
    out.unlink()
    records = [frames for _, frames in islice(iter_records(sim_run), 2)]
    failed: list[OSError] = []

    def tap() -> None:
        try:
            record(producer.endpoint, out, events=1, duration_s=60)
        except OSError as e:
            failed.append(e)

    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        tapping = threading.Thread(target=tap)
        tapping.start()
        time.sleep(0.5)
        with RecordingWriter(out) as other:
            other.write(records[1])
            other.flush()
            for frames in records:
                assert producer.send_frames(frames, timeout_ms=10_000)
            tapping.join(60)
    assert not tapping.is_alive() and len(failed) == 1
    assert str(failed[0]) == f"cannot write {out}: {busy}; nothing recorded"
    assert [frames for _, frames in iter_records(out)] == records[1:]


@pytest.mark.parametrize("failing", [4, 5], ids=["hits", "truth"])
def test_a_tap_whose_disk_fills_keeps_the_whole_records_it_wrote(
    sim_run: Path, tmp_path: Path, failing: int
) -> None:
    """A write that fails mid-tap (here past the process's file size limit, EFBIG, as a full
    disk's ENOSPC) stops the tap: the recording is cut back to the records written whole, so
    that what was tapped before stays readable, and the error names the file and what it
    holds. A truth's failed write cuts its event's hits too (read back, they would be an
    event without truth), as ``inspect --repair`` does."""
    import resource

    out = tmp_path / "tap.stk"
    taken = list(islice(iter_records(sim_run), 10))
    offsets, records = [offset for offset, _ in taken], [frames for _, frames in taken]
    assert [decode(r).kind for r in records[4:6]] == ["hits", "truth"]
    limit = (offsets[failing] + offsets[failing + 1]) // 2  # room for half of that record

    def small_files() -> None:  # in the tap's process (Python ignores SIGXFSZ: EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        tap = subprocess.Popen(
            [sys.executable, "-m", "streamtrk", "record", "--from", producer.endpoint, "-o",
             str(out), "--duration", "120"],
            stderr=subprocess.PIPE, text=True, preexec_fn=small_files,
        )  # fmt: skip
        try:
            for frames in records:
                if tap.poll() is not None or not producer.send_frames(frames, timeout_ms=10_000):
                    break
            _, stderr = tap.communicate(timeout=60)
        finally:
            tap.kill()  # when it failed; else it has exited
            tap.wait()
    assert tap.returncode == 1, stderr
    assert f"streamtrk record: error: cannot write {out}" in stderr, stderr
    assert "holds the 2 hits and 2 truth messages recorded before" in stderr, stderr
    assert [frames for _, frames in iter_records(out)] == records[:4]


def _stopped_while_paused(out: Path, records: list[list[bytes]], *flags: str) -> tuple[int, str]:
    """A tap (``record`` with ``flags``) sent ``records[0]``, then paused while the rest is
    sent to it, then stopped (SIGTERM): its exit status and stdout."""
    import signal

    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        tap = subprocess.Popen(
            [sys.executable, "-m", "streamtrk", "record", "--from", producer.endpoint, "-o",
             str(out), *flags],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert producer.send_frames(records[0], timeout_ms=60_000)
            wait_for(out.exists, timeout=60)  # the first record written: the tap is taking
            tap.send_signal(signal.SIGSTOP)
            for frames in records[1:]:
                assert producer.send_frames(frames, timeout_ms=10_000)
            tap.send_signal(signal.SIGTERM)
            tap.send_signal(signal.SIGCONT)
            stdout, _ = tap.communicate(timeout=60)
        finally:
            tap.kill()  # when it failed; else it has exited
            tap.wait()
    return tap.returncode, stdout


def test_a_stopped_tap_records_what_was_already_sent_to_it(sim_run: Path, tmp_path: Path) -> None:
    """A PUSH peer sent these messages to the tap, not to another: SIGTERM records what its
    socket holds (as the daemon's drain answers its queue) rather than dropping it on close.
    Here the tap is paused while they are sent, then stopped."""
    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 10)]
    code, stdout = _stopped_while_paused(out, records, "--duration", "120")
    assert code == 0, stdout
    assert "recorded 5 hits and 5 truth messages" in stdout
    assert [frames for _, frames in iter_records(out)] == records


def test_a_stopped_tap_that_reaches_events_keeps_the_last_truth_and_counts_the_rest(
    sim_run: Path, tmp_path: Path
) -> None:
    """Stopped with the N-th event among what its socket holds, the tap keeps that event's
    truth (it comes next) and counts what follows past --events, as a tap not stopped does,
    rather than dropping both unsaid."""
    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 6)]  # 3 hits, 3 truth
    code, stdout = _stopped_while_paused(out, records, "--events", "2")
    assert code == 0, stdout
    assert "recorded 2 hits and 2 truth messages" in stdout, stdout
    assert "2 more arrived past --events and were not recorded" in stdout, stdout
    assert [frames for _, frames in iter_records(out)] == records[:4]


def _writes(out: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run in a process of its own (its file size limit its own), with ``os``,
    ``resource``, ``r`` (``streamtrk.record``), a ``writer`` of ``out`` and a ``hits``
    message at hand."""
    given = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "import streamtrk.record as r\n"
        "writer = r._CreatedOnFirstWrite(Path(sys.argv[1]))\n"
        "hits = r.Message('hits', 0, 1, 0, {}, {})\n"
    )
    return subprocess.run([sys.executable, "-c", given + script, str(out)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_a_recording_that_cannot_be_cut_back_says_so_and_how_to_mend_it(tmp_path: Path) -> None:
    """Cutting the file back after a failed write can fail too (here os.ftruncate refused):
    the error then says the file ends cut and names the remedy, not what it would hold."""
    out = tmp_path / "tap.stk"
    done = _writes(
        out,
        "def refuse(*args): raise PermissionError(1, 'Operation not permitted')\n"
        "os.ftruncate = refuse\n"
        "r._write(writer, [b'a' * 1000], hits)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))\n"
        "r._write(writer, [b'b' * 1000], hits)\n",
    )
    assert done.returncode == 1
    assert (
        f"OSError: cannot write {out}: File too large; it ends cut "
        f"(`streamtrk inspect --repair {out}` cuts it back)"
    ) in done.stderr
    assert main(["inspect", "--repair", str(out)]) == 0
    assert [frames for _, frames in iter_records(out)] == [[b"a" * 1000]]


def test_a_recording_stays_locked_until_cut_back(tmp_path: Path) -> None:
    """Between a failed write and the cut back, the file stays locked: another tap, refused
    while it is, cannot take its place in between (its new file would be cut instead)."""
    out = tmp_path / "tap.stk"
    done = _writes(
        out,
        "from streamtrk.io.recording import RecordingWriter, being_written\n"
        "close = RecordingWriter.close\n"
        "def closed(self):\n"
        "    try:\n"
        "        close(self)\n"
        "    finally:\n"
        "        print('locked after the close:', being_written(sys.argv[1]))\n"
        "RecordingWriter.close = closed\n"
        "r._write(writer, [b'a' * 1000], hits)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))\n"
        "r._write(writer, [b'b' * 1000], hits)\n",
    )
    assert done.returncode == 1, done.stderr
    assert "locked after the close: True" in done.stdout, done.stdout
    assert [frames for _, frames in iter_records(out)] == [[b"a" * 1000]]


def test_a_tap_called_in_process_waits_its_duration_and_stops_at_one_event(
    sim_run: Path, tmp_path: Path
) -> None:
    """``record`` called as a function (connecting, by default, to a bound stream): a
    message that comes 0.5 s after the tap opened, well within ``duration_s``, is still
    recorded, and ``events=1`` stops the tap after one hits message, with its truth. The
    counts it returns say what was recorded and what came past the limit, and the
    recording's folders are made."""
    out = tmp_path / "a" / "b" / "tap.stk"  # folders made at the first record
    records = [frames for _, frames in islice(iter_records(sim_run), 3)]  # hits, truth, hits
    assert _tapped(records, out, events=1) == Counter(hits=1, truth=1, past_limit=1)
    assert [frames for _, frames in iter_records(out)] == records[:2]


def _tapped(sent: list[list[bytes]], out: Path, events: int) -> Counter[str]:
    """``record``'s counts, called in a thread (connecting to a bound stream, 60 s at
    most) that is sent ``sent`` half a second after it opened."""
    got: list[Counter[str]] = []
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        tap = threading.Thread(
            target=lambda: got.append(record(producer.endpoint, out, events=events, duration_s=60))
        )
        tap.start()
        time.sleep(0.5)
        for frames in sent:
            assert producer.send_frames(frames, timeout_ms=10_000)
        tap.join(60)
    assert not tap.is_alive()
    [counts] = got
    return counts


def test_past_the_limit_the_truth_of_any_event_recorded_within_the_window_is_kept(
    sim_run: Path, tmp_path: Path
) -> None:
    """Two producers tapped together send hits A, hits B, truth A, truth B: with
    ``events=2`` both truths come past the limit, and both are recorded (a reader pairs
    each with its hits); hits that come after, and a truth already recorded, are not."""
    out = tmp_path / "tap.stk"
    hits_a, truth_a, hits_b, truth_b, hits_c = (
        frames for _, frames in islice(iter_records(sim_run), 5)
    )
    sent = [hits_a, hits_b, truth_a, truth_b, truth_b, hits_c]
    assert _tapped(sent, out, events=2) == Counter(hits=2, truth=2, past_limit=2)
    assert [frames for _, frames in iter_records(out)] == sent[:4]
    assert [e.truth is not None for e in iter_events(out)] == [True, True]


@pytest.mark.parametrize("there", [False, True], ids=["new", "a recording there"])
def test_a_first_write_that_fails_leaves_no_file_and_says_nothing_was_recorded(
    tmp_path: Path, there: bool
) -> None:
    """The disk refuses the first record (past the file size limit, EFBIG, as ENOSPC): no
    file with a header and no records is left behind, a recording already there is left as
    it was (it was cut, then removed), and the error says nothing was recorded."""
    out = tmp_path / "tap.stk"
    if there:
        out.write_bytes(b"an earlier recording")
    done = _writes(
        out,
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "r._write(writer, [b'a' * 1000], hits)\n",
    )
    assert done.returncode == 1
    assert f"OSError: cannot write {out}: File too large; nothing recorded" in done.stderr
    assert out.read_bytes() == b"an earlier recording" if there else not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["tap.stk"] if there else [])


def test_the_truth_of_a_first_hits_that_fails_leaves_no_event(tmp_path: Path) -> None:
    """The first record, hits, written (the file took its place); its truth refused by the
    disk: cut with its hits, the recording holds no event, which the error says."""
    out = tmp_path / "tap.stk"
    done = _writes(
        out,
        "r._write(writer, [b'a' * 1000], hits)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))\n"
        "r._write(writer, [b'b' * 1000], r.Message('truth', 0, 1, 0, {}, {}))\n",
    )
    assert done.returncode == 1
    assert (
        f"OSError: cannot write {out}: File too large; it holds no event (the first one's hits "
        "were cut with its truth)"
    ) in done.stderr
    assert list(iter_records(out)) == []


def test_a_tap_records_no_tracks_messages(sim_run: Path, tmp_path: Path) -> None:
    """A stream that carries a daemon's reply among the hits: the reply is counted as
    ``other`` and not recorded (a recording holds hits and truth)."""
    out = tmp_path / "tap.stk"
    hits_a, truth_a, hits_b, truth_b = (frames for _, frames in islice(iter_records(sim_run), 4))
    a = decode(hits_a)
    tracks = [bytes(f) for f in encode_tracks(a.run, a.event, [], None)]
    sent = [hits_a, tracks, truth_a, hits_b, truth_b]
    assert _tapped(sent, out, events=2) == Counter(hits=2, truth=2, other=1)
    assert [frames for _, frames in iter_records(out)] == [hits_a, truth_a, hits_b, truth_b]


def test_a_truth_of_no_event_recorded_before_it_is_counted_unpaired_not_recorded(
    sim_run: Path, tmp_path: Path
) -> None:
    """Truth A before its hits, and truth B twice: readers pair a truth only with hits
    before it, once, and would pass these over; the tap said "recorded 3 truth"."""
    out = tmp_path / "tap.stk"
    hits_a, truth_a, hits_b, truth_b = (frames for _, frames in islice(iter_records(sim_run), 4))
    sent = [truth_a, hits_a, hits_b, truth_b, truth_b]
    assert _tapped(sent, out, events=3) == Counter(hits=2, truth=1, unpaired_truth=2)
    assert [frames for _, frames in iter_records(out)] == [hits_a, hits_b, truth_b]


def test_past_the_limit_a_truth_of_an_event_out_of_the_window_is_not_recorded(
    sim_run: Path, tmp_path: Path
) -> None:
    """Hits A, then 16 hits of B: A has left the pairing window (a reader hands it on
    without truth), so its truth coming past the limit is not recorded."""
    out = tmp_path / "tap.stk"
    hits_a, truth_a, hits_b = (frames for _, frames in islice(iter_records(sim_run), 3))
    sent = [hits_a, *[hits_b] * 16, truth_a]
    assert _tapped(sent, out, events=17) == Counter(hits=17, past_limit=1)
    assert [frames for _, frames in iter_records(out)] == sent[:17]


def test_past_the_limit_a_truth_that_does_not_fit_its_event_is_invalid(
    sim_run: Path, tmp_path: Path
) -> None:
    """As before the limit: a truth of another number of hits than its event is counted
    invalid (not past_limit) and not recorded."""
    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 4)]
    first, second = decode(records[0]), decode(records[3])
    wrong = [bytes(f) for f in encode_truth(first.run, first.event, second.to_truth())]
    tapped = _tapped([records[0], wrong], out, events=1)
    assert tapped == Counter({"hits": 1, "invalid": 1, "invalid:truth_hit_count": 1})
    assert [frames for _, frames in iter_records(out)] == records[:1]


class _HungUpTap:
    """Stands in for record's Consumer: nothing comes, and its CURVE handshakes were hung up
    on (``hung_up``), one of them succeeding or not (``shook``)."""

    endpoint = "tcp://127.0.0.1:1"
    hung_up, shook = 0, False

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def refusal(self):
        return None

    def recv_frames(self, timeout_ms):
        time.sleep(timeout_ms / 1000)


def test_handshakes_hung_up_are_said_only_when_none_succeeded(monkeypatch, tmp_path) -> None:
    """A proxy that could not reach the server at first, then did: its hang-ups are not
    news (``handshakes_hung_up`` is for CURVE handshakes hung up on, none succeeding)."""
    monkeypatch.setattr(record_module, "Consumer", _HungUpTap)
    for shook, said in [(True, None), (False, 3)]:
        monkeypatch.setattr(_HungUpTap, "hung_up", 3)
        monkeypatch.setattr(_HungUpTap, "shook", shook)
        counts = record("tcp://127.0.0.1:1", tmp_path / "t.stk", duration_s=0.1)
        assert counts.get("handshakes_hung_up") == said


def test_a_tap_that_recorded_nothing_says_its_handshakes_hung_up_on(
    monkeypatch, tmp_path, capsys
) -> None:
    """Nothing recorded and every CURVE handshake hung up on: after "recorded nothing" the
    tap says so with the socket's address and what it may mean (a wrong server key), exit 1."""
    monkeypatch.setattr(record_module, "Consumer", _HungUpTap)
    monkeypatch.setattr(_HungUpTap, "hung_up", 3)
    out = tmp_path / "t.stk"
    args = ["record", "--from", _HungUpTap.endpoint, "-o", str(out), "--duration", "0.1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "streamtrk record: recorded nothing (skipped 0 invalid and 0 other messages)" in err
    assert err.rstrip().endswith(
        f"streamtrk record: --from {_HungUpTap.endpoint}: its 3 CURVE handshakes were hung up "
        f"on, none succeeding: {HUNG_UP_HINT}"
    )
    assert not out.exists()


def test_a_tap_of_truth_alone_records_nothing_and_says_why(
    sim_run: Path, tmp_path: Path, capsys
) -> None:
    """Only a truth came: readers pair a truth with the hits before it, and would pass this
    one over, so no file is written and the tap says what it skipped."""
    out = tmp_path / "tap.stk"
    truth = next(frames for _, frames in iter_records(sim_run) if decode(frames).kind == "truth")
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=0) as producer:
        sender = threading.Thread(target=producer.send_frames, args=(truth,),
                                  kwargs={"timeout_ms": 10_000})  # fmt: skip
        sender.start()
        code = main(["record", "--from", producer.endpoint, "-o", str(out), "--duration", "1"])
        sender.join(10)
    assert code == 1 and not out.exists()
    assert (
        "recorded nothing (skipped 0 invalid and 0 other messages and 1 truth messages of no "
        f"event recorded before them): {out} not written"
    ) in capsys.readouterr().err


def test_a_failed_truth_of_another_event_keeps_the_hits_before_it(tmp_path: Path) -> None:
    """Two producers tapped together: hits of event 1, then a truth of event 2 that the disk
    refuses. Only the truth is cut: the hits before it are not its event's."""
    out = tmp_path / "tap.stk"
    done = _writes(
        out,
        "r._write(writer, [b'a' * 1000], hits)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))\n"
        "r._write(writer, [b'b' * 1000], r.Message('truth', 0, 2, 0, {}, {}))\n",
    )
    assert done.returncode == 1
    assert "it holds the 1 hits and 0 truth messages recorded before" in done.stderr, done.stderr
    assert [frames for _, frames in iter_records(out)] == [[b"a" * 1000]]


def test_a_failed_second_truth_of_an_event_keeps_its_hits_and_first_truth(tmp_path: Path) -> None:
    """Hits, its truth, then the same truth again (a producer's resend) that the disk
    refuses: the event recorded whole before stays; only the failed record is cut."""
    out = tmp_path / "tap.stk"
    done = _writes(
        out,
        "truth = r.Message('truth', 0, 1, 0, {}, {})\n"
        "r._write(writer, [b'a' * 1000], hits)\n"
        "r._write(writer, [b'b' * 1000], truth)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500))\n"
        "r._write(writer, [b'c' * 1000], truth)\n",
    )
    assert done.returncode == 1
    assert "it holds the 1 hits and 1 truth messages recorded before" in done.stderr, done.stderr
    assert [frames for _, frames in iter_records(out)] == [[b"a" * 1000], [b"b" * 1000]]


def test_a_write_that_fails_on_a_fifo_leaves_the_fifo(tmp_path: Path) -> None:
    """A tap into what is no regular file (a FIFO, a device such as /dev/full) cannot be
    cut back: a failed write after the first records went through (where a file would be
    cut back) leaves it as it is (as root, removing it removed a device node), and the
    error says what was recorded, not "it ends cut ... --repair"."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def read_a_little() -> None:
        with fifo.open("rb") as f:
            f.read(100)  # then gone: the next writes find no reader (EPIPE)

    reader = threading.Thread(target=read_a_little, daemon=True)
    reader.start()
    writer, hits = record_module._CreatedOnFirstWrite(fifo), Message("hits", 0, 1, 0, {}, {})
    with pytest.raises(OSError, match=f"cannot write {fifo}: Broken pipe; it holds the") as e:
        for _ in range(1000):
            record_module._write(writer, [b"a" * 1000], hits)
    reader.join(10)
    assert writer.held["hits"] >= 1, e.value  # a later write failed
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert not writer.cut_failed
