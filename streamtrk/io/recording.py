"""Recordings (``.stk`` files): wire messages stored exactly as they go over the socket.

Layout, all integers little-endian::

    file     := magic version reserved record*
    magic    := b"STKREC\\r\\n"                          (8 bytes)
    version  := uint16, = 1
    reserved := uint16, = 0
    record   := n_frames:uint32 crc:uint32 frame{n_frames}
    frame    := length:uint64 bytes[length]

``crc`` is the CRC-32 (``zlib.crc32``) of the record's bytes in file order, less the crc
field itself: the ``n_frames`` field, then each frame's ``length`` field and bytes.
A record holds 1 to 1024 frames of at most 8 MB each (``MAX_FRAME_BYTES``, the largest
frame a message within the default ``Limits`` has; readers decode with those): a writer
refuses more, a reader calls a longer length damage before reading it (unless told to read
any length: ``repair`` and appending do, so that they never cut a whole record an older
version wrote). A replay sends a record's column frames unchanged (its header gains the
replay's ``msg_id``).

Readers stream record by record and raise :class:`RecordingError`, naming the byte
offset of the bad record, once they reach a truncated or corrupt one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Generic, Literal, Self, TypeVar

import numpy as np

from streamtrk.event import Event
from streamtrk.io.paths import file_to_write
from streamtrk.wire import (
    DEFAULT_LIMITS,
    Limits,
    Message,
    WireError,
    decode,
    encode_hits,
    encode_truth,
    frame_view,
    peek_header,
)

MAGIC = b"STKREC\r\n"
FORMAT_VERSION = 1
MAX_FRAMES = 1024
MAX_FRAME_BYTES = DEFAULT_LIMITS.max_frame_bytes

_FILE_HEADER = struct.Struct("<8sHH")
_RECORD_HEADER = struct.Struct("<II")
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")

StrPath = str | os.PathLike[str]
Record = tuple[int, list[bytes]]
T = TypeVar("T")


def record_bytes(frames: Iterable[Any]) -> int:
    """Bytes a record of ``frames`` (buffers) takes in a recording."""
    return _RECORD_HEADER.size + sum(_LENGTH.size + frame_view(f).nbytes for f in frames)


class RecordingError(ValueError):
    """A recording is truncated or corrupt; the message names the byte offset. ``cut_at``:
    the offset of a damaged tail (a damaged record that no whole record follows: what a
    crash mid-write leaves, a record cut short or turned to zeros from some byte to the
    end), where :func:`repair` cuts the file back to the whole records before it; None for
    a bad file header, a whole record it keeps, or damage that a whole record (its CRC
    right) follows, anywhere after it (a flipped bit: cutting there would drop them)."""

    def __init__(self, message: str, *, path: Path | None = None, cut_at: int | None = None):
        super().__init__(message)
        self.path = path
        self.cut_at = cut_at


def _crc(frames: list[memoryview]) -> int:
    crc = zlib.crc32(_COUNT.pack(len(frames)))
    for f in frames:
        crc = zlib.crc32(f, zlib.crc32(_LENGTH.pack(f.nbytes), crc))
    return crc


def _read_file_header(f: BinaryIO, path: Path) -> None:
    """Check the file header at the start of ``f`` (magic, this format version)."""
    head = f.read(_FILE_HEADER.size)
    if len(head) < _FILE_HEADER.size:
        raise RecordingError(
            f"{path}: offset 0: truncated file header ({len(head)} of {_FILE_HEADER.size} bytes)"
        )
    magic, version, reserved = _FILE_HEADER.unpack(head)
    if magic != MAGIC:
        # TrackML's CSV files (hits, truth, particles, cells) start with their ids' column.
        csv = magic.startswith((b"hit_id", b"particl")) or ".csv" in path.name
        hint = " (TrackML CSV files: `streamtrk import-trackml` makes one)" if csv else ""
        raise RecordingError(
            f"{path}: offset 0: bad magic {magic!r}, not a streamtrk recording{hint}"
        )
    if version != FORMAT_VERSION:
        raise RecordingError(
            f"{path}: offset 8: unsupported format version {version} "
            f"(this reader knows {FORMAT_VERSION})"
        )
    if reserved != 0:
        raise RecordingError(f"{path}: offset 10: reserved field is {reserved}, expected 0")


class RecordingReader:
    """Streams ``(offset, frames)`` records of a recording; iterate it, or use :meth:`events`.
    A frame length over ``max_frame_bytes`` is damage (None: any length the file holds)."""

    def __init__(self, path: StrPath, *, max_frame_bytes: int | None = MAX_FRAME_BYTES) -> None:
        self.path = Path(path)
        self.max_frame_bytes = max_frame_bytes  # None: any length the file holds
        if self.path.is_dir():  # TrackML CSV files, maybe: named as such by io.events
            raise RecordingError(
                f"{self.path}: a folder, not a recording (.stk); TrackML CSV files are "
                "converted with `streamtrk import-trackml`"
            )
        if self.path.exists() and not self.path.is_file():  # a FIFO would block the open
            raise RecordingError(f"{self.path}: not a regular file")
        self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            _read_file_header(self._file, self.path)
        except BaseException:
            self._file.close()
            raise

    def __iter__(self) -> Iterator[Record]:
        f = self._file
        f.seek(_FILE_HEADER.size)
        while True:
            size = os.fstat(f.fileno()).st_size  # a file being written grows meanwhile
            offset = f.tell()
            head = f.read(_RECORD_HEADER.size)
            if not head:
                return
            yield offset, self._read_record(f, offset, head, size)

    def _read_record(self, f: BinaryIO, offset: int, head: bytes, size: int) -> list[bytes]:
        def fail(what: str, whole: bool = False) -> RecordingError:
            """The error of damage at ``offset``; ``whole``: a whole record, kept by repair."""
            tail = not whole and not _whole_record_after(f, offset, size)
            return RecordingError(
                f"{self.path}: record at offset {offset}: {what}",
                path=self.path,
                cut_at=offset if tail else None,
            )

        if len(head) < _RECORD_HEADER.size:
            raise fail(f"truncated frame count/CRC ({len(head)} of {_RECORD_HEADER.size} bytes)")
        n, crc = _RECORD_HEADER.unpack(head)
        if head == MAGIC[: len(head)]:
            raise fail(
                "a recording's file header (two recordings joined into one file? read each "
                "on its own)"
            )
        if not 1 <= n <= MAX_FRAMES:
            raise fail(f"frame count {n} outside 1..{MAX_FRAMES}")
        frames = []
        for i in range(n):
            field = f.read(_LENGTH.size)
            if len(field) < _LENGTH.size:
                raise fail(f"truncated length of frame {i} at offset {f.tell() - len(field)}")
            (length,) = _LENGTH.unpack(field)
            left = size - f.tell()
            if self.max_frame_bytes is not None and length > self.max_frame_bytes:
                raise fail(
                    f"frame {i} length {length} above the {self.max_frame_bytes}-byte limit",
                    whole=length <= left and _is_whole_record(f, offset, size),
                )
            if length > left:
                raise fail(f"frame {i} length {length} exceeds the {left} bytes left (truncated?)")
            if length > MAX_FRAME_BYTES:  # read whole only once its CRC is found right, a
                at = f.tell()  # piece at a time: a damaged length may claim the whole file
                if not _is_whole_record(f, offset, size):
                    raise fail(f"frame {i} length {length}: no whole record (CRC mismatch)")
                f.seek(at)
            data = f.read(length)
            if len(data) < length:
                raise fail(f"truncated payload of frame {i} ({len(data)} of {length} bytes)")
            frames.append(data)
        computed = _crc([memoryview(b) for b in frames])
        if computed != crc:
            raise fail(f"CRC mismatch (stored {crc:#010x}, computed {computed:#010x})")
        return frames

    def events(self, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[Event]:
        """Decoded ``hits`` messages as events, in their order, with ``.truth`` from a
        ``truth`` message of the same (run, event) that follows them (:class:`TruthPairs`);
        other messages are skipped. A damaged record raises RecordingError once the events
        before it are yielded, but those whose truth it may be: the event its header names
        as a truth, else (its header unreadable, in a recording that has truth) every event
        still waiting for its truth."""
        pairs: TruthPairs[Event] = TruthPairs()
        at, truth_seen = _FILE_HEADER.size, False  # the record being read; any truth so far
        try:
            for offset, frames in self:
                at = offset
                msg = self._decode(offset, frames, limits)
                if msg.kind == "hits":
                    pairs.hits((msg.run, msg.event), msg.to_event())
                elif msg.kind == "truth":
                    truth_seen = True
                    pairs.truth((msg.run, msg.event), partial(self._with_truth, offset, msg=msg))
                at = offset + record_bytes(frames)
                yield from pairs.ready()
        except RecordingError:
            header = _damaged_header(self.path, at)
            if header is None:
                yield from pairs.rest(lambda key: truth_seen)
            else:
                yield from pairs.rest(lambda key: _truth_of(header) == key)
            raise
        yield from pairs.rest()

    def _decode(self, offset: int, frames: list[bytes], limits: Limits) -> Message:
        try:
            return decode(frames, limits=limits)
        except WireError as e:
            raise RecordingError(f"{self.path}: record at offset {offset}: {e}") from e

    def _with_truth(self, offset: int, event: Event, msg: Message) -> Event:
        try:
            return Event(event.run, event.event, event.hits, msg.to_truth())
        except ValueError as e:
            raise RecordingError(f"{self.path}: record at offset {offset}: {e}") from e

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: Hits messages a truth message may come after its own and still be paired with it: a tap
#: of several producers interleaves their (hits, truth) pairs.
PAIR_WINDOW = 16


def hit_count(msg: Message) -> int:
    """The number of hits a hits or truth message is of."""
    return len(msg.columns["hit_id" if msg.kind == "hits" else "hit.particle_id"])


def fitting(truth: Message) -> Callable[[int], int]:
    """An ``attach`` of :class:`TruthPairs` of hit counts: ValueError, as a reader's, where
    ``truth`` is of another number of hits than its event."""

    def attach(hits: int) -> int:
        if (n := hit_count(truth)) != hits:
            raise ValueError(f"truth has {n} hits, event has {hits}")
        return hits

    return attach


class TruthPairs(Generic[T]):
    """Hits waiting for their truth, in order: a ``truth`` goes to the oldest waiting hits of
    its (run, event) among the last ``PAIR_WINDOW`` hits; the hits are handed on in their
    order, each once it has its truth or ``PAIR_WINDOW`` later hits came (without)."""

    def __init__(self) -> None:
        self._waiting: deque[list[Any]] = deque()  # [key, item, has its truth]

    def hits(self, key: tuple[int, int], item: T) -> None:
        self._waiting.append([key, item, False])

    def truth(self, key: tuple[int, int], attach: Callable[[T], T]) -> bool:
        """Give ``key``'s waiting hits their truth (``attach``); False where none waits."""
        for slot in self._waiting:
            if slot[0] == key and not slot[2]:
                slot[1], slot[2] = attach(slot[1]), True
                return True
        return False

    def ready(self) -> Iterator[T]:
        while self._waiting and (self._waiting[0][2] or len(self._waiting) > PAIR_WINDOW):
            yield self._waiting.popleft()[1]

    def rest(self, withheld: Callable[[tuple[int, int]], bool] = lambda key: False) -> Iterator[T]:
        """All still waiting, in order, but those without their truth whose key is
        ``withheld``."""
        while self._waiting:
            key, item, paired = self._waiting.popleft()
            if paired or not withheld(key):
                yield item


def _damaged_header(path: Path, offset: int) -> dict[str, Any] | None:
    """The header (:func:`peek_header`) of the damaged record at ``offset`` where its first
    frame is there whole (a crash mid-write cuts a record in its columns, after the header),
    else None."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(_RECORD_HEADER.size + _LENGTH.size)
        if len(head) < _RECORD_HEADER.size + _LENGTH.size:
            return None
        (n, _), (length,) = (
            _RECORD_HEADER.unpack_from(head),
            _LENGTH.unpack_from(head, _RECORD_HEADER.size),
        )
        if not 1 <= n <= MAX_FRAMES or length > DEFAULT_LIMITS.max_header_bytes:
            return None
        frame = f.read(length)
    return peek_header([frame]) if len(frame) == length else None


def _truth_of(header: dict[str, Any]) -> tuple[Any, Any] | None:
    """The (run, event) a truth message's header names; None for any other message."""
    return (header.get("run"), header.get("event")) if header.get("kind") == "truth" else None


#: Bytes of a recording searched for record starts (or read for a CRC) at a time, after
#: damage: the search's memory about four times this.
_SCAN_BYTES = 1 << 18


def _whole_record_after(f: BinaryIO, offset: int, size: int) -> bool:
    """Whether a whole record (its CRC right) starts anywhere in ``f`` after byte
    ``offset``: every position whose frame count and first length could start one is
    tried, a window of positions at a time. (Called on damage, after which ``f`` is read
    no more: where it is left does not matter.)"""
    head = _RECORD_HEADER.size + _LENGTH.size  # a record's bytes before its first frame's
    pos = offset + 1
    while pos + head <= size:
        f.seek(pos)
        data = f.read(_SCAN_BYTES + head - 1)
        m = len(data) - head + 1  # positions whose count and first length are in data
        if m <= 0:  # the file shrank while searched
            return False
        counts = np.ndarray((m,), "<u4", data, 0, (1,))
        firsts = np.ndarray((m,), "<u8", data, _RECORD_HEADER.size, (1,))
        maybe = (counts >= 1) & (counts <= MAX_FRAMES) & (firsts <= size - pos - head)
        if any(_is_whole_record(f, pos + int(i), size) for i in np.flatnonzero(maybe)):
            return True
        pos += m
    return False


def _is_whole_record(f: BinaryIO, offset: int, size: int) -> bool:
    """Whether a whole record (any frame length, its CRC right) starts at ``offset``: its
    lengths checked against the file first, by seeking past each frame, then its CRC over
    frames read a piece at a time (a false start may claim long ones)."""
    f.seek(offset)
    head = f.read(_RECORD_HEADER.size)
    if len(head) < _RECORD_HEADER.size:
        return False
    n, stored = _RECORD_HEADER.unpack(head)
    if not 1 <= n <= MAX_FRAMES:
        return False
    lengths = []
    for _ in range(n):
        field = f.read(_LENGTH.size)
        if len(field) < _LENGTH.size:
            return False
        (length,) = _LENGTH.unpack(field)
        if length > size - f.tell():
            return False
        lengths.append(length)
        f.seek(length, os.SEEK_CUR)
    f.seek(offset + _RECORD_HEADER.size)
    crc = zlib.crc32(_COUNT.pack(n))
    for length in lengths:
        crc = zlib.crc32(f.read(_LENGTH.size), crc)
        while length:
            piece = f.read(min(length, _SCAN_BYTES))
            if not piece:  # the file shrank while read
                return False
            crc = zlib.crc32(piece, crc)
            length -= len(piece)
    return crc == stored


def iter_records(path: StrPath) -> Iterator[Record]:
    """Stream ``(byte offset, frames)`` of every record in ``path``."""
    with RecordingReader(path) as reader:
        yield from reader


def iter_events(path: StrPath, *, limits: Limits = DEFAULT_LIMITS) -> Iterator[Event]:
    """Stream the events of ``path`` (see :meth:`RecordingReader.events`)."""
    with RecordingReader(path) as reader:
        yield from reader.events(limits=limits)


class RecordingWriter:
    """Writes records to a recording; ``mode="a"`` appends to a valid existing file: after
    its last record, found by reading it, or at ``end`` where the caller knows that its
    whole records end (the file is not read). Written from start to end, without seeking
    (``/dev/stdout``, a FIFO). A regular file is held under an exclusive ``flock`` while
    open (``lock``; OSError when another process holds it), which :func:`being_written`
    sees: a repair must not cut the record a writer is in the middle of."""

    def __init__(
        self,
        path: StrPath,
        mode: Literal["w", "a"] = "w",
        *,
        end: int | None = None,
        lock: bool = True,
    ) -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' or 'a', got {mode!r}")
        self.path = Path(path)
        append = mode == "a" and self.path.exists() and self.path.stat().st_size > 0
        # Opened without truncating: a file another process writes is refused as it was.
        fd = os.open(self.path, os.O_RDWR if append else os.O_WRONLY | os.O_CREAT, 0o666)
        self._file: BinaryIO = os.fdopen(fd, "r+b" if append else "wb")
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if lock and regular:
                _hold(fd, self.path)
            if append:
                self.end = _end_of_records(self.path) if end is None else end
                self._file.seek(self.end)
            else:
                if regular:
                    self._file.truncate(0)
                self._file.write(_FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
                self.end = _FILE_HEADER.size  # bytes written: where the next record goes
        except BaseException:
            self._file.close()
            raise

    def write(self, frames: Iterable[Any]) -> int:
        """Append one message's frames as a record; return the record's byte offset."""
        views = [frame_view(f) for f in frames]
        if not 1 <= len(views) <= MAX_FRAMES:
            raise ValueError(f"a record holds 1 to {MAX_FRAMES} frames, got {len(views)}")
        if (longest := max(v.nbytes for v in views)) > MAX_FRAME_BYTES:
            raise ValueError(f"a frame holds at most {MAX_FRAME_BYTES} bytes, got {longest}")
        offset = self.end
        with self._named():
            self._file.write(_RECORD_HEADER.pack(len(views), _crc(views)))
            for v in views:
                self._file.write(_LENGTH.pack(v.nbytes))
                self._file.write(v)
        self.end += record_bytes(views)
        return offset

    @contextmanager
    def _named(self) -> Iterator[None]:
        """An OSError of the block (a full disk) names this writer's file."""
        try:
            yield
        except OSError as e:
            if e.filename is None:
                e.filename = str(self.path)
            raise

    def write_event(self, event: Event, *, compact: bool = False) -> int:
        """Record an event: its hits message (``compact``: as ``encode_hits`` writes it), then
        its truth message when it has truth.

        The messages are decoded first, as a reader will: an event the readers would refuse
        (NaN coordinates, duplicate hit ids, sizes over the default limits) raises its
        :class:`WireError` and nothing is written."""
        messages = [encode_hits(event, t_send_ns=0, compact=compact)]
        if event.truth is not None:
            messages.append(encode_truth(event.run, event.event, event.truth, t_send_ns=0))
        for frames in messages:
            try:
                decode(frames)
            except WireError as e:
                detail = str(e).removeprefix(f"{e.reason}: ")
                what = f"event {event.run}/{event.event} cannot be recorded"
                raise WireError(e.reason, f"{what}: {detail}") from e
        offset = self.write(messages[0])
        for frames in messages[1:]:
            self.write(frames)
        return offset

    def flush(self) -> None:
        with self._named():
            self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        with self._named():
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextmanager
def new_recording(path: StrPath) -> Iterator[RecordingWriter]:
    """A writer of a new recording at ``path`` that only takes its place once the block ends
    without an error: until then records go to a partial file beside it, removed on an error (or
    Ctrl-C), so that a failed run neither leaves a cut recording nor destroys the file
    that was there. A file another process writes is refused (OSError), at the start and
    before it is replaced. Its folder is made. A link is written through to its file, kept (as
    ``open`` would); a ``path`` that is no regular file (``/dev/stdout``, ``/dev/null``, a
    FIFO) is written in place (renaming a file over it would replace it)."""
    path = Path(path)
    refuse_being_written(path)
    with file_to_write(path) as file:
        try:
            with RecordingWriter(file) as writer:
                yield writer
        except OSError as e:  # a full disk: said of the recording, not its partial file
            if e.filename == str(file):
                e.filename = str(path)
            raise
        refuse_being_written(path)  # again: a tap may have begun on it since


def repair(path: StrPath) -> tuple[int, str] | None:
    """Cut a damaged tail (a RecordingError's ``cut_at``: what a crash mid-write leaves) back
    to the whole records before it: the bytes cut and why, or None when there was no
    damaged tail (an intact file, or damage that whole records may follow: left). A last
    hits message goes too when the damaged record is its truth (read back, it would be an
    event without truth): as the damaged record's header says, else where the file's hits
    are followed by their truth. A bad file header is not repaired (RecordingError). The
    caller makes sure no process writes the file (:func:`exclusive_lock`)."""
    path = Path(path)
    end, error, last_hits, paired = _scan(path)
    if error is None or error.cut_at is None:
        return None
    why = str(error)
    if last_hits is not None:
        at, key = last_hits
        header = _damaged_header(path, end)  # the damaged record's, where it can be read
        if paired if header is None else _truth_of(header) == key:
            end, why = at, f"{why}; with event {key[0]}/{key[1]}'s hits, its truth cut"
    size = path.stat().st_size
    os.truncate(path, end)
    return size - end, why


def _end_of_records(path: Path) -> int:
    """Byte offset after the last record; RecordingError if the file is not clean."""
    try:
        end, error, _, _ = _scan(path)  # raises for a bad file header
        if error is not None:
            raise error
    except RecordingError as e:
        raise RecordingError(f"cannot append: {e}", path=e.path, cut_at=e.cut_at) from e
    return end


def _scan(
    path: Path,
) -> tuple[int, RecordingError | None, tuple[int, tuple[Any, Any]] | None, bool]:
    """Byte offset after the last whole record, the error that stopped the scan (None: the
    file is clean), the offset and (run, event) of the last whole record where it is a
    hits message (else None), and whether a truth message followed its hits in the file
    so far. A bad file header raises. Frames of any length count: a whole record over
    ``MAX_FRAME_BYTES`` (an older version's dead letters) is kept, not cut."""
    end = _FILE_HEADER.size
    paired = False  # a truth message followed its hits
    hits: tuple[int, tuple[Any, Any]] | None = None  # the last record, a hits message
    with RecordingReader(path, max_frame_bytes=None) as reader:
        try:
            for offset, frames in reader:
                end = offset + record_bytes(frames)
                header = peek_header(frames) or {}
                key = (header.get("run"), header.get("event"))
                kind = header.get("kind")
                paired = paired or (kind == "truth" and hits is not None and hits[1] == key)
                hits = (offset, key) if kind == "hits" else None
        except RecordingError as e:
            return end, e, hits, paired
    return end, None, None, paired


def exclusive_lock(path: Path) -> int:
    """A descriptor of ``path`` (made empty where absent) holding its exclusive ``flock``:
    OSError (EAGAIN) when another process holds it (a writer: a tap, a daemon's dead
    letters)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _hold(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_being_written(path: Path) -> None:
    """OSError where another process writes ``path`` (a tap, a daemon's dead letters): a
    new file would take its place, and what that one writes after would be lost."""
    if being_written(path):
        raise OSError(
            errno.EBUSY,
            "another process is writing it (a tap, a daemon's dead letters): choose another output",
            str(path),
        )


def being_written(path: StrPath) -> bool:
    """Whether another process holds ``path`` open to write it (:class:`RecordingWriter`'s
    lock, taken on regular files alone: a FIFO's open would wait for a writer): its last
    record may be one it is in the middle of."""
    if not Path(path).is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the shared lock
    return False


def _hold(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EAGAIN, "in use by another process", str(path)) from None


def summarize(path: StrPath) -> dict[str, Any]:
    """Counts for ``streamtrk inspect``.

    Keys: path, file_bytes, records, events (hits messages), hits_mean, hits_max,
    events_with_truth, versions (schema versions seen), kinds (count per message kind),
    invalid (count per WireError reason), error (RecordingError text of a corrupt tail,
    or None; the counts cover the records before it), cut_at (the offset of a damaged
    tail, where :func:`repair` cuts the file, or None: see :class:`RecordingError`). A bad
    file header raises :class:`RecordingError`.
    """
    kinds: Counter[str] = Counter()
    invalid: Counter[str] = Counter()
    versions: set[int] = set()
    records = hits_total = hits_max = with_truth = 0
    pairs: TruthPairs[int] = TruthPairs()  # hit counts, paired as events() pairs them
    error: RecordingError | None = None
    with RecordingReader(path) as reader:
        try:
            for offset, frames in reader:
                try:
                    msg: Message | None = decode(frames)
                except WireError as e:
                    msg = None
                    invalid[e.reason] += 1
                if msg is not None and msg.kind == "truth":
                    try:
                        with_truth += pairs.truth((msg.run, msg.event), fitting(msg))
                    except ValueError as e:  # a reader refuses the file there
                        raise RecordingError(f"{path}: record at offset {offset}: {e}") from e
                records += 1
                version = (peek_header(frames) or {}).get("version")
                if isinstance(version, int) and not isinstance(version, bool):
                    versions.add(version)
                if msg is None:
                    continue
                kinds[msg.kind] += 1
                if msg.kind == "hits":
                    n = hit_count(msg)
                    hits_total, hits_max = hits_total + n, max(hits_max, n)
                    pairs.hits((msg.run, msg.event), n)
                deque(pairs.ready(), maxlen=0)  # handed on: paired, or past the window
        except RecordingError as e:
            error = e
    events = kinds["hits"]
    return {
        "path": str(path),
        "file_bytes": os.path.getsize(path),
        "records": records,
        "events": events,
        "hits_mean": hits_total / events if events else 0.0,
        "hits_max": hits_max,
        "events_with_truth": with_truth,
        "versions": sorted(versions),
        "kinds": dict(kinds),
        "invalid": dict(invalid),
        "error": None if error is None else str(error),
        "cut_at": None if error is None else error.cut_at,
    }
