"""Stop requests that signal handlers set.

A Python signal handler runs on the main thread between any two bytecodes, inside another
handler too (two signals close together: Ctrl-C twice, or Ctrl-C then a supervisor's
SIGTERM). A handler that takes a lock the code it interrupted holds waits for itself for
ever, and ``threading.Event.set`` takes its condition's lock. :class:`StopFlag` is set by
an assignment and takes no lock; what waits for it polls ``is_set``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Stop(Protocol):
    """What a loop that can be stopped reads (a :class:`StopFlag` or a ``threading.Event``)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class StopFlag:
    """A stop request a signal handler may set: no lock taken."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """A flag that SIGINT and SIGTERM set while the block runs (the command stops cleanly
    on either; a flag, not an event: see above); their handlers from before are back after
    it (``main`` may run in-process: the demo's replay, tests). Outside the main thread,
    where handlers cannot be set, a flag nothing sets."""
    stop = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    with handlers_kept(signal.SIGINT, signal.SIGTERM):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        yield stop


@contextmanager
def handlers_kept(*signals: signal.Signals) -> Iterator[None]:
    """The handlers of ``signals`` from before the block are back after it, whatever it
    set (on the main thread, the one where handlers can be set; elsewhere nothing is
    done)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, not restorable from it
                signal.signal(sig, handler)
