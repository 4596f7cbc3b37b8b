"""``streamtrk record`` stores a hits stream byte for byte."""

from __future__ import annotations

import subprocess
import sys
from itertools import islice
from pathlib import Path

from streamtrk.client import Producer
from streamtrk.io.recording import iter_records


def test_record_taps_a_stream_byte_for_byte(sim_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tap.stk"
    records = [frames for _, frames in islice(iter_records(sim_run), 10)]  # hits, truth x 5
    # The producer binds (a port of its choice) and the tap connects: a bound PUSH socket
    # holds messages until its peer is there, so nothing is sent before the tap listens.
    with Producer("tcp://127.0.0.1:*", bind=True, linger_ms=5000) as producer:
        tap = subprocess.Popen(
            [sys.executable, "-m", "streamtrk", "record", "--from", producer.endpoint, "-o",
             str(out), "--events", "3", "--duration", "120"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert producer.send_frames([b"not a message"], timeout_ms=60_000)
        for frames in records:
            assert producer.send_frames(frames, timeout_ms=60_000)
        stdout, _ = tap.communicate(timeout=120)
    assert tap.returncode == 0
    # Three events with their truth; what arrived after them is counted, not lost silently.
    assert "recorded 3 hits and 3 truth messages" in stdout and "skipped 1 invalid" in stdout
    assert "more arrived past --events and were not recorded" in stdout
    assert [frames for _, frames in iter_records(out)] == records[:6]
