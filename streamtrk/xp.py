"""The array-module pattern: one code path for NumPy and CuPy arrays.

``array_module(a)`` is ``numpy`` or ``cupy``, whichever owns ``a``; ``to_host(a)`` is a
NumPy array of ``a`` (a device-to-host copy for CuPy, no copy for NumPy). CuPy is imported
only when a CuPy array is seen, so CPU-only installs never need it. The device helpers say
how many host synchronisations they cost (none where not said, but ``to_host``'s copy).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray


def array_module(a: Array) -> Any:
    """``numpy`` or ``cupy``, whichever owns ``a``."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def wrapped_angle(angle: Array, xp: Any = np) -> Array:
    """``angle`` (rad) in [-pi, pi), by ``xp`` (the module of ``angle``)."""
    return xp.mod(angle + np.pi, 2 * np.pi) - np.pi


def to_host(a: Array) -> np.ndarray:
    """``a`` as a NumPy array: CuPy arrays are copied to the host, anything else converted."""
    return a.get() if array_module(a) is not np else np.asarray(a)


def to_host_packed(arrays: dict[str, Array]) -> dict[str, np.ndarray]:
    """``arrays`` (one device, any dtypes and shapes) as NumPy arrays in one device-to-host
    copy: their bytes packed into one buffer on the device (each part padded to 8 bytes),
    copied, then viewed part by part on the host. One host synchronisation, not one per
    array."""
    if not arrays:
        return {}
    xp = array_module(next(iter(arrays.values())))
    spans, _ = _spans([v.nbytes for v in arrays.values()])
    parts, pad = [], None  # pad: one fill, sliced for every part padded
    for v in arrays.values():
        parts.append(xp.ascontiguousarray(v).reshape(-1).view(xp.uint8))
        if -v.nbytes % 8:
            pad = xp.zeros(7, dtype=xp.uint8) if pad is None else pad
            parts.append(pad[: -v.nbytes % 8])
    buffer = to_host(xp.concatenate(parts))
    return {
        k: buffer[lo : lo + n].view(v.dtype).reshape(v.shape)
        for (k, v), (lo, n) in zip(arrays.items(), spans, strict=True)
    }


def concatenate_to_device(
    columns: dict[str, list[np.ndarray]], xp: Any, finite: Collection[str] = ()
) -> dict[str, Array]:
    """Each column's NumPy parts (1-D) concatenated, on ``xp``'s device in one
    host-to-device copy: the columns are concatenated straight into one host buffer (each
    padded to 8 bytes), copied up once (CuPy; NumPy keeps it), and viewed column by column.
    For CuPy the buffer is this thread's page-locked one (:func:`_staging`), copied
    asynchronously on the current stream. Costs what the concatenations cost on the host,
    plus the one copy; past :data:`PARALLEL_BYTES` the columns are concatenated on threads
    of their own, a column each (NumPy copies without the interpreter lock: a batch of
    MU=200 events is a memory copy of 2.3 MB an event). The columns named in ``finite``
    are checked as they are concatenated: :class:`NotFinite` (before any copy up) where one
    holds a NaN or an infinity."""

    def concatenate(name: str, parts: list[np.ndarray], out: np.ndarray) -> bool:
        np.concatenate(parts, out=out)
        return name not in finite or bool(np.isfinite(out).all())

    dtypes = {k: np.result_type(*parts) for k, parts in columns.items()}
    lengths = {k: sum(len(p) for p in parts) for k, parts in columns.items()}
    spans, total = _spans([lengths[k] * dtypes[k].itemsize for k in columns])
    host = np.empty(total, dtype=np.uint8) if xp is np else _staging(total, xp)
    jobs = [
        (k, parts, host[lo : lo + n].view(dtypes[k]))
        for (k, parts), (lo, n) in zip(columns.items(), spans, strict=True)
    ]
    if total >= PARALLEL_BYTES and len(jobs) > 1 and (pool := _copy_pool()) is not None:
        # Every copy ended before anything is raised: none writes into the buffer after.
        copies = [pool.submit(concatenate, *job) for job in jobs]
        wait(copies)
        ok = [copy.result() for copy in copies]
    else:
        ok = [concatenate(*job) for job in jobs]
    if not all(ok):
        raise NotFinite([k for (k, _, _), good in zip(jobs, ok, strict=True) if not good])
    if xp is np:
        buffer = host
    else:
        stream = xp.cuda.get_current_stream()
        buffer = xp.empty(total, dtype=xp.uint8)
        buffer.set(host, stream=stream)
        _STAGING.copied = stream.record()
    return {
        k: buffer[lo : lo + n].view(dtypes[k]) for k, (lo, n) in zip(columns, spans, strict=True)
    }


class NotFinite(ValueError):
    """A column :func:`concatenate_to_device` was to check holds a NaN or an infinity."""

    def __init__(self, columns: list[str]) -> None:
        super().__init__(f"columns {columns} hold NaN or infinite values")
        self.columns = columns


STAGING_MIN = 1 << 20  # bytes: the smallest page-locked upload buffer (half a MU=200 event)
#: Bytes of columns past which :func:`concatenate_to_device` copies them on threads of its
#: own (about two MU=200 events).
PARALLEL_BYTES = 4 << 20


@cache
def _copy_pool() -> ThreadPoolExecutor | None:
    """The threads :func:`concatenate_to_device` copies columns on: as many as the CPUs this
    process may run on (its affinity mask; a CPU quota, short copies may pass), at most 8 (a
    batch has a handful of columns); None with one CPU. (Two first calls at once may each
    make one: the spare is collected, its threads end.)"""
    affinity = getattr(os, "sched_getaffinity", None)
    threads = min(8, len(affinity(0)) if affinity is not None else os.cpu_count() or 1)
    return ThreadPoolExecutor(threads, thread_name_prefix="columns") if threads > 1 else None


os.register_at_fork(after_in_child=_copy_pool.cache_clear)  # a child has none of its threads


class _Staging(threading.local):
    """A thread's page-locked host buffer for uploads, and the event recorded after the
    last copy from it."""

    def __init__(self) -> None:
        self.buffer: np.ndarray | None = None
        self.copied: Any = None


_STAGING = _Staging()


def _staging(nbytes: int, cupy: Any) -> np.ndarray:
    """``nbytes`` bytes of this thread's page-locked host buffer (CuPy's pinned memory
    pool; at least :data:`STAGING_MIN`, grown by doubling, kept for the thread's life):
    written without page faults, and copied up by DMA without CuPy staging it again through
    a buffer of its own (``asarray`` of a NumPy array copies it into one first). Waits for
    the last copy from it to end (long ended when the next batch comes: no host
    synchronisation in practice)."""
    s = _STAGING
    if s.copied is not None:
        s.copied.synchronize()
        s.copied = None
    if s.buffer is None or s.buffer.nbytes < nbytes:
        size = max(nbytes, STAGING_MIN, 0 if s.buffer is None else 2 * s.buffer.nbytes)
        s.buffer = np.frombuffer(cupy.cuda.alloc_pinned_memory(size), np.uint8, size)
    return s.buffer[:nbytes]


def _spans(sizes: list[int]) -> tuple[list[tuple[int, int]], int]:
    """(offset, bytes) of parts of ``sizes`` bytes packed in one buffer, each padded to 8
    bytes (every dtype's alignment), and the buffer's size."""
    spans, at = [], 0
    for n in sizes:
        spans.append((at, n))
        at += n + (-n % 8)
    return spans, at


def chunk_bounds(n: int, chunk: int, xp: Any, cumulative: np.ndarray | None = None) -> list[int]:
    """Bounds ``[0, ..., n]`` that cut ``n`` items into runs of about ``chunk`` items, or of
    about ``chunk`` weight where ``cumulative`` is the running total of the items' integer
    weights. Chunks are for the CPU, whose temporaries then stay in cache; on the GPU (any
    ``xp`` but NumPy) one run, for the launch count."""
    if xp is not np or n == 0:
        return [0, n]
    total = n if cumulative is None else int(cumulative[-1])
    n_chunks = max(1, -(-total // chunk))
    if cumulative is None:
        return np.linspace(0, n, n_chunks + 1).astype(np.int64).tolist()
    # Integer targets (an integer c is >= v where it is >= ceil(v)): float ones would make
    # the search convert the whole running total to float64 first.
    targets = np.ceil(np.linspace(0, total, n_chunks + 1)[1:-1]).astype(cumulative.dtype)
    cuts = np.searchsorted(cumulative, targets)
    return np.unique([0, *cuts, n]).tolist()  # no empty runs


#: Most elements one scan (``cumsum``) covers: CuPy's scan indexes with 32-bit integers and,
#: past 2^31 elements, silently gives wrong totals (cupy issue 9841).
SCAN_CHUNK = 1 << 30


def running_total(a: Array) -> Array:
    """``cumsum(a)`` as int64, by scans of at most :data:`SCAN_CHUNK` elements, each
    continuing the last on the device (no host synchronisation): right past 2^31 elements."""
    xp = array_module(a)
    if len(a) <= SCAN_CHUNK:
        return xp.cumsum(a, dtype=xp.int64)
    out = xp.empty(len(a), dtype=xp.int64)
    for lo in range(0, len(a), SCAN_CHUNK):
        part = out[lo : lo + SCAN_CHUNK]
        xp.cumsum(a[lo : lo + SCAN_CHUNK], dtype=xp.int64, out=part)
        if lo:
            part += out[lo - 1]
    return out


#: DLPack's device type of CUDA memory.
DLPACK_CUDA = 2


def argsort(keys: Array, stable: bool = False) -> Array:
    """The indices (int64) that sort 1-D ``keys`` (without NaN on the device, where -0.0
    may sort before 0.0: the chain's float keys are positive): NumPy's ``argsort``
    (``stable``: ties keep their order, else its default quicksort); on the device always
    stable, by torch where the keys are in CUDA memory and both CuPy and torch work on the
    default stream, as the chain does (the keys go to torch through DLPack without a copy,
    torch sorts on that stream, the indices come back likewise). CuPy's sorts are Thrust's
    with its ``par`` policy, which waits for the device at the end of each of its steps
    (the index sequence, the sort): host synchronisations that CuPy does not declare.
    torch's (CUB's radix sort; a merge sort up to 128 keys) do not wait. CuPy's own
    elsewhere: the tests' stand-in, another stream (torch could reuse the indices' memory
    before CuPy's work on it is done), unsigned keys wider than a byte (torch sorts none)."""
    xp = array_module(keys)
    if xp is np:
        return np.argsort(keys, kind="stable" if stable else None)
    if len(keys) < 2:  # nothing to sort (and no empty arrays through DLPack)
        return xp.arange(len(keys), dtype=xp.int64)
    import torch
    from torch.utils.dlpack import from_dlpack

    if (
        keys.__dlpack_device__()[0] != DLPACK_CUDA
        or xp.cuda.get_current_stream().ptr != 0
        or torch.cuda.current_stream().cuda_stream != 0
        or (keys.dtype.kind == "u" and keys.dtype.itemsize > 1)
    ):
        return xp.argsort(keys, kind="stable")

    order = torch.argsort(from_dlpack(xp.ascontiguousarray(keys)), stable=True)
    return xp.from_dlpack(order)


def lexsort(keys: tuple[Array, ...]) -> Array:
    """NumPy's ``lexsort`` of 1-D ``keys`` (the last key primary; ties keep their order;
    without NaN on the device). On the device a stable :func:`argsort` per key, the least
    significant first: radix sorts that do not wait for the device, where CuPy's
    ``lexsort`` is a stable comparison sort of the indices per key (two scattered reads a
    comparison), waiting for the device after each and after the index sequence."""
    xp = array_module(keys[0])
    if xp is np:
        return np.lexsort(keys)
    order = argsort(keys[0], stable=True)
    for key in keys[1:]:
        order = order[argsort(key[order], stable=True)]
    return order


def index_of(keys: Array, queries: Array) -> tuple[Array, Array]:
    """Where each of ``queries`` sits in ``keys`` (unique values, any order): ``(index,
    found)``; ``index`` is 0 where ``found`` is False. One sort of ``keys``, one search."""
    xp = array_module(keys)
    if len(keys) == 0:
        return xp.zeros(len(queries), dtype=xp.int64), xp.zeros(len(queries), dtype=bool)
    order = argsort(keys, stable=True)
    pos = xp.minimum(xp.searchsorted(keys[order], queries), len(keys) - 1)
    index = order[pos]
    found = keys[index] == queries
    return xp.where(found, index, 0), found


def lookup(values: Array, index: Array, found: Array) -> Array:
    """``values[index]`` as float64 where ``found`` (:func:`index_of`'s pair), NaN where not;
    all NaN from an empty ``values``, which ``index`` (0 where not found) cannot address."""
    xp = array_module(values)
    if len(values) == 0:
        return xp.full(len(index), xp.nan)
    return xp.where(found, values[index].astype(xp.float64), xp.nan)


def bincount(idx: Array, size: int, weights: Array | None = None) -> Array:
    """NumPy's ``bincount`` with exactly ``size`` bins: counts (int64) or sums of ``weights``
    (float64) per value of ``idx``, which must lie in ``[0, size)``. No host
    synchronisation on the device: CuPy's ``bincount`` costs two (a sign check and the
    maximum that sizes its output), this launches an atomic-add kernel into ``size`` zeros.
    Up to :data:`SHARED_BINS` bins, each block of the kernel adds into its own copy of the
    bins in shared memory, then into the output (a few bins taking millions of values, one
    global atomic add each, serialised on their addresses: the work budget's per-event sums
    took 10 ms each on an H200). Values outside the range raise on NumPy; the device leaves
    them out (a write past the bins could end the process's use of the GPU)."""
    xp = array_module(idx)
    if xp is np:
        out = np.bincount(idx, weights, minlength=size)
        if len(out) != size:
            raise ValueError(f"bincount: a value of idx is not below size={size}")
        return out
    out = xp.zeros(size, dtype=xp.int64 if weights is None else xp.float64)
    if len(idx) == 0:
        return out
    if size > SHARED_BINS:
        if weights is None:
            _atomic_add_kernels()[0](idx, out)
        else:
            _atomic_add_kernels()[1](idx, weights.astype(xp.float64, copy=False), out)
        return out
    idx = xp.ascontiguousarray(idx, dtype=xp.int64)
    blocks = min(-(-len(idx) // 256), 2 * _multiprocessors())
    n, bins = np.int64(len(idx)), np.int64(size)
    args: tuple[Any, ...]
    if weights is None:
        args, kernel = (idx, n, bins, out), _raw_kernel("streamtrk_shared_bincount")
    else:
        w = xp.ascontiguousarray(weights, dtype=xp.float64)
        args, kernel = (idx, w, n, bins, out), _raw_kernel("streamtrk_shared_bincount_weighted")
    kernel((blocks,), (256,), args, shared_mem=size * 8)
    return out


#: Most bins :func:`bincount` keeps per block in shared memory (8 KiB of them).
SHARED_BINS = 1024


@cache
def _multiprocessors() -> int:
    import cupy

    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


#: The raw kernels: :func:`bincount`'s counts and weighted sums into bins in shared memory,
#: :func:`compact`'s scatter of indices.
RAW_KERNELS_SOURCE = r"""
extern "C" __global__ void streamtrk_shared_bincount(
        const long long *idx, long long n, long long size, unsigned long long *out) {
    extern __shared__ unsigned long long shared_counts[];
    for (long long b = threadIdx.x; b < size; b += blockDim.x) shared_counts[b] = 0;
    __syncthreads();
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
         t += (long long)gridDim.x * blockDim.x)
        if ((unsigned long long)idx[t] < (unsigned long long)size)  // no write past the bins
            atomicAdd(&shared_counts[idx[t]], 1ULL);
    __syncthreads();
    for (long long b = threadIdx.x; b < size; b += blockDim.x)
        if (shared_counts[b]) atomicAdd(&out[b], shared_counts[b]);
}

extern "C" __global__ void streamtrk_shared_bincount_weighted(
        const long long *idx, const double *w, long long n, long long size, double *out) {
    extern __shared__ double shared_sums[];
    for (long long b = threadIdx.x; b < size; b += blockDim.x) shared_sums[b] = 0.0;
    __syncthreads();
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
         t += (long long)gridDim.x * blockDim.x)
        if ((unsigned long long)idx[t] < (unsigned long long)size)
            atomicAdd(&shared_sums[idx[t]], w[t]);
    __syncthreads();
    for (long long b = threadIdx.x; b < size; b += blockDim.x)
        if (shared_sums[b] != 0.0) atomicAdd(&out[b], shared_sums[b]);
}

extern "C" __global__ void streamtrk_compact(
        const bool *mask, const long long *ends, long long n, long long total, long long *out) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n && mask[t] && ends[t] <= total) out[ends[t] - 1] = t;
}
"""


@cache
def _raw_kernel(name: str) -> Any:
    return _raw_module().get_function(name)


@cache
def _raw_module() -> Any:
    import cupy

    return cupy.RawModule(code=RAW_KERNELS_SOURCE)


@cache
def _atomic_add_kernels() -> tuple[Any, Any]:
    """CuPy's own ``bincount`` kernels (counts, weighted sums), without its checks."""
    import cupy

    inside = "if (x >= 0 && x < bin.size()) "  # no write past the bins
    count = cupy.ElementwiseKernel(
        "S x", "raw U bin", inside + "atomicAdd(&bin[x], U(1))", "streamtrk_bincount"
    )
    weighted = cupy.ElementwiseKernel(
        "S x, T w", "raw U bin", inside + "atomicAdd(&bin[x], w)", "streamtrk_bincount_weighted"
    )
    return count, weighted


def scatter_min(target: Array, idx: Array, values: Array) -> None:
    """``target[idx] = min(target[idx], values)``, repeated indices included, in place, for
    int64 arrays: ``numpy.minimum.at`` on NumPy, an atomic-min kernel on the device (CuPy's
    ``scatter_min`` takes no int64 and is deprecated in CuPy 14)."""
    if array_module(target) is np:
        np.minimum.at(target, idx, values)
    else:
        _atomic_min_kernel()(idx, values, target)


@cache
def _atomic_min_kernel() -> Any:
    import cupy

    return cupy.ElementwiseKernel(
        "S index, T v", "raw T target", "atomicMin(&target[index], v)", "streamtrk_scatter_min"
    )


def nonzeros(*masks: Array) -> list[Array]:
    """The indices of each boolean mask's True entries (int64, ascending: ``nonzero(m)[0]``
    of each). On the device one host synchronisation for all (their counts, brought down
    together), where CuPy's ``nonzero`` costs one each."""
    xp = array_module(masks[0])
    if xp is np:
        return [np.nonzero(m)[0] for m in masks]
    masks = tuple(m.astype(bool, copy=False) for m in masks)  # nonzero: not zero
    ends = [xp.cumsum(m, dtype=xp.int64) for m in masks]
    last = [e[-1] if len(e) else xp.zeros((), dtype=xp.int64) for e in ends]
    totals = to_host(xp.stack(last))
    return [compact(m, int(t), e) for m, e, t in zip(masks, ends, totals, strict=True)]


def compact(mask: Array, total: int, ends: Array | None = None) -> Array:
    """The indices of boolean ``mask``'s True entries (int64, ascending), given ``total``,
    their count (known on the host), and ``ends``, its running count (``cumsum(mask)``),
    where at hand: no host synchronisation on the device. A wrong ``total`` gives wrong
    indices (the device writes none past it; the tests' stand-in raises)."""
    xp = array_module(mask)
    if xp is np:
        return np.nonzero(mask)[0]
    out = xp.empty(total, dtype=xp.int64)
    if total:
        n, mask = len(mask), mask.astype(bool, copy=False)  # the kernel reads bools
        ends = xp.cumsum(mask, dtype=xp.int64) if ends is None else ends
        args = (xp.ascontiguousarray(mask), xp.ascontiguousarray(ends, dtype=xp.int64))
        sizes = (np.int64(n), np.int64(total))
        _raw_kernel("streamtrk_compact")((-(-n // 256),), (256,), (*args, *sizes, out))
    return out


def csr_rows(offsets: Array, total: int | None = None) -> Array:
    """Row of every element of a CSR layout (``offsets``): ``repeat`` on NumPy, a search on
    the device (one host synchronisation, the total, unless ``total`` is given: the length
    of the array the offsets index, known on the host)."""
    xp = array_module(offsets)
    if xp is np:
        return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    n = int(offsets[-1]) if total is None else total
    return xp.searchsorted(offsets[1:], xp.arange(n), side="right")


def expand_ranges(lo: Array, hi: Array, ends: Array | None = None) -> tuple[Array, Array]:
    """Flatten ranges ``[lo, hi)``: (range id, position) of every element, range by range.
    ``ends``: the running total of the ranges' lengths (``cumsum(maximum(hi - lo, 0))``),
    where at hand. One host synchronisation (the total)."""
    xp = array_module(lo)
    counts = xp.maximum(hi - lo, 0)
    ends = xp.cumsum(counts) if ends is None else ends
    total = int(ends[-1]) if len(ends) else 0
    if xp is np:  # same result; repeat is the fast primitive on the CPU, search on the GPU
        rid = np.repeat(np.arange(len(counts)), counts)
    else:
        rid = xp.searchsorted(ends, xp.arange(total), side="right")
    return rid, xp.arange(total) + (lo - ends + counts)[rid]
