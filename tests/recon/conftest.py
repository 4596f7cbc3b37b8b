"""Fixtures of the reconstruction tests."""

import ctypes
import shutil
import subprocess
from functools import cache

import numpy as np
import pytest

from streamtrk.recon.kernels import source


@pytest.fixture(scope="session")
def host_launcher(tmp_path_factory):
    """``host_launcher(name)``: a ``Launch`` running the kernels of file ``name``, built by
    g++ as host functions, over NumPy arrays (``kernels.py``'s host form)."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: cannot build the CUDA kernels for the host")
    tmp = tmp_path_factory.mktemp("kernels")

    def c(a):
        if isinstance(a, np.ndarray):
            return a.ctypes.data_as(ctypes.c_void_p)
        return ctypes.c_longlong(a) if isinstance(a, np.integer) else ctypes.c_double(a)

    @cache
    def launcher(name):
        src, lib = tmp / f"{name}.cpp", tmp / f"{name}.so"
        src.write_text(source(name))
        flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-DSTREAMTRK_HOST"]
        subprocess.run([cxx, *flags, "-o", str(lib), str(src)], check=True)
        kernels = ctypes.CDLL(str(lib))

        def launch(kernel, n_threads, args):
            getattr(kernels, kernel)(*map(c, args))

        return launch

    return launcher
