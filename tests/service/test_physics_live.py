"""Detector faults made with ``streamtrk simulate``, replayed through a live daemon that a real
Prometheus server scrapes while evaluating the project's rules file: the metric that should
move moves, and the alert that should fire fires, on the scraped data.

Prometheus evaluates the rules with every duration divided by 60 (rate windows of 5m become
5s, the 6-hour baselines ending 30 minutes earlier become 6 minutes ending 30 s earlier,
``for: 10m`` becomes 10s), so that half a minute of healthy input stands for hours of
running; the expressions are otherwise the file's own. The promtool unit tests
(``deploy/prometheus/tests``) pin the real timings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from live_daemon import Daemon, Prometheus
from needs import need_program

from streamtrk.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _prometheus_installed() -> None:
    need_program("prometheus")


RULES = Path(__file__).resolve().parents[2] / "deploy/prometheus/rules/streamtrk.rules.yml"
TIME_SCALE = 60
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RATE_HZ = 10


def _scaled(duration: str) -> str:
    seconds = sum(int(n) * SECONDS[unit] for n, unit in re.findall(r"(\d+)([smhd])", duration))
    return f"{max(seconds // TIME_SCALE, 1)}s"


def compressed_rules(tmp: Path) -> tuple[Path, dict[str, str]]:
    """The rules file with every duration divided by ``TIME_SCALE``, and the alerts'
    expressions as written there."""
    doc = yaml.safe_load(RULES.read_text())
    alerts = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            expr = re.sub(r"\[(\w+)\]", lambda m: f"[{_scaled(m[1])}]", rule["expr"])
            rule["expr"] = re.sub(r"offset (\w+)", lambda m: f"offset {_scaled(m[1])}", expr)
            if "for" in rule:
                rule["for"] = _scaled(rule["for"])
            if "alert" in rule:
                alerts[rule["alert"]] = rule["expr"]
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(doc))
    return path, alerts


def simulate(path: Path, *options: str, mu: int, seed: int, events: int = 40) -> Path:
    args = ["simulate", "--events", str(events), "--mu", str(mu), "--seed", str(seed), "-q"]
    assert main([*args, "-o", str(path), *options]) == 0
    return path


def replay(recording: Path, daemon: Daemon, *options: str) -> float:
    """Replay ``recording`` and wait for every reply; the time it ended. Its report goes
    next to the recording (``.json``)."""
    cmd = [sys.executable, "-m", "streamtrk", "replay", str(recording), "-q", "--timeout", "300"]
    cmd += ["--report", str(recording.with_suffix(".json"))]
    cmd += ["--to", daemon.input, "--from", daemon.output, *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.time()


def poll(query: Callable[[], list[dict[str, Any]]], timeout: float = 60) -> list[dict[str, Any]]:
    """``query()`` once it answers something (Prometheus scrapes and evaluates every
    second, a little behind the clock), or its last, empty answer."""
    t_end = time.monotonic() + timeout
    while not (result := query()) and time.monotonic() < t_end:
        time.sleep(1)
    return result


def layers(result: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["metric"]["volume"], r["metric"]["layer"]) for r in result}


@contextmanager
def watching(daemon: Daemon, tmp: Path) -> Iterator[tuple[Prometheus, dict[str, str]]]:
    """A Prometheus server scraping ``daemon`` with the time-compressed rules, and the
    alerts' expressions."""
    rules, alerts = compressed_rules(tmp)
    prometheus = Prometheus(tmp, daemon.http, rules)
    try:
        prometheus.wait_scraping()
        yield prometheus, alerts
    finally:
        prometheus.stop()


def replay_and_read(
    recording: Path, daemon: Daemon, prometheus: Prometheus
) -> tuple[float, Callable[[str], float]]:
    """Replay ``recording``, then wait for the scrape after the last reply: (the time 2 s
    after that scrape, when the rules have been evaluated on it, a reader of
    ``streamtrk_<name>`` then). A query made before the scrape answers with an earlier one,
    a window holding only part of the replay; on a loaded machine the scrape comes late."""
    t_end = replay(recording, daemon)

    def scraped_since() -> list[dict[str, Any]]:
        scrapes = prometheus.query('timestamp(up{job="streamtrk"})')
        return [r for r in scrapes if float(r["value"][1]) > t_end]

    (scrape,) = poll(scraped_since)
    at = float(scrape["value"][1]) + 2
    time.sleep(max(0.0, at + 1 - time.time()))

    def gauge(name: str) -> float:
        (result,) = poll(lambda: prometheus.query(f"streamtrk_{name}", at=at))
        return float(result["value"][1])

    return at, gauge


@pytest.fixture
def watched(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> Iterator[tuple[Daemon, Prometheus, dict[str, str]]]:
    """A daemon and a Prometheus server scraping it with the time-compressed rules."""
    daemon = daemon_factory()
    with watching(daemon, tmp_path) as (prometheus, alerts):
        yield daemon, prometheus, alerts


def test_dead_and_noisy_layers(watched: tuple, tmp_path: Path) -> None:
    """Half a minute of healthy events (28 s: enough for the 30 s offset baseline to hold
    some when the faulty events' 5 s rate windows are full), then 25 s of the same events
    with layer 8:4 dead and 200 noise hits per event added on layer 13:6 (about 50 hits per
    event of its own)."""
    daemon, prometheus, alerts = watched
    healthy = simulate(tmp_path / "healthy.stk", mu=2, seed=31)
    faulty = simulate(
        tmp_path / "faulty.stk", "--dead-layer", "8:4", "--noisy-layer", "13:6:200", mu=2, seed=31
    )
    t_fault = replay(healthy, daemon, "--rate", str(RATE_HZ), "--loop", "7")
    t_end = replay(faulty, daemon, "--rate", str(RATE_HZ), "--loop", "6")
    assert t_end - t_fault > 20

    def at_end(expr: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: prometheus.query(expr, at=t_end)

    dead_rate = 'rate(streamtrk_layer_hits_total{volume="8", layer="4"}[5s])'
    before = prometheus.query(dead_rate, at=t_fault - 1)
    assert before and float(before[0]["value"][1]) > 100  # about 10 events/s x 55 hits
    (now,) = poll(at_end(dead_rate))
    assert float(now["value"][1]) == 0
    others = poll(at_end("rate(streamtrk_layer_hits_total[5s]) > 0"))
    assert len(layers(others)) == 47 and ("8", "4") not in layers(others)

    assert layers(poll(at_end(alerts["StreamtrkLayerDead"]))) == {("8", "4")}
    assert layers(poll(at_end(alerts["StreamtrkLayerNoisy"]))) == {("13", "6")}
    # held for the (compressed) 10 minutes of ``for``: firing
    firing = poll(at_end('ALERTS{alertstate="firing", alertname=~"StreamtrkLayer.*"}'))
    assert {
        (r["metric"]["alertname"], r["metric"]["volume"], r["metric"]["layer"]) for r in firing
    } == {
        ("StreamtrkLayerDead", "8", "4"),
        ("StreamtrkLayerNoisy", "13", "6"),
    }
    # noise is on no track: the noisy layer's share of hits on tracks fell
    share = "job_volume_layer:streamtrk_layer_track_hits:ratio_rate5m{volume='13', layer='6'}"
    (healthy_share,) = prometheus.query(share, at=t_fault - 1)
    (faulty_share,) = poll(at_end(share))
    assert float(faulty_share["value"][1]) < 0.5 * float(healthy_share["value"][1])


def test_beam_spot_follows_a_shifted_luminous_region(watched: tuple, tmp_path: Path) -> None:
    """40 MU=10 events with the pileup vertices centred at z = 8 mm."""
    daemon, prometheus, alerts = watched
    shifted = simulate(tmp_path / "shifted.stk", "--beam-spot", "0,0,8", mu=10, seed=33)
    at_end, gauge = replay_and_read(shifted, daemon, prometheus)
    # About 40 tracks an event pass the shipped model's quality cuts (|d0| < 0.5 mm, chi2/ndf).
    assert gauge("beam_spot_tracks") > 1000
    z, error = gauge("beam_spot_z_meters"), gauge("beam_spot_z_error_meters")
    assert 0 < error < 0.008 / 10  # the shift is resolved ...
    assert abs(z - 0.008) < 3 * error  # ... and z0's mean follows it within its error
    assert abs(gauge("beam_spot_x_meters")) < 0.05e-3
    assert abs(gauge("beam_spot_y_meters")) < 0.05e-3
    shifted_alert = poll(lambda: prometheus.query(alerts["StreamtrkBeamSpotShifted"], at=at_end))
    assert [r["metric"]["direction"] for r in shifted_alert] == ["along z"]


def test_a_daemon_centred_on_a_displaced_beam_reads_it_in_detector_coordinates(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """40 MU=10 events from the beam line (1, -0.5) mm, replayed through a daemon centred on
    it: the beam-spot gauges read it where it is, the beam-line gauges the settings, and the
    transverse alert, which compares the two, stays silent."""
    daemon = daemon_factory("--beam-spot-x-mm", "1", "--beam-spot-y-mm", "-0.5")
    with watching(daemon, tmp_path) as (prometheus, alerts):
        moved = simulate(tmp_path / "moved.stk", "--beam-spot=1,-0.5,0", mu=10, seed=34)
        at_end, gauge = replay_and_read(moved, daemon, prometheus)
        # The replies say which beam line their perigee parameters are about.
        assert json.loads(moved.with_suffix(".json").read_text())["beam_lines_mm"] == [[1, -0.5]]
        assert gauge("beam_spot_tracks") > 1000
        assert gauge("beam_spot_x_meters") == pytest.approx(1e-3, abs=0.05e-3)
        assert gauge("beam_spot_y_meters") == pytest.approx(-0.5e-3, abs=0.05e-3)
        assert (gauge("beam_line_x_meters"), gauge("beam_line_y_meters")) == (1e-3, -0.5e-3)
        # The recording rules have both positions; from the axis the beam is 1.1 mm off.
        assert poll(lambda: prometheus.query("job:streamtrk_beam_line_x_meters:avg", at=at_end))
        off_axis = (
            "sqrt(job:streamtrk_beam_spot_x_meters:avg ^ 2"
            " + job:streamtrk_beam_spot_y_meters:avg ^ 2) > 0.0003"
        )
        assert poll(lambda: prometheus.query(off_axis, at=at_end))
        assert prometheus.query(alerts["StreamtrkBeamSpotShifted"], at=at_end) == []
        status = json.loads(daemon.get("/status")[1])["beam_spot"]
        assert status["beam_line_mm"] == [1.0, -0.5] and status["tracks"] > 1000
        assert status["measured_mm"]["x"] == pytest.approx(1.0, abs=0.05)
