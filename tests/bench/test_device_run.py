"""The prepared device run, dry-run on the CPU: its import check, the `gpu` tests (skipped
here) and the benchmark run, and every result file lands under $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_device_run_dry_run_on_the_cpu(tmp_path: Path) -> None:
    env = {
        "DEVICE": "cpu",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "PATH": os.environ["PATH"],
    }
    out = subprocess.run(["sh", str(ROOT / "bench" / "device_run.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == {
        "imports.txt", "gpu-tests.txt", "gpu-bench.log", "gpu_bench.json"
    }  # fmt: skip
    assert "device_run: gpu tests exit 0" in out.stdout
    assert "device_run: gpu_bench exit 0" in out.stdout
    assert "zmq " in (tmp_path / "imports.txt").read_text()
    parts = json.loads((tmp_path / "gpu_bench.json").read_text())["parts"]
    assert {"info", "eager_fp32", "kernels", "daemon"} <= set(parts)
