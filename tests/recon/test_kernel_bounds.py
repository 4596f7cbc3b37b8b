"""The kernels' host builds under AddressSanitizer (``STREAMTRK_HOST_SANITIZE=address``,
its runtime preloaded): the chain on the strict stand-in and the host-kernel tests, in a
process of their own, read and write nothing outside their arrays. On a GPU such an access
could end the process's use of the device for the rest of a run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from needs import missing

from streamtrk.recon.kernels import SANITIZE_ENV

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sanitized_env() -> dict[str, str]:
    """The environment of a process whose host builds check every access."""
    if shutil.which("g++") is None:
        missing("g++ not found: cannot build the CUDA kernels for the host")
    runtimes = []
    for name in ("libasan.so", "libstdc++.so.6"):  # libstdc++ first seen by ASan (torch throws)
        path = subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        if not Path(path).is_file():
            missing(f"g++ has no {name} (AddressSanitizer's runtime)")
        runtimes.append(path)
    return os.environ | {
        SANITIZE_ENV: "address",
        "LD_PRELOAD": " ".join(runtimes),
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",  # Python's own allocations: not ours
    }


def test_a_write_past_an_array_is_caught(sanitized_env: dict[str, str], tmp_path: Path) -> None:
    probe = f"""
import ctypes, numpy as np
from pathlib import Path
from streamtrk.recon import kernels
code = kernels.PRELUDE + '''
extern "C" __global__ void past(long long n, long long *a) {{ FOR_EACH_THREAD(t, n) a[t + 1] = t; }}
'''
lib = kernels.build_for_host(code, Path({str(tmp_path)!r}) / "past.so")
a = np.zeros(1000, dtype=np.int64)
lib.past(ctypes.c_longlong(len(a)), a.ctypes.data_as(ctypes.c_void_p))
"""
    done = subprocess.run([sys.executable, "-c", probe], env=sanitized_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr, done.stderr[-2000:]


def test_the_kernels_stay_inside_their_arrays(sanitized_env: dict[str, str]) -> None:
    tests = ["tests/recon/test_strict_device.py", "tests/recon/test_fit.py",
             "tests/recon/test_prune.py", "tests/recon/test_graph.py", "tests/recon/test_tracks.py",
             "tests/recon/test_budget.py"]  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    cmd += ["-k", "strict or host or kernel"]
    done = subprocess.run(cmd, env=sanitized_env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "AddressSanitizer" not in out, out[-4000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None and int(passed.group(1)) >= 40  # 51 on 2026-12-05
