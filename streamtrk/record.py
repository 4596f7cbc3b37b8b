"""Tap a stream of hits into a recording, frames stored exactly as received."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from streamtrk.client import REFUSAL_EVENTS, REFUSAL_HINTS, Consumer
from streamtrk.errors import SettingError
from streamtrk.io.paths import check_writable, file_to_write
from streamtrk.io.recording import (
    RecordingWriter,
    TruthPairs,
    fitting,
    hit_count,
    refuse_being_written,
)
from streamtrk.stop import Stop, StopFlag
from streamtrk.wire import Message, WireError, decode

RECORDED_KINDS = ("hits", "truth")
PAST_LIMIT_WAIT_MS = 100  # after the events limit: how long to take what arrives
TRUTH_MISMATCH = "truth_hit_count"  # a truth of another number of hits than its event


def record(
    source: str,
    output: Path,
    *,
    bind: bool = False,
    events: int | None = None,
    duration_s: float | None = None,
    stop: Stop | None = None,
    curve_key: Path | None = None,
    curve_server_key: Path | None = None,
    bound: Callable[[str], None] | None = None,
) -> Counter[str]:
    """Write valid ``hits`` (and ``truth``) messages from a PULL socket on ``source`` to
    ``output`` until ``events`` hits messages, ``duration_s`` seconds or ``stop``.

    Returns counts: ``hits``, ``truth``, ``invalid`` (failed to decode, or a truth of
    another number of hits than the event it pairs with, at which a reader would refuse
    the recording; ``invalid:REASON`` of them by the decoder's reason, or
    ``TRUTH_MISMATCH``), ``unpaired_truth`` (a truth of no hits message recorded before it
    within the pairing window, which readers would pass over: not recorded), ``other``
    (valid messages of another kind, not recorded), ``handshakes_hung_up`` (CURVE
    handshakes hung up on, none succeeding: see ``streamtrk.client.HUNG_UP_HINT``) and
    ``past_limit``:
    once ``events`` hits messages are recorded, what arrives in the next
    ``PAST_LIMIT_WAIT_MS`` is taken, as the socket would drop it on close: a ``truth``
    that a reader would pair with a hits message recorded
    (:class:`~streamtrk.io.recording.TruthPairs`: one without its truth among the last 16;
    a tap of several producers interleaves their pairs) is recorded, the others
    counted here. Stopped (``stop``, ``duration_s``) before that, it records what arrives
    in the next ``PAST_LIMIT_WAIT_MS``: messages sent to it, which no other peer would get
    (past ``events`` among them: taken as above). With CURVE certificates, ``record`` is a
    client of the server it taps (see ``streamtrk.wire.curve``); a
    handshake that server refuses raises ConnectionRefusedError (libzmq does not try that
    connection again: nothing would be recorded). With ``bind``, ``bound`` is told the
    endpoint bound (the real port of ``:*``) before anything is taken.

    ``output`` is created at the first message recorded: a tap that records nothing (its
    handshake refused, stopped, a silent stream) leaves a recording already there as it was.
    One that cannot be written (a folder, no permission) or that another process is writing
    (another tap) is refused before the tap opens, and that again at the first record.
    A write that fails during the tap (a full disk) stops it with an OSError naming the file
    and what it holds: the file is cut back to the records written whole (a first record
    that fails leaves no file, a recording already there as it was; a first event whose
    truth fails leaves the file holding no record), so that what was tapped before stays
    readable.
    """
    if events is not None and events < 1:
        raise SettingError(f"--events must be at least 1, got {events}")
    if duration_s is not None and not 0 < duration_s < math.inf:
        raise SettingError(f"--duration must be a positive number, got {duration_s}")
    stop = StopFlag() if stop is None else stop
    n: Counter[str] = Counter()
    pairs: TruthPairs[int] = TruthPairs()  # the hits recorded, paired as a reader pairs them
    t_end = None if duration_s is None else time.monotonic() + duration_s
    check_writable(output)
    refuse_being_written(output)
    with (
        Consumer(
            source,
            bind=bind,
            linger_ms=0,
            monitor_events=0 if bind else REFUSAL_EVENTS,
            curve_key=curve_key,
            curve_server_key=curve_server_key,
        ) as consumer,
        _CreatedOnFirstWrite(output) as writer,
    ):
        if bind and bound is not None:
            bound(consumer.endpoint)

        def take(frames: list[Any]) -> None:
            try:
                msg = decode(frames)
                # One a reader would refuse the file at: invalid; one of no hits recorded
                # before it (refused, or sent after it), that readers would pass over: unpaired.
                if msg.kind == "truth" and not pairs.truth((msg.run, msg.event), fitting(msg)):
                    n["unpaired_truth"] += 1
                    return
            except (WireError, ValueError) as e:
                _invalid(n, e)
                return
            if msg.kind in RECORDED_KINDS:
                _write(writer, frames, msg)
                if msg.kind == "hits":
                    pairs.hits((msg.run, msg.event), hit_count(msg))
                    deque(pairs.ready(), maxlen=0)  # paired, or past the window
            n[msg.kind if msg.kind in RECORDED_KINDS else "other"] += 1

        while not stop.is_set() and (events is None or n["hits"] < events):
            if t_end is not None and time.monotonic() >= t_end:
                break
            if (cause := consumer.refusal()) is not None:
                raise ConnectionRefusedError(
                    f"{source} refused the handshake ({cause}): {REFUSAL_HINTS[cause]}"
                )
            if (frames := consumer.recv_frames(timeout_ms=100)) is not None:
                take(frames)
        # What reaches the socket now was sent to this tap, not to another peer, and would
        # be dropped on close: taken for a while, as the daemon's intake takes its queue.
        t_drain = time.monotonic() + PAST_LIMIT_WAIT_MS / 1000
        while (left_ms := int((t_drain - time.monotonic()) * 1000)) > 0:
            if (frames := consumer.recv_frames(timeout_ms=left_ms)) is None:
                break
            if events is None or n["hits"] < events:  # stopped, or out of time
                take(frames)
                continue
            try:
                late = decode(frames)
                if late.kind == "truth" and pairs.truth((late.run, late.event), fitting(late)):
                    _write(writer, frames, late)
                    n["truth"] += 1
                    continue
            except WireError:
                pass
            except ValueError as e:  # of another number of hits than its event
                _invalid(n, e)
                continue
            n["past_limit"] += 1
        consumer.refusal()  # its monitor read to the end
        if consumer.hung_up and not consumer.shook:
            n["handshakes_hung_up"] = consumer.hung_up
    return n


def _invalid(n: Counter[str], e: ValueError) -> None:
    """Count an invalid message, and by its reason (``invalid:REASON``)."""
    n["invalid"] += 1
    n[f"invalid:{e.reason if isinstance(e, WireError) else TRUTH_MISMATCH}"] += 1


def _write(writer: _CreatedOnFirstWrite, frames: list[Any], msg: Message) -> None:
    """Record ``frames`` (``msg``); a failed write's OSError says what the recording holds."""
    try:
        writer.write(frames, msg)
    except OSError as e:
        what = f"cannot write {writer.path}: {e.strerror or e}"
        if writer.cut_failed:
            held = f"it ends cut (`streamtrk inspect --repair {writer.path}` cuts it back)"
        elif writer.held.total():
            h = writer.held
            held = f"it holds the {h['hits']} hits and {h['truth']} truth messages recorded before"
        elif writer.created:
            held = "it holds no event (the first one's hits were cut with its truth)"
        else:
            held = "nothing recorded"
        raise OSError(f"{what}; {held}") from e


class _CreatedOnFirstWrite:
    """A new recording at ``path``, created (making its folder) by its first record, which
    replaces the file there only once it is written whole (into a partial file beside it,
    renamed over it; a device or FIFO is written in place). Each record is flushed as it is
    written; a later write that fails (a full disk) cuts the file back to its whole records
    and raises: a truth's cuts the hits record just before it too where they are its
    event's, as :func:`~streamtrk.io.recording.repair` does (read back, they would be an
    event without truth; the first event's leave the file header alone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: RecordingWriter | None = None
        self.created = False  # the first record was written (the file took its place)
        self.held: Counter[str] = Counter()  # the records written whole, by kind
        self.cut_failed = False  # a failed write left the file cut: cutting it back failed
        # Where the last record starts and its event, if a hits message.
        self._hits: tuple[int, tuple[int, int]] | None = None

    def write(self, frames: list[Any], msg: Message) -> None:
        """Write the record of ``frames``, which encode ``msg``."""
        if self._writer is None:
            start = self._write_first(frames)
        else:
            start = self._writer.end
            try:
                self._writer.write(frames)
                self._writer.flush()
            except OSError:
                self._cut_back(start, msg)
                raise
        self.held[msg.kind] += 1
        self._hits = (start, (msg.run, msg.event)) if msg.kind == "hits" else None

    def _write_first(self, frames: list[Any]) -> int:
        """The file's header and first record; on an error the file there is as it was.
        Returns where the record starts (the header's size)."""
        writer = None
        refuse_being_written(self.path)  # again: another tap may have started since
        try:
            with file_to_write(self.path) as file:
                writer = RecordingWriter(file)
                start = writer.end
                writer.write(frames)
                writer.flush()
        except BaseException:
            if writer is not None:
                with contextlib.suppress(OSError):  # its buffer holds the failed record's rest
                    writer.close()
            raise
        self._writer = writer  # its file renamed into place, still open
        self.created = True
        return start

    def _cut_back(self, whole: int, failed: Message) -> None:
        """After ``failed``'s write failed: the file back to its ``whole`` bytes, or to the
        start of the hits of ``failed``'s event just before it; what is no regular file (a
        device, a FIFO) is left as it is. The file stays locked until cut: another tap
        cannot take its place in between (and be cut instead)."""
        assert self._writer is not None
        held = os.dup(self._writer.fileno())  # its lock outlives the writer's close
        try:
            with contextlib.suppress(OSError):  # its buffer holds the failed record's rest
                self._writer.close()
            self._writer = None
            if not stat.S_ISREG(os.fstat(held).st_mode):
                return
            if failed.kind == "truth" and self._hits is not None:
                start, key = self._hits
                if key == (failed.run, failed.event):
                    whole = start
                    self.held["hits"] -= 1
            try:
                os.ftruncate(held, whole)
            except OSError:  # said by the caller, with the remedy
                self.cut_failed = True
        finally:
            os.close(held)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
