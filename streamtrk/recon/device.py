"""The device the chain runs on: ``auto`` resolved, and why CUDA cannot be used when asked for.

CUDA needs both a CUDA build of torch that sees a GPU (the network) and CuPy (graph
construction, track building and the fit run on CuPy arrays).
"""

from __future__ import annotations

import logging

from streamtrk.recon.choices import DEVICES

log = logging.getLogger(__name__)


def cuda_unavailable() -> str | None:
    """Why ``device = "cuda"`` cannot run here, in one line; None when it can."""
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"torch {torch.__version__} was built without CUDA"
        return f"torch {torch.__version__} sees no CUDA device"
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy cannot be imported ({exc}); install the [gpu] extra"
    try:  # CuPy compiles its kernels at run time (NVRTC): one element-wise, one reduction
        if int((cupy.arange(4) * 2).sum()) != 12:
            return "CuPy computes wrong results on this device"
    except Exception as exc:
        return f"CuPy cannot run on this device ({type(exc).__name__}: {exc})"
    return None


def device_fault(device: str) -> str | None:
    """Why ``device`` no longer works, or None. After a sticky CUDA error (an illegal
    address, a device-side assert, a lost device) every later call on the device fails too,
    and only a new process recovers; a synchronisation of torch's and CuPy's work reports
    it. The CPU never faults this way."""
    if device != "cuda":
        return None
    import cupy
    import torch

    try:
        torch.cuda.synchronize()
        cupy.cuda.runtime.deviceSynchronize()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def release_cached_memory(device: str) -> None:
    """Give the free blocks of CuPy's memory pool and torch's caching allocator back to the
    device (after an out-of-memory error in one while the other held free memory: the two
    caches never lend to each other). Nothing to do on the CPU."""
    if device != "cuda":
        return
    import cupy
    import torch

    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def resolve_device(device: str, *, warn: bool = True) -> str:
    """``auto`` is ``cuda`` when torch sees a GPU and CuPy runs there, else ``cpu`` (with a
    warning saying why, unless not ``warn``, where torch sees a GPU the chain cannot use: a
    broken CuPy); a name other than ``auto``, ``cpu`` or ``cuda`` is a ValueError."""
    if device not in ("auto", *DEVICES):
        raise ValueError(f"device {device!r}: one of auto, {', '.join(DEVICES)}")
    if device != "auto":
        return device
    if (why := cuda_unavailable()) is None:
        return "cuda"
    import torch

    if warn and torch.cuda.is_available():  # not on a host without a GPU: all it has
        log.warning("device auto: the GPU cannot be used, %s; the chain runs on the CPU", why)
    return "cpu"
