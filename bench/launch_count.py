"""The device chain's kernel launches per reconstruct, counted on the CPU: the chain runs its
CuPy path on the test suite's strict stand-in for CuPy (``tests/recon/strict_xp.py``:
NumPy-backed device arrays, the CUDA kernels as host builds), and every operation that
launches a kernel on CuPy is counted, by stage and by the chain's function that made it.

On an H200 the chain at batch 1 is launch-bound (``bench/chain_profile.py``: about 2,500
kernels and copies a reconstruct, the device busy 28% of the time), so this count is a
proxy of its batch-1 latency that needs no GPU. Counted: ufuncs and CuPy functions that
compute (not views, reshapes or metadata), indexing by arrays (a gather), stores (a fill or
a scatter), raw kernels, ``ElementwiseKernel``'s. Not counted: torch's operations (the
network's; ``gnn`` counts only the hand-over), copies CuPy makes inside one function.
Approximate: a CuPy function may launch several kernels (a sort, ``nonzero``). Also
``host_syncs``: CuPy's host synchronisations of the same reconstruct, as the stand-in counts
them (copies down, outputs sized by their values; torch's not counted), also by stage and
function; and ``array_bytes``: the bytes of the device arrays each counted operation takes
and gives, by stage and by function (``array_bytes_by_function``: a kernel's are its
arguments' whole arrays), a proxy of the device's memory traffic at large batches (a kernel may
read part of an array, a sort passes over its keys several times, a scattered read costs a
32-byte sector), with the time it would take at the H200's 4.8 TB/s (``floor_ms``).

    .venv/bin/python bench/launch_count.py                # MU=200, batches of 1 and 16
    .venv/bin/python bench/launch_count.py --mu 20 --batches 1 --top 40
"""

from __future__ import annotations

from streamtrk.threads import wait_passively

wait_passively()

import argparse
import importlib
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from streamtrk.detector import load_detector
from streamtrk.recon.gnn import GNNScorer
from streamtrk.recon.load import ChainSettings
from streamtrk.recon.model import default_model_path, load_model
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate_event

ROOT = Path(__file__).resolve().parents[1]
H200_BYTES_PER_S = 4.8e12  # the H200's memory bandwidth

#: The reconstructor's calls of its stages, by the function's name in the stage's module.
STAGES = {
    ("reconstructor.py", "_columns"): "upload",
    ("graph.py", "build_graph"): "graph",
    ("prune.py", "prune_edges"): "prune",
    ("graph.py", "select_edges"): "prune",
    ("gnn.py", "__call__"): "gnn",
    ("engine.py", "__call__"): "gnn",
    ("tracks.py", "build_tracks"): "tracks",
    ("reconstructor.py", "_fit"): "fit",
}
#: CuPy functions and methods that launch nothing: views, shapes, metadata.
NO_LAUNCH = frozenset(
    {"reshape", "view", "ravel", "transpose", "swapaxes", "moveaxis", "expand_dims", "squeeze",
     "diagonal", "ndim", "shape", "size", "dtype", "result_type", "broadcast_to", "atleast_1d",
     "ascontiguousarray", "asarray", "isscalar", "iterable", "empty", "empty_like"}
)  # fmt: skip


class Launches:
    """Operations counted by stage and by the chain's innermost function that made them;
    host synchronisations likewise (``syncs_by_*``)."""

    def __init__(self) -> None:
        self.by_stage: Counter[str] = Counter()
        self.by_function: Counter[str] = Counter()
        self.syncs_by_stage: Counter[str] = Counter()
        self.syncs_by_function: Counter[str] = Counter()
        self.bytes_by_stage: Counter[str] = Counter()
        self.bytes_by_function: Counter[str] = Counter()

    def note(self, sync: bool = False, nbytes: int = 0) -> None:
        frame: FrameType | None = sys._getframe(2)
        inner, stage = None, "other"
        while frame is not None:
            path = Path(frame.f_code.co_filename)
            if "streamtrk" in path.parts and path.name != "strict_xp.py":
                if inner is None:
                    inner = f"{path.parent.name}/{path.name}:{frame.f_code.co_name}"
                stage = STAGES.get((path.name, frame.f_code.co_name)) or stage
            frame = frame.f_back
        if sync:
            self.syncs_by_stage[stage] += 1
            self.syncs_by_function[inner or "?"] += 1
        else:
            self.by_stage[stage] += 1
            self.by_function[inner or "?"] += 1
            self.bytes_by_stage[stage] += nbytes
            self.bytes_by_function[inner or "?"] += nbytes


def strict_stand_in() -> Any:
    """The test suite's strict stand-in for CuPy (``tests/recon/strict_xp.py``)."""
    if str(ROOT / "tests" / "recon") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests" / "recon"))
    return importlib.import_module("strict_xp")


def _nbytes(strict_xp: Any, *objs: Any) -> int:
    """Bytes of the arrays among ``objs`` (tuples, lists and dicts opened): the stand-in's
    device arrays, and the NumPy arrays its kernels run on."""
    total = 0
    for o in objs:
        if isinstance(o, tuple | list):
            total += _nbytes(strict_xp, *o)
        elif isinstance(o, dict):
            total += _nbytes(strict_xp, *o.values())
        elif isinstance(o, strict_xp.DeviceArray):
            total += o._a.nbytes
        elif isinstance(o, np.ndarray):
            total += o.nbytes
    return total


def _lazily_wrapped(strict_xp: Any, value: Any) -> bool:
    """Whether ``value`` is what the stand-in's namespace wrapped on first use: a function,
    or a nested namespace (``cupy.linalg``)."""
    qualname = getattr(value, "__qualname__", "")
    return isinstance(value, strict_xp._Namespace) or qualname.startswith("_wrapped.")


def _copies_nothing(name: str, fn: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a call is an ``astype`` to its array's own dtype with ``copy=False``."""
    if not name.endswith(".astype") or not args or kwargs.get("copy") is not False:
        return False
    return np.dtype(args[0]) == fn.__self__.dtype


@contextmanager
def counting(strict_xp: Any, launches: Launches) -> Iterator[None]:
    """Count the stand-in's launching operations into ``launches`` inside the block."""
    array = strict_xp.DeviceArray
    saved = (array.__array_ufunc__, array.__getitem__, array.__setitem__, strict_xp._wrapped)
    ufunc, getitem, setitem, wrapped = saved
    count = strict_xp._count

    def on_count(what: str) -> None:
        if what == "sync":
            launches.note(sync=True)
        count(what)

    def on_ufunc(self: Any, ufunc_: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        out = ufunc(self, ufunc_, method, *args, **kwargs)
        launches.note(nbytes=_nbytes(strict_xp, args, kwargs, out))
        return out

    def on_getitem(self: Any, key: Any) -> Any:
        out = getitem(self, key)
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, strict_xp.DeviceArray | np.ndarray | list) for k in keys):
            launches.note(nbytes=2 * _nbytes(strict_xp, out) + _nbytes(strict_xp, keys))
        return out  # a gather (values read and written, the indices); plain slices are views

    def on_setitem(self: Any, key: Any, value: Any) -> None:
        setitem(self, key, value)
        launches.note(nbytes=_nbytes(strict_xp, key, value))

    def on_wrapped(fn: Any, name: str) -> Any:
        call = wrapped(fn, name)
        if name.rsplit(".", 1)[-1] in NO_LAUNCH:
            return call

        def counted(*args: Any, **kwargs: Any) -> Any:
            out = call(*args, **kwargs)
            if not _copies_nothing(name, fn, args, kwargs):
                own = getattr(fn, "__self__", None)  # a method's array
                launches.note(nbytes=_nbytes(strict_xp, args, kwargs, out, own))
            return out

        return counted

    def on_kernel(run: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            launches.note(nbytes=_nbytes(strict_xp, args, kwargs))
            return run(*args, **kwargs)

        return counted

    # Kernels: raw ones built for the host, and those run as NumPy's (ElementwiseKernel's,
    # shared-memory bincount).
    kernel_tables = (strict_xp._ELEMENTWISE, strict_xp._RAW_AS_NUMPY)
    saved_tables = [dict(t) for t in kernel_tables]
    host_kernel = strict_xp._HostKernel.__call__
    for table in kernel_tables:
        table.update({name: on_kernel(run) for name, run in table.items()})
    strict_xp._HostKernel.__call__ = on_kernel(host_kernel)
    array.__array_ufunc__, array.__getitem__, array.__setitem__ = on_ufunc, on_getitem, on_setitem
    strict_xp._wrapped, strict_xp._count = on_wrapped, on_count
    # The stand-in keeps the functions it wrapped on first use (an earlier reconstruct's):
    # set aside, so that every one used in the block is wrapped, and counted, anew.
    namespace = strict_xp.cupy
    cached = {k: v for k, v in vars(namespace).items() if _lazily_wrapped(strict_xp, v)}
    for name in cached:
        delattr(namespace, name)
    names = set(vars(namespace))
    try:
        yield
    finally:
        for name in set(vars(namespace)) - names:
            delattr(namespace, name)
        for name, value in cached.items():
            setattr(namespace, name, value)
        array.__array_ufunc__, array.__getitem__, array.__setitem__, strict_xp._wrapped = saved
        strict_xp._count = count
        strict_xp._HostKernel.__call__ = host_kernel
        for table, before in zip(kernel_tables, saved_tables, strict=True):
            table.update(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mu", type=float, default=200.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--top", type=int, default=25, help="functions listed per batch size")
    args = ap.parse_args()
    det = load_detector()
    cfg = SimConfig(generator=replace(GeneratorConfig(), mu=args.mu))
    rngs = np.random.default_rng(args.seed).spawn(max(args.batches))
    events = [simulate_event(det, cfg, rng, run=1, event=k) for k, rng in enumerate(rngs)]
    path = default_model_path()
    model, card = load_model(path)
    chain = ChainSettings.of_card(card, path)
    out: dict[str, Any] = {"mu": args.mu, "model": path.name, "batches": {}}
    strict_xp = strict_stand_in()
    with strict_xp.installed(Path(tempfile.mkdtemp(prefix="launch-count-"))):
        rec = chain.reconstructor(GNNScorer(model), device="cuda")  # the card's whole chain
        for size in args.batches:
            rec.reconstruct(events[:size])  # kernels built, caches filled
            launches = Launches()
            strict_xp.cupy.counts.clear()
            with counting(strict_xp, launches):
                rec.reconstruct(events[:size])
            out["batches"][str(size)] = {
                "launches": sum(launches.by_stage.values()),
                "host_syncs": strict_xp.cupy.counts["sync"],
                "by_stage": dict(launches.by_stage.most_common()),
                "top_functions": dict(launches.by_function.most_common(args.top)),
                "host_syncs_by_stage": dict(launches.syncs_by_stage.most_common()),
                "host_syncs_by_function": dict(launches.syncs_by_function.most_common()),
                "array_bytes": sum(launches.bytes_by_stage.values()),
                "array_bytes_by_stage": dict(launches.bytes_by_stage.most_common()),
                "array_bytes_by_function": dict(launches.bytes_by_function.most_common(args.top)),
                "floor_ms": sum(launches.bytes_by_stage.values()) / H200_BYTES_PER_S * 1e3,
            }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
