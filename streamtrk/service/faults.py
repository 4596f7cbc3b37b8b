"""Fault injection for tests: ``STREAMTRK_TEST_FAULTS`` makes the daemon misbehave on purpose
at named points, so that tests can check what an operator would see.

The variable holds ``name=value`` pairs separated by commas, for example
``load_delay_s=5``: ``<point>_delay_s`` sleeps that long at the point. Unset (always, outside
tests) every point does nothing.
"""

from __future__ import annotations

import os
import time

ENV = "STREAMTRK_TEST_FAULTS"


def _parse(text: str) -> dict[str, float]:
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{ENV}: expected name=value, got {item!r}")
        faults[name.strip()] = float(value)
    return faults


FAULTS = _parse(os.environ.get(ENV, ""))


def delay(point: str) -> None:
    """Sleep ``<point>_delay_s`` seconds when the tests ask for it."""
    if seconds := FAULTS.get(f"{point}_delay_s"):
        time.sleep(seconds)
