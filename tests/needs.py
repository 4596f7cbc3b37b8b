"""What CI always has and a user's clone may lack: the shared TrackML data, Prometheus'
server and promtool, g++ and NVRTC for the kernel tests, kubectl, systemd-analyze and git
for the deployment's. Missing, a test skips with the reason; with
``STREAMTRK_STRICT_SKIPS=1`` (``.ci/run`` sets it) it fails instead, so that CI never
counts such a skip as a pass (tests/conftest.py fails any other skip there too, but the
``gpu`` tests'). And what a container may lack: an IPv6 loopback (:func:`no_ipv6_loopback`;
its tests skip without one, but in CI)."""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest

STRICT = os.environ.get("STREAMTRK_STRICT_SKIPS") == "1"


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it under ``STREAMTRK_STRICT_SKIPS=1``."""
    if STRICT:
        pytest.fail(f"{reason} (STREAMTRK_STRICT_SKIPS=1: CI must have it)", pytrace=False)
    pytest.skip(reason)


def need_program(name: str, how: str = "`make setup` installs it when run as root") -> str:
    """The path of program ``name`` (Debian's ``prometheus`` package has both servers'
    programs, installed by ``make setup`` when run as root), or :func:`missing`, saying
    ``how`` to get it."""
    if (path := shutil.which(name)) is None:
        missing(f"{name} is not on PATH: {how}")
    return path


def no_ipv6_loopback() -> str | None:
    """Why this host cannot bind ::1 (containers often have no IPv6), or None."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"no IPv6 loopback here: {e}"
    return None
