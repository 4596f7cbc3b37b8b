"""CUDA kernels of the reconstruction stages for CuPy: their sources, compile options and
launcher.

A stage keeps its kernels in a CUDA C file beside its module (``doublet_search.cu``: graph
construction; ``triplet_search.cu``: pruning; ``track_building.cu``: track building;
``gls_filter.cu``: the fit), a thread per item of its first parameter, and runs them
through a :data:`Launch`, ``launch(kernel, n_threads, args)``: on a GPU
:func:`cupy_launcher`'s. With ``STREAMTRK_HOST`` defined the same source compiles, for a
C++ compiler, to host functions that loop over the threads (:func:`host_launcher`): the
tests run them against the NumPy path without a GPU. No fused multiply-adds
(``--fmad=false``): + - x / and sqrt round as NumPy's, so the cuts decide as NumPy's but
where CUDA's maths functions (``asinh``, and CuPy's own for the inputs) differ from the
host's by an ulp. (CuPy also compiles with ``-ftz=true``, flushing float32 values under
1.2e-38 to zero: the float32 quantities compared, angles and curvatures and their
differences in multiples of their rounding step, are zero or far above that; edge scores,
which a sigmoid can make that small, are compared by their bits, ``track_building.cu``.)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: What every kernel file starts with: thread indexing, and its host form; NumPy's
#: ``minimum``, ``maximum`` (a NaN on either side gives NaN; a tie, the first) and ``mod``
#: (the remainder with the divisor's sign), and ``numpy.pi``.
PRELUDE = """\
#ifdef STREAMTRK_HOST
#include <cmath>
using std::acos;
using std::asinh;
using std::atan2;
using std::cos;
using std::fabs;
using std::fmax;
using std::fmin;
using std::fmod;
using std::hypot;
using std::isfinite;
using std::log;
using std::nan;
using std::sin;
using std::sqrt;
#define __global__
#define __device__
#ifdef STREAMTRK_HOST_REVERSED  // the last thread first: a result that hangs on their order shows
#define FOR_EACH_THREAD(t, n) for (long long t = (n) - 1; t >= 0; --t)
#else
#define FOR_EACH_THREAD(t, n) for (long long t = 0; t < (n); ++t)
#endif
#else
#define FOR_EACH_THREAD(t, n)                                          \\
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; \\
    if (t < (n))
#endif
#define PI 3.141592653589793
__device__ inline double numpy_min(double a, double b) { return (a <= b || a != a) ? a : b; }
__device__ inline double numpy_max(double a, double b) { return (a >= b || a != a) ? a : b; }
__device__ inline double numpy_mod(double a, double b) {
    double m = fmod(a, b);
    if (m != 0.0 && ((b < 0.0) != (m < 0.0))) m += b;
    return m;
}
"""
OPTIONS = ("--fmad=false", "-std=c++17")
THREADS_PER_BLOCK = 256
#: Set to ``address``, the host builds are compiled with AddressSanitizer (the process must
#: preload its runtime, ``libasan``): a read or write past an array stops the process,
#: where on a GPU it could end the process's use of the device.
SANITIZE_ENV = "STREAMTRK_HOST_SANITIZE"

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


@cache
def _function(name: str, kernel: str) -> Any:
    return _module(name).get_function(kernel)


def cupy_launcher(name: str) -> Launch:
    """Launch kernels of file ``name`` on CuPy's current device and stream."""

    def launch(kernel: str, n_threads: int, args: tuple[Any, ...]) -> None:
        if n_threads:
            blocks = -(-n_threads // THREADS_PER_BLOCK)
            _function(name, kernel)((blocks,), (THREADS_PER_BLOCK,), args)

    return launch


def build_for_host(code: str, lib: Path, reversed_threads: bool = False) -> ctypes.CDLL:
    """Kernel source ``code`` built as host functions (g++, its ``STREAMTRK_HOST`` form) into
    the shared library ``lib`` (its source beside it), loaded; their threads one after
    another, first to last or, ``reversed_threads``, last to first (a GPU runs them in any
    order: a result that differs between the two hangs on it); with AddressSanitizer where
    ``$STREAMTRK_HOST_SANITIZE`` is ``address``. Raises ``FileNotFoundError`` without g++."""
    cxx = shutil.which("g++")
    if cxx is None:
        raise FileNotFoundError("g++ not found: cannot build the CUDA kernels for the host")
    src = lib.with_suffix(".cpp")
    src.write_text(code)
    flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-DSTREAMTRK_HOST"]
    flags += ["-DSTREAMTRK_HOST_REVERSED"] if reversed_threads else []
    if os.environ.get(SANITIZE_ENV) == "address":
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
    subprocess.run([cxx, *flags, "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))


def host_launcher(name: str, build_dir: Path) -> Launch:
    """Launch kernels of file ``name`` built as host functions (:func:`build_for_host`, in
    ``build_dir``) over NumPy arrays, one thread after another: the kernels without a GPU,
    for tests and CPU dry runs. Raises ``FileNotFoundError`` without g++."""
    kernels = build_for_host(source(name), build_dir / f"{name}.so")

    def c(a: Any) -> Any:
        # The scalars the kernels take (long long, double), as on the device: any other would
        # be misread there, so it is refused here too.
        if isinstance(a, np.ndarray):
            return a.ctypes.data_as(ctypes.c_void_p)
        if isinstance(a, np.int64):
            return ctypes.c_longlong(int(a))
        if isinstance(a, np.float64):
            return ctypes.c_double(a)
        raise TypeError(f"kernel scalars are np.int64 or np.float64, got {type(a).__name__}")

    def launch(kernel: str, n_threads: int, args: tuple[Any, ...]) -> None:
        getattr(kernels, kernel)(*map(c, args))

    return launch
