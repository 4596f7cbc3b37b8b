"""Shared test fixtures: the shared data, simulated events, live daemons and their runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_daemon import ACCEPT_EVENTS, ACCEPT_MU, Daemon, partitions
from needs import STRICT, missing

from streamtrk.cli import main
from streamtrk.detector import load_detector
from streamtrk.service.logs import LOGGER
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_candidates() -> list[Path]:
    """Where the project's shared folder may be: $STREAMTRK_SHARED, else the repo's sibling
    ``shared`` (or a ``shared`` folder inside the checkout)."""
    if env := os.environ.get("STREAMTRK_SHARED"):
        return [Path(env)]
    return [REPO_ROOT.parent / "shared", REPO_ROOT / "shared"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under ``STREAMTRK_STRICT_SKIPS=1`` (CI) a skip outside the ``gpu`` tests fails: a
    ``skipif`` or ``pytest.skip`` that :func:`needs.missing` does not make is no pass
    either."""
    report: pytest.TestReport = yield
    gpu = item.get_closest_marker("gpu") is not None
    if STRICT and report.skipped and not hasattr(report, "wasxfail") and not gpu:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{reason} (STREAMTRK_STRICT_SKIPS=1: only gpu tests skip)"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same rule for a module skipped whole as it is imported: only ``gpu_only``'s skips
    (their reasons begin "GPU-only") may."""
    report: pytest.CollectReport = yield
    if STRICT and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        if not str(reason).startswith(("GPU-only", "Skipped: GPU-only")):
            report.outcome = "failed"
            report.longrepr = f"{reason} (STREAMTRK_STRICT_SKIPS=1: only gpu tests skip)"
    return report


@pytest.fixture(autouse=True)
def _streamtrk_logger_restored() -> Iterator[None]:
    """A command run in-process (``cli.main``) may configure the ``streamtrk`` logger for
    itself (its own handler, no propagation): undone after each test, so that ``caplog``
    sees the later tests' records whatever ran before."""
    logger = logging.getLogger(LOGGER)
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def shared_trackml() -> Path:
    """The shared TrackML data folder (``<shared>/data/trackml``); skips when absent."""
    paths = [base / "data" / "trackml" for base in _shared_candidates()]
    for path in paths:
        if path.is_dir():
            return path
    missing(f"shared TrackML data not found at {' or '.join(map(str, paths))}")


@pytest.fixture(scope="session")
def det():
    return load_detector()


@pytest.fixture(scope="session")
def small_events(det):
    """Two MU=20 events (about 12k hits each)."""
    return list(simulate(det, SimConfig(generator=GeneratorConfig(mu=20)), seed=11, n_events=2))


@pytest.fixture(scope="session")
def mu200_events(det):
    """Three MU=200 events; seeds used by no tuning."""
    return list(simulate(det, SimConfig(), seed=90210, n_events=3))


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
