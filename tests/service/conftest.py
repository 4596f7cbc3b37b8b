"""Fixtures of the service tests: daemons, a simulated run, its offline reconstruction."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_daemon import ACCEPT_EVENTS, ACCEPT_MU, Daemon, partitions

from streamtrk.cli import main


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Start daemons with extra ``serve`` arguments; all are stopped at teardown, and those
    still running then (not stopped or killed by the test) must drain and exit 0."""
    started: list[Daemon] = []

    def start(
        *args: str, env: dict[str, str] | None = None, keep_model: bool = True, wait: bool = True
    ) -> Daemon:
        daemon = Daemon(tmp_path, *args, env=env, keep_model=keep_model, wait=wait)
        started.append(daemon)  # not started[-1]: the farm fixture starts daemons in threads
        return daemon

    yield start
    codes = {}
    for d in started:
        running = d.process.poll() is None
        code = d.stop()
        if running:
            codes[d.log_path.name] = code
    assert set(codes.values()) <= {0}, codes


@pytest.fixture
def closed_after() -> Iterator[Any]:
    """``thing = closed_after(Thing(...))``: every thing so registered is closed at teardown."""
    made: list[Any] = []

    def register(thing: Any) -> Any:
        made.append(thing)
        return thing

    yield register
    for thing in made:
        thing.close()


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ACCEPT_EVENTS`` simulated events with truth, MU=``ACCEPT_MU``, run 1."""
    path = tmp_path_factory.mktemp("sim") / "run.stk"
    args = ["simulate", "--events", str(ACCEPT_EVENTS), "--mu", str(ACCEPT_MU), "--seed", "5"]
    assert main([*args, "-q", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="session")
def offline_tracks(sim_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``streamtrk evaluate --submission`` of ``sim_run`` with the shipped model, as
    :func:`partitions` (events without hits are absent)."""
    from streamtrk.io.trackml import read_submission

    path = tmp_path_factory.mktemp("offline") / "offline.csv"
    cmd = [sys.executable, "-m", "streamtrk", "evaluate", str(sim_run), "--batch", "8", "-q"]
    # One OpenMP thread: torch's spinning workers crawl on a small machine shared with
    # other jobs when called from a main thread (the daemon calls it from its worker).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*cmd, "--submission", str(path)], capture_output=True, env=env)
    assert out.returncode == 0, out.stderr.decode()
    return partitions(read_submission(path))
