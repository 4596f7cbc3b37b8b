"""Graph construction's candidate search on the GPU: two CUDA kernels, count then fill.

``doublet_search.cu`` holds the kernels, one thread per (inner hit, layer pair) query: the
cuts and features of the NumPy search (``graph._Search.run``), the same edges in the same
order. Between the two launches one host synchronisation sizes the output; the NumPy path
needs one per expansion and per cut on the device. ``kernel_search`` runs them through a
``launch(name, n_queries, args)`` callable: :func:`cupy_launch` on a GPU; the tests pass the
same source compiled for the host.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from streamtrk.xp import Array

if TYPE_CHECKING:
    from streamtrk.recon.graph import _Search

#: The kernels' CUDA C source (``STREAMTRK_HOST`` compiles it as host functions).
SOURCE = resources.files("streamtrk.recon").joinpath("doublet_search.cu")
#: Compiler options: no fused multiply-adds, so every cut decision rounds as NumPy's.
OPTIONS = ("--fmad=false", "-std=c++17")
THREADS_PER_BLOCK = 256

Launch = Callable[[str, int, tuple[Any, ...]], None]


def search_arguments(ctx: _Search) -> tuple[Any, ...]:
    """The kernels' inputs, in the order of their ``SEARCH_PARAMS``: arrays and NumPy scalars
    (``long long`` and ``double``)."""
    cfg, i64, f64 = ctx.cfg, np.int64, np.float64
    return (
        i64(len(ctx.qi)),
        *(ctx.qi, ctx.ri, ctx.zi, ctx.row0, ctx.b_lo, ctx.b_hi, ctx.p_lo, ctx.p_hi),
        *(ctx.reach, ctx.centre, ctx.cell_start, ctx.hit_of),
        *(ctx.r_sorted, ctx.phi_sorted, ctx.z_sorted),
        *(ctx.r, ctx.eta0, ctx.sigma, ctx.sigma_z, ctx.sigma_r),
        i64(ctx.nphi),
        *(f64(v) for v in (ctx.slope, cfg.phi_tolerance, cfg.z0_max, cfg.z0_sigmas)),
        *(f64(v) for v in (cfg.z0_lever_max, cfg.z0_limit, cfg.deta_max)),
    )


def kernel_search(ctx: _Search, launch: Launch) -> tuple[Array, Array, Array]:
    """Edges ``(i, j)`` and their features of every query of ``ctx``, as ``_Search.run``
    gives them over all of its (query, bin) pairs."""
    xp = ctx.xp
    args = tuple(
        xp.ascontiguousarray(a) if isinstance(a, xp.ndarray) else a for a in search_arguments(ctx)
    )
    n_queries = int(args[0])
    counts = xp.zeros(n_queries, dtype=xp.int64)
    launch("doublet_count", n_queries, (*args, counts))
    ends = xp.cumsum(counts)
    total = int(ends[-1]) if n_queries else 0  # the one host synchronisation
    i = xp.empty(total, dtype=xp.int64)
    j = xp.empty(total, dtype=xp.int64)
    features = xp.empty((total, 6), dtype=xp.float32)
    if total:
        launch("doublet_fill", n_queries, (*args, ends - counts, i, j, features))
    return i, j, features


@cache
def _module() -> Any:
    import cupy

    return cupy.RawModule(code=SOURCE.read_text(), options=OPTIONS)


def cupy_launch(name: str, n_queries: int, args: tuple[Any, ...]) -> None:
    """Run kernel ``name`` of the source on CuPy's current device and stream, a thread per
    query."""
    if n_queries:
        blocks = -(-n_queries // THREADS_PER_BLOCK)
        _module().get_function(name)((blocks,), (THREADS_PER_BLOCK,), args)
