"""``streamtrk demo``: its options, checked before it simulates and starts a daemon (the
run itself: tests/service/test_demo.py)."""

import sys

import pytest

from streamtrk.cli import main


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--events", "0"], f"--events must be 1 to {sys.maxsize}, got 0"),  # replayed nothing
        (["--events", str(10**20)], f"--events must be 1 to {sys.maxsize}, got {10**20}"),
        (["--ready-timeout", "0"], "--ready-timeout must be a finite number > 0, got 0.0"),
        (["--ready-timeout", "nan"], "--ready-timeout must be a finite number > 0, got nan"),
        (["--ready-timeout", "inf"], "--ready-timeout must be a finite number > 0, got inf"),
        (["--mu", "0"], "--mu must be > 0 and at most 10000, got 0.0"),  # said as simulate's
    ],
)
def test_demo_refuses_settings_out_of_range_before_its_work(capsys, flags, said) -> None:
    """They were taken: a daemon started, then "did not become ready" (a timeout of 0, or
    NaN), or a run of no events simulated and refused by the replay."""
    assert main(["demo", *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"streamtrk demo: error: {said}\n"
