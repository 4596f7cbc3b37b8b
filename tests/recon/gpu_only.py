"""The skip of the ``gpu`` tests: CuPy importable and a CUDA device, for CuPy and, when asked,
for torch too. Called at module level (or in a test) before any GPU work."""

from __future__ import annotations

from types import ModuleType

import pytest


def cupy_on_cuda(torch_too: bool = False) -> ModuleType:
    """CuPy, or a skip saying what is missing."""
    cupy = pytest.importorskip("cupy", reason="GPU-only: CuPy is not installed")
    try:
        found = cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:
        found = False
    if not found:
        pytest.skip("GPU-only: no CUDA device", allow_module_level=True)
    if torch_too:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("GPU-only: torch without CUDA", allow_module_level=True)
    return cupy
