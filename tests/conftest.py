"""Shared test fixtures."""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from needs import STRICT, missing

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
