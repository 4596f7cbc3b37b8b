"""Stop requests: a flag a signal handler may set."""

from __future__ import annotations

from streamtrk.stop import StopFlag


def test_a_stop_flag_is_clear_until_set_and_stays_set() -> None:
    """A fresh flag stops nothing (a command would end before its work); set, it reads set,
    and setting it again (a second Ctrl-C) keeps it so."""
    stop = StopFlag()
    assert not stop.is_set()
    stop.set()
    assert stop.is_set()
    stop.set()
    assert stop.is_set()
