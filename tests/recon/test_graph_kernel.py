"""The GPU graph kernels (``doublet_search.cu``) without a GPU: the source compiles for the
device, and compiled for the host it finds exactly the NumPy search's edges and features.
(On a GPU, ``test_gpu_parity.py`` compares CuPy's graph with NumPy's.)"""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from streamtrk.recon.graph import GraphConfig, _prepare, _search_numpy, batch_columns
from streamtrk.recon.graph_kernel import OPTIONS, SOURCE, kernel_search


@pytest.fixture(scope="module")
def host_launch(tmp_path_factory):
    """``launch`` for ``kernel_search`` running the kernels, built by g++, on the host."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: cannot build the graph kernels for the host")
    tmp = tmp_path_factory.mktemp("kernels")
    src, lib = tmp / "doublet_search.cpp", tmp / "doublet_search.so"
    src.write_text(SOURCE.read_text())
    flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-DSTREAMTRK_HOST"]
    subprocess.run([cxx, *flags, "-o", str(lib), str(src)], check=True)
    kernels = ctypes.CDLL(str(lib))

    def launch(name, n_queries, args):
        def c(a):
            if isinstance(a, np.ndarray):
                return a.ctypes.data_as(ctypes.c_void_p)
            return ctypes.c_longlong(a) if isinstance(a, np.integer) else ctypes.c_double(a)

        getattr(kernels, name)(*map(c, args))

    return launch


def _both(events, det, cfg):
    cols, offsets = batch_columns(events)
    ctx, _, _ = _prepare(*cols.values(), offsets, det, cfg)
    return _search_numpy(ctx), ctx


@pytest.mark.parametrize(
    ("which", "cfg"),
    [
        ("one event", GraphConfig()),
        ("two events built whole", GraphConfig()),
        ("one cell per layer", GraphConfig(n_bins=1, n_phi_bins=1)),
        ("no skip-one pairs, coarse phi", GraphConfig(skip_layers=False, n_phi_bins=16)),
    ],
)
def test_host_kernels_find_the_numpy_edges(host_launch, small_events, det, which, cfg):
    events = small_events if which == "two events built whole" else small_events[:1]
    (i, j, features), ctx = _both(events, det, cfg)
    ki, kj, kfeatures = kernel_search(ctx, host_launch)
    assert len(i) > 5_000
    assert np.array_equal(ki, i) and np.array_equal(kj, j)  # same edges, same order
    assert kfeatures.dtype == np.float32 and np.array_equal(kfeatures, features)


def test_host_kernels_on_a_mu200_event(host_launch, mu200_events, det):
    (i, j, features), ctx = _both(mu200_events[:1], det, GraphConfig())
    ki, kj, kfeatures = kernel_search(ctx, host_launch)
    assert len(i) > 500_000
    assert np.array_equal(ki, i) and np.array_equal(kj, j)
    assert np.array_equal(kfeatures, features)


def test_host_kernels_without_queries(host_launch, small_events, det):
    # Hits of one layer only: no query has an outer layer with hits, no edge anywhere.
    ev = small_events[0]
    one = (ev.hits.layer_id == ev.hits.layer_id[0]) & (ev.hits.volume_id == ev.hits.volume_id[0])
    cols = {k: v[one] for k, v in batch_columns([ev])[0].items()}
    ctx, _, _ = _prepare(*cols.values(), np.array([0, len(cols["x"])]), det, GraphConfig())
    i, j, features = kernel_search(ctx, host_launch)
    assert len(ctx.qi) == 0 and len(i) == len(j) == 0 and features.shape == (0, 6)


def test_the_kernels_compile_for_the_device(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: cannot compile the graph kernels for the device")
    ptx, src = tmp_path / "doublet_search.ptx", tmp_path / "doublet_search.cu"
    src.write_text(SOURCE.read_text())
    cmd = [nvcc, "-ptx", "-arch=sm_90", *OPTIONS, "-Werror", "all-warnings", "-o", ptx, src]
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    entries = ptx.read_text()
    assert ".entry doublet_count(" in entries and ".entry doublet_fill(" in entries
