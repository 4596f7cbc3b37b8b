"""The test hook ``STREAMTRK_TEST_FAULTS``: what it reads, and what it ignores."""

from __future__ import annotations

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
