"""``streamtrk demo`` (what ``make demo`` runs) end to end, on a tiny run."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_simulates_serves_replays_and_stops_cleanly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamtrk", "demo", "--events", "3", "--mu", "5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    table = dict(line.split(None, 1) for line in out.stdout.splitlines() if "  " in line)
    assert table["sent"].strip() == table["received"].strip() == "3"
    assert table["missing"].strip() == "0"
    assert "tracking_efficiency" in table and "latency_p99_ms" in table
    assert "daemon stopped with SIGTERM, exit code 0" in out.stdout
    assert "streamtrk serve ready" in out.stderr
