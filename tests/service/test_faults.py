"""The test hook ``STREAMTRK_TEST_FAULTS``: what it reads, and what it ignores."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter

import pytest

from streamtrk.service import faults
from streamtrk.service.faults import ENV, _parse


def test_items_are_read_as_name_equals_number() -> None:
    assert _parse(" load_delay_s=5 ,worker_fail_after=2,") == (
        {"load_delay_s": 5.0, "worker_fail_after": 2.0},
        [],
    )


def test_an_item_that_is_not_name_equals_number_is_ignored_and_kept_to_be_said() -> None:
    assert _parse("slow,=3,emit_fail_after=x,batch_delay_s=1") == (
        {"batch_delay_s": 1.0},
        ["slow", "=3", "emit_fail_after=x"],
    )


def test_a_malformed_hook_does_not_stop_the_command_line() -> None:
    """The variable is read at import: a raise there failed every ``streamtrk`` command."""
    run = subprocess.run(
        [sys.executable, "-m", "streamtrk", "serve", "--print-config"],
        env={ENV: "oops"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr


def test_a_fault_is_raised_at_its_nth_pass_only(monkeypatch) -> None:
    """``<point>_fail_after=N``: the Nth pass raises; those before and after pass."""
    monkeypatch.setitem(faults.FAULTS, "probe_fail_after", 2.0)
    monkeypatch.setattr(faults, "_passes", Counter())
    faults.fail("probe")
    with pytest.raises(faults.InjectedFault, match="pass 2 of probe"):
        faults.fail("probe")
    faults.fail("probe")
    faults.fail("other")  # not asked for: nothing


def test_spaces_around_the_equals_sign_are_not_part_of_the_name() -> None:
    """``load_delay_s = 5`` names the point ``load_delay_s``, as ``load_delay_s=5`` does (a
    name with a trailing space would never be asked for: the hook silently off)."""
    assert _parse("load_delay_s = 5, worker_fail_after =2") == (
        {"load_delay_s": 5.0, "worker_fail_after": 2.0},
        [],
    )


def test_a_delay_may_be_a_fraction_of_a_second() -> None:
    """A number, not only an integer: ``emit_delay_s=0.5`` is half a second."""
    assert _parse("emit_delay_s=0.5,load_delay_s=1e-3") == (
        {"emit_delay_s": 0.5, "load_delay_s": 0.001},
        [],
    )


def test_a_delay_asked_for_is_logged_and_one_not_asked_for_is_not(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator (and the live tests) see the fault injected; a point not asked for
    neither sleeps nor logs."""
    monkeypatch.setitem(faults.FAULTS, "probe_delay_s", 0.01)
    faults.delay("other")
    assert caplog.records == []
    faults.delay("probe")
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING,
        "injected fault: probe delayed 0.01 s",
    )
