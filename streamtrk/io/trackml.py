"""TrackML CSV files: events (hits, truth, particles) and submissions.

An event is a path prefix such as ``.../event000001000`` naming ``<prefix>-hits.csv`` and,
optionally, ``-truth.csv``, ``-particles.csv`` (and ``-cells.csv``, ignored); each may be
gzipped (``.csv.gz``), but not be there both ways (refused). Columns are found by header
name, so their order does not matter (a byte-order mark before the header is skipped).
Refused, naming the file, and the column and data row where there is one: a column named
twice, a value that is not a number, not finite or does not fit its type (or a negative
hit weight), a row of other fields than the header, a hit id twice, truth without a row
for a hit or with rows of hits the hits file lacks, a particle twice, or a truth particle
that ``-particles.csv`` (where present) does not list.

Floats are written with the fewest significant digits (``%.<p>g``: p <= 9, or the integer
digits where there are more) that parse back to the identical float32 (9 for magnitudes
outside [1e-10, 1e15), which no detector coordinate has), so a write/read round trip
reproduces every array exactly and the output stays as short as the original files. Output
is deterministic (gzip with mtime 0).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from streamtrk.event import (
    HIT_DTYPES,
    HIT_TRUTH_DTYPES,
    PARTICLE_DTYPES,
    TRACK_PARAM_DTYPES,
    Event,
    Hits,
    HitTruth,
    Particles,
    Tracks,
    Truth,
    alone_as_tracks,
    as_int64,
)
from streamtrk.io.paths import write_whole
from streamtrk.io.weights import hit_order, hit_weights
from streamtrk.wire.schema import MAX_INT
from streamtrk.xp import index_of, lookup

TRUTH_COLUMNS = ("hit_id", "particle_id", "tx", "ty", "tz", "tpx", "tpy", "tpz", "weight")
_TRUTH_CSV_DTYPES = {"hit_id": "<i8", **{k: HIT_TRUTH_DTYPES[k] for k in TRUTH_COLUMNS[1:]}}
_SUBMISSION_DTYPES = {"event_id": "<i8", "hit_id": "<i8", "track_id": "<i8"}
#: Integer columns that may be negative: the charge (ids, counts and a submission's track
#: ids not: TrackML's scorer takes track ids from 0).
SIGNED_COLUMNS = frozenset({"q"})
T = TypeVar("T")
_EVENT_RE = re.compile(r"event(\d+)")
_HITS_FILE_RE = re.compile(r"(event\d+)-hits\.csv(?:\.gz)?")
_KINDS = ("hits", "truth", "particles", "cells")
_EVENT_FILE_RE = re.compile(r"(event\d+)-(?:hits|truth|particles|cells)\.csv(?:\.gz)?")
_POW10 = 10.0 ** np.arange(23)
GZIP_MAGIC = b"\x1f\x8b"
SHOWN_CHARS = 120  # of a header line quoted in an error

Columns = dict[str, np.ndarray]


# --------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed where it is named ``.gz`` or starts as gzip does (a
    CSV file cannot: ``gzip -c`` into a ``.csv``)."""
    data = path.read_bytes()
    if not path.name.endswith(".gz") and not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a whole gzip file ({err})") from err


def _shown(header: str) -> str:
    """A header line as an error quotes it: its first ``SHOWN_CHARS`` characters."""
    cut = header[:SHOWN_CHARS]
    return repr(cut) + (f" (the first {SHOWN_CHARS} characters)" if len(header) > len(cut) else "")


def _checked(path: Path, name: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` (int64 or float64 as parsed) as ``dtype``; ValueError naming the file, the
    column and the first bad row where a value does not fit: an integer outside the dtype
    (or below 0, but in :data:`SIGNED_COLUMNS`: ids and counts), a float not
    finite once rounded (NaN, inf, or past float32's range), a hit weight below 0."""
    if dtype.kind == "i":
        lo, hi = (np.iinfo(dtype).min if name in SIGNED_COLUMNS else 0), np.iinfo(dtype).max
        bad = (values < lo) | (values > hi)
        what = f"outside [{lo}, {hi}]"
        out = values.astype(dtype)
    else:
        with np.errstate(over="ignore"):
            out = values.astype(dtype)
        bad = ~np.isfinite(out)
        what = "not a finite number"
        if name == "weight":  # a hit's share of the score
            bad |= out < 0
            what += " >= 0"
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{path}: column {name!r}, data row {row + 1}: {values[row]} is {what}")
    return out


def _located(message: str, header: Sequence[str]) -> str:
    """NumPy's parse error with its place (``at row R, column C``: R from 0 over the data
    rows, C from 1) said as :func:`_checked` says it: column name, data row from 1."""
    at = re.search(r" at row (\d+), column (\d+)\.?$", message)
    if at is None or not 0 < int(at[2]) <= len(header):
        return message
    return f"column {header[int(at[2]) - 1]!r}, data row {int(at[1]) + 1}: {message[: at.start()]}"


def _read_csv(path: Path, dtypes: Mapping[str, str], optional: Sequence[str] = ()) -> Columns:
    """Columns of a headed CSV file, parsed by header name into ``dtypes``.

    Floats are parsed as float64 and rounded to the target dtype. Columns in ``optional``
    may be missing (then absent from the result); other missing columns raise ValueError.
    """
    text = _read_bytes(path).replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # any line ends
    header, _, body = text.partition(b"\n")
    head = header.decode("utf-8", errors="replace").removeprefix("\ufeff")  # a BOM
    body = b"\n".join(line for line in body.split(b"\n") if line.strip())  # no blank lines
    if not head.strip() and not body:
        raise ValueError(f"{path}: empty file (no header)")
    fields = [name.strip() for name in head.split(",")]
    index = {name: i for i, name in enumerate(fields)}
    if len(index) != len(fields):
        twice = next(name for name in fields if fields.count(name) > 1)
        raise ValueError(f"{path}: column {_shown(twice)} twice in the header {_shown(head)}")
    for name in dtypes:
        if name not in index and name not in optional:
            raise ValueError(f"{path}: missing column {name!r} (header: {_shown(head)})")
    names = [name for name in dtypes if name in index]
    parse = [(n, np.int64 if np.dtype(dtypes[n]).kind == "i" else np.float64) for n in names]
    cols = [index[n] for n in names]
    table = np.zeros(0, dtype=parse)
    if body:
        try:  # no comment lines: a '#' is an error, not a hit left out
            table = np.loadtxt(
                io.BytesIO(body), delimiter=",", dtype=parse, usecols=cols, ndmin=1, comments=None
            )
        except ValueError as err:  # a value that is not a number, or a row cut short
            where = _other_fields(body, len(fields)) or _located(str(err), fields)
            raise ValueError(f"{path}: {where}") from err
        # A row of other fields, even one missing only a column not read (each row is
        # counted: one too long and one too short hold as many commas as two good ones).
        if (other := _other_fields(body, len(fields))) is not None:
            raise ValueError(f"{path}: {other}")
    return {n: _checked(path, n, table[n], np.dtype(dtypes[n])) for n in names}


def _other_fields(body: bytes, n_fields: int) -> str | None:
    """The first data row of other than ``n_fields`` fields, said, or None."""
    rows = (line.count(b",") + 1 for line in body.split(b"\n"))
    row, n = next(((k, n) for k, n in enumerate(rows) if n != n_fields), (None, None))
    return None if row is None else f"data row {row + 1} has {n} fields, the header {n_fields}"


def _find(prefix: Path, kind: str) -> Path | None:
    """The event's ``kind`` file, ``.csv`` or ``.csv.gz``; ValueError when both are there
    (which one holds the event is not to be guessed)."""
    paths = [prefix.with_name(f"{prefix.name}-{kind}{suffix}") for suffix in (".csv", ".csv.gz")]
    found = [path for path in paths if path.is_file()]
    if len(found) > 1:
        raise ValueError(f"{found[0]} and {found[1].name} are both there: remove one")
    return found[0] if found else None


def _event_number(prefix: Path) -> int:
    match = _EVENT_RE.fullmatch(prefix.name)
    if match is None:
        raise ValueError(
            f"cannot parse an event number from {prefix.name!r}: TrackML files are named "
            "event<number>-hits.csv (and -cells, -particles, -truth)"
        )
    number = int(match.group(1))
    if number >= MAX_INT:  # the wire's bound, and NumPy's int64
        raise ValueError(f"{prefix.name}: event numbers must be below 2**63, got {number}")
    return number


def _unique_column(path: Path, name: str, ids: np.ndarray) -> None:
    """ValueError naming the smallest id of column ``name`` met twice and its first two
    data rows (from 1)."""
    order = np.argsort(ids, kind="stable")  # a repeated id's rows in file order
    if (twice := np.flatnonzero(ids[order][1:] == ids[order][:-1])).size:
        a, b = order[twice[0]], order[twice[0] + 1]
        raise ValueError(f"{path}: column {name!r}: {ids[a]} in data rows {a + 1} and {b + 1}")


def _align(file_ids: np.ndarray, hit_id: np.ndarray, path: Path) -> np.ndarray:
    """Rows of ``file_ids`` holding each of ``hit_id``: ValueError unless each hit has one
    row and each row a hit (a TrackML truth file has one row a hit; rows of hits the hits
    file lacks are a file cut short or of other hits, whose weights would not add up)."""
    _unique_column(path, "hit_id", file_ids)
    rows, found = index_of(file_ids, hit_id)
    if not found.all():
        raise ValueError(f"{path}: no row for hit_id {hit_id[~found][0]}")
    if len(file_ids) > len(hit_id):
        extra = np.ones(len(file_ids), dtype=bool)
        extra[rows] = False
        first = int(np.argmax(extra))
        raise ValueError(
            f"{path}: {int(extra.sum())} rows of hits the hits file does not have (hit_id "
            f"{file_ids[first]}, data row {first + 1}, first): a hits file cut short, or "
            "truth of other hits?"
        )
    return rows


def kinematics_unknown(particles: Particles) -> np.ndarray:
    """Per particle, whether its vertex and momentum are unknown (NaN: read without
    ``-particles.csv``)."""
    columns = (particles.vx, particles.vy, particles.vz, particles.px, particles.py, particles.pz)
    return ~np.isfinite(np.stack(columns)).all(axis=0)


def _particles_from_truth(particle_id: np.ndarray) -> Particles:
    """Particles with only ids and hit counts (kinematics NaN, q 0) when particles.csv is absent."""
    ids, nhits = np.unique(particle_id[particle_id != 0], return_counts=True)
    cols = dict.fromkeys(("vx", "vy", "vz", "px", "py", "pz"), np.full(len(ids), np.nan))
    return Particles.from_columns(
        {**cols, "particle_id": ids, "q": np.zeros(len(ids)), "nhits": nhits}
    )


def _per_hit(particles: Particles, particle_id: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (per particle) looked up for each hit's particle; NaN where unknown."""
    return lookup(values, *index_of(particles.particle_id, particle_id))


def _pt_per_hit(particles: Particles, pid: np.ndarray, cols: Columns) -> np.ndarray:
    """Each hit's particle pT; where unknown, the truth pT at the particle's first hit."""
    pt = _per_hit(particles, pid, particles.pt)
    unknown = np.isnan(pt) & (pid != 0)
    if unknown.any():
        first = cols["hit_order"] == 0
        at_first = np.hypot(cols["tpx"][first], cols["tpy"][first])
        pt[unknown] = at_first[index_of(pid[first], pid[unknown])[0]]
    return pt


def _read_truth(truth_path: Path, particles_path: Path | None, hit_id: np.ndarray) -> Truth:
    cols = _read_csv(truth_path, _TRUTH_CSV_DTYPES, optional=("weight",))
    rows = _align(cols.pop("hit_id"), hit_id, truth_path)
    cols = {k: v[rows] for k, v in cols.items()}
    pid = cols["particle_id"]
    if particles_path is None:
        particles = _particles_from_truth(pid)
    else:
        particles = read_particles(particles_path)
        missing = np.setdiff1d(pid[pid != 0], particles.particle_id)
        if len(missing):  # their particles would be missed by every efficiency
            raise ValueError(
                f"{truth_path}: {len(missing)} particle_id values (first {missing[0]}) are not "
                f"in {particles_path.name}"
            )
    vz = np.nan_to_num(_per_hit(particles, pid, particles.vz), nan=0.0)  # unknown: vz = 0
    distance = np.abs(cols["tz"] - vz)
    cols["hit_order"] = hit_order(pid, distance)
    if "weight" not in cols:
        cols["weight"] = hit_weights(pid, distance, _pt_per_hit(particles, pid, cols))
    return Truth(hits=HitTruth.from_columns(cols), particles=particles)


def read_particles(path: str | Path) -> Particles:
    """A TrackML particles file (``-particles.csv[.gz]``): vertex (mm), momentum (GeV),
    charge and hits of each particle; a particle_id met twice is an error."""
    path = Path(path)
    particles = Particles.from_columns(_read_csv(path, PARTICLE_DTYPES))
    _unique_column(path, "particle_id", particles.particle_id)
    return particles


def read_event(path: str | Path, *, run: int = 0, truth: bool = True) -> Event:
    """Read one TrackML event from its path prefix (e.g. ``.../event000001000``) or one of
    its files (``-hits.csv[.gz]``, or its truth, particles or cells file).

    The event number is parsed from the prefix. Truth is read when ``truth`` and
    ``-truth.csv`` exists (without ``truth`` its files are neither read nor checked);
    ``hit_order`` is computed from |tz - vz| and, when the truth has no ``weight`` column,
    official weights are computed. Without ``-particles.csv`` the
    particles are the truth's ids with NaN kinematics, q 0 and nhits counted from the truth.
    """
    prefix = Path(path)
    if event_file := _EVENT_FILE_RE.fullmatch(prefix.name):
        prefix = prefix.with_name(event_file[1])
    elif prefix.is_file():  # not "no serve.toml-hits.csv in ..."
        raise ValueError(
            f"{path} is no TrackML event file (eventN-hits.csv, or its truth, particles or "
            "cells file), nor an event prefix"
        )
    hits_path = _find(prefix, "hits")
    if hits_path is None:
        raise FileNotFoundError(f"no {prefix.name}-hits.csv[.gz] in {prefix.parent}")
    number = _event_number(prefix)
    _one_spelling(prefix, number, ("hits", "truth", "particles") if truth else ("hits",))
    hits = Hits.from_columns(_read_csv(hits_path, HIT_DTYPES))
    _unique_column(hits_path, "hit_id", hits.hit_id)
    truth_path = _find(prefix, "truth") if truth else None
    if truth_path is None:
        return Event(run=run, event=number, hits=hits)
    truth_read = _read_truth(truth_path, _find(prefix, "particles"), hits.hit_id)
    return Event(run=run, event=number, hits=hits, truth=truth_read)


def _one_spelling(prefix: Path, number: int, kinds: tuple[str, ...]) -> None:
    """ValueError when ``prefix``'s folder holds a file of one of ``kinds`` for event
    ``number`` spelt another way (``event1000-hits.csv`` beside
    ``event000001000-truth.csv``): which files belong together is not to be guessed, and
    taking the prefix's alone would drop the others' truth unsaid."""
    for path in event_files(prefix.parent, number):
        spelling, kind = path.name.split("-", 1)
        if spelling != prefix.name and kind.split(".", 1)[0] in kinds:
            raise ValueError(
                f"{path} is event {number}'s too, beside {prefix.name}'s files: one event "
                "number spelt two ways; rename one"
            )


def event_prefixes(directory: str | Path) -> list[Path]:
    """Prefixes of the TrackML events in ``directory``, sorted by event number; ValueError
    when two name the same number (``event1`` and ``event000000001``: one event twice)."""
    names = {
        m.group(1) for f in Path(directory).iterdir() if (m := _HITS_FILE_RE.fullmatch(f.name))
    }
    prefixes = sorted(
        (Path(directory) / n for n in names), key=lambda p: (_event_number(p), p.name)
    )
    for a, b in itertools.pairwise(prefixes):
        if _event_number(a) == _event_number(b):
            raise ValueError(
                f"{a.name} and {b.name} in {directory} are both event {_event_number(a)}"
            )
    return prefixes


def files_read(path: str | Path) -> list[Path]:
    """The TrackML files there now that :func:`iter_events` of ``path`` may read: a
    directory's event files, or those of one event (a prefix or one of its files)."""
    path = Path(path)
    if path.is_dir():
        return [f for f in path.iterdir() if _EVENT_FILE_RE.fullmatch(f.name)]
    prefix = path.name if (m := _EVENT_FILE_RE.fullmatch(path.name)) is None else m[1]
    if not path.parent.is_dir():
        return []
    return [
        f
        for f in path.parent.iterdir()
        if (m := _EVENT_FILE_RE.fullmatch(f.name)) is not None and m[1] == prefix
    ]


def iter_events(path: str | Path, *, run: int = 0, truth: bool = True) -> Iterator[Event]:
    """Events of a directory (sorted by event number) or of a single event prefix; without
    ``truth``, their hits alone (as :func:`read_event`)."""
    if str(path).endswith(("/", os.sep)) and not Path(path).is_dir():  # not read as a prefix
        raise FileNotFoundError(f"no folder {path}")
    path = Path(path)
    prefixes = event_prefixes(path) if path.is_dir() else [path]
    if not prefixes:
        raise FileNotFoundError(f"no TrackML events (event*-hits.csv) in {path}")
    for prefix in prefixes:
        yield read_event(prefix, run=run, truth=truth)


# --------------------------------------------------------------------------- writing


def _float32_digits(x: np.ndarray) -> np.ndarray:
    """Per value, the fewest significant digits p (at least the integer digits, so that
    ``'%.*g' % (p, v)`` is positional for |v| >= 1e-4) that parse back to the float32 ``v``.

    Binary search from the integer digits up to at most max(9, those digits) (9 always
    round-trips a float32), testing each p by decimal
    rounding in float64, which is exact for 1e-10 <= |v| < 1e15 (the powers of ten used are
    exact); other values, NaN and inf get 9.
    """
    x = np.abs(np.asarray(x, dtype=np.float32))
    with np.errstate(invalid="ignore"):  # signalling NaNs
        x64 = x.astype(np.float64)
    exact = (x64 >= 1e-10) & (x64 < 1e15)
    exponent = np.floor(np.log10(np.where(exact, x64, 1.0))).astype(np.int64)
    lo = np.where(exact, np.maximum(exponent + 1, 1), 9)
    lo[x64 == 0] = 1
    hi = np.maximum(lo, 9)
    hi[x64 == 0] = 1
    while np.any(active := lo < hi):
        mid = (lo + hi) // 2
        scale = _POW10[np.where(active, mid - 1 - exponent, 0)]
        ok = (np.rint(x64 * scale) / scale).astype(np.float32) == x
        hi = np.where(active & ok, mid, hi)
        lo = np.where(active & ~ok, mid + 1, lo)
    return hi


def _csv_bytes(header: Sequence[str], columns: Sequence[np.ndarray]) -> bytes:
    """A CSV file: integer columns as ints, float32 columns with round-trip digits."""
    formats: list[str] = []
    args: list[list[Any]] = []
    for col in columns:
        col = np.asarray(col)
        if col.dtype.kind == "f":
            formats.append("%.*g")
            args.append(_float32_digits(col).tolist())
        else:
            formats.append("%d")
        args.append(col.tolist())
    row = ",".join(formats)
    lines = [row % values for values in zip(*args, strict=True)]
    return "\n".join([",".join(header), *lines, ""]).encode()


def _write_bytes(path: Path, data: bytes) -> None:
    """``data`` into the file ``path`` (its folder made), gzipped for a ``.gz`` name; whole
    or not at all (``write_whole``: a full disk leaves no file cut short)."""

    def write(raw: BinaryIO) -> None:
        if path.name.endswith(".gz"):
            with gzip.GzipFile("", "wb", 1, raw, mtime=0) as gz:
                gz.write(data)
        else:
            raw.write(data)

    write_whole(path, write)


def _write_table(path: Path, table: Columns) -> None:
    _write_bytes(path, _csv_bytes(list(table), list(table.values())))


def event_files(directory: str | Path, event_number: int) -> list[Path]:
    """The files of event ``event_number`` in ``directory``, its number written with any
    zero-padding up to TrackML's 9 digits (``event1-hits.csv`` is event 1's as
    ``event000000001-hits.csv`` is): each kind, ``.csv`` or ``.csv.gz``, that exists, hits
    first. (Names are tried, not the folder listed: an export of N events stays linear; a
    number padded past 9 digits is not found, and readers refuse a folder holding it beside
    another spelling of the number.)"""
    digits = str(event_number)
    prefixes = [f"event{digits:0>{width}}" for width in range(len(digits), max(len(digits), 9) + 1)]
    names = (f"{p}-{kind}{s}" for kind in _KINDS for p in prefixes for s in (".csv", ".csv.gz"))
    return [path for name in names if (path := Path(directory) / name).is_file()]


def write_event(event: Event, directory: str | Path, *, compress: bool = False) -> Path:
    """Write ``event`` as TrackML CSV files in ``directory``; returns the event prefix.

    Writes ``eventNNNNNNNNN-hits.csv`` and, with truth, ``-truth.csv`` and
    ``-particles.csv`` in the official column order (``.csv.gz`` when ``compress``).
    ``hit_order`` is not written: reading recomputes it from |tz - vz|. Particles whose
    kinematics are all unknown (read without ``-particles.csv``) write no particles file,
    as they were read; some unknown and some not is refused (ValueError) before anything is
    written (a reader refuses NaN in the file, and leaving it out would drop the others).
    Files of that event number already there that it does not write (an earlier event's
    truth, cells, or the other compression) are removed: a reader would pair them with
    these hits.
    """
    particles_file = event.truth is not None and _particles_file(event.truth, event.event)
    if event.event < 0:  # "event-0000007": a name no reader takes back
        raise ValueError(f"event {event.event}: TrackML file names hold event numbers from 0")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / f"event{event.event:09d}"
    suffix = ".csv.gz" if compress else ".csv"
    hits = event.hits.to(np)
    written = [prefix.with_name(f"{prefix.name}-hits{suffix}")]
    _write_table(written[0], hits.columns())
    if event.truth is not None:
        truth = {"hit_id": hits.hit_id, **event.truth.hits.to(np).columns()}
        written.append(prefix.with_name(f"{prefix.name}-truth{suffix}"))
        _write_table(written[-1], {k: truth[k] for k in TRUTH_COLUMNS})
        if particles_file:
            written.append(prefix.with_name(f"{prefix.name}-particles{suffix}"))
            _write_table(written[-1], event.truth.particles.to(np).columns())
    _remove_others(directory, event.event, written)
    return prefix


def _particles_file(truth: Truth, event: int) -> bool:
    """Whether ``truth``'s particles are written to a particles file: not when all their
    kinematics are unknown; ValueError when some are (NaN in the file is refused on reading,
    no file would drop the others)."""
    unknown = kinematics_unknown(truth.particles.to(np))
    if unknown.any() and not unknown.all():
        raise ValueError(
            f"event {event}: {int(unknown.sum())} of {len(unknown)} particles have no vertex "
            "or momentum (NaN) and the others have: TrackML's particles file holds all of "
            "them or none"
        )
    return not unknown.any()  # all known, or none to write


@contextmanager
def new_events(directory: str | Path) -> Iterator[Callable[[Event], bool]]:
    """A writer of events (as :func:`write_event`) into ``directory`` whose files only take
    their place there once the block ends without an error: until then they go to a hidden
    ``.partial-*`` folder in it, removed on an error (or Ctrl-C), so that a failed run leaves
    ``directory`` as it was (or absent: the folders made for it are removed when empty).
    Each event then replaces the files of its number there; the writer says whether there
    were any."""
    directory = Path(directory)
    made = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory))
    numbers: set[int] = set()

    def write(event: Event) -> bool:
        write_event(event, staging)
        numbers.add(event.event)
        return bool(event_files(directory, event.event))

    done = False
    try:
        yield write
        moves = {n: [directory / p.name for p in event_files(staging, n)] for n in sorted(numbers)}
        for path in (p for paths in moves.values() for p in paths):  # before the first move
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise OSError(f"{path} is not a regular file: no event's file takes its place")
        for number, moved in moves.items():
            for path in moved:
                os.replace(staging / path.name, path)
            _remove_others(directory, number, moved)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made if not done else ():
            with contextlib.suppress(OSError):  # not empty: events moved in before the error
                folder.rmdir()


def _remove_others(directory: Path, event_number: int, kept: Sequence[Path]) -> None:
    """Remove the files of ``event_number`` in ``directory`` but ``kept``: a reader would
    pair them with the kept ones."""
    for stale in set(event_files(directory, event_number)) - set(kept):
        stale.unlink()


# --------------------------------------------------------------------------- submissions


def write_submission(
    path: str | Path, submission: Mapping[int, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Write one submission CSV (``event_id,hit_id,track_id``) for several events.

    ``submission`` maps event id to (hit_id, track_id) arrays, one entry per hit; track ids
    start at 1 and 0 marks a hit in no track (see ``Tracks.track_id_per_hit``); a negative
    one is refused (TrackML's scorer would leave its hits out of every track). Such a hit
    is written as a track of its own, numbered after the event's tracks: the TrackML scorer
    reads every id as a track, and would take all those hits together as one (a track that
    can be good). Ids must be whole numbers of int64 (1.7 is not written as 1) and event and
    hit ids not negative, as ``read_submission`` reads them back. Events are written in
    increasing id order; ``.gz`` paths are gzipped.
    """
    event_ids, hit_ids, track_ids = [], [], []
    for key in sorted(submission):
        event_id = int(as_int64([key], "event_id")[0])
        hit_id, track_id = (
            as_int64(a, f"event {event_id}: {name}")
            for a, name in zip(submission[key], ("hit_id", "track_id"), strict=True)
        )
        if hit_id.shape != track_id.shape or hit_id.ndim != 1:
            raise ValueError(f"event {event_id}: hit_id and track_id must be equal-length 1-D")
        if event_id < 0 or (hit_id < 0).any():
            what = "its id" if event_id < 0 else f"hit id {hit_id[hit_id < 0][0]}"
            raise ValueError(f"event {event_id}: {what} is negative")
        _each_hit_once(event_id, hit_id)
        if (negative := track_id < 0).any():
            k = int(np.argmax(negative))
            raise ValueError(
                f"event {event_id}: hit {hit_id[k]} has track id {track_id[k]}: track ids "
                "are from 1 (0: in no track)"
            )
        track_id = alone_as_tracks(track_id)
        event_ids.append(np.full(len(hit_id), event_id, dtype=np.int64))
        hit_ids.append(hit_id)
        track_ids.append(track_id)
    columns = [
        np.concatenate(c) if c else np.zeros(0, np.int64) for c in (event_ids, hit_ids, track_ids)
    ]
    _write_bytes(Path(path), _csv_bytes(list(_SUBMISSION_DTYPES), columns))


def write_track_parameters(
    path: str | Path, tracks: Mapping[int, Tracks], beam_line: tuple[float, float] = (0.0, 0.0)
) -> None:
    """Write the tracks' fitted parameters as CSV beside a submission: ``event_id,
    track_id, hits`` then the columns of ``TRACK_PARAM_DTYPES`` (pt in GeV, eta, phi, d0 and
    z0 in mm, charge, chi2, ndf, the standard errors sigma_* and correlations corr_*) and
    ``beam_x, beam_y``, the beam line (mm) that phi, d0 and z0 are at the perigee to; one
    row per track; track ids are the submission's (from 1, in the order of ``Tracks``).
    ``.gz`` paths are gzipped."""
    names = ["event_id", "track_id", "hits", *TRACK_PARAM_DTYPES, "beam_x", "beam_y"]
    rows: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for event_id in sorted(tracks):
        t = tracks[event_id]
        n = len(t)
        rows["event_id"].append(np.full(n, event_id, dtype=np.int64))
        rows["track_id"].append(np.arange(1, n + 1, dtype=np.int64))
        rows["hits"].append(np.asarray(t.sizes, dtype=np.int64))
        for k, dt in TRACK_PARAM_DTYPES.items():
            rows[k].append(np.asarray(t.params[k], dtype=dt))
        for k, v in zip(("beam_x", "beam_y"), beam_line, strict=True):
            rows[k].append(np.full(n, v, dtype="<f4"))
    columns = [
        np.concatenate(rows[k]) if rows[k] else np.zeros(0, np.int64 if k in names[:3] else "<f4")
        for k in names
    ]
    _write_bytes(Path(path), _csv_bytes(names, columns))


def by_event_number(per_event: Mapping[tuple[int, int], T]) -> dict[int, T]:
    """``per_event`` (keyed by run and event) keyed by event number alone, as TrackML files
    name events; ValueError when two runs share an event number (one would overwrite the
    other)."""
    out: dict[int, T] = {}
    for (run, event), value in per_event.items():
        if event in out:
            raise ValueError(
                f"event number {event} occurs in more than one run (run {run} among them): "
                "TrackML files name events by number alone; write one run at a time"
            )
        out[event] = value
    return out


def read_submission(path: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Read a submission CSV: event id -> (hit_id, track_id) in file order; ValueError
    when an event names a hit twice or a track id is negative.

    Track ids as the file gives them, but 0: TrackML's scorer reads a 0 as a track like any
    other, where here it marks a hit in no track (``trackml_score``), so a file's track 0 is
    returned as its event's largest id plus 1."""
    cols = _read_csv(Path(path), _SUBMISSION_DTYPES)
    event_id = cols["event_id"]
    srt = np.argsort(event_id, kind="stable")
    ids, starts = np.unique(event_id[srt], return_index=True)
    bounds = np.r_[starts, len(srt)]
    out = {
        int(e): (cols["hit_id"][srt[a:b]], _zero_as_a_track(cols["track_id"][srt[a:b]]))
        for e, a, b in zip(ids, bounds[:-1], bounds[1:], strict=True)
    }
    for e, (hit_id, _) in out.items():
        _each_hit_once(e, hit_id, f"{path}: ")
    return out


def _zero_as_a_track(track_id: np.ndarray) -> np.ndarray:
    """``track_id`` with its 0s (a track, in a file) numbered after its largest id."""
    return np.where(track_id == 0, track_id.max(initial=0) + 1, track_id)


def _each_hit_once(event_id: int, hit_id: np.ndarray, where: str = "") -> None:
    """ValueError when ``hit_id`` holds an id twice (a submission assigns each hit once)."""
    ids, n = np.unique(hit_id, return_counts=True)
    if (twice := np.flatnonzero(n > 1)).size:
        raise ValueError(
            f"{where}event {event_id}: hit {ids[twice[0]]} is given {n[twice[0]]} times; "
            "a submission names each hit once"
        )
