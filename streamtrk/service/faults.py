"""Fault injection for tests: ``STREAMTRK_TEST_FAULTS`` makes the daemon misbehave on purpose
at named points, so that tests can check what an operator would see.

The variable holds ``name=value`` pairs separated by commas, for example
``load_delay_s=5,worker_fail_after=2``: ``<point>_delay_s`` sleeps that long at the point,
``<point>_fail_after`` raises :class:`InjectedFault` at its Nth pass. Unset (always, outside
tests) every point does nothing. An item that is not ``name=number`` is ignored and kept in
:data:`IGNORED`, for the daemon to warn about (a mistyped hook must not make every
``streamtrk`` command fail at import).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

ENV = "STREAMTRK_TEST_FAULTS"
log = logging.getLogger(__name__)


def _parse(text: str) -> tuple[dict[str, float], list[str]]:
    """The faults ``text`` asks for, and the items that are not ``name=number``."""
    faults, ignored = {}, []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if sep and name.strip() and number is not None:
            faults[name.strip()] = number
        else:
            ignored.append(item)
    return faults, ignored


FAULTS, IGNORED = _parse(os.environ.get(ENV, ""))


class InjectedFault(RuntimeError):
    """Raised where the tests asked for a failure."""


_passes: Counter[str] = Counter()
_lock = threading.Lock()


def fail(point: str) -> None:
    """Raise :class:`InjectedFault` at the ``<point>_fail_after``-th pass, when asked for."""
    after = FAULTS.get(f"{point}_fail_after")
    if after is None:
        return
    with _lock:
        _passes[point] += 1
        n = _passes[point]
    if n == int(after):
        raise InjectedFault(f"fault injected at pass {n} of {point}")


def delay(point: str) -> None:
    """Sleep ``<point>_delay_s`` seconds when the tests ask for it (logged first, so that a
    test can act while it lasts)."""
    if seconds := FAULTS.get(f"{point}_delay_s"):
        log.warning("injected fault: %s delayed %g s", point, seconds)
        time.sleep(seconds)
