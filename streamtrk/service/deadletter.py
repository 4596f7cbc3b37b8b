"""A size-capped recording of the input the daemon does not answer: messages whose header
names no event, and replies (``tracks`` messages) on the input.

Each record is a recording record (``streamtrk.io.recording``) whose frame 0 is a msgpack
map ``{"reason", "detail", "t_recv_ns", "frames"}`` followed by the raw frames kept (at most
1023, those before the first over a recording's ``MAX_FRAME_BYTES``; of a message ingest
refused for its frame count or size, the frames read before the refusal, frame 0 always:
``frames`` gives the count received).
Read it with ``iter_records``. A message that would take the file past its cap is only
counted (the first such message is logged). A file cut short by a crash mid-write is cut
back to its last whole record at start-up; one damaged before whole records (a flipped
bit in a record) is moved aside (``PATH.damaged-TIME-PID``) and a new one begun, one whose
own header is no recording's (a flipped bit there, or another file's path) refused at
start-up; a write that fails (a
full disk) is cut back at once, so that the records after it are whole. One daemon at a
time writes a file: another given the same path is refused at start-up (an exclusive
``flock`` held while it is open).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Sequence
from itertools import takewhile
from pathlib import Path
from typing import Any

import msgpack

from streamtrk.io.recording import (
    MAX_FRAME_BYTES,
    MAX_FRAMES,
    RecordingError,
    RecordingWriter,
    exclusive_lock,
    record_bytes,
    repair,
)
from streamtrk.wire import WireError, frame_view

log = logging.getLogger(__name__)


class DeadLetters:
    """Appends rejected messages to ``path`` until it reaches ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Another daemon given the same path would take the record this one is writing for
        # one cut short by a crash, and write over its records: the file is held locked.
        self._lock = exclusive_lock(path)
        try:
            if path.stat().st_size > 0 and (cut := repair(path)):
                log.warning("dead-letter file %s cut back to its last whole record", path,
                            extra={"fields": {"bytes_cut": cut[0], "why": cut[1]}})  # fmt: skip
            try:
                self.writer: RecordingWriter | None = RecordingWriter(path, "a", lock=False)
            except RecordingError as e:  # damage that whole records follow (repair read
                self._set_aside(path, e)  # the file header: a bad one raised)
                self.writer = RecordingWriter(path, "a", lock=False)
            self.writer.flush()  # a new file's header
        except BaseException:
            os.close(self._lock)
            raise
        self.path = path
        self.max_bytes = max_bytes
        self.size = path.stat().st_size  # to the end of the whole records
        self.full = False  # a message found no room (logged once)

    def _set_aside(self, path: Path, damage: RecordingError) -> None:
        """Move ``path`` aside, named ``PATH.damaged-TIME-PID``, and hold a new file's lock:
        its damage (a flipped bit) is followed by whole records, which cutting would lose."""
        when = time.strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.damaged-{when}-{os.getpid()}")
        os.rename(path, aside)
        lock, self._lock = self._lock, exclusive_lock(path)  # a new, empty file
        os.close(lock)
        log.warning(
            "dead-letter file %s is damaged before its last records: moved to %s, a new file "
            "begun", path, aside, extra={"fields": {"why": str(damage)}},
        )  # fmt: skip

    def write(self, frames: Sequence[Any], error: WireError, received: int = 0) -> bool:
        """Record ``frames`` with the error and the count of frames the message had
        (``received``, when more than ``frames``); False (nothing written) when over the
        cap. Raises OSError when the file cannot be written (then it holds what it held)."""
        if self.writer is None:
            raise OSError(errno.EIO, f"{self.path} unusable since a write failed")
        head = msgpack.packb(
            {
                "reason": error.reason,
                "detail": str(error),
                "t_recv_ns": time.time_ns(),
                "frames": max(received, len(frames)),
            }
        )
        try:
            views = [frame_view(f) for f in frames[: MAX_FRAMES - 1]]
        except WireError:
            views = []
        views = list(takewhile(lambda v: v.nbytes <= MAX_FRAME_BYTES, views))
        size = record_bytes([head, *views])
        if self.size + size > self.max_bytes:
            if not self.full:
                self.full = True
                log.warning(
                    "dead-letter file %s is full (%d of its %d bytes used): messages that do "
                    'not fit are only counted, in streamtrk_dead_letters_total{result="over_cap"}'
                    " (logged once)", self.path, self.size, self.max_bytes,
                )  # fmt: skip
            return False
        try:
            self.writer.write([head, *views])
            self.writer.flush()
        except OSError:
            self._cut_back()
            raise
        self.size += size
        return True

    def _cut_back(self) -> None:
        """After a failed write: the file back to its whole records, and open again."""
        assert self.writer is not None
        with contextlib.suppress(OSError):  # its buffer holds the failed record's rest
            self.writer.close()
        self.writer = None
        try:
            os.truncate(self.path, self.size)
            # Whole records up to self.size: not read again (a full disk fails every write).
            self.writer = RecordingWriter(self.path, "a", end=self.size, lock=False)
        except OSError as e:
            log.error("cannot cut the dead-letter file %s back after a failed write: %s",
                      self.path, e)  # fmt: skip

    def close(self) -> None:
        """Close the file and give up its lock (once; a second close does nothing)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._lock >= 0:
            os.close(self._lock)  # the lock goes with it
            self._lock = -1
