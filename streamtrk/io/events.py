"""Events from a file, whatever its format: a ``.stk`` recording, or TrackML CSV files."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from streamtrk.event import Event


def read_events(path: str | Path, limit: int | None = None) -> Iterator[Event]:
    """Events of a recording (``.stk``, or any file that starts as one) or of TrackML CSV
    files (an event prefix such as ``.../event000001000``, or a directory of events); at
    most ``limit``."""
    if _is_recording(path):
        from streamtrk.io import recording

        events = recording.iter_events(path)
    else:
        from streamtrk.io import trackml

        events = trackml.iter_events(path)
    return islice(events, limit if limit is None else min(limit, sys.maxsize))  # islice's most


def files_read(path: str | Path) -> list[Path]:
    """The files :func:`read_events` of ``path`` reads (those there now): outputs must not
    replace them."""
    try:
        if _is_recording(path):
            return [Path(path)]
        from streamtrk.io import trackml

        return trackml.files_read(path)
    except OSError:  # unreadable: reading it fails, and says why
        return [Path(path)]


def _is_recording(path: str | Path) -> bool:
    """Whether ``path`` is read as a recording: named ``.stk``, or starting as one."""
    return str(path).endswith(".stk") or _starts_as_recording(Path(path))


def _starts_as_recording(path: Path) -> bool:
    from streamtrk.io.recording import MAGIC

    if not path.is_file():  # a prefix, a directory (or a FIFO: not read here)
        return False
    with path.open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC
