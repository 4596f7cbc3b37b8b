"""The dead-letter file: a write that fails part way (the file size limit of a full disk,
for real) leaves no partial record: the records before and after it read back whole; a
full file says so once."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from streamtrk.io.recording import MAX_FRAME_BYTES, RecordingError, iter_records
from streamtrk.service.deadletter import DeadLetters
from streamtrk.wire import WireError

_FILL_THEN_FAIL = """
import resource, sys
from pathlib import Path
from streamtrk.service.deadletter import DeadLetters
from streamtrk.wire import WireError

path, err = Path(sys.argv[1]), WireError("not_msgpack", "test")
dead = DeadLetters(path, 1 << 30)
assert dead.write([b"\\xc1", b"a" * 1000], err)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 50_000, hard))
try:
    dead.write([b"\\xc1", b"b" * 200_000], err)  # fails past the limit, part written
except OSError as e:
    print("failed:", e.strerror)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
assert dead.write([b"\\xc1", b"c" * 1000], err)
dead.close()
"""


def test_a_failed_write_leaves_the_file_to_its_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "dead.stk"
    out = subprocess.run(
        [sys.executable, "-c", _FILL_THEN_FAIL, str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.startswith("failed: File too large"), out.stdout + out.stderr
    assert [bytes(frames[2][:1]) for _, frames in iter_records(path)] == [b"a", b"c"]


def test_frames_from_the_first_over_a_recordings_limit_are_left_out(tmp_path: Path) -> None:
    """A daemon whose limits pass the defaults can receive frames a recording cannot hold:
    the record keeps those before the first, its head the count received."""
    path = tmp_path / "dead.stk"
    dead = DeadLetters(path, 1 << 30)
    big = b"b" * (MAX_FRAME_BYTES + 1)
    assert dead.write([b"\xc1", big, b"c"], WireError("not_msgpack", "test"))
    dead.close()
    [(_, frames)] = list(iter_records(path))
    assert frames[1:] == [b"\xc1"]
    assert msgpack.unpackb(frames[0])["frames"] == 3


def test_a_full_file_is_logged_once_and_keeps_its_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dead.stk"
    dead = DeadLetters(path, 2_000)
    err = WireError("not_msgpack", "test")
    with caplog.at_level(logging.WARNING, "streamtrk.service.deadletter"):
        assert dead.write([b"\xc1", b"a" * 1000], err)
        assert not caplog.records
        assert not dead.write([b"\xc1", b"b" * 1000], err)
        assert not dead.write([b"\xc1", b"c" * 1000], err)
    dead.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"dead-letter file {path} is full ({dead.size} of its 2000 bytes used): messages that "
        'do not fit are only counted, in streamtrk_dead_letters_total{result="over_cap"} '
        "(logged once)"
    ]
    assert [bytes(frames[2][:1]) for _, frames in iter_records(path)] == [b"a"]


_FAIL_AND_COUNT_READS = """
import resource, sys
from pathlib import Path
from streamtrk.service.deadletter import DeadLetters
from streamtrk.wire import WireError

def bytes_read():
    with open("/proc/self/io") as f:
        return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])

path, err = Path(sys.argv[1]), WireError("not_msgpack", "test")
dead = DeadLetters(path, 1 << 30)
for _ in range(2000):
    assert dead.write([b"\\xc1", b"a" * 1000], err)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 50_000, hard))
before = bytes_read()
try:
    dead.write([b"\\xc1", b"b" * 200_000], err)
except OSError:
    pass
print(bytes_read() - before, path.stat().st_size)
"""


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_a_failed_write_does_not_read_the_file_back(tmp_path: Path) -> None:
    """On a full disk every unidentifiable message fails its write: the cut back must not
    read the whole file (up to dead_letter_max_bytes) again, on the thread taking input."""
    path = tmp_path / "dead.stk"
    out = subprocess.run(
        [sys.executable, "-c", _FAIL_AND_COUNT_READS, str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    read, size = map(int, out.stdout.split())
    assert size > 2_000_000 and read < 100_000, out.stdout


def test_a_file_another_daemon_writes_is_refused_until_it_closes(tmp_path: Path) -> None:
    """Two daemons given one path (a configuration shared by two on a node) would each cut
    the other's record being written as "cut short by a crash", then write over each
    other's records: the second is refused, naming the file, until the first closes it."""
    path = tmp_path / "dead.stk"
    first = DeadLetters(path, 1 << 20)
    assert first.write([b"from the first"], WireError("not_msgpack", "x"))
    with pytest.raises(OSError, match=r"in use by another process") as refused:
        DeadLetters(path, 1 << 20)
    assert refused.value.filename == str(path)
    assert first.write([b"still the first's"], WireError("not_msgpack", "y"))
    first.close()
    second = DeadLetters(path, 1 << 20)
    assert second.write([b"the second"], WireError("not_msgpack", "z"))
    second.close()
    kept = [bytes(frames[1]) for _, frames in iter_records(path)]
    assert kept == [b"from the first", b"still the first's", b"the second"]


def _damaged_file(path: Path) -> Path:
    """``path``: a dead-letter file of three records, a bit flipped in the first."""
    dead = DeadLetters(path, 1 << 20)
    for fill in (b"a", b"b", b"c"):
        assert dead.write([b"\xc1", fill * 100], WireError("not_msgpack", "test"))
    dead.close()
    damaged = bytearray(path.read_bytes())
    damaged[40] ^= 0x01  # in the first record
    path.write_bytes(damaged)
    return path


def test_a_file_damaged_before_whole_records_is_moved_aside_not_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped bit in an early record: cutting there would lose every whole record after
    it. The file is kept, renamed, and a new one begun."""
    path = _damaged_file(tmp_path / "dead.stk")
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING, "streamtrk.service.deadletter"):
        dead = DeadLetters(path, 1 << 20)
    assert dead.write([b"\xc1", b"d" * 100], WireError("not_msgpack", "test"))
    dead.close()
    [aside] = tmp_path.glob("dead.stk.damaged-*")
    assert aside.read_bytes() == damaged
    assert [bytes(frames[2][:1]) for _, frames in iter_records(path)] == [b"d"]
    [line] = caplog.records
    assert line.getMessage() == (
        f"dead-letter file {path} is damaged before its last records: moved to {aside}, "
        "a new file begun"
    )


def test_a_message_that_fills_the_file_to_its_cap_is_written(tmp_path: Path) -> None:
    """Only a message that would take the file past its cap is refused."""
    err = WireError("not_msgpack", "test")
    probe = DeadLetters(tmp_path / "probe.stk", 1 << 30)
    empty = probe.size
    assert probe.write([b"\xc1", b"a" * 1000], err)
    probe.close()
    record = probe.size - empty
    dead = DeadLetters(tmp_path / "dead.stk", empty + 2 * record)
    assert dead.write([b"\xc1", b"a" * 1000], err) and dead.write([b"\xc1", b"b" * 1000], err)
    assert dead.size == dead.max_bytes
    assert not dead.write([b"\xc1", b"c"], err)
    dead.close()


def test_a_message_of_more_frames_than_a_record_holds_keeps_its_first_1023(
    tmp_path: Path,
) -> None:
    """A daemon whose max_frames passes 1023 can receive messages a record cannot hold
    whole: the record keeps the first 1023, its head the count received."""
    path = tmp_path / "dead.stk"
    dead = DeadLetters(path, 1 << 30)
    frames = [b"%d" % i for i in range(2000)]
    assert dead.write(frames, WireError("too_many_frames", "test"))
    dead.close()
    [(_, kept)] = list(iter_records(path))
    assert [bytes(f) for f in kept[1:]] == frames[:1023]
    assert msgpack.unpackb(kept[0])["frames"] == 2000


def test_a_frame_of_a_recordings_limit_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "dead.stk"
    dead = DeadLetters(path, 1 << 30)
    big = b"b" * MAX_FRAME_BYTES
    assert dead.write([b"\xc1", big, b"c"], WireError("not_msgpack", "test"))
    dead.close()
    [(_, frames)] = list(iter_records(path))
    assert [len(f) for f in frames[1:]] == [1, MAX_FRAME_BYTES, 1]


def test_a_file_that_cannot_be_cut_back_fails_every_write_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write fails and so does cutting the file back: later writes raise OSError (the
    ingest thread counts them as failed), nothing else."""
    dead = DeadLetters(tmp_path / "dead.stk", 1 << 30)
    err = WireError("not_msgpack", "test")

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    assert dead.writer is not None
    monkeypatch.setattr(dead.writer, "write", full)
    truncate = os.truncate
    monkeypatch.setattr(os, "truncate", full)  # the module's os
    with pytest.raises(OSError, match="No space"):
        dead.write([b"\xc1"], err)
    monkeypatch.setattr(os, "truncate", truncate)
    with pytest.raises(OSError, match="unusable since a write failed"):
        dead.write([b"\xc1"], err)
    dead.close()


def test_a_record_says_when_its_message_came_in_wall_clock_time(tmp_path: Path) -> None:
    """``t_recv_ns`` is wall-clock time (ns since the epoch), to match a dead letter with
    the sender's and the daemon's logs, not a monotonic clock's meaningless count."""
    path = tmp_path / "dead.stk"
    dead = DeadLetters(path, 1 << 30)
    before = time.time_ns()
    assert dead.write([b"\xc1"], WireError("not_msgpack", "test"))
    after = time.time_ns()
    dead.close()
    [(_, frames)] = list(iter_records(path))
    assert before <= msgpack.unpackb(frames[0])["t_recv_ns"] <= after


def test_a_file_cut_short_by_a_crash_is_cut_back_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record cut short by a crash mid-write is cut back at start-up, with a warning that
    says how many bytes went; the records before it and those written after read back."""
    path = tmp_path / "dead.stk"
    dead = DeadLetters(path, 1 << 20)
    for fill in (b"a", b"b"):
        assert dead.write([b"\xc1", fill * 100], WireError("not_msgpack", "test"))
    dead.close()
    os.truncate(path, path.stat().st_size - 10)  # the last record's end never written
    with caplog.at_level(logging.WARNING, "streamtrk.service.deadletter"):
        dead = DeadLetters(path, 1 << 20)
    assert dead.write([b"\xc1", b"c" * 100], WireError("not_msgpack", "test"))
    dead.close()
    assert [bytes(frames[2][:1]) for _, frames in iter_records(path)] == [b"a", b"c"]
    [line] = caplog.records
    assert line.getMessage() == f"dead-letter file {path} cut back to its last whole record"
    assert line.levelno == logging.WARNING
    assert line.fields["bytes_cut"] > 0  # type: ignore[attr-defined]


def test_a_file_refused_at_start_up_keeps_no_lock(tmp_path: Path) -> None:
    """A path that holds no recording (a wrong path given) is refused, and its lock given
    up with it: once the file is fixed the same daemon takes it, not 'in use by another
    process' until it exits."""
    path = tmp_path / "dead.stk"
    path.write_bytes(b"this is not a recording, but somebody's notes")
    with pytest.raises(RecordingError):
        DeadLetters(path, 1 << 20)
    path.write_bytes(b"")  # the same file, emptied
    dead = DeadLetters(path, 1 << 20)
    assert dead.write([b"\xc1"], WireError("not_msgpack", "test"))
    dead.close()


def _held(where: Path) -> list[str]:
    """The files under ``where`` this process holds a descriptor of."""
    fds = Path("/proc/self/fd")
    held = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith(str(where)):
                held.append(target)
    return held


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux's /proc/self/fd")
def test_a_damaged_file_moved_aside_is_not_held_open(tmp_path: Path) -> None:
    """The damaged file moved aside is let go (its lock too): once closed, the daemon holds
    no descriptor of either file."""
    path = _damaged_file(tmp_path / "dead.stk")
    dead = DeadLetters(path, 1 << 20)
    assert sorted(Path(p).name for p in _held(tmp_path)) == ["dead.stk", "dead.stk"]  # lock, writer
    dead.close()
    assert _held(tmp_path) == []


def test_the_file_s_directory_is_made_where_absent(tmp_path: Path) -> None:
    """``dead_letter_path`` may name a directory not made yet (a fresh node's spool): it is
    made, not a start-up failure."""
    path = tmp_path / "spool" / "streamtrk" / "dead.stk"
    dead = DeadLetters(path, 1 << 20)
    assert dead.write([b"\xc1"], WireError("not_msgpack", "test"))
    dead.close()
    assert [bytes(frames[1]) for _, frames in iter_records(path)] == [b"\xc1"]
