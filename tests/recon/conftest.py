"""Simulated events shared by the reconstruction tests (made once per session)."""

import pytest

from streamtrk.detector import load_detector
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate


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
