"""``bench/launch_count.py``'s tally of one operation of each kind: launches, and the bytes
of the device arrays each takes and gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bench_scripts import bench_script

from streamtrk.xp import compact


def test_each_operation_counted_once_with_its_arrays_bytes(tmp_path: Path) -> None:
    lc = bench_script("launch_count")
    strict_xp = lc.strict_stand_in()
    with strict_xp.installed(tmp_path) as cupy:
        a = cupy.arange(1000, dtype=cupy.float64)  # 8,000 bytes
        idx = cupy.arange(0, 1000, 10)  # 100 int64: 800 bytes
        mask = a > 500.0  # 1,000 bools
        launches = lc.Launches()
        with lc.counting(strict_xp, launches):
            b = a + 1.0  # a ufunc: 8,000 read, 8,000 written
            c = b[idx]  # a gather: 800 read and 800 written, 800 of indices
            b[idx] = 0.0  # a scatter: 800 of indices
            d = b.sum()  # a method: the array, its 0-d result
            kept = compact(mask, 499)  # a cumsum (1,000 + 8,000), a kernel (args, 3,992 out)
    assert np.array_equal(c.get(), np.arange(0, 1000, 10) + 1.0) and float(d) > 0
    assert len(kept) == 499
    nbytes = [16_000, 2_400, 800, 8_008, 9_000, 1_000 + 8_000 + 3_992]
    assert launches.by_stage == {"other": 6}
    assert launches.bytes_by_stage == {"other": sum(nbytes)}
    own = "streamtrk/xp.py:compact"  # the innermost function of streamtrk's that made them
    assert launches.bytes_by_function == {"?": sum(nbytes[:4]), own: sum(nbytes[4:])}


def test_functions_used_before_counting_are_counted(tmp_path: Path) -> None:
    """The stand-in keeps a CuPy function it wrapped on first use: one used before the
    count (the warm-up reconstruct) is counted all the same, and kept after."""
    lc = bench_script("launch_count")
    strict_xp = lc.strict_stand_in()
    with strict_xp.installed(tmp_path) as cupy:
        a = cupy.arange(10, dtype=cupy.int64)
        cupy.cumsum(a)
        cupy.linalg.norm(a.astype(cupy.float64))
        launches = lc.Launches()
        with lc.counting(strict_xp, launches):
            cupy.cumsum(a)  # 80 read, 80 written
            cupy.linalg.norm(cupy.ones(3))  # a fill (24), the norm (24 read, 8 written)
        assert launches.by_stage == {"other": 3}
        assert launches.bytes_by_stage == {"other": 160 + 24 + 32}
        assert cupy.cumsum(a)[-1].item() == 45
