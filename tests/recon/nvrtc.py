"""CUDA C compiled to PTX with NVRTC, the runtime compiler CuPy compiles raw kernels with,
loaded from the ``nvidia-cuda-nvrtc`` wheel (a dev dependency): no GPU, no driver needed."""

from __future__ import annotations

import ctypes
import importlib.util
import re
from functools import cache
from pathlib import Path

#: The device the kernels are compiled for: the H200's architecture.
ARCH = "compute_90"


@cache
def library() -> ctypes.CDLL | None:
    """NVRTC from the ``nvidia`` wheels' folder, or None where it is not installed. Its
    built-ins library loaded first: NVRTC 13.0 looks for it by name only, on the loader's
    path (13.1 and later next to itself)."""
    spec = importlib.util.find_spec("nvidia")
    for folder in (spec and spec.submodule_search_locations) or ():
        for lib in sorted(Path(folder).glob("cu*/lib/libnvrtc.so.*")):
            for builtins in lib.parent.glob("libnvrtc-builtins.so.*"):
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(str(lib))
    return None


def compile_ptx(code: str, options: tuple[str, ...]) -> tuple[int, str, str]:
    """NVRTC's result code, its log and the PTX ("" where it failed) of ``code`` compiled
    with ``options`` and ``-arch=compute_90``."""
    lib = library()
    assert lib is not None, "NVRTC is not installed (pip install nvidia-cuda-nvrtc)"
    prog = ctypes.c_void_p()
    created = lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"k.cu", 0, None, None)
    assert created == 0, f"nvrtcCreateProgram: {created}"
    try:
        opts = [o.encode() for o in (*options, f"-arch={ARCH}")]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = ""
        if rc == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            text = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, text)
            ptx = text.value.decode()
        return rc, log.value.decode(), ptx
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def entries(ptx: str) -> set[str]:
    """The kernels (``.entry`` functions) of a PTX text."""
    return set(re.findall(r"\.entry (\w+)\(", ptx))
