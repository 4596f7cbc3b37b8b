"""Acceptance: SIGTERM while a replay runs at full speed answers every event received."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_daemon import ACCEPT_EVENTS, sample

pytestmark = pytest.mark.slow


def test_sigterm_during_full_speed_replay(daemon_factory, sim_run: Path, tmp_path: Path):
    d = daemon_factory("--drain-timeout-s", "120")
    report = tmp_path / "replay.json"
    replay = subprocess.Popen(
        [sys.executable, "-m", "streamtrk", "replay", str(sim_run), "--loop", "3", "--to",
         d.input, "--from", d.output, "-q", "--timeout", "10", "--report", str(report)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        t_end = time.monotonic() + 300
        while sample(d.metrics(), "streamtrk_events_completed_total", status="ok") < 20:
            assert replay.poll() is None and time.monotonic() < t_end, "replay too slow"
            time.sleep(0.2)
        assert d.stop(signal.SIGTERM) == 0
    finally:
        replay_code = replay.wait(timeout=300)
    drained = next(line for line in d.logs() if line["message"].startswith("drained"))
    assert drained["dropped"] == 0 and drained["unidentified"] == 0
    assert drained["replies_ok"] + drained["replies_error"] == drained["received"]
    assert drained["replies_error"] == 0
    got = json.loads(report.read_text())
    # Every event the daemon took off its socket was answered and reached the replayer.
    assert 20 <= got["received"] == got["ok"] == drained["received"] < 3 * ACCEPT_EVENTS
    assert got["unexpected"] == 0 and got["errors"] == {}
    assert got["missing"] + got["unsent"] > 0 and replay_code == 1
    assert any(line["message"] == "draining" for line in d.logs())
