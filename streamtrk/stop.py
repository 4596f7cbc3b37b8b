"""Stop requests that signal handlers set.

A Python signal handler runs on the main thread between any two bytecodes, inside another
handler too (two signals close together: Ctrl-C twice, or Ctrl-C then a supervisor's
SIGTERM). A handler that takes a lock the code it interrupted holds waits for itself for
ever, and ``threading.Event.set`` takes its condition's lock. :class:`StopFlag` is set by
an assignment and takes no lock; what waits for it polls ``is_set``.
"""

from __future__ import annotations

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
