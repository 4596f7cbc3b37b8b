"""The CUDA kernel files compile for the device (NVRTC, as CuPy compiles them; no GPU
needed). Each stage's tests run its kernels' host form against its NumPy path; on a GPU,
``test_gpu_parity.py`` compares the CuPy results with NumPy's."""

import ctypes
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import nvrtc as nvrtc_compiler
import pytest
from needs import missing

from streamtrk.recon.kernels import OPTIONS, PRELUDE, build_for_host, contiguous, source
from streamtrk.xp import RAW_KERNELS_SOURCE

FILES = sorted(
    p.name for p in resources.files("streamtrk.recon").iterdir() if p.name.endswith(".cu")
)
ENTRIES = {
    "doublet_search.cu": (
        "hit_cells",
        "query_counts",
        "query_fill",
        "doublet_queries",
        "doublet_candidates",
        "doublet_flags",
        "doublet_fill",
    ),
    "gls_filter.cu": (
        "gls_gram",
        "circle_distances",
        "circle_turns",
        "hit_projections",
        "hit_scattering",
        "karimaki_params",
        "karimaki_circle",
        "start_circle",
        "start_line",
        "fit_hits",
        "hole_counts",
        "hole_rows",
        "hole_merge",
        "track_parameters",
        "circle_gls_hits",
        "line_gls_hits",
        "gls_solve",
    ),
    "track_building.cu": (
        "propagate_labels",
        "junction_codes",
        "junction_take",
        "piece_ends",
        "stitch_ends",
        "stitch_candidates",
        "stitch_take",
        "piece_links",
        "double_exit_count",
        "double_exits",
        "double_codes",
        "double_take",
        "track_cuts",
    ),
    "triplet_search.cu": ("triplet_flags", "quadruplet_ends", "edge_geometry"),
}


#: The options CuPy 14 gives NVRTC besides a kernel's own (cupy/cuda/compiler.py; -arch and
#: --pch aside).
CUPY_ADDS = ("-ftz=true", "--device-as-default-execution-space")


def test_every_kernel_file_is_known():
    assert sorted(ENTRIES) == FILES


@pytest.fixture(scope="module")
def nvrtc():
    """NVRTC (tests/recon/nvrtc.py); ``needs.missing`` where the dev dependency is not."""
    if nvrtc_compiler.library() is None:
        missing("NVRTC not installed (the dev extras' nvidia-cuda-nvrtc, Linux only)")
    return nvrtc_compiler


@pytest.mark.parametrize("name", FILES)
def test_kernels_compile_for_the_device_as_cupy_compiles_them(nvrtc, name):
    """Each kernel file compiles with NVRTC for the H200 with CuPy's options (ours, and those
    CuPy 14 adds), without a warning (the log empty: NVRTC 13.0, which the CUDA builds of
    torch pin, has no -Werror), and holds exactly its listed kernels."""
    rc, log, ptx = nvrtc.compile_ptx(source(name), (*OPTIONS, *CUPY_ADDS))
    assert rc == 0 and not log.strip(), log
    assert nvrtc.entries(ptx) == set(ENTRIES[name])


def test_the_raw_kernels_of_xp_compile_for_the_device(nvrtc):
    """streamtrk.xp's raw kernels, as CuPy compiles them (no options of ours)."""
    rc, log, ptx = nvrtc.compile_ptx(RAW_KERNELS_SOURCE, CUPY_ADDS)
    assert rc == 0 and not log.strip(), log
    entries = {"streamtrk_shared_bincount", "streamtrk_shared_bincount_weighted"}
    assert nvrtc.entries(ptx) == entries | {"streamtrk_compact"}


def test_a_kernel_that_does_not_compile_is_seen(nvrtc):
    """The checks above can fail: a warning is in the log, and an error is reported."""
    unused = 'extern "C" __global__ void k(long long *a) { int unused = 1; a[0] = 2; }'
    rc, log, _ = nvrtc.compile_ptx(unused, OPTIONS)
    assert rc == 0 and 'warning #177-D: variable "unused"' in log
    rc, log, _ = nvrtc.compile_ptx(source("gls_filter.cu") + "\nnot C;\n", OPTIONS)
    assert rc != 0 and "error" in log


@pytest.mark.parametrize("scalar", [5, 2.5, np.int32(5), np.float32(2.5)])
def test_the_host_build_refuses_scalars_a_device_would_misread(host_launcher, scalar):
    """The kernels take long long and double scalars; CuPy passes a Python int or a 32-bit
    NumPy scalar as something else, unchecked, and the GPU misreads every later parameter."""
    launch = host_launcher("gls_filter.cu")
    with pytest.raises(TypeError, match=r"kernel scalars are np\.int64 or np\.float64"):
        launch("gls_gram", 1, (scalar,))


def test_kernel_arguments_are_made_contiguous_and_scalars_pass_through() -> None:
    """A kernel reads its arrays' pointers as dense rows: ``contiguous`` gives every strided
    view (a column, a step) as a C-contiguous copy of the same values, and the scalars as
    they are."""
    grid = np.arange(24, dtype=np.float64).reshape(4, 6)
    n = np.int64(7)
    out = contiguous((n, grid[:, 1], grid[::2], np.float64(0.5)), np)
    assert out[0] is n and out[3] == 0.5
    for got, view in zip(out[1:3], (grid[:, 1], grid[::2]), strict=True):
        assert got.flags.c_contiguous and np.array_equal(got, view)


def test_a_reversed_host_build_runs_its_threads_last_to_first(tmp_path: Path) -> None:
    """``build_for_host(..., reversed_threads=True)`` runs the last thread first (the tests
    that a result does not hang on the threads' order rely on it), the plain build the
    first: each thread writes the number of threads run before it."""
    if shutil.which("g++") is None:
        missing("g++ not found: cannot build the CUDA kernels for the host")
    code = PRELUDE + (
        'extern "C" __global__ void order(long long n, long long *seen, long long *a) '
        "{ FOR_EACH_THREAD(t, n) a[t] = seen[0]++; }"
    )
    n = 5
    for reversed_threads, expected in ((False, [0, 1, 2, 3, 4]), (True, [4, 3, 2, 1, 0])):
        lib = build_for_host(code, tmp_path / f"order-{reversed_threads}.so", reversed_threads)
        seen, a = np.zeros(1, np.int64), np.full(n, -1, np.int64)
        lib.order(ctypes.c_longlong(n), *(x.ctypes.data_as(ctypes.c_void_p) for x in (seen, a)))
        assert a.tolist() == expected
