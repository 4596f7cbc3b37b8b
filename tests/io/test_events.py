"""Events from a file, whatever its format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamtrk.event import Event, Hits
from streamtrk.io.events import read_events
from streamtrk.io.recording import RecordingWriter


def test_a_recording_is_read_as_one_whatever_its_name(tmp_path: Path) -> None:
    hits = Hits(**{k: np.arange(3).astype(dt) for k, dt in Hits.DTYPES.items()})
    path = tmp_path / "run.rec"  # not .stk: recognised by its first bytes
    with RecordingWriter(path) as w:
        w.write_event(Event(1, 5, hits))
    assert [e.event for e in read_events(path)] == [5]
    assert [e.event for e in read_events(path, limit=0)] == []
