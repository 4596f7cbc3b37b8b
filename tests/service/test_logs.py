"""``logs.Throttle``: one warning a while about a condition a peer can repeat at will."""

from __future__ import annotations

import time

from streamtrk.service.logs import Throttle


def test_the_first_occurrence_is_said_then_the_others_once_a_while() -> None:
    lines = Throttle(0.2)
    assert lines.count() == 1
    assert [lines.count() for _ in range(5)] == [0] * 5
    time.sleep(0.25)
    assert lines.count(2) == 7  # the five held back and these two


def test_what_a_burst_held_back_is_pending_once_due() -> None:
    lines = Throttle(0.2)
    assert lines.pending() == 0  # nothing held back
    lines.count()
    lines.count(3)
    assert lines.pending() == 0  # not due yet
    time.sleep(0.25)
    assert lines.pending() == 3
    assert lines.pending() == 0 and lines.count() == 0  # said: the next is a while away
