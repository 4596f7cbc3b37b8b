"""Acceptance: 200 events through a live daemon equal offline reconstruction, and a real
Prometheus server scraping the daemon answers a latency quantile query."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_daemon import ACCEPT_EVENTS, Daemon, Prometheus, partitions, sample
from needs import need_program

from streamtrk.io.trackml import read_submission

pytestmark = pytest.mark.slow

P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) (rate(streamtrk_event_latency_seconds_bucket[1m])))"
)


@pytest.fixture(scope="module")
def served(sim_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A daemon (and, when installed, Prometheus scraping it) after replaying ``sim_run``."""
    tmp = tmp_path_factory.mktemp("acceptance")
    daemon = Daemon(tmp)
    prometheus = None
    try:
        if shutil.which("prometheus"):
            prometheus = Prometheus(tmp, daemon.http)
            prometheus.wait_scraping()
        out = tmp / "replay"
        cmd = [sys.executable, "-m", "streamtrk", "replay", str(sim_run), "--to", daemon.input]
        cmd += ["--from", daemon.output, "-q", "--timeout", "120", "--report", f"{out}.json"]
        cmd += ["--submission", f"{out}.csv", "--plot", f"{out}.png"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        t_end = time.time()
        assert done.returncode == 0, done.stdout + done.stderr
        yield {
            "daemon": daemon,
            "prometheus": prometheus,
            "t_end": t_end,
            "report": json.loads(Path(f"{out}.json").read_text()),
            "submission": read_submission(f"{out}.csv"),
            "plot": Path(f"{out}.png"),
        }
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert daemon.stop() == 0


def test_prometheus_scrapes_a_latency_quantile(served: dict[str, Any]) -> None:
    prometheus = served["prometheus"]
    if prometheus is None:
        need_program("prometheus")
    # Evaluate at the end of the replay, once Prometheus has scraped past it.
    value = math.nan
    for _ in range(60):
        result = prometheus.query(P99_QUERY, at=served["t_end"] + 2)
        if result and math.isfinite(value := float(result[0]["value"][1])):
            break
        time.sleep(1)
    assert 0 < value <= 10, f"p99 latency {value}"
    up = prometheus.query('up{job="streamtrk"}')
    assert up and up[0]["value"][1] == "1"


def test_replay_of_200_events_equals_offline_reconstruction(
    served: dict[str, Any], offline_tracks: dict
) -> None:
    report = served["report"]
    assert report["sent"] == report["received"] == report["ok"] == ACCEPT_EVENTS
    assert report["missing"] == 0 and report["errors"] == {} and report["unexpected"] == 0
    assert 0 < report["latency_p50_ms"] <= report["latency_p99_ms"] <= report["latency_max_ms"]
    assert report["events_per_second"] > 0
    for key in ("tracking_efficiency", "fake_rate", "duplicate_rate", "trackml_score"):
        assert 0 <= report[key] <= 1, key
    assert served["plot"].stat().st_size > 0
    served_tracks = partitions(served["submission"])
    assert len(served_tracks) > 0.8 * ACCEPT_EVENTS  # events without hits have no rows
    assert served_tracks == offline_tracks
    # The daemon's own counters agree, and it logged nothing per event.
    daemon = served["daemon"]
    m = daemon.settled()
    assert sample(m, "streamtrk_events_received_total") == ACCEPT_EVENTS
    assert sample(m, "streamtrk_events_completed_total", status="ok") == ACCEPT_EVENTS
    assert sample(m, "streamtrk_event_latency_seconds_count") == ACCEPT_EVENTS
    assert sample(m, "streamtrk_inflight_events") == 0
    n_tracks = sum(len(t) for t in served_tracks.values())
    assert sample(m, "streamtrk_tracks_total") == n_tracks
    assert len(daemon.logs()) < 10
