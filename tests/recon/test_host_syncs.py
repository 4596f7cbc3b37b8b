"""Counting host synchronisations, and the helpers that avoid them (GPU only)."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from gpu_only import cupy_on_cuda

from streamtrk.recon.host_syncs import count_host_syncs, counting_unavailable
from streamtrk.xp import (
    argsort,
    bincount,
    concatenate_to_device,
    csr_rows,
    lexsort,
    scatter_min,
)

pytestmark = pytest.mark.gpu
cupy = cupy_on_cuda(torch_too=True)
if (why := counting_unavailable()) is not None:
    pytest.skip(f"GPU-only: {why}", allow_module_level=True)


def test_counts_each_kind_of_synchronisation():
    a = cupy.arange(10)
    with count_host_syncs() as one_copy:
        a.get()
    assert (one_copy.cupy, one_copy.torch) == (1, 0)  # the calibration
    for kind in (lambda: int(a.sum()), lambda: cupy.nonzero(a > 4), lambda: a[a > 4]):
        with count_host_syncs() as syncs:
            kind()
        assert syncs.cupy >= 1 and syncs.torch == 0
    t = torch.arange(10, device="cuda")
    with count_host_syncs() as item:
        t.sum().item()
    assert (item.cupy, item.torch) == (0, 1)
    with count_host_syncs() as none:
        (a * 2 + 1).cumsum()
        torch.cumsum(t * 2, 0)
    assert none.total == 0


@pytest.mark.parametrize(
    ("n", "used", "size"),
    [(10_000, 50, 64), (3_000_000, 16, 16), (10_000, 3000, 3000)],
    ids=["shared", "shared-contended", "global"],  # SHARED_BINS decides which kernel
)
def test_bincount_equals_numpy_without_synchronising(n: int, used: int, size: int):
    rng = np.random.default_rng(3)
    idx = rng.integers(0, used, size=n).astype(np.int32)  # any integer type
    w = rng.random(2 * n)[::2]  # any layout
    d_idx, d_w = cupy.asarray(idx), cupy.asarray(rng.random(2 * n))[::2]
    d_w[...] = cupy.asarray(w)
    with count_host_syncs() as ours:
        counts, sums = bincount(d_idx, size), bincount(d_idx, size, d_w)
    with count_host_syncs() as cupys:
        cupy.bincount(d_idx, minlength=size)
    assert ours.total == 0 and cupys.total >= 1, (ours, cupys)
    np.testing.assert_array_equal(counts.get(), np.bincount(idx, minlength=size))
    np.testing.assert_allclose(sums.get(), np.bincount(idx, w, minlength=size), rtol=1e-10)
    assert counts.dtype == np.int64 and sums.dtype == np.float64
    assert bincount(d_idx[:0], size).get().tolist() == [0] * size


@pytest.mark.parametrize("size", [5, 3000], ids=["shared", "global"])
def test_bincount_leaves_out_values_outside_its_bins(size: int):
    """Where NumPy raises, the device leaves the value out (a write past the bins could end
    the process's use of the GPU)."""
    idx = cupy.asarray([-1, 0, size, 2, -(2**40), 2**40])
    w = cupy.asarray([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    counts, sums = bincount(idx, size).get(), bincount(idx, size, w).get()
    assert counts[:3].tolist() == [1, 0, 1] and counts.sum() == 2
    assert sums[:3].tolist() == [2.0, 0.0, 8.0] and sums.sum() == 10.0


def test_scatter_min_equals_numpy_without_synchronising():
    rng = np.random.default_rng(4)
    target = rng.integers(0, 2**40, size=300)
    idx = rng.integers(0, 300, size=5_000)  # many repeats
    values = rng.integers(0, 2**40, size=5_000)
    d_target = cupy.asarray(target)
    with count_host_syncs() as syncs:
        scatter_min(d_target, cupy.asarray(idx), cupy.asarray(values))
    np.minimum.at(target, idx, values)
    assert syncs.total == 0
    np.testing.assert_array_equal(d_target.get(), target)


def test_lexsort_equals_numpy_without_synchronising():
    """An argsort a key (torch's, CUB's radix sorts) gives NumPy's lexsort: ties kept in
    order, 64-bit and 32-bit keys (not zeros of both signs: torch's sort of up to 4,096
    keys, CUB's block sort, may order them by their sign bit); none of
    the synchronisations CuPy or torch declare (Thrust's waits are declared to neither: the
    test below times them). Under a stream of CuPy's own, CuPy's sorts, the same order."""
    rng = np.random.default_rng(6)
    n = 200_000
    keys = (
        rng.choice([-1e-300, 0.0, 0.25, -3.5, 1e300], n),
        rng.integers(-(2**40), 2**40, n) // 2**38,
        rng.integers(0, 7, n).astype(np.int32),
    )
    device = tuple(cupy.asarray(k) for k in keys)
    with count_host_syncs() as syncs:
        orders = [lexsort(tuple(k[:m] for k in device)) for m in (3000, n)]  # torch: 2 paths
    assert syncs.total == 0
    with cupy.cuda.Stream(non_blocking=True):
        orders.append(lexsort(device))
    cupy.cuda.Device().synchronize()
    for order in orders:
        m = len(order)
        np.testing.assert_array_equal(order.get(), np.lexsort(tuple(k[:m] for k in keys)))


#: Keeps the device busy for ``ns`` nanoseconds (its global timer).
SPIN = r"""
extern "C" __global__ void spin(long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < (unsigned long long)ns);
}
"""


def test_sorts_do_not_wait_for_the_device_as_cupys_do():
    """CuPy's sorts (Thrust's, policy ``par``) wait for the device at the end of their steps,
    synchronisations CuPy does not declare; ``streamtrk.xp.argsort`` and ``lexsort``
    (torch's) queue their work and return. Behind a kernel that keeps the device busy for
    1 s (an event recorded after it): when ours return the kernel is still running, when
    CuPy's return it is done; all give NumPy's order. No wall-clock bound: the event says."""
    spin = cupy.RawKernel(SPIN, "spin")
    rng = np.random.default_rng(7)
    keys = cupy.asarray(rng.integers(0, 1000, 100_000))
    pair = (cupy.asarray(rng.random(100_000)), keys)
    sorts: dict[str, tuple[Callable[[], Any], np.ndarray | None]] = {
        "argsort": (lambda: argsort(keys), np.argsort(keys.get(), kind="stable")),
        "lexsort": (lambda: lexsort(pair), np.lexsort(tuple(k.get() for k in pair))),
        "cupy.argsort": (lambda: cupy.argsort(keys), None),
        "cupy.lexsort": (lambda: cupy.lexsort(cupy.stack(pair)), None),
    }
    for sort, _ in sorts.values():  # first calls: compilation, allocations
        sort()
    cupy.cuda.Device().synchronize()
    spun_when_returned = {}
    for name, (sort, expected) in sorts.items():
        spin((1,), (1,), (np.int64(1_000_000_000),))
        spun = cupy.cuda.Event()
        spun.record()
        order = sort()
        spun_when_returned[name] = spun.done
        cupy.cuda.Device().synchronize()
        want = expected if expected is not None else sorts[name[5:]][1]
        np.testing.assert_array_equal(order.get(), want)
    assert spun_when_returned == {
        "argsort": False,
        "lexsort": False,
        "cupy.argsort": True,
        "cupy.lexsort": True,
    }


def test_csr_rows_with_a_known_total_does_not_synchronise():
    offsets = cupy.asarray([0, 2, 2, 5])
    with count_host_syncs() as syncs:
        rows = csr_rows(offsets, 5)
    assert syncs.total == 0
    np.testing.assert_array_equal(rows.get(), [0, 0, 2, 2, 2])


def test_columns_go_up_in_one_copy():
    columns: dict[str, list[np.ndarray]] = {
        "x": [np.arange(5, dtype=np.float32)],
        "layer": [np.array([3, 4], dtype=np.int8)],
    }
    out = concatenate_to_device(columns, cupy)
    assert all(isinstance(v, cupy.ndarray) for v in out.values())
    np.testing.assert_array_equal(out["x"].get(), np.arange(5))
    np.testing.assert_array_equal(out["layer"].get(), [3, 4])
    assert out["x"].data.mem is out["layer"].data.mem  # one device allocation
