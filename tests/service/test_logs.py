"""``logs.Throttle``: one warning a while about a condition a peer can repeat at will."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

import pytest

from streamtrk.service.logs import LOGGER, JsonFormatter, PlainFormatter, Throttle, configure


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.monotonic`` as the test sets it (a stalled machine cannot make a period pass)."""
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_the_first_occurrence_is_said_then_the_others_once_a_while(clock) -> None:
    lines = Throttle(0.2)
    assert lines.count() == 1
    clock[0] += 0.19
    assert [lines.count() for _ in range(5)] == [0] * 5
    clock[0] += 0.02
    assert lines.count(2) == 7  # the five held back and these two


def test_what_a_burst_held_back_is_pending_once_due(clock) -> None:
    lines = Throttle(0.2)
    assert lines.pending() == 0  # nothing held back
    lines.count()
    lines.count(3)
    clock[0] += 0.19
    assert lines.pending() == 0  # not due yet
    clock[0] += 0.02
    assert lines.pending() == 3
    assert lines.pending() == 0 and lines.count() == 0  # said: the next is a while away


def test_a_stream_still_going_gets_its_warnings_from_count_not_pending(clock) -> None:
    """Occurrences every 0.5 s (a dense event among normal ones, a misrouted reply now and
    then): the due warning waits for the next occurrence, whose caller says what happened
    (the events, the remedy), rather than going to a poll that can say only a count."""
    lines = Throttle(1.0)
    assert lines.count() == 1
    clock[0] += 0.5
    assert lines.count() == 0
    clock[0] += 0.6  # due, but the stream goes on
    assert lines.pending() == 0
    clock[0] += 0.3
    assert lines.count() == 2
    clock[0] += 0.5
    assert lines.count() == 0  # the last of the burst
    clock[0] += 0.6  # due, quiet for 0.6 s only
    assert lines.pending() == 0
    clock[0] += 0.45  # quiet for the period: the burst stopped, said by the poll
    assert lines.pending() == 1
    assert lines.pending() == 0


def test_a_caller_that_stops_takes_all_held_back_due_or_not() -> None:
    lines = Throttle(60.0)
    assert lines.count() == 1
    lines.count(4)
    assert lines.pending() == 0  # not due for a minute
    assert lines.pending(final=True) == 4
    assert lines.pending(final=True) == 0


def test_reconfiguring_leaves_no_moment_without_a_handler(monkeypatch) -> None:
    """A reload reconfigures logging while other threads log: none of their records may
    fall through to logging's last resort (a bare line amid the JSON ones)."""
    import io
    import logging
    import sys
    import threading

    fell_through: list[logging.LogRecord] = []

    class LastResort(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fell_through.append(record)

    monkeypatch.setattr(logging, "lastResort", LastResort())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    logger = logging.getLogger(LOGGER)
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            logging.getLogger(f"{LOGGER}.test").warning("busy")

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        for _ in range(3000):
            configure("json", "info")
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert not fell_through


def test_a_warning_is_due_once_the_period_has_passed_exactly(clock) -> None:
    """``every_s`` after the last warning, the next occurrence is said (not one later)."""
    lines = Throttle(0.25)
    assert lines.count() == 1
    clock[0] += 0.25  # (binary fractions: the sums are exact)
    assert lines.count() == 1


def test_a_burst_is_pending_once_quiet_for_the_period_exactly(clock) -> None:
    """A burst held back is said by the poll once ``every_s`` has passed since its last
    occurrence, at that very time."""
    lines = Throttle(0.25)
    assert lines.count() == 1
    clock[0] += 0.125
    assert lines.count() == 0  # held back
    clock[0] += 0.25  # quiet for exactly the period
    assert lines.pending() == 1


def _record(exc: bool = False) -> logging.LogRecord:
    """A warning of ``streamtrk.x`` with two fields (and an exception's traceback)."""
    exc_info = None
    if exc:
        try:
            raise RuntimeError("broken")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("streamtrk.x", logging.WARNING, "f.py", 1, "%d ended", (3,),
                               exc_info)  # fmt: skip
    record.fields = {"socket": "input", "since": 3}
    return record


def test_json_lines_hold_the_level_message_fields_and_exception() -> None:
    """One JSON object a line: the level in lower case, the message with its arguments, the
    fields merged in, the traceback under ``exception``."""
    line = json.loads(JsonFormatter().format(_record(exc=True)))
    assert {k: line[k] for k in ("level", "logger", "message", "socket", "since")} == {
        "level": "warning",
        "logger": "streamtrk.x",
        "message": "3 ended",
        "socket": "input",
        "since": 3,
    }
    assert "RuntimeError: broken" in line["exception"] and "Traceback" in line["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


def test_plain_lines_end_with_the_fields_as_key_value() -> None:
    text = PlainFormatter().format(_record())
    assert text.endswith(" WARNING streamtrk.x: 3 ended socket=input since=3"), text


def test_configure_sets_the_format_level_and_no_propagation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``configure("json", "info")``: JSON lines on stderr from INFO up (whatever the level
    was), none passed on to the root logger's handlers (no line twice)."""
    logger = logging.getLogger(LOGGER)
    monkeypatch.setattr(logger, "handlers", logger.handlers[:])
    monkeypatch.setattr(logger, "level", logger.level)
    logger.setLevel(logging.ERROR)  # as a quieter configuration left it
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    configure("json", "info")
    logging.getLogger(f"{LOGGER}.x").debug("not said")
    logging.getLogger(f"{LOGGER}.x").info("said")
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "said"
    assert logger.propagate is False
