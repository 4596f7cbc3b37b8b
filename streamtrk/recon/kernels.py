"""CUDA kernels of the reconstruction stages for CuPy: their sources, compile options and
launcher.

A stage keeps its kernels in a CUDA C file beside its module (``doublet_search.cu``: graph
construction; ``triplet_search.cu``: pruning), one thread per query, and runs them through a
:data:`Launch`, ``launch(kernel, n_threads, args)``: on a GPU :func:`cupy_launcher`'s. With
``STREAMTRK_HOST`` defined the same source compiles, for a C++ compiler, to host functions
that loop over the threads: the tests run them against the NumPy path without a GPU. No
fused multiply-adds (``--fmad=false``), so every cut decision rounds as NumPy's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

#: What every kernel file starts with: thread indexing, and its host form.
PRELUDE = """\
#ifdef STREAMTRK_HOST
#include <cmath>
using std::asinh;
using std::fabs;
using std::fmax;
using std::fmin;
using std::sqrt;
#define __global__
#define __device__
#define FOR_EACH_THREAD(t, n) for (long long t = 0; t < (n); ++t)
#else
#define FOR_EACH_THREAD(t, n)                                          \\
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; \\
    if (t < (n))
#endif
"""
OPTIONS = ("--fmad=false", "-std=c++17")
THREADS_PER_BLOCK = 256

#: ``launch(kernel, n_threads, args)``: run a kernel on ``n_threads`` threads.
Launch = Callable[[str, int, tuple[Any, ...]], None]


def source(name: str) -> str:
    """The CUDA C source of kernel file ``name`` (in this package), prelude included."""
    return PRELUDE + resources.files("streamtrk.recon").joinpath(name).read_text()


def contiguous(args: tuple[Any, ...], xp: Any) -> tuple[Any, ...]:
    """``args`` with every array C-contiguous, as a kernel reads its pointers."""
    return tuple(xp.ascontiguousarray(a) if isinstance(a, xp.ndarray) else a for a in args)


@cache
def _module(name: str) -> Any:
    import cupy

    return cupy.RawModule(code=source(name), options=OPTIONS)


def cupy_launcher(name: str) -> Launch:
    """Launch kernels of file ``name`` on CuPy's current device and stream."""

    def launch(kernel: str, n_threads: int, args: tuple[Any, ...]) -> None:
        if n_threads:
            blocks = -(-n_threads // THREADS_PER_BLOCK)
            _module(name).get_function(kernel)((blocks,), (THREADS_PER_BLOCK,), args)

    return launch
