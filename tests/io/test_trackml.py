"""TrackML CSV reading/writing and submissions."""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamtrk.eval.score import trackml_score
from streamtrk.event import TRACK_PARAM_DTYPES, Event, Hits, HitTruth, Particles, Tracks, Truth
from streamtrk.io.trackml import (
    _located,
    by_event_number,
    event_files,
    iter_events,
    kinematics_unknown,
    new_events,
    read_event,
    read_particles,
    read_submission,
    write_event,
    write_submission,
    write_track_parameters,
)
from streamtrk.io.weights import ORDER_WEIGHTS, hit_order, hit_weights


def synthetic_event(seed: int = 0, n_particles: int = 40, n_noise: int = 25) -> Event:
    """A random event with truth: large particle ids, one particle without hits, noise."""
    rng = np.random.default_rng(seed)
    pids = rng.choice(2**62, n_particles + 1, replace=False).astype(np.int64) + 1
    nhits = rng.integers(1, 15, n_particles)
    hit_pid = rng.permutation(np.r_[np.repeat(pids[:-1], nhits), np.zeros(n_noise, np.int64)])
    n = len(hit_pid)

    def f32(scale: float, size: int = n) -> np.ndarray:
        return rng.normal(0.0, scale, size).astype(np.float32)

    hits = Hits(
        hit_id=rng.choice(10 * n, n, replace=False).astype(np.int64) + 1,
        x=f32(500),
        y=f32(500),
        z=f32(1000),
        volume_id=rng.integers(7, 19, n).astype(np.int32),
        layer_id=rng.integers(2, 15, n).astype(np.int32),
        module_id=rng.integers(1, 3000, n).astype(np.int32),
    )
    counts = np.array([np.count_nonzero(hit_pid == p) for p in pids], dtype=np.int32)
    particles = Particles(
        particle_id=pids,
        vx=f32(0.1, len(pids)),
        vy=f32(0.1, len(pids)),
        vz=f32(50, len(pids)),
        px=f32(2, len(pids)),
        py=f32(2, len(pids)),
        pz=f32(5, len(pids)),
        q=rng.choice([-1, 1], len(pids)).astype(np.int32),
        nhits=counts,
    )
    tz = f32(1000)
    lookup = {int(p): i for i, p in enumerate(pids)}
    idx = np.array([lookup.get(int(p), 0) for p in hit_pid])
    distance = np.abs(tz - np.where(hit_pid != 0, particles.vz[idx], 0))
    pt = np.where(hit_pid != 0, particles.pt[idx], 0)
    truth_hits = HitTruth(
        particle_id=hit_pid,
        tx=f32(500),
        ty=f32(500),
        tz=tz,
        tpx=f32(1),
        tpy=f32(1),
        tpz=f32(1),
        weight=hit_weights(hit_pid, distance, pt),
        hit_order=hit_order(hit_pid, distance),
    )
    return Event(run=0, event=42, hits=hits, truth=Truth(truth_hits, particles))


def _rewrite_csv(path: Path, transform) -> None:
    """Rewrite a CSV file through ``transform(header, rows) -> (header, rows)``."""
    with path.open() as f:
        header, *rows = list(csv.reader(f))
    header, rows = transform(header, rows)
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


def _drop_column(name: str):
    def transform(header, rows):
        i = header.index(name)
        return header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in rows]

    return transform


def test_round_trip(tmp_path):
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    assert prefix == tmp_path / "event000000042"
    back = read_event(prefix)
    assert (back.run, back.event) == (0, 42)
    assert back.hits.equals(event.hits)
    assert event.truth is not None
    assert back.truth is not None and back.truth.equals(event.truth)
    assert len(back.truth.particles) == 41  # the particle without hits is kept


def test_output_format_and_determinism(tmp_path):
    event = synthetic_event()
    for sub in ("a", "b"):
        write_event(event, tmp_path / sub)
        write_event(event, tmp_path / sub / "gz", compress=True)
    headers = {
        "hits": "hit_id,x,y,z,volume_id,layer_id,module_id",
        "truth": "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz,weight",
        "particles": "particle_id,vx,vy,vz,px,py,pz,q,nhits",
    }
    for kind, header in headers.items():
        for name in (f"event000000042-{kind}.csv", f"gz/event000000042-{kind}.csv.gz"):
            data = (tmp_path / "a" / name).read_bytes()
            assert data == (tmp_path / "b" / name).read_bytes()
        text = (tmp_path / "a" / f"event000000042-{kind}.csv").read_text()
        assert text.splitlines()[0] == header


def test_gzip_round_trip(tmp_path):
    event = synthetic_event(seed=1)
    prefix = write_event(event, tmp_path, compress=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "event000000042-hits.csv.gz",
        "event000000042-particles.csv.gz",
        "event000000042-truth.csv.gz",
    ]
    back = read_event(prefix)
    assert back.truth is not None and event.truth is not None
    assert back.hits.equals(event.hits) and back.truth.equals(event.truth)


def test_gzipped_files_named_csv_are_read(tmp_path):
    """A gzip file is known by its first bytes, not only by its name (``gzip -c`` into a
    ``.csv``): read as the plain file it holds, not parsed as text."""
    event = synthetic_event(seed=1)
    prefix = write_event(event, tmp_path / "plain")
    for kind in ("hits", "truth", "particles"):
        data = Path(f"{prefix}-{kind}.csv").read_bytes()
        (tmp_path / "zipped").mkdir(exist_ok=True)
        (tmp_path / "zipped" / f"event000000042-{kind}.csv").write_bytes(gzip.compress(data))
    back = read_event(tmp_path / "zipped" / "event000000042")
    assert back.hits.equals(event.hits) and back.truth is not None and event.truth is not None
    assert back.truth.equals(event.truth)


def test_a_binary_header_is_not_quoted_whole(tmp_path):
    """A file that is no CSV (a recording given as hits): its error quotes the start of its
    first line, not all of it."""
    path = tmp_path / "event000000001-hits.csv"
    path.write_bytes(bytes(b for b in range(1, 256) if b not in b"\r\n,") * 40 + b"\n1,2,3\n")
    with pytest.raises(ValueError, match=r"missing column 'hit_id'") as err:
        read_event(tmp_path / "event000000001")
    assert str(err.value).endswith(" (the first 120 characters))")
    assert len(str(err.value)) < len(str(path)) + 700  # the whole line: about 30,000


def test_float32_values_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, 1.0, 0.1, 1e-5, 1e-40, 3.4e38, 123456.7, 1e15], np.float32)
    values = np.r_[special, bits[np.isfinite(bits)]]
    n = len(values)
    ints = np.arange(n, dtype=np.int32)
    hits = Hits(np.arange(n, dtype=np.int64), values, -values, values[::-1], ints, ints, ints)
    back = read_event(write_event(Event(0, 7, hits), tmp_path))
    for name in ("x", "y", "z"):
        assert np.array_equal(
            getattr(back.hits, name).view(np.uint32), getattr(hits, name).view(np.uint32)
        )
    assert back.truth is None


def test_columns_by_name_and_missing_column(tmp_path):
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"

    def permute(header, rows):
        order = [6, 3, 0, 5, 1, 4, 2]
        return ["extra", *(header[i] for i in order)], [["9", *(r[i] for i in order)] for r in rows]

    _rewrite_csv(hits_path, permute)
    assert read_event(prefix).hits.equals(event.hits)
    _rewrite_csv(hits_path, _drop_column("volume_id"))
    with pytest.raises(ValueError, match=r"event000000042-hits\.csv: missing column 'volume_id'"):
        read_event(prefix)
    for empty in (b"", b" \n\n"):  # said as such, not as a header without the columns
        hits_path.write_bytes(empty)
        with pytest.raises(ValueError, match=r"-hits\.csv: empty file \(no header\)$"):
            read_event(prefix)


@pytest.mark.parametrize("end", ["\r\n", "\r"], ids=["windows", "old-mac"])
def test_other_line_ends_spaced_headers_and_blank_lines_are_read(tmp_path, end):
    """Lines of spaces or tabs alone are blank lines wherever they are (they were refused
    after data: "could not convert string '  '"); a lone CR ends a line (it was dropped,
    the file read as one line)."""
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"
    header, *rows = hits_path.read_text().splitlines()
    lines = [header.replace(",", ", "), rows[0], "", " \t", *rows[1:], "  ", ""]
    hits_path.write_bytes(end.join(lines).encode())
    assert read_event(prefix).hits.equals(event.hits)


def test_an_event_is_read_from_its_prefix_or_any_of_its_files(tmp_path):
    """A truth file given answered "no event000000042-truth.csv.gz-hits.csv[.gz]"."""
    event = synthetic_event()
    prefix = write_event(event, tmp_path, compress=True)
    files = [tmp_path / f"event000000042-{kind}.csv.gz" for kind in ("hits", "truth", "particles")]
    for path in (prefix, *files):
        back = read_event(path)
        assert back.truth is not None and event.truth is not None
        assert back.event == 42 and back.hits.equals(event.hits) and back.truth.equals(event.truth)
    assert [e.event for e in iter_events(files[0])] == [42]
    assert [e.event for e in iter_events(files[1])] == [42]


def test_a_byte_order_mark_is_read_and_a_column_named_twice_refused(tmp_path):
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"
    text = hits_path.read_text()
    hits_path.write_text("\ufeff" + text, encoding="utf-8")  # as spreadsheets save CSV
    assert read_event(prefix).hits.equals(event.hits)
    _rewrite_csv(hits_path, lambda h, rows: ([*h, "x"], [[*r, "0"] for r in rows]))
    with pytest.raises(ValueError, match=r"hits\.csv: column 'x' twice in the header"):
        read_event(prefix)


def test_single_row_and_malformed_row(tmp_path):
    event = synthetic_event()
    one = Event(0, 42, event.hits.take(np.array([3])))
    prefix = write_event(one, tmp_path)
    assert read_event(prefix).hits.equals(one.hits)
    hits_path = tmp_path / "event000000042-hits.csv"
    hits_path.write_text(hits_path.read_text() + "7,1.0,2.0\n")
    with pytest.raises(ValueError, match=r"event000000042-hits\.csv: "):
        read_event(prefix)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # Not a comment: a hit; placed as the values' checks place theirs.
        ("#7,1.0,2.0,3.0,8,2,1", "column 'hit_id', data row 3: could not convert string '#7'"),
        ("7,1.0,abc,3.0,8,2,1", "column 'y', data row 3: could not convert string 'abc'"),
        ("7,1.0,2.0,3.0,8,2,1,5", "data row 3 has 8 fields, the header 7"),
        ("7,1.0,2.0", "data row 3 has 3 fields, the header 7"),  # a file cut in a row
    ],
)
def test_a_row_is_read_whole_or_refused(tmp_path, line, message):
    prefix = write_event(Event(0, 42, synthetic_event().hits.take(np.arange(3))), tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"
    rows = hits_path.read_text().splitlines()
    hits_path.write_text("\n".join([*rows[:3], line, *rows[3:]]) + "\n")
    with pytest.raises(ValueError, match=message):
        read_event(prefix)


def test_a_row_short_of_a_field_is_refused_where_another_has_one_too_many(tmp_path):
    # A column the reader does not use ("extra"): a row without it is not caught by the
    # parser, and one row too long and one too short hold the header's number of commas.
    prefix = write_event(Event(0, 42, synthetic_event().hits.take(np.arange(3))), tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"
    _rewrite_csv(
        hits_path,
        lambda h, rows: ([*h, "extra"], [[*rows[0], "5", "6"], rows[1], [*rows[2], "7"]]),
    )
    with pytest.raises(ValueError, match="data row 1 has 9 fields, the header 8"):
        read_event(prefix)


def test_a_file_there_both_plain_and_gzipped_is_refused_not_chosen(tmp_path):
    event = Event(0, 42, synthetic_event().hits.take(np.arange(3)))
    prefix = write_event(event, tmp_path)
    other = Event(0, 42, synthetic_event(seed=1).hits.take(np.arange(2)))
    plain = tmp_path / "event000000042-hits.csv"
    zipped = plain.with_name(plain.name + ".gz")
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    write_event(other, tmp_path / "other")
    plain.write_bytes((tmp_path / "other" / plain.name).read_bytes())  # two other hit lists
    for path in (prefix, zipped, plain):  # the .gz named, the .csv was read
        with pytest.raises(ValueError, match=r"event000000042-hits\.csv and .*\.csv\.gz"):
            read_event(path)


def _set_value(column: str, row: int, value: str):
    def transform(header, rows):
        rows[row][header.index(column)] = value
        return header, rows

    return transform


@pytest.mark.parametrize(
    ("kind", "column", "value", "message"),
    [
        ("hits", "x", "nan", "'x', data row 3: nan is not a finite number"),
        ("hits", "z", "1e39", "'z', data row 3: 1e\\+39 is not a finite number"),  # past float32
        ("hits", "hit_id", "-5", "'hit_id', data row 3: -5 is outside"),
        ("hits", "volume_id", "4294967304", "'volume_id', data row 3: 4294967304 is outside"),
        ("truth", "particle_id", "-1", "'particle_id', data row 3: -1 is outside"),
        ("truth", "weight", "inf", "'weight', data row 3: inf is not a finite number"),
        ("truth", "weight", "-0.5", "'weight', data row 3: -0.5 is not a finite number >= 0"),
        ("particles", "nhits", "-2", "'nhits', data row 3: -2 is outside"),
        ("particles", "q", "-4294967296", "'q', data row 3: -4294967296 is outside"),
    ],
)
def test_values_that_do_not_fit_are_refused(tmp_path, kind, column, value, message):
    prefix = write_event(synthetic_event(), tmp_path)
    path = tmp_path / f"event000000042-{kind}.csv"
    _rewrite_csv(path, _set_value(column, 2, value))
    with pytest.raises(ValueError, match=rf"{path.name}: column {message}"):
        read_event(prefix)


def test_negative_charge_is_read(tmp_path):
    event = synthetic_event()
    assert event.truth is not None
    assert (event.truth.particles.q < 0).any()
    back = read_event(write_event(event, tmp_path))
    assert back.truth is not None
    assert back.truth.particles.q.min() == -1


def test_duplicate_particle_and_bad_gzip_are_refused(tmp_path):
    prefix = write_event(synthetic_event(), tmp_path)
    particles = tmp_path / "event000000042-particles.csv"
    _rewrite_csv(particles, lambda header, rows: (header, [*rows, rows[0]]))
    rows = len(particles.read_text().splitlines()) - 1
    again = rf"particles\.csv: column 'particle_id': \d+ in data rows 1 and {rows}"
    with pytest.raises(ValueError, match=again):
        read_event(prefix)
    with pytest.raises(ValueError, match=again):
        read_particles(particles)
    particles.unlink()
    for kind in ("hits", "truth"):
        path = tmp_path / f"event000000042-{kind}.csv"
        text = path.read_text()
        path.write_text(text + text.splitlines()[1] + "\n")  # the first row again
        rows = len(text.splitlines())  # with the header: the new row's number
        again = rf"{kind}\.csv: column 'hit_id': \d+ in data rows 1 and {rows}"
        with pytest.raises(ValueError, match=again):
            read_event(prefix)
        path.write_text(text)
    hits = tmp_path / "event000000042-hits.csv"
    gz = hits.with_name(hits.name + ".gz")
    gz.write_bytes(gzip.compress(hits.read_bytes())[:-20])  # cut short
    hits.unlink()
    with pytest.raises(ValueError, match=r"hits\.csv\.gz: not a whole gzip file"):
        read_event(prefix)
    gz.write_bytes(b"plain text")
    with pytest.raises(ValueError, match=r"hits\.csv\.gz: not a whole gzip file"):
        read_event(prefix)


def test_a_particle_of_the_truth_missing_from_particles_csv_is_refused(tmp_path):
    """Its hits would count for no particle: every efficiency would miss it unsaid."""
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    particles = tmp_path / "event000000042-particles.csv"
    assert event.truth is not None
    ids = np.asarray(event.truth.hits.particle_id)
    dropped = int(ids[ids != 0][0])
    _rewrite_csv(
        particles, lambda header, rows: (header, [r for r in rows if int(r[0]) != dropped])
    )
    with pytest.raises(
        ValueError, match=rf"truth\.csv: 1 particle_id values \(first {dropped}\) are not in "
    ):
        read_event(prefix)


def test_an_event_written_again_leaves_none_of_the_old_files(tmp_path):
    """A reader pairs every file of an event number: an earlier truth, particles or cells
    file left beside new hits would be read as their truth."""
    event = synthetic_event()
    write_event(event, tmp_path)
    (tmp_path / "event000000042-cells.csv").write_text("hit_id,ch0,ch1,value\n")
    other = Event(0, 42, synthetic_event(seed=1).hits)  # the same number, no truth
    prefix = write_event(other, tmp_path, compress=True)
    assert event_files(tmp_path, 42) == [tmp_path / "event000000042-hits.csv.gz"]
    back = read_event(prefix)
    assert back.truth is None and back.hits.equals(other.hits)
    write_event(event, tmp_path)
    assert [p.name for p in event_files(tmp_path, 42)] == [
        f"event000000042-{kind}.csv" for kind in ("hits", "truth", "particles")
    ]
    back = read_event(prefix)
    assert back.truth is not None and event.truth is not None
    assert back.truth.equals(event.truth)


def test_an_event_of_a_negative_number_is_not_written(tmp_path):
    """Event -7 was written ``event-00000007-hits.csv``, a name no reader finds."""
    with pytest.raises(ValueError, match="event -7: TrackML file names hold event numbers"):
        write_event(Event(0, -7, synthetic_event().hits), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_event_written_again_replaces_its_files_under_another_padding(tmp_path):
    """``event42-*`` are event 42's files as ``event000000042-*`` are: written again, the
    event replaces them (readers refuse a folder that holds both)."""
    event = synthetic_event()
    write_event(event, tmp_path)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("event000000042", "event42"))
    assert [p.name for p in event_files(tmp_path, 42)] == [
        f"event42-{kind}.csv" for kind in ("hits", "truth", "particles")
    ]
    with new_events(tmp_path) as write:
        assert write(Event(0, 42, event.hits))  # said replaced
    assert event_files(tmp_path, 42) == [tmp_path / "event000000042-hits.csv"]
    assert [back.truth for back in iter_events(tmp_path)] == [None]


def test_new_events_take_their_place_whole_or_not_at_all(tmp_path):
    """Events written through ``new_events`` replace the files of their numbers once the
    block ends; a block that fails (or is interrupted) leaves the folder as it was."""
    event = synthetic_event()
    write_event(event, tmp_path)
    (tmp_path / "event000000042-cells.csv").write_text("hit_id,ch0,ch1,value\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = Event(0, 42, synthetic_event(seed=1).hits)  # the same number, no truth
    with pytest.raises(KeyboardInterrupt), new_events(tmp_path) as write:
        write(other)
        write(Event(0, 43, other.hits))
        raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with new_events(tmp_path) as write:
        write(other)
        write(Event(0, 43, other.hits))
        assert event_files(tmp_path, 43) == []  # not before the block ends
    assert event_files(tmp_path, 42) == [tmp_path / "event000000042-hits.csv"]
    assert read_event(tmp_path / "event000000042").hits.equals(other.hits)
    assert read_event(tmp_path / "event000000043").truth is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "event000000042-hits.csv", "event000000043-hits.csv"
    ]  # fmt: skip


def test_a_file_name_held_by_a_folder_fails_before_any_event_takes_its_place(tmp_path):
    """A folder at event 43's hits file: the block fails naming it, event 42's files not
    moved in first (they were, the command exiting 1 with part of its output written)."""
    (tmp_path / "event000000043-hits.csv").mkdir()
    event = synthetic_event()
    refused = pytest.raises(OSError, match=r"event000000043-hits\.csv is not a regular file")
    with refused, new_events(tmp_path) as write:
        write(event)
        write(Event(0, 43, event.hits))
    assert [p.name for p in tmp_path.iterdir()] == ["event000000043-hits.csv"]


def test_new_events_that_fail_leave_no_folder_they_made(tmp_path):
    """A block that fails (an export of no events, Ctrl-C) leaves no new folder behind
    (it left an empty one, and the folders made above it); one that was there stays."""
    with pytest.raises(KeyboardInterrupt), new_events(tmp_path / "a" / "b") as write:
        write(synthetic_event())
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError), new_events(tmp_path / "a" / "b"):
        raise ValueError("no events")
    assert list(tmp_path.rglob("*")) == [tmp_path / "a"]


def test_an_event_whose_truth_is_spelt_with_other_padding_is_refused(tmp_path):
    """``event42-hits.csv`` beside ``event000000042-truth.csv``: the truth was dropped
    unsaid (the event read, imported and scored as one without truth); without truth read,
    the other spelling's truth is not looked at."""
    write_event(synthetic_event(), tmp_path)
    (tmp_path / "event000000042-hits.csv").rename(tmp_path / "event42-hits.csv")
    with pytest.raises(ValueError, match=r"event000000042-truth\.csv is event 42's too"):
        read_event(tmp_path / "event42")
    assert read_event(tmp_path / "event42", truth=False).truth is None


def test_an_event_named_twice_in_a_folder_or_past_2_63_is_refused(tmp_path):
    """``event1`` and ``event000000001`` are one event number: read as two events of it, they
    would be scored and submitted as one. Event numbers are int64s, as on the wire."""
    event = synthetic_event()
    write_event(event, tmp_path)
    (tmp_path / "event42-hits.csv").write_bytes((tmp_path / "event000000042-hits.csv").read_bytes())
    with pytest.raises(ValueError, match=r"event000000042 and event42 in .* are both event 42"):
        list(iter_events(tmp_path))
    big = tmp_path / "big"
    big.mkdir()
    (big / f"event{2**63}-hits.csv").write_bytes((tmp_path / "event42-hits.csv").read_bytes())
    with pytest.raises(
        ValueError, match=re.escape(f"event numbers must be below 2**63, got {2**63}")
    ):
        list(iter_events(big))


def test_truth_aligned_by_hit_id(tmp_path):
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    truth_path = tmp_path / "event000000042-truth.csv"
    _rewrite_csv(truth_path, lambda h, rows: (h, rows[::-1]))
    back = read_event(prefix)
    assert back.truth is not None and event.truth is not None
    assert back.truth.equals(event.truth)
    _rewrite_csv(truth_path, lambda h, rows: (h, rows[1:]))
    with pytest.raises(ValueError, match="no row for hit_id"):
        read_event(prefix)
    # a hits file cut short beside its whole truth file: refused, not scored as an event
    write_event(event, tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"
    _rewrite_csv(hits_path, lambda h, rows: (h, rows[:-3]))
    last = event.hits.hit_id[-3]
    with pytest.raises(
        ValueError, match=rf"truth.csv: 3 rows of hits the hits file does not have \(hit_id {last}"
    ):
        read_event(prefix)


def test_missing_particles_and_weights(tmp_path):
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    _rewrite_csv(tmp_path / "event000000042-truth.csv", _drop_column("weight"))
    back = read_event(prefix)
    assert back.truth is not None and event.truth is not None
    assert np.allclose(back.truth.hits.weight, event.truth.hits.weight, rtol=1e-6, atol=0)

    (tmp_path / "event000000042-particles.csv").unlink()
    back = read_event(prefix)
    assert back.truth is not None
    particles = back.truth.particles
    ids = np.unique(event.truth.hits.particle_id)
    assert np.array_equal(particles.particle_id, ids[ids != 0])
    assert np.all(np.isnan(particles.vz)) and np.all(particles.q == 0)
    nhits = [np.count_nonzero(event.truth.hits.particle_id == p) for p in ids[ids != 0]]
    assert np.array_equal(particles.nhits, nhits)
    assert back.truth.hits.weight.sum() == pytest.approx(1.0, abs=1e-5)
    # Without particles the pT is the truth momentum at each particle's first hit (vz 0).
    t = event.truth.hits
    distance = np.abs(t.tz.astype(np.float64))
    order = hit_order(t.particle_id, distance)
    first = {int(p): k for k, p in enumerate(t.particle_id) if order[k] == 0 and p}
    pt = np.array([np.hypot(t.tpx[first[int(p)]], t.tpy[first[int(p)]]) if p else 0.0
                   for p in t.particle_id])  # fmt: skip
    expected = hit_weights(t.particle_id, distance, pt)
    assert np.allclose(back.truth.hits.weight, expected, rtol=1e-6, atol=0)


def test_particles_read_without_their_file_are_written_without_it(tmp_path):
    prefix = write_event(synthetic_event(), tmp_path / "a")
    prefix.with_name(f"{prefix.name}-particles.csv").unlink()
    read = read_event(prefix)
    again = read_event(write_event(read, tmp_path / "b"))  # no file of NaN kinematics to refuse
    assert again.truth is not None and read.truth is not None
    assert not (tmp_path / "b" / "event000000042-particles.csv").exists()
    assert again.hits.equals(read.hits) and again.truth.hits.equals(read.truth.hits)
    assert np.array_equal(again.truth.particles.nhits, read.truth.particles.nhits)
    assert np.all(np.isnan(again.truth.particles.px))


def test_particles_of_partly_unknown_kinematics_are_refused_before_any_file(tmp_path):
    """Some particles without vertex and momentum (NaN), others with: a particles file would
    hold NaN that reading refuses, and none would drop the others' kinematics."""
    event = synthetic_event()
    assert event.truth is not None
    cols = event.truth.particles.columns()
    cols["px"] = cols["px"].copy()
    cols["px"][3] = np.nan
    truth = replace(event.truth, particles=Particles.from_columns(cols))
    n = len(cols["px"])
    with pytest.raises(ValueError, match=f"event 42: 1 of {n} particles have no vertex or"):
        write_event(replace(event, truth=truth), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hit_order_hand_built(tmp_path):
    (tmp_path / "event000000005-hits.csv").write_text(
        "hit_id,x,y,z,volume_id,layer_id,module_id\n"
        + "".join(f"{i},0,0,0,8,2,1\n" for i in (10, 11, 12, 13, 14, 15))
    )
    # particle 7 has vz = 10: |tz - vz| = 40, 20, 5, 20 (tie: file order); hit 14 is noise
    (tmp_path / "event000000005-truth.csv").write_text(
        "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz,weight\n"
        "10,7,0,0,50,0,0,1,0\n11,7,0,0,-10,0,0,1,0\n12,7,0,0,15,0,0,1,0\n"
        "13,7,0,0,30,0,0,1,0\n14,0,0,0,3,0,0,0,0\n15,8,0,0,-2,0,0,1,0\n"
    )
    (tmp_path / "event000000005-particles.csv").write_text(
        "particle_id,vx,vy,vz,px,py,pz,q,nhits\n7,0,0,10,1,0,0,1,4\n8,0,0,0,1,0,0,-1,1\n"
    )
    event = read_event(tmp_path / "event000000005", run=3)
    assert (event.run, event.event) == (3, 5)
    assert event.truth is not None
    assert event.truth.hits.hit_order.tolist() == [3, 1, 0, 2, -1, 0]


def test_iter_events(tmp_path):
    for number in (5, 3):
        event = synthetic_event(seed=number)
        write_event(Event(0, number, event.hits, event.truth), tmp_path)
    (tmp_path / "notes.txt").write_text("not an event")
    assert [e.event for e in iter_events(tmp_path)] == [3, 5]
    assert [e.event for e in iter_events(tmp_path / "event000000005")] == [5]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        next(iter_events(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        read_event(tmp_path / "event000000004")
    with pytest.raises(ValueError, match=r"notes.txt is no TrackML event file \(eventN-hits"):
        read_event(tmp_path / "notes.txt")  # another file given: named as such
    for name in ("event000000003", "event000000005"):  # unpadded numbers: 10 after 9
        for f in tmp_path.glob(f"{name}-*"):
            f.rename(tmp_path / f.name.replace(name, "event10" if "3" in name else "event9"))
    assert [e.event for e in iter_events(tmp_path)] == [9, 10]


def test_submission(tmp_path):
    tracks = Tracks(offsets=np.array([0, 2, 3]), hit_index=np.array([4, 0, 2]))
    labels = tracks.track_id_per_hit(6)
    hit_id = np.arange(100, 106, dtype=np.int64)
    path = tmp_path / "submission.csv"
    write_submission(path, {9: (hit_id[:2], np.array([0, 1])), 2: (hit_id, labels)})
    # a hit in no track (0) is a track of its own, numbered after the event's tracks: the
    # TrackML scorer would read all of them as one track
    assert path.read_text().splitlines() == [
        "event_id,hit_id,track_id",
        "2,100,1",
        "2,101,3",
        "2,102,2",
        "2,103,4",
        "2,104,1",
        "2,105,5",
        "9,100,2",
        "9,101,1",
    ]
    back = read_submission(path)
    assert list(back) == [2, 9]
    assert np.array_equal(back[2][0], hit_id) and back[2][1].tolist() == [1, 3, 2, 4, 1, 5]
    assert back[9][1].tolist() == [2, 1]


def test_a_submissions_track_0_is_a_track_and_a_negative_id_is_refused(tmp_path):
    """Read in, a file's track 0 is a track (as TrackML's scorer reads it), not hits in no
    track; a negative id, which the scorer leaves out of every track, is refused both ways."""
    path = tmp_path / "zero.csv"
    path.write_text("event_id,hit_id,track_id\n1,1,0\n1,2,0\n1,3,0\n1,4,1\n")
    hit_id, track_id = read_submission(path)[1]
    assert hit_id.tolist() == [1, 2, 3, 4]
    assert track_id.tolist() == [2, 2, 2, 1]
    particle_id, weight = np.array([7, 7, 7, 8]), np.array([0.3, 0.3, 0.3, 0.1])
    assert trackml_score(particle_id, weight, track_id) == pytest.approx(1.0)
    path.write_text("event_id,hit_id,track_id\n1,1,3\n1,2,-1\n")
    with pytest.raises(ValueError, match="column 'track_id', data row 2: -1 is outside"):
        read_submission(path)
    with pytest.raises(ValueError, match="event 1: hit 2 has track id -1: track ids are from 1"):
        write_submission(tmp_path / "w.csv", {1: (np.array([1, 2]), np.array([3, -1]))})


def test_a_submissions_ids_are_written_as_given_or_refused(tmp_path):
    """Ids are whole numbers of int64: labels 1.7 and 2.9 were written 1 and 2 (two tracks
    merged), hit id 2**63 + 5 and negative ids written as numbers no reader takes back."""
    path = tmp_path / "w.csv"
    cases: list[tuple[dict[Any, tuple[np.ndarray, np.ndarray]], str]] = [
        ({1: (np.array([1, 2, 3]), np.array([1.0, 1.7, 2.9]))}, "event 1: track_id must hold"),
        ({1: (np.array([2**63 + 5], np.uint64), np.array([1]))}, "event 1: hit_id must hold"),
        ({1.5: (np.array([1]), np.array([1]))}, "event_id must hold whole numbers"),
        ({-1: (np.array([1]), np.array([1]))}, "event -1: its id is negative"),
        ({1: (np.array([1, -4]), np.array([1, 1]))}, "event 1: hit id -4 is negative"),
    ]
    for submission, refused in cases:
        with pytest.raises(ValueError, match=refused):
            write_submission(path, submission)
        assert not path.exists()
    write_submission(path, {1: (np.array([1.0, 2.0]), np.array([2.0, 0.0]))})
    back = read_submission(path)[1]
    assert back[0].tolist() == [1, 2] and back[1].tolist() == [2, 3]


def test_a_submission_names_each_hit_once(tmp_path):
    # The TrackML scorer joins the submission to the truth hit by hit.
    with pytest.raises(ValueError, match="event 1: hit 2 is given 2 times"):
        write_submission(tmp_path / "w.csv", {1: (np.array([1, 2, 2]), np.array([1, 1, 2]))})
    path = tmp_path / "r.csv"
    path.write_text("event_id,hit_id,track_id\n1,5,1\n2,5,1\n2,6,1\n2,5,2\n")
    with pytest.raises(ValueError, match=rf"{path}: event 2: hit 5 is given 2 times"):
        read_submission(path)


# --------------------------------------------------------------------------- real data

REAL_EVENT = "qallse_ez-0.5_hpt-1.0/event000001000"


def _parse_float32(path: Path, names: list[str]) -> dict[int, np.ndarray]:
    """hit_id -> float32 parse of ``names`` columns, with Python's csv and float()."""
    with path.open() as f:
        return {
            int(row["hit_id"]): np.array([float(row[n]) for n in names], dtype=np.float32)
            for row in csv.DictReader(f)
        }


@pytest.mark.realdata
def test_real_event_values(shared_trackml):
    prefix = shared_trackml / REAL_EVENT
    event = read_event(prefix)
    assert len(event.hits) == 27_543 and event.event == 1000
    assert event.truth is not None
    assert len(event.truth.particles) == 4_093

    hit_vals = _parse_float32(prefix.with_name(prefix.name + "-hits.csv"), ["x", "y", "z"])
    expected = np.array([hit_vals[h] for h in event.hits.hit_id.tolist()])
    got = np.stack([event.hits.x, event.hits.y, event.hits.z], axis=1)
    assert np.array_equal(got, expected)

    names = ["particle_id", "tx", "ty", "tz", "tpx", "tpy", "tpz", "weight"]
    with prefix.with_name(prefix.name + "-truth.csv").open() as f:
        rows = {int(r["hit_id"]): r for r in csv.DictReader(f)}
    truth = event.truth.hits
    for i, h in enumerate(event.hits.hit_id.tolist()):
        row = rows[h]
        assert truth.particle_id[i] == int(row["particle_id"])
        for n in names[1:]:
            assert getattr(truth, n)[i] == np.float32(float(row[n]))
    assert truth.weight.sum() == pytest.approx(1.0, abs=1e-4)
    assert np.all((truth.hit_order >= 0) == (truth.particle_id != 0))


@pytest.mark.realdata
def test_real_event_round_trip(shared_trackml, tmp_path):
    event = read_event(shared_trackml / REAL_EVENT)
    back = read_event(write_event(event, tmp_path))
    assert back.truth is not None and event.truth is not None
    assert back.hits.equals(event.hits) and back.truth.equals(event.truth)


@pytest.mark.realdata
def test_real_particle_list(shared_trackml):
    """The complete particle list of event 1000 (its README: 12,263 particles), each row as
    the file writes it."""
    path = shared_trackml / "full_event000001000" / "event000001000-particles.csv"
    particles = read_particles(path)
    assert len(particles) == 12_263
    with path.open() as f:
        rows = list(csv.DictReader(f))
    for k in (0, 6_000, len(rows) - 1):
        assert particles.particle_id[k] == int(rows[k]["particle_id"])
        assert particles.q[k] == int(rows[k]["q"]) and particles.nhits[k] == int(rows[k]["nhits"])
        for name in ("vx", "vy", "vz", "px", "py", "pz"):
            assert getattr(particles, name)[k] == np.float32(float(rows[k][name]))


@pytest.mark.realdata
def test_real_event_without_truth(shared_trackml):
    event = read_event(shared_trackml / "qallse_ez-1.0_hpt-1.0_no_truth" / "event000001000")
    assert len(event.hits) == 55_446 and event.truth is None


def test_track_parameters_csv(tmp_path) -> None:
    from streamtrk.event import TRACK_PARAM_DTYPES, Tracks
    from streamtrk.io.trackml import write_track_parameters

    rng = np.random.default_rng(3)
    params = {k: rng.normal(size=2).astype(dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    tracks = {7: Tracks(np.array([0, 3, 8]), np.arange(8), params), 2: Tracks.empty()}
    path = tmp_path / "tracks.csv"
    write_track_parameters(path, tracks, beam_line=(0.5, -1.25))
    header, *rows = path.read_text().splitlines()
    assert header == "event_id,track_id,hits," + ",".join(TRACK_PARAM_DTYPES) + ",beam_x,beam_y"
    table = np.loadtxt(rows, delimiter=",", ndmin=2)
    assert table[:, :3].tolist() == [[7, 1, 3], [7, 2, 5]]
    for i, (k, dt) in enumerate(TRACK_PARAM_DTYPES.items(), start=3):
        np.testing.assert_array_equal(table[:, i].astype(dt), params[k])  # exact round trip
    assert table[:, -2:].tolist() == [[0.5, -1.25]] * 2  # the perigees' beam line


# ------------------------------------------------------------------------- edge cases


def _significant(text: str) -> str:
    """The significant digits of a number's text (no sign, point, exponent or zeros around)."""
    return text.split("e")[0].replace("-", "").replace(".", "").strip("0")


def test_floats_are_written_with_the_fewest_digits(tmp_path) -> None:
    # by hand; 1e-40 (subnormal) and 1.5e15 lie outside the exact decimal range: 9 digits
    special = [0.1, -0.1, 123456.7, 123456.78, 1e-5, 0.0, 3.0, 2.5e-10, 1e15, 1e-40, 1.5e15]
    rng = np.random.default_rng(5)
    random = rng.uniform(-7, 7, 5000) * 10.0 ** rng.integers(-9, 6, 5000)
    random = random[np.abs(random) >= 1e-10]  # the rest: 9 digits
    values = np.r_[special, random].astype(np.float32)
    n = len(values)
    ints = np.zeros(n, np.int32)
    write_event(Event(0, 1, Hits(np.arange(n, dtype=np.int64), values, values, values,
                                 ints, ints, ints)), tmp_path)  # fmt: skip
    rows = (tmp_path / "event000000001-hits.csv").read_text().splitlines()[1:]
    texts = [row.split(",")[1] for row in rows]
    assert texts[: len(special)] == [
        "0.1", "-0.1", "123456.7", "123456.78", "1e-05", "0", "3", "2.5e-10", "999999986991104",
        "9.9999461e-41", "1.50000001e+15",
    ]  # fmt: skip
    for text, value in zip(texts[len(special) :], values[len(special) :], strict=True):
        assert _significant(text) == _significant(np.format_float_scientific(value)), value


def test_an_event_without_hits_round_trips(tmp_path) -> None:
    empty = Event(0, 3, synthetic_event().hits.take(np.arange(0)))
    back = read_event(write_event(empty, tmp_path))
    assert len(back.hits) == 0 and back.hits.equals(empty.hits)


def test_the_largest_values_of_a_column_type_are_read(tmp_path) -> None:
    prefix = write_event(Event(0, 42, synthetic_event().hits.take(np.arange(3))), tmp_path)
    _rewrite_csv(tmp_path / "event000000042-hits.csv", _set_value("volume_id", 1, "2147483647"))
    assert read_event(prefix).hits.volume_id.tolist()[1] == 2**31 - 1


def test_a_prefix_without_an_event_number_is_refused(tmp_path) -> None:
    (tmp_path / "run-hits.csv").write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n")
    with pytest.raises(ValueError, match="cannot parse an event number from 'run'"):
        read_event(tmp_path / "run")


def test_iter_events_takes_a_str_and_reads_run_0(tmp_path) -> None:
    write_event(synthetic_event(), tmp_path)
    assert [(e.run, e.event) for e in iter_events(str(tmp_path))] == [(0, 42)]
    assert [(e.run, e.event) for e in iter_events(tmp_path, run=4)] == [(4, 42)]


def test_events_are_written_into_a_new_folder_given_as_str(tmp_path) -> None:
    event = synthetic_event()
    prefix = write_event(event, str(tmp_path / "a" / "b"))
    assert read_event(prefix).hits.equals(event.hits)
    with new_events(str(tmp_path / "c" / "d")) as write:
        assert write(event) is False  # no files of event 42 there before
    with new_events(tmp_path / "c" / "d") as write:
        assert write(event) is True  # now there are: they are replaced
    assert read_event(tmp_path / "c" / "d" / "event000000042").hits.equals(event.hits)


def test_one_particle_s_vertex_orders_its_hits(tmp_path) -> None:
    # particle 7 alone in -particles.csv, vz = 10: |tz - vz| = 40, 20, 5, 20 (tie: file order
    # along the particle; one order weight, the reference's, both at index 1)
    (tmp_path / "event000000005-hits.csv").write_text(
        "hit_id,x,y,z,volume_id,layer_id,module_id\n"
        + "".join(f"{i},0,0,0,8,2,1\n" for i in (10, 11, 12, 13))
    )
    (tmp_path / "event000000005-truth.csv").write_text(
        "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz\n"
        "10,7,0,0,50,0,0,1\n11,7,0,0,-10,0,0,1\n12,7,0,0,15,0,0,1\n13,7,0,0,30,0,0,1\n"
    )
    (tmp_path / "event000000005-particles.csv").write_text(
        "particle_id,vx,vy,vz,px,py,pz,q,nhits\n7,0,0,10,3,0,0,1,4\n"
    )
    truth = read_event(tmp_path / "event000000005").truth
    assert truth is not None
    assert truth.hits.hit_order.tolist() == [3, 1, 0, 2]
    order_weights = ORDER_WEIGHTS[4, [3, 1, 0, 1]]
    assert truth.hits.weight == pytest.approx(order_weights / order_weights.sum())


def test_weights_without_particles_take_each_particle_s_first_hit_pt(tmp_path) -> None:
    # no -particles.csv, no weight column: particles 1 (pT 3 at its first hit, |tz| = 1)
    # and 2 (pT 0.5) of 4 hits each; the later hits' momenta do not count
    (tmp_path / "event000000006-hits.csv").write_text(
        "hit_id,x,y,z,volume_id,layer_id,module_id\n"
        + "".join(f"{i},0,0,0,8,2,1\n" for i in range(1, 10))
    )
    (tmp_path / "event000000006-truth.csv").write_text(
        "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz\n"
        "1,1,0,0,1,3,0,1\n2,1,0,0,2,9,0,1\n3,1,0,0,3,9,0,1\n4,1,0,0,4,9,0,1\n"
        "5,2,0,0,-1,0,0.5,1\n6,2,0,0,-2,0,9,1\n7,2,0,0,-3,0,9,1\n8,2,0,0,-4,0,9,1\n"
        "9,0,0,0,0,5,5,5\n"
    )
    truth = read_event(tmp_path / "event000000006").truth
    assert truth is not None
    expected = np.r_[ORDER_WEIGHTS[4, :4] * 1.0, ORDER_WEIGHTS[4, :4] * 0.2, 0.0] / 1.2
    assert truth.hits.weight == pytest.approx(expected, rel=1e-6)


def test_kinematics_unknown_is_any_of_them_unknown() -> None:
    # particle 1 known, 2 only its vz, 3 nothing
    nan, ints = np.float32(np.nan), np.zeros(3, np.int32)
    columns = [np.array([1.0, nan, nan], np.float32) for _ in range(6)]
    columns[2][1] = 5.0  # vz known: particle 2 still lacks the rest
    kinematics = dict(zip(("vx", "vy", "vz", "px", "py", "pz"), columns, strict=True))
    particles = Particles.from_columns(
        {"particle_id": np.arange(1, 4), **kinematics, "q": ints, "nhits": ints}
    )
    assert kinematics_unknown(particles).tolist() == [False, True, True]


def test_a_submission_of_unequal_arrays_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="event 1: hit_id and track_id must be equal-length 1-D"):
        write_submission(tmp_path / "s.csv", {1: (np.arange(3), np.ones(2))})
    with pytest.raises(ValueError, match="equal-length 1-D"):
        write_submission(tmp_path / "s.csv", {1: (np.ones((2, 2)), np.ones((2, 2)))})
    assert not (tmp_path / "s.csv").exists()


def test_by_event_number() -> None:
    assert by_event_number({(1, 5): "a", (1, 3): "b"}) == {5: "a", 3: "b"}
    with pytest.raises(ValueError, match=r"event number 5 occurs in more than one run \(run 2"):
        by_event_number({(1, 5): "a", (2, 5): "b"})


def test_a_parse_error_without_a_place_is_said_as_numpy_says_it() -> None:
    header = ["hit_id", "x"]
    assert _located("could not convert string 'a' at row 2, column 2.", header) == (
        "column 'x', data row 3: could not convert string 'a'"
    )
    assert _located("could not convert at row 0, column 1", header).startswith("column 'hit_id'")
    for message in ("no place in it", "bad at row 0, column 3.", "bad at row 0, column 0."):
        assert _located(message, header) == message


def test_gzip_files_are_compressed_and_carry_no_time(tmp_path) -> None:
    write_event(synthetic_event(), tmp_path / "gz", compress=True)
    write_event(synthetic_event(), tmp_path / "plain")
    for path in (tmp_path / "gz").iterdir():
        data = path.read_bytes()
        assert data[4:8] == bytes(4), path.name  # the gzip header's mtime: 0
        plain = tmp_path / "plain" / path.name.removesuffix(".gz")
        assert len(data) < 0.8 * plain.stat().st_size, path.name  # not stored uncompressed


def test_empty_submission_and_track_parameters_are_a_header(tmp_path) -> None:
    write_submission(tmp_path / "s.csv", {})
    assert (tmp_path / "s.csv").read_text() == "event_id,hit_id,track_id\n"
    assert read_submission(tmp_path / "s.csv") == {}
    write_track_parameters(tmp_path / "t.csv", {})
    assert (tmp_path / "t.csv").read_text().splitlines()[1:] == []


def test_a_missing_folder_is_said_to_be_missing(tmp_path) -> None:
    """``evaluate run7/`` where there is no ``run7``: it read as an event prefix, "no
    run7-hits.csv[.gz] in ..."."""
    with pytest.raises(FileNotFoundError, match=f"^no folder {tmp_path}/run7/$"):
        next(iter_events(f"{tmp_path}/run7/"))
    with pytest.raises(FileNotFoundError, match=r"no event1-hits\.csv"):
        next(iter_events(tmp_path / "event1"))  # a prefix: its files are looked for


def test_a_submission_is_read_in_file_order_whatever_its_events_interleaving(tmp_path):
    # More rows than NumPy's introsort sorts by insertion (16): an unstable sort by event
    # reorders an event's rows.
    hit_id = np.arange(100, 0, -1)
    event_id = 1 + np.arange(100) % 2
    path = tmp_path / "interleaved.csv"
    path.write_text(
        "event_id,hit_id,track_id\n"
        + "".join(f"{e},{h},{h % 7 + 1}\n" for e, h in zip(event_id, hit_id, strict=True))
    )
    back = read_submission(path)
    for e in (1, 2):
        assert back[e][0].tolist() == hit_id[event_id == e].tolist()
        assert back[e][1].tolist() == (hit_id[event_id == e] % 7 + 1).tolist()


def test_truth_of_noise_alone_without_particles_or_weights_is_read(tmp_path):
    # No particle at all: no particle's vertex or first hit to look up, and none needed.
    (tmp_path / "event000000005-hits.csv").write_text(
        "hit_id,x,y,z,volume_id,layer_id,module_id\n1,1,2,3,8,2,1\n2,4,5,6,8,4,1\n"
    )
    (tmp_path / "event000000005-truth.csv").write_text(
        "hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz\n1,0,1,2,3,0,0,0\n2,0,4,5,6,0,0,0\n"
    )
    event = read_event(tmp_path / "event000000005")
    assert event.truth is not None
    assert event.truth.hits.weight.tolist() == [0.0, 0.0]
    assert event.truth.hits.hit_order.tolist() == [-1, -1]
    assert len(event.truth.particles) == 0


def test_a_prefix_with_more_than_an_event_number_is_refused(tmp_path) -> None:
    (tmp_path / "event000001000_v2-hits.csv").write_text(
        "hit_id,x,y,z,volume_id,layer_id,module_id\n1,1,2,3,8,2,1\n"
    )
    with pytest.raises(ValueError, match="cannot parse an event number from 'event000001000_v2'"):
        read_event(tmp_path / "event000001000_v2")


def test_event_files_are_hits_first_whatever_their_padding(tmp_path) -> None:
    for name in ("event1-truth.csv", "event000000001-hits.csv"):
        (tmp_path / name).write_text("")
    assert [p.name for p in event_files(tmp_path, 1)] == [
        "event000000001-hits.csv",
        "event1-truth.csv",
    ]


def test_track_parameters_are_written_in_increasing_event_order(tmp_path) -> None:
    # As the submission beside them (write_submission sorts its events).
    params = {k: np.zeros(1, dt) for k, dt in TRACK_PARAM_DTYPES.items()}
    tracks = {9: Tracks(np.array([0, 2]), np.arange(2), params)}
    tracks[2] = Tracks(np.array([0, 3]), np.arange(3), params)
    path = tmp_path / "tracks.csv"
    write_track_parameters(path, tracks)
    rows = [r.split(",")[:3] for r in path.read_text().splitlines()[1:]]
    assert rows == [["2", "1", "3"], ["9", "1", "2"]]


def test_a_gzip_file_corrupt_inside_is_refused_as_not_whole(tmp_path) -> None:
    """A gzip stream damaged inside (zlib's "invalid ..." error, neither OSError nor
    EOFError) is refused as a file cut short is: ValueError naming it."""
    write_event(Event(0, 42, synthetic_event().hits), tmp_path, compress=True)
    gz = tmp_path / "event000000042-hits.csv.gz"
    data = bytearray(gz.read_bytes())
    data[10:40] = b"\xff" * 30  # the deflate blocks' start
    gz.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"hits\.csv\.gz: not a whole gzip file"):
        read_event(tmp_path / "event000000042")


def test_an_id_three_times_is_said_at_its_first_two_rows(tmp_path) -> None:
    """The error names the first two rows holding the repeated id, not the first and last."""
    prefix = write_event(Event(0, 42, synthetic_event().hits.take(np.arange(4))), tmp_path)
    hits_path = tmp_path / "event000000042-hits.csv"
    _rewrite_csv(hits_path, lambda h, rows: (h, [rows[0], rows[1], rows[0], rows[0]]))
    with pytest.raises(ValueError, match=r"column 'hit_id': \d+ in data rows 1 and 3$"):
        read_event(prefix)


def test_without_truth_its_files_are_neither_read_nor_checked(tmp_path) -> None:
    """``truth=False``: hits alone, even beside a truth file that would be refused, and the
    run given is the event's."""
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    (tmp_path / "event000000042-truth.csv").write_text("hit_id,particle_id\n1,x\n")
    back = read_event(prefix, run=5, truth=False)
    assert back.truth is None and (back.run, back.event) == (5, 42)
    assert back.hits.equals(event.hits)
    assert [(e.run, e.truth) for e in iter_events(tmp_path, run=2, truth=False)] == [(2, None)]


def test_files_of_an_event_without_hits_are_no_event(tmp_path) -> None:
    """An event is known by its hits file: a truth or cells file alone (a copy cut short)
    names no event to read."""
    write_event(synthetic_event(), tmp_path)
    (tmp_path / "event000000043-cells.csv").write_text("hit_id,ch0,ch1,value\n")
    (tmp_path / "event000000044-truth.csv").write_text("hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz\n")
    assert [e.event for e in iter_events(tmp_path)] == [42]


def test_a_truth_file_one_row_longer_than_its_hits_is_refused(tmp_path):
    """One truth row of a hit the hits file lacks (its last row cut off) is as refused as
    three: its weight would not add up."""
    event = synthetic_event()
    prefix = write_event(event, tmp_path)
    _rewrite_csv(tmp_path / "event000000042-hits.csv", lambda h, rows: (h, rows[:-1]))
    with pytest.raises(ValueError, match=r"truth.csv: 1 rows of hits the hits file does not"):
        read_event(prefix)


def test_an_event_whose_particles_are_spelt_with_other_padding_is_refused(tmp_path):
    """``event42-hits.csv`` and its truth beside ``event000000042-particles.csv``: those
    particles are the event's too, not to be dropped unsaid (the truth read without them)."""
    write_event(synthetic_event(), tmp_path)
    for kind in ("hits", "truth"):
        (tmp_path / f"event000000042-{kind}.csv").rename(tmp_path / f"event42-{kind}.csv")
    with pytest.raises(ValueError, match=r"event000000042-particles\.csv is event 42's too"):
        read_event(tmp_path / "event42")
    assert read_event(tmp_path / "event42", truth=False).truth is None


def test_an_event_numbered_minus_one_is_not_written(tmp_path):
    """Every negative number is refused, -1 as -7: ``event-00000001`` is no reader's."""
    with pytest.raises(ValueError, match="event -1: TrackML file names hold event numbers"):
        write_event(Event(0, -1, synthetic_event().hits), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_link_at_an_event_s_file_fails_before_any_event_takes_its_place(tmp_path):
    """A symlink where an event's file goes (to a file elsewhere) is no regular file there:
    the block fails naming it, the link and what it points to left as they were."""
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("mine\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "event000000042-hits.csv").symlink_to(elsewhere)
    refused = pytest.raises(OSError, match=r"event000000042-hits\.csv is not a regular file")
    with refused, new_events(out) as write:
        write(synthetic_event())
    assert (out / "event000000042-hits.csv").is_symlink()
    assert elsewhere.read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == [
        "event000000042-hits.csv"
    ]


def test_a_file_with_rows_under_a_blank_header_is_not_said_to_be_empty(tmp_path):
    """A header line lost (a blank first line, data rows after): its columns are said to be
    missing, not "empty file", which would send the user looking for a file cut to 0 bytes."""
    prefix = write_event(synthetic_event(), tmp_path)
    path = tmp_path / "event000000042-hits.csv"
    path.write_text("\n" + path.read_text().split("\n", 1)[1])
    with pytest.raises(ValueError, match=r"hits\.csv: missing column 'hit_id' \(header: ''\)"):
        read_event(prefix)


def test_a_long_header_is_quoted_to_its_first_120_characters(tmp_path):
    """The quote of a long header line is its first ``SHOWN_CHARS`` (120) characters, no
    fewer, said to be so."""
    path = tmp_path / "event000000001-hits.csv"
    path.write_text("x" * 200 + "\n1\n")
    with pytest.raises(ValueError) as err:
        read_event(tmp_path / "event000000001")
    assert str(err.value).endswith(f"(header: {'x' * 120!r} (the first 120 characters))")
