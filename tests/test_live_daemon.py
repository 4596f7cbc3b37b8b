"""The tests' own helpers around real processes (tests/live_daemon.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import live_daemon
import pytest
from live_daemon import Prometheus
from needs import need_program


def test_prometheus_whose_port_was_taken_starts_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``free_port`` gives a port free just now: another process may take it before
    Prometheus binds it. Prometheus then exits at once; the helper starts it again, where it
    waited out its whole timeout blaming the scrapes."""
    need_program("prometheus")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1], live_daemon.free_port()])
    monkeypatch.setattr(live_daemon, "free_port", lambda: next(ports))
    prometheus = Prometheus(tmp_path, "127.0.0.1:9")
    try:
        first = prometheus.url
        t_end = time.monotonic() + 60
        while prometheus.url == first:
            assert time.monotonic() < t_end, "the taken port was never given up"
            prometheus._alive()
            time.sleep(0.1)
        while True:  # it answers on the new port
            prometheus._alive()
            try:
                prometheus.query("up")
                break
            except OSError:
                assert time.monotonic() < t_end, "prometheus never answered"
                time.sleep(0.2)
    finally:
        prometheus.stop()
        taken.close()
