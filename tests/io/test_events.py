"""Events from a file, whatever its format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamtrk.event import Event, Hits
from streamtrk.io.events import files_read, read_events
from streamtrk.io.recording import RecordingError, RecordingWriter


def test_a_recording_is_read_as_one_whatever_its_name(tmp_path: Path) -> None:
    hits = Hits(**{k: np.arange(3).astype(dt) for k, dt in Hits.DTYPES.items()})
    path = tmp_path / "run.rec"  # not .stk: recognised by its first bytes
    with RecordingWriter(path) as w:
        w.write_event(Event(1, 5, hits))
    assert [e.event for e in read_events(path)] == [5]
    assert [e.event for e in read_events(path, limit=0)] == []


def test_a_limit_past_any_count_of_events_reads_them_all(tmp_path: Path) -> None:
    """``evaluate --events 99999999999999999999``: islice refused it ("Stop argument for
    islice() must be None or an integer: 0 <= x <= sys.maxsize"), no words of the option."""
    hits = Hits(**{k: np.arange(3).astype(dt) for k, dt in Hits.DTYPES.items()})
    path = tmp_path / "run.stk"
    with RecordingWriter(path) as w:
        w.write_event(Event(1, 5, hits))
    assert [e.event for e in read_events(path, limit=10**20)] == [5]


def test_the_files_read_are_named_for_the_outputs_to_spare(tmp_path: Path) -> None:
    """A recording is one file; TrackML input is its events' files (not the folder's other
    files: a report written there by an earlier run may be replaced)."""
    hits = Hits(**{k: np.arange(3).astype(dt) for k, dt in Hits.DTYPES.items()})
    with RecordingWriter(tmp_path / "run.rec") as w:
        w.write_event(Event(1, 5, hits))
    assert files_read(tmp_path / "run.rec") == [tmp_path / "run.rec"]
    event = ["event000000007-hits.csv", "event000000007-truth.csv.gz", "event7-cells.csv"]
    for name in [*event, "event000000008-particles.csv", "report.json"]:
        (tmp_path / name).write_text("")

    def names(path: Path) -> list[str]:
        return sorted(p.name for p in files_read(path))

    assert names(tmp_path) == sorted([*event, "event000000008-particles.csv"])
    assert names(tmp_path / "event000000007") == sorted(event[:2])
    assert names(tmp_path / "event000000007-truth.csv.gz") == sorted(event[:2])
    assert files_read(tmp_path / "nowhere" / "event000000007") == []


def test_a_stk_file_is_read_as_a_recording_whatever_its_first_bytes(tmp_path: Path) -> None:
    """A recording cut before its file header is said to be one (not "no TrackML event
    file"), and is an input the outputs spare."""
    path = tmp_path / "run.stk"
    path.write_bytes(b"")
    assert files_read(path) == [path]
    with pytest.raises(RecordingError, match="truncated file header"):
        list(read_events(path))
    with pytest.raises(FileNotFoundError, match=r"missing\.stk'"):
        list(read_events(tmp_path / "missing.stk"))


def test_the_files_read_of_a_path_that_cannot_be_looked_at_are_the_path(tmp_path: Path) -> None:
    # A name past NAME_MAX: stat() itself fails (ENAMETOOLONG); reading it says so, later.
    path = tmp_path / ("x" * 300)
    assert files_read(path) == [path]


def test_a_file_is_a_recording_only_if_it_starts_with_the_whole_magic(tmp_path: Path) -> None:
    """Not ``.stk`` and its first bytes the magic but for the last (``STKREC\\r`` then not
    ``\\n``: a text file of another format): not taken for a recording, nor spared."""
    path = tmp_path / "notes.rec"
    path.write_bytes(b"STKREC\r\x00" + bytes(40))
    assert files_read(path) == []
    with pytest.raises(ValueError, match="is no TrackML event file") as e:
        list(read_events(path))
    assert not isinstance(e.value, RecordingError)
