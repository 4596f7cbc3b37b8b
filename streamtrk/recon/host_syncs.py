"""Counting the host synchronisations of the GPU path (for the ``gpu`` tests and the
benchmark; not used while serving).

A host synchronisation stops the Python thread until the device has caught up: every
device-to-host copy (``.get()``, ``int()`` or ``bool()`` of a CuPy array, a boolean mask or
``nonzero`` sizing its output, CuPy's ``bincount`` sizing its bins) and torch's synchronising
calls (``.item()``, ``.cpu()``, ``nonzero``). Inside :func:`count_host_syncs`, CuPy's are
counted through the hook CuPy declares them to (``cupy._core.syncdetect``, behind the
deprecated ``cupyx.allow_synchronize``), torch's through its synchronisation debug mode
(``torch.cuda.set_sync_debug_mode``, one warning each). Explicit stream synchronisations
(the ``Reconstructor`` times its stages with one each) are not counted.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: What torch's synchronisation debug mode warns (c10's ``warn_or_error_on_sync``). Only it
#: is counted: the first device run counted another warning naming a synchronisation as
#: torch's when CuPy alone had copied.
TORCH_SYNC_WARNING = "called a synchronizing CUDA operation"


@dataclass
class HostSyncs:
    """Host synchronisations counted so far: CuPy's and torch's."""

    cupy: int = 0
    torch: int = 0

    @property
    def total(self) -> int:
        return self.cupy + self.torch


def counting_unavailable() -> str | None:
    """Why host synchronisations cannot be counted here, or None when they can."""
    try:
        import cupy  # noqa: F401
        from cupy._core import syncdetect
    except ImportError as exc:
        return f"CuPy's synchronisation hook cannot be imported ({exc})"
    if not callable(getattr(syncdetect, "_declare_synchronize", None)):
        return "this CuPy has no cupy._core.syncdetect._declare_synchronize hook"
    return None


@contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Count the host synchronisations made inside the block (CUDA only): CuPy's by this
    thread, torch's by the whole process (its debug mode and warning filters are global).

    On entry one small ``.get()`` must count exactly once: a check that CuPy still
    declares each synchronisation to the hook once (CuPy 14: in ``ndarray.get``).
    """
    why = counting_unavailable()
    if why is not None:
        raise RuntimeError(f"host synchronisations cannot be counted: {why}")
    import cupy
    import torch
    from cupy._core import syncdetect

    thread = threading.get_ident()
    declared = [0]
    original = syncdetect._declare_synchronize

    def counting() -> None:
        if threading.get_ident() == thread:
            declared[0] += 1
        original()

    syncdetect._declare_synchronize = counting
    old_mode = torch.cuda.get_sync_debug_mode()
    try:
        cupy.zeros(1).get()
        if declared[0] != 1:
            raise RuntimeError(
                f"one .get() declared {declared[0]} synchronisations to cupy._core.syncdetect, "
                "not 1: host synchronisations cannot be counted with this CuPy"
            )
        declared[0] = 0
        counts = HostSyncs()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counts
            finally:
                torch.cuda.set_sync_debug_mode(old_mode)
                counts.cupy = declared[0]
                counts.torch = sum(TORCH_SYNC_WARNING in str(w.message) for w in caught)
    finally:
        syncdetect._declare_synchronize = original
