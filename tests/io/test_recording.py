"""Recording files: round trip, append, streaming, truncation and corruption."""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np
import pytest

from streamtrk.event import Event, Hits, HitTruth, Particles, Truth
from streamtrk.io.recording import (
    MAGIC,
    MAX_FRAME_BYTES,
    PAIR_WINDOW,
    RecordingError,
    RecordingReader,
    RecordingWriter,
    being_written,
    exclusive_lock,
    iter_events,
    iter_records,
    new_recording,
    record_bytes,
    repair,
    summarize,
)
from streamtrk.wire import WireError, decode, encode_hits, encode_tracks, encode_truth


def make_event(rng: np.random.Generator, n: int, event: int) -> Event:
    def cols(dtypes: dict[str, str], rows: int) -> dict[str, np.ndarray]:
        return {k: rng.integers(0, 100, rows).astype(dt) for k, dt in dtypes.items()}

    hits = cols(Hits.DTYPES, n)
    hits["hit_id"] = np.arange(n, dtype=np.int64)
    particles = cols(Particles.DTYPES, 2)
    particles["particle_id"] = np.array([11, 12])
    hit_truth = cols(HitTruth.DTYPES, n)
    hit_truth["particle_id"] = rng.choice([0, 11, 12], n)  # noise or a particle of the table
    return Event(3, event, Hits(**hits), Truth(HitTruth(**hit_truth), Particles(**particles)))


def write(path: Path, messages: list[list[Any]], mode: Literal["w", "a"] = "w") -> list[int]:
    with RecordingWriter(path, mode) as w:
        return [w.write(m) for m in messages]


def collect(path: Path) -> tuple[list[tuple[int, list[bytes]]], RecordingError | None]:
    """Records yielded before the first error, and the error."""
    out = []
    try:
        for rec in iter_records(path):
            out.append(rec)
    except RecordingError as e:
        return out, e
    return out, None


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(5)


@pytest.fixture
def small(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, list[int], list[list[bytes]]]:
    """A 3-record file: its path, record offsets, and frames."""
    ev = make_event(rng, 2, 0)
    assert ev.truth is not None
    messages = [
        encode_hits(ev, t_send_ns=1),
        encode_truth(3, 0, ev.truth, t_send_ns=1),
        encode_hits(make_event(rng, 1, 1), t_send_ns=1),
    ]
    path = tmp_path / "small.stk"
    return path, write(path, messages), [[bytes(f) for f in m] for m in messages]


def test_round_trip_and_replay_byte_identity(tmp_path: Path, rng: np.random.Generator) -> None:
    events = [make_event(rng, n, i) for i, n in enumerate([0, 5, 50, 7])]
    messages = []
    for ev in events:
        assert ev.truth is not None
        messages += [encode_hits(ev, deadline_ms=2.0), encode_truth(ev.run, ev.event, ev.truth)]
    path = tmp_path / "r.stk"
    offsets = write(path, messages)
    assert path.read_bytes()[:12] == MAGIC + b"\x01\x00\x00\x00"
    records = list(iter_records(path))
    assert [off for off, _ in records] == offsets
    for (_, got), sent in zip(records, messages, strict=True):
        assert got == [bytes(f) for f in sent]
    back = list(iter_events(path))
    assert len(back) == len(events)
    for a, b in zip(back, events, strict=True):
        assert (a.run, a.event) == (b.run, b.event)
        assert a.hits.equals(b.hits)
        assert b.truth is not None
        assert a.truth is not None and a.truth.equals(b.truth)


def test_events_pair_truth_with_the_hits_of_its_event(tmp_path: Path, rng) -> None:
    """A truth message goes to the oldest waiting hits of its (run, event) among the last
    ``PAIR_WINDOW`` hits: a tap of several producers interleaves their pairs (hits A, hits
    B, truth A, truth B), and two producers' events may share a number. Events come in the
    order of their hits."""
    e0, e1, e2, e3 = (make_event(rng, 4, i) for i in range(4))
    twin = make_event(rng, 5, 1)  # another producer's event 1
    assert e0.truth and e1.truth and e3.truth and twin.truth
    path = tmp_path / "p.stk"
    write(
        path,
        [
            encode_hits(e0),
            encode_hits(e1),
            encode_hits(twin),
            encode_tracks(3, 1, e1.hits.hit_id, None),  # skipped
            encode_truth(3, 1, e1.truth),  # the first event 1 waiting: e1
            encode_truth(3, 7, e1.truth),  # of no event: skipped
            encode_hits(e2),  # no truth
            encode_truth(3, 0, e0.truth),
            encode_truth(3, 1, twin.truth),
            *[encode_hits(make_event(rng, 1, 10 + i)) for i in range(PAIR_WINDOW)],
            encode_truth(3, 3, e3.truth),  # of an event never sent: skipped
        ],
    )
    back = list(iter_events(path))
    assert [(e.event, len(e.hits)) for e in back[:4]] == [(0, 4), (1, 4), (1, 5), (2, 4)]
    assert [e.truth is not None for e in back[:4]] == [True, True, True, False]
    assert [len(e.truth.hits.particle_id) for e in back[1:3] if e.truth] == [4, 5]
    assert not any(e.truth for e in back[4:]) and len(back) == 4 + PAIR_WINDOW
    assert summarize(path)["events_with_truth"] == 3


def test_append(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "a.stk"
    msgs = [encode_hits(make_event(rng, 3, i)) for i in range(3)]
    first = write(path, msgs[:2], mode="a")  # creates the file
    appended = write(path, msgs[2:], mode="a")
    records = list(iter_records(path))
    assert [o for o, _ in records] == [*first, *appended]
    assert [r for _, r in records] == [[bytes(f) for f in m] for m in msgs]
    write(path, msgs[:1])  # "w" truncates
    assert len(list(iter_records(path))) == 1


def test_append_refuses_truncated_or_foreign_file(small: Any) -> None:
    path, offsets, _ = small
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    cut = f"cannot append: .*record at offset {offsets[2]}"
    with pytest.raises(RecordingError, match=cut) as e:
        RecordingWriter(path, "a")
    assert (e.value.path, e.value.cut_at) == (path, offsets[2])  # where --repair would cut
    assert path.read_bytes() == data[:-1]
    path.write_bytes(b"not a recording")
    with pytest.raises(RecordingError, match="bad magic"):
        RecordingWriter(path, "a")


def test_a_record_written_while_the_file_is_read_is_read_whole(small: Any) -> None:
    """A reader of a recording a tap is writing reads the records appended meanwhile (it
    read them against the size it found when it started: damaged, 'truncated?')."""
    path, _, frames = small
    with RecordingWriter(path, "a") as writer, RecordingReader(path) as reader:
        records = iter(reader)
        assert [next(records)[1] for _ in range(3)] == frames
        writer.write(frames[0])
        writer.flush()
        assert next(records)[1] == frames[0]
        assert next(records, None) is None


def test_a_file_being_written_is_said_so_and_locked_to_other_writers(small: Any) -> None:
    path, _, _ = small
    assert not being_written(path)
    with RecordingWriter(path, "a"):
        assert being_written(path)
        with pytest.raises(BlockingIOError, match="in use by another process"):
            RecordingWriter(path, "a")
        before = path.read_bytes()
        with pytest.raises(BlockingIOError, match="in use by another process"):
            RecordingWriter(path)  # a new recording: refused before it empties the file
        assert path.read_bytes() == before
        with pytest.raises(BlockingIOError, match="in use by another process"):
            exclusive_lock(path)
    assert not being_written(path)
    os.close(exclusive_lock(path))


def test_repair_cuts_the_hits_whose_truth_it_cuts(tmp_path: Path, rng) -> None:
    """Hits left last by the cut of their truth would read back as an event without truth:
    cut with it, as the damaged record's header says; hits whose truth is not the damaged
    record (another's, or none) stay: whole events."""
    path = tmp_path / "r.stk"
    ev0, ev1 = make_event(rng, 2, 0), make_event(rng, 3, 1)
    assert ev0.truth is not None and ev1.truth is not None
    hits0, hits1 = encode_hits(ev0, t_send_ns=1), encode_hits(ev1, t_send_ns=1)
    truth0, truth1 = (
        encode_truth(3, e, t, t_send_ns=1) for e, t in ((0, ev0.truth), (1, ev1.truth))
    )
    for whole, cut, hits_cut in (
        ([hits0, truth0, hits1], truth1, True),  # 3/1's truth: its hits go
        ([hits0], truth0, True),  # the first event's truth (no truth in the file before)
        ([hits0, truth0, hits1], truth0, False),  # another event's truth: 3/1 stays
    ):
        offsets = write(path, [*whole, cut])
        data = path.read_bytes()
        path.write_bytes(data[: offsets[-1] + record_bytes(cut) - 3])  # in its last frame
        repaired = repair(path)
        assert repaired is not None
        last = decode(whole[-1]).event
        assert repaired[1].endswith(f"; with event 3/{last}'s hits, its truth cut") == hits_cut
        kept = whole[:-1] if hits_cut else whole
        assert [f for _, f in iter_records(path)] == [[bytes(f) for f in m] for m in kept]
    # A header that cannot be read: the hits go where the file's hits have their truth.
    offsets = write(path, [hits0, truth0, hits1, truth1])
    path.write_bytes(path.read_bytes()[: offsets[-1] + 10])
    assert repair(path) is not None and len(list(iter_records(path))) == 2
    offsets = write(path, [hits0, hits1, truth1])
    path.write_bytes(path.read_bytes()[: offsets[-1] + 10])
    assert repair(path) is not None and len(list(iter_records(path))) == 2


def test_repair_cuts_back_to_the_last_whole_record(small: Any, tmp_path: Path) -> None:
    path, offsets, frames = small
    data = path.read_bytes()
    assert repair(path) is None and path.read_bytes() == data  # intact: untouched
    for cut_at in (offsets[2] + 1, len(data) - 1):
        path.write_bytes(data[:cut_at])
        repaired = repair(path)
        assert repaired is not None
        cut, why = repaired
        assert cut == cut_at - offsets[2] and f"record at offset {offsets[2]}" in why
        assert path.read_bytes() == data[: offsets[2]]
        assert [f for _, f in iter_records(path)] == frames[:2]
        with RecordingWriter(path, "a") as w:  # and it can be appended to again
            w.write(frames[2])
        assert path.read_bytes() == data
    path.write_bytes(b"not a recording")
    with pytest.raises(RecordingError, match="bad magic"):
        repair(path)


def test_a_trackml_csv_read_as_a_recording_is_said_to_be_imported(tmp_path: Path) -> None:
    """``replay event000001000-hits.csv``: "bad magic b'hit_id,x'" alone did not say what to
    do; a file that is neither is refused without the hint."""
    csv = tmp_path / "event000001000-hits.csv"
    csv.write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n")
    with pytest.raises(RecordingError, match=r"`streamtrk import-trackml` makes one\)$"):
        list(iter_records(csv))
    (tmp_path / "x.bin").write_bytes(b"not a recording")
    with pytest.raises(RecordingError, match=r"not a streamtrk recording$"):
        list(iter_records(tmp_path / "x.bin"))


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        RecordingWriter(tmp_path / "x.stk", "r")  # type: ignore[arg-type]
    with RecordingWriter(tmp_path / "x.stk") as w, pytest.raises(ValueError, match="1 to 1024"):
        w.write([])


def test_streaming_many_records(tmp_path: Path) -> None:
    path = tmp_path / "many.stk"
    n = 20_000
    with RecordingWriter(path) as w:
        for i in range(n):
            w.write([struct.pack("<I", i), b"x" * (i % 64)])
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = 0
        for count, (_, frames) in enumerate(iter_records(path), 1):
            assert frames == [struct.pack("<I", count - 1), b"x" * ((count - 1) % 64)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < size / 10, f"peak {peak} bytes for a {size}-byte file: not streaming"


def test_truncation_at_every_byte(small: Any, tmp_path: Path) -> None:
    path, offsets, frames = small
    data = path.read_bytes()
    ends = [*offsets[1:], len(data)]
    cut = tmp_path / "cut.stk"
    for p in range(len(data)):
        cut.write_bytes(data[:p])
        got, err = collect(cut)
        if p < 12:
            assert got == [] and err is not None and "offset 0:" in str(err), p
            continue
        k = sum(e <= p for e in ends)
        assert got == list(zip(offsets[:k], frames[:k], strict=True)), p
        if p in (12, *ends):
            assert err is None, p
        else:
            assert err is not None and f"record at offset {offsets[k]}:" in str(err), (p, err)


@pytest.mark.parametrize(
    ("where", "value", "match"),
    [
        (0, b"X", "bad magic"),
        (8, b"\x02", "unsupported format version 2"),
        (10, b"\x01", "reserved field"),
    ],
)
def test_bad_file_header(small: Any, where: int, value: bytes, match: str) -> None:
    path = small[0]
    data = bytearray(path.read_bytes())
    data[where : where + 1] = value
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=match):
        list(iter_records(path))
    with pytest.raises(RecordingError, match=match):
        RecordingReader(path)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("payload", None, "CRC mismatch"),
        ("crc", None, "CRC mismatch"),
        ("count", struct.pack("<I", 5000), "frame count 5000"),
        ("count", struct.pack("<I", 0), "frame count 0"),
        ("length", struct.pack("<Q", 2**40), "above the 8000000-byte limit"),
    ],
)
def test_corrupt_record(small: Any, field: str, value: bytes | None, match: str) -> None:
    path, offsets, frames = small
    data = bytearray(path.read_bytes())
    at = {"count": 0, "crc": 4, "length": 8, "payload": 20}[field] + offsets[1]
    if value is None:
        data[at] ^= 0x40
    else:
        data[at : at + len(value)] = value
    path.write_bytes(bytes(data))
    got, err = collect(path)
    assert got == [(offsets[0], frames[0])]
    assert err is not None and f"record at offset {offsets[1]}:" in str(err)
    assert match in str(err)


def test_iter_events_yields_complete_events_before_error(small: Any) -> None:
    path, offsets, _ = small
    path.write_bytes(path.read_bytes()[:-1])
    events = []
    with pytest.raises(RecordingError, match=f"offset {offsets[2]}"):
        for ev in iter_events(path):
            events.append(ev)
    assert [(e.event, e.truth is not None) for e in events] == [(0, True)]


def test_an_event_whose_truth_record_is_damaged_is_not_yielded_without_it(small: Any) -> None:
    """The damaged record may be the truth of the event just read: yielding that event
    would make a consumer fail on 'no truth' instead of on the damage."""
    path, offsets, _ = small
    path.write_bytes(path.read_bytes()[: offsets[2] - 1])  # into event 0's truth record
    events = []
    with pytest.raises(RecordingError, match=f"offset {offsets[1]}"):
        for ev in iter_events(path):
            events.append(ev)
    assert events == []


def test_events_before_damage_are_yielded_but_the_one_whose_truth_it_is(
    tmp_path: Path, rng
) -> None:
    """A crash cuts the last record: the events before it are whole, those of a recording
    without truth (waiting for a truth that never comes) and those whose truth the damaged
    record is not (its header says whose)."""
    path = tmp_path / "d.stk"
    events = [make_event(rng, 2, i) for i in range(4)]
    offsets = write(path, [encode_hits(Event(3, e.event, e.hits)) for e in events])
    path.write_bytes(path.read_bytes()[: offsets[-1] + 30])  # hits only: 3/3's cut
    got: list = []
    with pytest.raises(RecordingError, match=f"offset {offsets[-1]}"):
        got.extend(e.event for e in iter_events(path))
    assert got == [0, 1, 2]
    # Two producers interleaved: 3/0's truth comes after 3/1's hits, and is cut.
    truth = [encode_truth(3, e.event, e.truth, t_send_ns=1) for e in events if e.truth]
    hits = [encode_hits(e, t_send_ns=1) for e in events]
    offsets = write(path, [hits[0], hits[1], truth[1], hits[2], truth[0]])
    path.write_bytes(path.read_bytes()[: offsets[-1] + record_bytes(truth[0]) - 3])
    got = []
    with pytest.raises(RecordingError, match=f"offset {offsets[-1]}"):
        got.extend((e.event, e.truth is not None) for e in iter_events(path))
    assert got == [(1, True), (2, False)]  # 3/0 withheld: the cut record is its truth
    # Its header cut too, in a recording with truth: every event waiting for it withheld.
    offsets = write(path, [hits[0], truth[0], hits[1], hits[2], truth[1]])
    path.write_bytes(path.read_bytes()[: offsets[-1] + 10])
    got = []
    with pytest.raises(RecordingError, match=f"offset {offsets[-1]}"):
        got.extend((e.event, e.truth is not None) for e in iter_events(path))
    assert got == [(0, True)]


def test_a_recording_that_is_no_regular_file_is_named(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo.stk"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(RecordingError, match=r"fifo\.stk: not a regular file"):
        list(iter_events(fifo))


def test_iter_events_rejects_invalid_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.stk"
    write(path, [[b"\xc1"]])
    with pytest.raises(RecordingError, match="record at offset 12: not_msgpack"):
        list(iter_events(path))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [("nan_x", "non_finite"), ("duplicate_id", "duplicate_hit_id"), ("negative_pid", "id_range")],
)
def test_write_event_refuses_what_readers_refuse(
    tmp_path: Path, rng: np.random.Generator, spoil: str, reason: str
) -> None:
    good, bad = make_event(rng, 5, 0), make_event(rng, 5, 1)
    if spoil == "nan_x":
        bad.hits.x[2] = np.nan
    elif spoil == "duplicate_id":
        bad.hits.hit_id[3] = bad.hits.hit_id[1]
    else:  # in the truth message, written after the hits message
        assert bad.truth is not None
        bad.truth.hits.particle_id[0] = -1
    path = tmp_path / "r.stk"
    with RecordingWriter(path) as w:
        w.write_event(good)
        with pytest.raises(WireError, match=f"{reason}: event 3/1 cannot be recorded"):
            w.write_event(bad)
        w.write_event(make_event(rng, 5, 2))
    assert [e.event for e in iter_events(path)] == [0, 2]  # nothing of the bad one written


def test_summarize(small: Any, tmp_path: Path) -> None:
    path = small[0]
    with RecordingWriter(path, "a") as w:
        w.write([b"\xc1"])
    s = summarize(path)
    assert s == {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "records": 4,
        "events": 2,
        "hits_mean": 1.5,
        "hits_max": 2,
        "events_with_truth": 1,
        "versions": [1, 2],  # truth, hits (the oldest versions that carry them)
        "kinds": {"hits": 2, "truth": 1},
        "invalid": {"not_msgpack": 1},
        "error": None,
        "cut_at": None,
    }
    last = [offset for offset, _ in iter_records(path)][-1]
    path.write_bytes(path.read_bytes()[:-1])
    s = summarize(path)
    assert (s["records"], s["events"]) == (3, 2)
    assert f"record at offset {last}" in s["error"] and s["cut_at"] == last
    empty = tmp_path / "empty.stk"
    write(empty, [])
    assert summarize(empty)["events"] == 0


def test_summarize_stops_at_a_truth_the_readers_refuse(tmp_path: Path, rng) -> None:
    """A truth of another number of hits than its event: the readers refuse the file there
    (``truth has 4 hits, event has 5``); ``inspect`` said it was whole, its counts of all."""
    e0, e1 = make_event(rng, 5, 0), make_event(rng, 4, 1)
    assert e0.truth is not None and e1.truth is not None
    path = tmp_path / "m.stk"
    write(path, [encode_hits(e0), encode_truth(3, 0, e1.truth), encode_hits(e1)])
    bad = [offset for offset, _ in iter_records(path)][1]
    with pytest.raises(RecordingError, match=f"offset {bad}: truth has 4 hits, event has 5"):
        list(iter_events(path))
    s = summarize(path)
    assert s["error"] == f"{path}: record at offset {bad}: truth has 4 hits, event has 5"
    assert (s["records"], s["events"], s["events_with_truth"], s["cut_at"]) == (1, 1, 0, None)


def test_the_crc_covers_count_lengths_and_bytes_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "c.stk"
    with RecordingWriter(path) as w:
        w.write([b"ab", b"cde"])
    stored = struct.unpack_from("<I", path.read_bytes(), 16)[0]
    expect = zlib.crc32(
        struct.pack("<I", 2) + struct.pack("<Q", 2) + b"ab" + struct.pack("<Q", 3) + b"cde"
    )
    assert stored == expect


def test_a_record_holds_up_to_1024_frames(tmp_path: Path) -> None:
    path = tmp_path / "f.stk"
    with RecordingWriter(path) as w:
        w.write([b"x"] * 1024)
        with pytest.raises(ValueError, match="1 to 1024"):
            w.write([b"x"] * 1025)
    assert [len(f) for _, f in iter_records(path)] == [1024]
    data = bytearray(path.read_bytes())
    data[12:16] = struct.pack("<I", 1025)  # a forged count one over the limit
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"frame count 1025 outside 1\.\.1024"):
        list(iter_records(path))


def test_a_frame_holds_up_to_max_frame_bytes(tmp_path: Path) -> None:
    """A damaged length is refused before its bytes are read, however large the file."""
    path = tmp_path / "f.stk"
    with RecordingWriter(path) as w:
        w.write([b"h", bytes(MAX_FRAME_BYTES)])
        with pytest.raises(ValueError, match=f"at most {MAX_FRAME_BYTES} bytes, got"):
            w.write([b"h", bytes(MAX_FRAME_BYTES + 1)])
    assert [len(f[1]) for _, f in iter_records(path)] == [MAX_FRAME_BYTES]
    with path.open("ab") as f:  # a file long enough for the forged length below
        f.write(bytes(MAX_FRAME_BYTES))
    data = bytearray(path.read_bytes())
    data[29:37] = struct.pack("<Q", MAX_FRAME_BYTES + 1)  # the second frame's length
    path.write_bytes(bytes(data))
    tracemalloc.start()
    with pytest.raises(RecordingError, match=f"frame 1 length {MAX_FRAME_BYTES + 1} above"):
        list(iter_records(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MAX_FRAME_BYTES // 4


def test_a_whole_record_over_the_frame_limit_is_kept_by_repair_and_append(tmp_path: Path) -> None:
    """Older versions wrote frames over the limit (dead letters of a daemon with a raised
    max_hits): repairing or appending to such a file keeps the record, readers refuse it
    unless told to read any length."""
    path = tmp_path / "old.stk"
    write(path, [[b"a"]])
    big = [b"h", bytes(MAX_FRAME_BYTES + 1)]
    count = struct.pack("<I", len(big))
    body = b"".join(struct.pack("<Q", len(f)) + f for f in big)
    with path.open("ab") as f:  # the record as an older writer made it
        f.write(count + struct.pack("<I", zlib.crc32(count + body)) + body)
    assert repair(path) is None
    write(path, [[b"c"]], "a")
    with pytest.raises(RecordingError, match="above the 8000000-byte limit") as refused:
        list(iter_records(path))
    assert refused.value.cut_at is None  # nothing for repair to cut
    with RecordingReader(path, max_frame_bytes=None) as reader:
        assert [frames for _, frames in reader] == [[b"a"], big, [b"c"]]


def test_the_last_event_without_truth_is_yielded(tmp_path: Path, rng) -> None:
    path = tmp_path / "e.stk"
    with RecordingWriter(path) as w:
        w.write(encode_hits(make_event(rng, 2, 0)))  # its hits only
    assert [e.event for e in iter_events(path)] == [0]


def test_append_mode_starts_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.stk"
    path.write_bytes(b"")
    with RecordingWriter(path, "a") as w:
        w.write([b"x"])
    assert [f for _, f in iter_records(path)] == [[b"x"]]


def test_new_recording_takes_its_place_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "n.stk"
    with new_recording(path) as w:
        w.write([b"x"])
    assert [f for _, f in iter_records(path)] == [[b"x"]]
    assert os.listdir(tmp_path) == ["n.stk"]  # no partial file left
    with pytest.raises(RuntimeError), new_recording(path) as w:
        w.write([b"y"])
        raise RuntimeError("cut")
    assert [f for _, f in iter_records(path)] == [[b"x"]]  # the old file is kept
    assert os.listdir(tmp_path) == ["n.stk"]


_FILL_THE_DISK = """
import resource, sys
from streamtrk.io.recording import new_recording

resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    with new_recording(sys.argv[1]) as w:
        for _ in range(100):
            w.write([bytes(10_000)])
except OSError as e:
    print(e.filename, e.strerror)
"""


def test_a_write_that_fails_names_the_recording(tmp_path: Path) -> None:
    """A full disk (here the file size limit, for real): the error names the file being
    written, the recording, not its partial file."""
    path = tmp_path / "full.stk"
    out = subprocess.run(
        [sys.executable, "-c", _FILL_THE_DISK, str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout == f"{path} File too large\n", out.stderr
    assert os.listdir(tmp_path) == []  # nor any partial file left


def test_new_recording_refuses_a_file_another_process_writes(tmp_path: Path) -> None:
    """A tap's file replaced would lose all it writes after: refused at the start, and
    before the replace when the tap began meanwhile (the file there kept, no partial)."""
    path = tmp_path / "tap.stk"
    with RecordingWriter(path) as tap:
        tap.write([b"t"])
        tap.flush()
        with pytest.raises(OSError, match="another process is writing it"):
            new_recording(path).__enter__()
    with (
        contextlib.ExitStack() as taps,
        pytest.raises(OSError, match="another process is writing it"),
        new_recording(path) as w,
    ):
        w.write([b"x"])
        taps.enter_context(RecordingWriter(path, "a"))  # a tap begins on it meanwhile
    assert [f for _, f in iter_records(path)] == [[b"t"]]
    assert os.listdir(tmp_path) == ["tap.stk"]


def test_summarize_pairs_truth_as_events_does(tmp_path: Path, rng) -> None:
    ev = make_event(rng, 2, 0)
    truth = ev.truth
    assert truth is not None
    path = tmp_path / "s.stk"
    with RecordingWriter(path) as w:
        w.write(encode_hits(ev))
        w.write([b"\xc1"])  # invalid between the hits and its truth: counted, skipped
        w.write(encode_truth(3, 0, truth))
        w.write(encode_truth(3, 7, truth))  # truth of no event
        w.write(encode_truth(3, 0, truth))  # its hits have theirs already
        w.write([msgpack.packb({"version": True})])
    s = summarize(path)
    assert s["events_with_truth"] == 1 and s["kinds"]["truth"] == 3
    assert s["versions"] == [1, 2]


def test_two_recordings_joined_are_said_to_be(small: Any, tmp_path: Path) -> None:
    """``cat a.stk b.stk``: the second file's header is read where a record starts, and the
    error says what it is, not only a frame count out of range."""
    path, _, _ = small
    joined = tmp_path / "joined.stk"
    joined.write_bytes(path.read_bytes() * 2)
    size = path.stat().st_size
    with pytest.raises(RecordingError, match=rf"record at offset {size}: a recording's file "
                       r"header \(two recordings joined into one file\?"):  # fmt: skip
        list(iter_records(joined))


def test_cut_at_is_set_only_where_no_whole_record_can_follow(small: Any, tmp_path: Path) -> None:
    """``cut_at`` (the remedy every reader's error names: ``inspect --repair``) is for a
    damaged tail, as a crash leaves it: a record cut short, the last record's CRC wrong, a
    zero-filled end. Damage with bytes after it that may hold whole records (a flipped bit,
    two recordings concatenated) has none: cutting there would drop those records."""
    path, offsets, _ = small
    data = path.read_bytes()

    def damage(content: bytes) -> int | None:
        path.write_bytes(content)
        with pytest.raises(RecordingError) as found:
            list(iter_records(path))
        assert summarize(path)["cut_at"] == found.value.cut_at
        return found.value.cut_at

    def flip(at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    assert damage(data[:-1]) == offsets[2]  # cut short
    assert damage(data[: offsets[2] + 3]) == offsets[2]  # in its frame count/CRC
    assert damage(flip(len(data) - 1)) == offsets[2]  # the last record's CRC
    assert damage(data + bytes(40)) == len(data)  # zeros past the end
    assert damage(flip(offsets[2] - 1)) is None  # a CRC mismatch with a whole record after
    assert damage(data + data) is None  # a second recording's file header, read as a record
    assert damage(data + bytes(40) + data[12:]) is None  # zeros, then records
    # zeros from inside the last record to the end, the file's size kept (a power loss)
    inside = offsets[2] + 8 + 4
    assert damage(data[:inside] + bytes(len(data) - inside)) == offsets[2]
    # A flipped bit that makes a record's extent run past the end, whole records after it:
    # the middle record's frame count one more (its next length read from the record
    # after), or a first frame's length with its top bit set.
    more = bytearray(data)
    more[offsets[1]] += 1
    assert damage(bytes(more)) is None
    assert damage(_top_bit(data, offsets[1] + 8)) is None


def _top_bit(data: bytes, at: int) -> bytes:
    """``data`` with the top bit of the 8-byte length field at ``at`` flipped."""
    return data[: at + 7] + bytes([data[at + 7] ^ 0x80]) + data[at + 8 :]


def test_a_length_field_cut_short_is_named_by_its_own_offset(small: Any) -> None:
    """Cut inside the second frame's length field of the last record: the error names
    that record, the frame and the offset where its length field starts."""
    path, offsets, frames = small
    data = path.read_bytes()
    field = offsets[2] + 8 + 8 + len(frames[2][0])  # after the count/CRC and frame 0
    path.write_bytes(data[: field + 3])
    with pytest.raises(RecordingError) as found:
        list(iter_records(path))
    assert f"record at offset {offsets[2]}: truncated length of frame 1 at offset {field}" in str(
        found.value
    )
    assert found.value.cut_at == offsets[2]


def test_a_garbage_length_in_the_last_record_is_a_damaged_tail_that_repair_cuts(
    small: Any,
) -> None:
    """A length past the end of the file (here far over any memory) is damage found before
    its bytes are read, by readers and by ``repair`` (which reads any length the file
    holds): the tail is cut back to the whole records before it."""
    path, offsets, frames = small
    data = bytearray(path.read_bytes())
    at = offsets[2] + 8
    data[at : at + 8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=f"frame 0 length {2**62} above") as found:
        list(iter_records(path))
    assert found.value.cut_at == offsets[2]  # it runs past the end: a damaged tail
    left = len(data) - at - 8
    with (
        RecordingReader(path, max_frame_bytes=None) as reader,
        pytest.raises(RecordingError, match=f"exceeds the {left} bytes left"),
    ):
        list(reader)
    repaired = repair(path)
    assert repaired is not None and repaired[0] == len(data) - offsets[2]
    assert [f for _, f in iter_records(path)] == frames[:2]


def test_a_whole_last_record_over_the_frame_limit_is_no_damaged_tail(tmp_path: Path) -> None:
    """The over-limit record is the file's last, its frame ending exactly at the end of the
    file: a whole record, so the readers' error offers no cut (``repair`` would keep it)."""
    path = tmp_path / "old.stk"
    write(path, [[b"a"]])
    big = [b"h", bytes(MAX_FRAME_BYTES + 1)]
    count = struct.pack("<I", len(big))
    body = b"".join(struct.pack("<Q", len(f)) + f for f in big)
    with path.open("ab") as f:
        f.write(count + struct.pack("<I", zlib.crc32(count + body)) + body)
    with pytest.raises(RecordingError, match="above the 8000000-byte limit") as refused:
        list(iter_records(path))
    assert refused.value.cut_at is None
    assert summarize(path)["cut_at"] is None
    assert repair(path) is None


def test_append_refuses_a_file_too_short_for_a_header_and_leaves_it(tmp_path: Path) -> None:
    """A one-byte file is no empty file: appending to it is refused, not a new recording
    written over it."""
    path = tmp_path / "one.stk"
    path.write_bytes(b"x")
    with pytest.raises(RecordingError, match=r"cannot append: .*truncated file header \(1 of"):
        RecordingWriter(path, "a")
    assert path.read_bytes() == b"x"


def test_write_event_returns_the_offset_of_its_hits_record(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "w.stk"
    events = [make_event(rng, 3, i) for i in range(3)]
    events[1] = Event(3, 1, events[1].hits)  # no truth: one record only
    with RecordingWriter(path) as w:
        got = [w.write_event(ev) for ev in events]
    hits_at = [off for off, frames in iter_records(path) if decode(frames).kind == "hits"]
    assert got == hits_at and len(set(got)) == 3


def _damaged_length(path: Path) -> Path:
    """A recording of 12 records of 1 MB whose first length claims 9 MB (a flipped bit, over
    the 8 MB limit)."""
    write(path, [[bytes(1_000_000)] for _ in range(12)])
    with open(path, "r+b") as f:
        f.seek(12 + 8)  # the first record's first length
        (length,) = struct.unpack("<Q", f.read(8))
        f.seek(12 + 8)
        f.write(struct.pack("<Q", length | 1 << 23))
    return path


def test_a_damaged_length_is_not_read_whole_into_memory(tmp_path: Path) -> None:
    """repair (and append) read frames of any length: a flipped bit that makes a length
    claim most of the file (here 9 MB, over the 8 MB limit) is found wrong a piece at a
    time, not read into memory first (a multi-GB recording's)."""
    path = _damaged_length(tmp_path / "big.stk")
    tracemalloc.start()
    try:
        assert repair(path) is None  # whole records follow the damage: left as it is
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def test_repair_leaves_damage_that_whole_records_follow(small: Any) -> None:
    """A flipped bit in the middle record, a whole record after it: cutting there would
    drop that record; the file is left as it is."""
    path, offsets, _ = small
    data = bytearray(path.read_bytes())
    data[offsets[1] + 20] ^= 0x40
    path.write_bytes(bytes(data))
    assert repair(path) is None and path.read_bytes() == data


def test_summarize_an_empty_recording(tmp_path: Path) -> None:
    path = tmp_path / "empty.stk"
    write(path, [])
    s = summarize(path)
    assert (s["records"], s["events"], s["hits_max"], s["events_with_truth"]) == (0, 0, 0, 0)
    assert s["hits_mean"] == 0.0 and s["kinds"] == {} and s["invalid"] == {}
    assert (s["error"], s["cut_at"], s["file_bytes"]) == (None, None, 12)


def test_a_new_recording_at_a_link_is_written_through_to_its_file(tmp_path: Path, rng) -> None:
    """As ``open`` (and every other output of the package) would: the link stays a link."""
    real, link = tmp_path / "real.stk", tmp_path / "link.stk"
    real.write_bytes(b"old")
    link.symlink_to(real)
    event = make_event(rng, 3, 0)
    with new_recording(link) as w:
        w.write_event(event)
    assert link.is_symlink() and link.resolve() == real
    assert [ev.event for ev in iter_events(real)] == [0]


def test_a_new_recording_into_a_fifo_is_written_in_place(tmp_path: Path, rng) -> None:
    """``/dev/stdout``, ``/dev/null``, a FIFO: written in place, as they are (a file renamed
    over one would replace it: as root, a device node too); written without seeking."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    events = [make_event(rng, 3, k) for k in range(2)]
    with new_recording(fifo) as w:
        offsets = [w.write_event(ev) for ev in events]
    reader.join(10)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    copy = tmp_path / "copy.stk"
    copy.write_bytes(got[0])
    assert [ev.event for ev in iter_events(copy)] == [0, 1]
    hits_at = [off for off, frames in iter_records(copy) if decode(frames).kind == "hits"]
    assert offsets == hits_at


def test_a_folder_is_no_recording_and_said_so(tmp_path: Path) -> None:
    """A folder of TrackML CSV files named where a recording is wanted (a training split's
    ``recording``, replay, inspect): said, with the command that converts them."""
    with pytest.raises(RecordingError, match=r"a folder, not a recording \(\.stk\); TrackML CSV"):
        RecordingReader(tmp_path)


def test_truth_is_paired_among_the_last_16_hits_records_as_documented(tmp_path: Path, rng) -> None:
    """docs/wire-protocol.md, serve.md: the truth goes to hits among the last 16 hits
    records (its own and 15 later ones); one more and it is too late, for inspect too."""
    for later, paired in ((15, True), (16, False)):
        e0 = make_event(rng, 4, 0)
        assert e0.truth
        path = tmp_path / f"w{later}.stk"
        others = [encode_hits(make_event(rng, 1, 10 + i)) for i in range(later)]
        write(path, [encode_hits(e0), *others, encode_truth(3, 0, e0.truth)])
        assert (next(iter_events(path)).truth is not None) == paired
        assert summarize(path)["events_with_truth"] == int(paired)


def test_damage_withholds_only_the_events_still_without_truth(tmp_path: Path, rng) -> None:
    """A tap of two producers cut mid-write (hits A, hits B, truth B, a record cut in its
    header): B has its truth and comes; A, whose truth the cut record may be, does not."""
    a, b = make_event(rng, 4, 1), make_event(rng, 4, 2)
    assert b.truth
    path = tmp_path / "t.stk"
    write(path, [encode_hits(a), encode_hits(b), encode_truth(3, 2, b.truth)])
    with open(path, "ab") as f:
        f.write(b"\x01\x00\x00")
    got: list[Event] = []
    with pytest.raises(RecordingError, match="truncated frame count"):
        got.extend(iter_events(path))
    assert [(e.event, e.truth is not None) for e in got] == [(2, True)]


def test_repair_keeps_the_last_hits_where_no_truth_follows_its_own_hits(
    tmp_path: Path, rng
) -> None:
    """Interleaved pairs (hits A, hits B, truth A, truth B): no hits are directly followed
    by their own truth, so a tail cut in its header after hits C is not taken for C's."""
    a, b, c = (make_event(rng, 4, i) for i in (1, 2, 3))
    assert a.truth and b.truth
    path = tmp_path / "t.stk"
    write(
        path,
        [
            encode_hits(a),
            encode_hits(b),
            encode_truth(3, 1, a.truth),
            encode_truth(3, 2, b.truth),
            encode_hits(c),
        ],
    )
    with open(path, "ab") as f:
        f.write(b"\x01\x00\x00")
    assert repair(path) is not None
    assert [(e.event, e.truth is not None) for e in iter_events(path)] == [
        (1, True),
        (2, True),
        (3, False),
    ]


def test_a_damaged_first_length_is_not_read_whole_to_name_the_record(tmp_path: Path) -> None:
    """Events read up to damage name the damaged record by its header, read only where it
    is no longer than a header may be: a flipped bit that claims GBs reads none of them."""
    path = _damaged_length(tmp_path / "big.stk")
    tracemalloc.start()
    try:
        with pytest.raises(RecordingError, match="above the 8000000-byte limit"):
            list(iter_events(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000


def test_a_trackml_csv_under_another_name_is_said_to_be_imported(tmp_path: Path) -> None:
    """The hint goes by the file's first bytes too, not by its name alone."""
    for name, text in (("hits.stk", "hit_id,x,y,z\n"), ("p.txt", "particle_id,vx\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(RecordingError, match=r"`streamtrk import-trackml` makes one\)$"):
            list(iter_records(tmp_path / name))


def test_a_format_version_below_this_readers_is_refused_too(small: Any) -> None:
    """Only version 1 is read: a version 0 file (no such format) is refused, not read as 1."""
    path = small[0]
    data = bytearray(path.read_bytes())
    data[8:10] = b"\x00\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="unsupported format version 0"):
        list(iter_records(path))


def test_a_csv_file_by_its_name_gets_the_import_hint(tmp_path: Path) -> None:
    """A ``.csv`` named as a recording gets the import hint whatever its first column
    (TrackML's detectors.csv starts with volume_id)."""
    csv = tmp_path / "detectors.csv"
    csv.write_text("volume_id,layer_id,module_id,cx\n")
    with pytest.raises(RecordingError, match=r"`streamtrk import-trackml` makes one\)$"):
        list(iter_records(csv))


def test_two_hits_of_one_event_each_get_one_of_its_truths(tmp_path: Path, rng) -> None:
    """An event sent twice (a resend) with its truth twice, behind an event still waiting
    for its truth: each truth goes to the oldest hits of its event still without one, so
    both come with truth."""
    a, e = make_event(rng, 3, 1), make_event(rng, 4, 0)
    assert a.truth and e.truth
    path = tmp_path / "twice.stk"
    hits_e, truth_e = encode_hits(e), encode_truth(3, 0, e.truth)
    write(path, [encode_hits(a), hits_e, hits_e, truth_e, truth_e, encode_truth(3, 1, a.truth)])
    got = [(ev.event, ev.truth is not None) for ev in iter_events(path)]
    assert got == [(1, True), (0, True), (0, True)]


def test_repair_keeps_the_last_hits_where_the_damaged_record_is_no_truth(
    tmp_path: Path, rng
) -> None:
    """A tail cut in the tracks message of the last hits' event is not their truth: the
    hits are kept, only the cut record goes."""
    a, b = make_event(rng, 4, 1), make_event(rng, 4, 2)
    assert a.truth
    path = tmp_path / "t.stk"
    write(path, [encode_hits(a), encode_truth(3, 1, a.truth), encode_hits(b)])
    end = path.stat().st_size
    write(path, [encode_tracks(3, 2, b.hits.hit_id, None)], mode="a")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1)  # cut in its columns, its header whole
    assert repair(path) is not None
    assert path.stat().st_size == end
    assert [(ev.event, ev.truth is not None) for ev in iter_events(path)] == [(1, True), (2, False)]
