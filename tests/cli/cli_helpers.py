"""Helpers of the command's tests: a small simulated run, the command in a child process."""

import os
import subprocess
import sys
from pathlib import Path

from streamtrk.cli import main


def _simulate(out: Path) -> None:
    """Two events at MU=20 (seed 1): ``out/a.stk``, and TrackML CSV files in ``out/csv``."""
    rc = main(
        [
            "simulate",
            "--events",
            "2",
            "--mu",
            "20",
            "--seed",
            "1",
            "-q",
            "-o",
            str(out / "a.stk"),
            "--trackml-dir",
            str(out / "csv"),
        ]
    )
    assert rc == 0


def _run(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """``streamtrk ARGS`` in a child process, without the ``STREAMTRK_`` variables of this
    environment (``env`` adds its own)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTRK_")}
    return subprocess.run(
        [sys.executable, "-m", "streamtrk", *args],
        capture_output=True, text=True, timeout=300, env={**base, **(env or {})}, **kw,
    )  # fmt: skip


def _buffering(unbuffered: bool) -> dict[str, str]:
    """This environment with Python's output buffered to a pipe or a file, as by default, or
    ``unbuffered`` (``PYTHONUNBUFFERED``, which the developers' shells may set)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return env | {"PYTHONUNBUFFERED": "1"} if unbuffered else env


def _run_unread(*args: str, unbuffered: bool = False, cut: str = "stdout") -> tuple[int, str]:
    """``streamtrk ARGS`` in a child process whose stdout's reader (``cut="stderr"``: its
    stderr's) is gone before the first line (``| head -0``): its exit status and what it
    wrote to the other stream. Its output to the pipe is buffered, as by default (written
    when the buffer fills or the command ends), or ``unbuffered`` (``PYTHONUNBUFFERED``:
    each line at once)."""
    with subprocess.Popen(
        [sys.executable, "-m", "streamtrk", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_buffering(unbuffered),
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        gone, kept = (proc.stdout, proc.stderr) if cut == "stdout" else (proc.stderr, proc.stdout)
        gone.close()
        said = kept.read().decode()
        return proc.wait(timeout=300), said
