"""What CI always has and a user's clone may lack: the shared TrackML data, Prometheus'
server and promtool. Missing, a test skips with the reason; with ``STREAMTRK_STRICT_SKIPS=1``
(``.ci/run`` sets it) it fails instead, so that CI never counts such a skip as a pass."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

STRICT = os.environ.get("STREAMTRK_STRICT_SKIPS") == "1"


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it under ``STREAMTRK_STRICT_SKIPS=1``."""
    if STRICT:
        pytest.fail(f"{reason} (STREAMTRK_STRICT_SKIPS=1: CI must have it)", pytrace=False)
    pytest.skip(reason)


def need_program(name: str) -> str:
    """The path of program ``name`` (Debian's ``prometheus`` package has both servers'
    programs, installed by ``make setup`` when run as root), or :func:`missing`."""
    if (path := shutil.which(name)) is None:
        missing(f"{name} is not on PATH: `make setup` installs it when run as root")
    return path
