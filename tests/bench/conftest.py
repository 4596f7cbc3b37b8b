"""The device run's script, dry-run once on the CPU for the tests of its steps and of the
benchmark result it writes (the dry run takes about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from bench_scripts import bench_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def device_dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``bench/device_run.sh`` with DEVICE=cpu: its stdout and the folder it wrote ($OUT)."""
    out_dir = tmp_path_factory.mktemp("device-run")
    env = {"DEVICE": "cpu", "OUT": str(out_dir), "PYTHON": sys.executable}
    env["PATH"] = os.environ["PATH"]
    out = subprocess.run(["sh", str(ROOT / "bench" / "device_run.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout, out_dir


@pytest.fixture(scope="session")
def gpu_report() -> ModuleType:
    """``bench/gpu_report.py`` as a module."""
    return bench_script("gpu_report")
