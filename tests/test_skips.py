"""CI's rule on skips (``STREAMTRK_STRICT_SKIPS=1``, tests/conftest.py): only gpu tests may."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CASES = """
import pytest

@pytest.mark.skipif(True, reason="a skipif")
def test_skipif():
    pass

def test_skip():
    pytest.skip("a skip")

@pytest.mark.gpu
def test_gpu():
    pytest.skip("no CUDA device")
"""


def run(tmp_path: Path, strict: bool) -> str:
    for name in ("conftest.py", "needs.py", "live_daemon.py"):  # the conftest and its imports
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "pyproject.toml").write_text(
        (TESTS.parent / "pyproject.toml").read_text()  # the markers, strict settings
    )
    (tmp_path / "test_cases.py").write_text(CASES)
    for name, reason in (("module", "a module's data absent"), ("gpu_module", "GPU-only: no CUDA")):
        skipped = f"import pytest\npytest.skip({reason!r}, allow_module_level=True)\n"
        (tmp_path / f"test_{name}.py").write_text(skipped + "def test_x():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "STREAMTRK_STRICT_SKIPS"}
    env["COLUMNS"] = "400"  # the summary's lines whole
    if strict:
        env["STREAMTRK_STRICT_SKIPS"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "--continue-on-collection-errors", str(tmp_path)],  # (a failed module stops it)
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return r.stdout


def test_under_strict_skips_only_the_gpu_tests_skip(tmp_path: Path) -> None:
    out = run(tmp_path, strict=True)
    assert "SKIPPED [1] test_cases.py" in out and "no CUDA device" in out
    assert "ERROR test_cases.py::test_skipif - Skipped: a skipif (STREAMTRK_STRICT_SKIPS=1" in out
    assert "FAILED test_cases.py::test_skip - Skipped: a skip (STREAMTRK_STRICT_SKIPS=1" in out
    # A module skipped whole as it is imported: the same rule.
    assert "ERROR test_module.py - Skipped: a module's data absent (STREAMTRK_STRICT_SKIPS=1" in out
    assert "SKIPPED [1] test_gpu_module.py:2: GPU-only: no CUDA" in out


def test_without_it_a_skip_is_a_skip(tmp_path: Path) -> None:
    out = run(tmp_path, strict=False)
    assert "5 skipped" in out
