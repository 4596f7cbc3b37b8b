"""A strict stand-in for CuPy on the CPU: NumPy-backed "device" arrays that refuse what
CuPy's refuse, so that the shared NumPy/CuPy code path of the chain runs as on a GPU.

:func:`installed` puts :data:`cupy` in ``sys.modules["cupy"]`` for a block. Its arrays
(:class:`DeviceArray`, whose class lives in a module named ``cupy...``) are what
``streamtrk.xp.array_module`` takes for CuPy's, so ``Reconstructor(device="cuda")``,
``cupy_launcher`` and the device branches of ``streamtrk.xp`` run unchanged: no seam in
the production code. Refused, as by CuPy (``TypeError``, ``ValueError``):

- implicit conversion to a host array: ``np.asarray(d)``, ``np.array(d)``, NumPy functions
  without a ``cupy`` function of the name (``__array_function__``), ``memoryview``, the
  buffer and array interfaces, ``d.data`` as host bytes, ``float()`` of many elements;
- a NumPy array (or a list) as an operand of a ufunc, an operator or a ``cupy`` function,
  a NumPy array stored into a plain slice (CuPy's ``fill`` takes scalars), a device array
  indexing a NumPy one;
- ``torch.from_numpy(d)`` (``d`` is no ``np.ndarray``; DLPack works, on the CPU here);
- sorts other than stable ones.

Raw kernels (``RawModule``) run as host builds of their source (its ``STREAMTRK_HOST``
form), their arguments checked against the parameters' C types: device arrays of the
pointee's dtype, C-contiguous, and NumPy scalars of the parameter's size (what CuPy
passes unchecked, and a GPU misreads); their launch, against the thread per item of the
first parameter that the kernels run. The ``ElementwiseKernel``'s of ``streamtrk.xp``
(atomic bincount and minimum), and its raw kernels (bincount into bins in shared memory),
run as NumPy's ``ufunc.at``.

What CuPy allows works and is counted in ``cupy.counts``: ``"sync"``, host
synchronisations (``.get()``, ``.tolist()``, ``.item()``, ``int()``, ``float()``,
``bool()``, outputs sized by values: ``nonzero``, boolean masks, ...); ``"host-to-device"``
copies (``cupy.asarray`` of host data, NumPy arrays or lists as indices or as values
stored through an index array). Reductions give 0-d device arrays, as CuPy's.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from streamtrk import xp as streamtrk_xp
from streamtrk.recon import fit, graph, kernels, prune

REFUSED = "Implicit conversion to a NumPy array is not allowed. Please use `.get()`"

#: NumPy names CuPy has no counterpart of (used on ``xp`` they would fail on the device).
NOT_IN_CUPY = frozenset({"errstate", "seterr", "geterr", "ma", "rec", "char"})

#: CuPy functions (and methods) that synchronise to size their output.
SIZED_BY_VALUES = frozenset({"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract"})

#: CuPy functions refused for their cost on the device, with what to use instead.
SLOW: dict[str, str] = {
    "lexsort": "a comparison sort of the indices per key on CuPy: use streamtrk.xp.lexsort",
}

#: Functions whose Python-number results CuPy gives as such (others give 0-d arrays).
HOST_RESULTS = frozenset({"ndim", "size", "shape", "isscalar", "iterable", "may_share_memory"})

#: NumPy names that are no array functions: passed through as they are.
PASSED = frozenset(
    {"dtype", "iinfo", "finfo", "result_type", "promote_types", "can_cast", "issubdtype"}
)


class DeviceArray(NDArrayOperatorsMixin):
    """A "device" array: a NumPy array that does not leave the device implicitly."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # Host conversions CuPy refuses.
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(REFUSED)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("ctypes", "data"):
            raise AttributeError(f"{REFUSED} (DeviceArray.{name})")
        value = getattr(self._a, name)
        return _wrapped(value, f"ndarray.{name}") if callable(value) else _wrap(value)

    def set(self, arr: Any, stream: Any = None) -> None:
        """``ndarray.set``: a host array of this dtype and shape copied up."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self._a.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self._a.dtype} array")
        if arr.shape != self._a.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._a.shape}, new shape: {arr.shape}")
        _count("host-to-device")
        self._a[...] = arr

    # Explicit host copies and synchronisations CuPy allows.
    def get(self) -> np.ndarray:
        _count("sync")
        return self._a.copy()

    def tolist(self) -> Any:
        _count("sync")
        return self._a.tolist()

    def item(self, *args: Any) -> Any:
        _count("sync")
        return self._a.item(*args)

    def __int__(self) -> int:
        _count("sync")
        return int(self._a)

    def __index__(self) -> int:
        _count("sync")
        return self._a.__index__()

    def __float__(self) -> float:
        _count("sync")
        return float(self._a)

    def __bool__(self) -> bool:
        _count("sync")
        return bool(self._a)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Iterator[DeviceArray]:
        return (self[k] for k in range(len(self)))

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    # Indexing: NumPy arrays and lists as indices are copied up (CuPy's implicit copy).
    def __getitem__(self, key: Any) -> DeviceArray:
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        key = _index(key)
        if isinstance(value, np.ndarray) and value.ndim and not _advanced(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if isinstance(value, np.ndarray):
            _count("host-to-device (stored value)")
        self._a[key] = _unwrap(value)

    # NumPy's dispatch: ufuncs and array functions run on the device, as CuPy's.
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _refuse_host(inputs, f"{ufunc.__name__}.{method}")
        out = kwargs.get("out")
        if out is not None:
            _refuse_host(out, f"{ufunc.__name__}.{method} out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        module: Any = cupy
        for part in func.__module__.split(".")[1:]:
            module = getattr(module, part, None)
        impl = getattr(module, func.__name__, None)
        if impl is None:  # CuPy's answer: NumPy then raises TypeError
            return NotImplemented
        return impl(*args, **kwargs)

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._a.__dlpack_device__()


DeviceArray.__module__ = "cupy._strict"  # what streamtrk.xp.array_module recognises as CuPy's


def _count(what: str) -> None:
    cupy.counts[what] += 1


def _wrap(x: Any) -> Any:
    """NumPy results as device arrays (scalars of reductions as 0-d arrays, as CuPy's)."""
    if isinstance(x, np.ndarray | np.generic):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple | list):
        return type(x)(_wrap(v) for v in x)
    return x


def _unwrap(x: Any) -> Any:
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, tuple | list):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _refuse_host(args: Any, where: str) -> None:
    """TypeError for a NumPy array (or a list: CuPy takes no sequence as an operand)."""
    for a in args:
        if isinstance(a, np.ndarray):
            raise TypeError(f"Unsupported type {type(a)} in {where}: a host array")
        if isinstance(a, list):
            raise TypeError(f"Unsupported type {type(a)} in {where}")


def _advanced(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, np.ndarray) for k in keys)


def _index(key: Any) -> Any:
    """An index as NumPy takes it: device arrays unwrapped, host arrays and lists counted as
    CuPy's implicit host-to-device copies, boolean masks as synchronisations (CuPy reads
    the number of True back to size the output)."""
    keys = key if isinstance(key, tuple) else (key,)
    for k in keys:
        if isinstance(k, np.ndarray | list):
            _count("host-to-device (index)")
        if isinstance(k, DeviceArray | np.ndarray) and k.dtype == bool:
            _count("sync")
    out = tuple(_unwrap(k) for k in keys)
    return out if isinstance(key, tuple) else out[0]


def _wrapped(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``fn`` as a CuPy function: device arrays in and out, host arrays refused."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if name.rsplit(".", 1)[-1] in SIZED_BY_VALUES or (name == "cupy.where" and len(args) == 1):
            _count("sync")  # the output's size is read back
        if (slow := SLOW.get(name.rsplit(".", 1)[-1])) is not None:
            raise ValueError(f"{name}: {slow}")
        for a in (*args, *kwargs.values()):
            _refuse_host(a if isinstance(a, tuple | list) else (a,), name)
        if name.rsplit(".", 1)[-1] in ("argsort", "sort"):  # CuPy's sorts: stable only
            if kwargs.get("kind", "stable") not in (None, "stable"):
                raise ValueError(f"{name}: CuPy sorts with kind=None or 'stable' only")
            kwargs["kind"] = "stable"
        out = fn(*_unwrap(args), **_unwrap(kwargs))
        if isinstance(out, bool | int | float) and name.rsplit(".", 1)[-1] not in HOST_RESULTS:
            out = np.asarray(out)  # e.g. count_nonzero: a 0-d array on CuPy, no number
        return _wrap(out)

    return call


def _from_host(a: Any, dtype: Any = None, copy: Any = None, order: Any = None) -> DeviceArray:
    """``cupy.asarray``/``cupy.array``: host data copied up, device arrays kept."""
    if isinstance(a, DeviceArray):
        out = a._a if dtype is None else a._a.astype(dtype, copy=False)
        return DeviceArray(out.copy() if copy else out)
    _count("host-to-device")
    return DeviceArray(np.array(a, dtype=dtype, order=order or "K"))


def _from_dlpack(t: Any) -> DeviceArray:
    """``cupy.from_dlpack``: device memory only (a CPU tensor has none)."""
    raise TypeError(f"CuPy cannot take a tensor of device {t.__dlpack_device__()} by DLPack")


class _Namespace(types.ModuleType):
    """A NumPy namespace (``numpy``, ``numpy.linalg``) as CuPy's: functions wrapped."""

    def __init__(self, name: str, host: Any) -> None:
        super().__init__(name)
        self._host = host

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in NOT_IN_CUPY:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        value = getattr(self._host, name)
        if isinstance(value, types.ModuleType):
            value = _Namespace(f"{self.__name__}.{name}", value)
        elif callable(value) and not isinstance(value, type | np.ufunc) and name not in PASSED:
            value = _wrapped(value, f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


#: C types of kernel parameters: the NumPy scalar type a value must have (CuPy passes a
#: scalar with its own size: an int64 for an ``int`` shifts every later parameter on the
#: GPU, where the host's calling convention hides it), or the dtypes a pointer's array may
#: have (CuPy passes any array's pointer).
SCALARS: dict[str, type[Any]] = {
    "long long": np.int64,
    "double": np.float64,
    "int": np.int32,
    "float": np.float32,
}
POINTEES: dict[str, set[np.dtype[Any]]] = {
    "long long": {np.dtype(np.int64)},
    "unsigned long long": {np.dtype(np.uint64), np.dtype(np.int64)},  # counts, never negative
    "double": {np.dtype(np.float64)},
    "int": {np.dtype(np.int32)},
    "float": {np.dtype(np.float32)},
    "unsigned char": {np.dtype(np.uint8), np.dtype(bool)},
    "bool": {np.dtype(bool)},
}


def _signatures(code: str) -> dict[str, list[str]]:
    """Each ``extern "C" __global__`` kernel's parameter types (macros expanded)."""
    expanded = subprocess.run(
        ["g++", "-E", "-P", "-x", "c++", "-"], input=code, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    kernels = re.findall(r'extern "C" __global__ void (\w+)\s*\(([^)]*)\)', expanded)
    return {name: [_param_type(p) for p in params.split(",")] for name, params in kernels}


def _param_type(param: str) -> str:
    """A parameter's C type without ``const`` and its name: ``long long`` or ``double*``."""
    tokens = param.replace("*", " * ").split()[:-1]
    base = " ".join(t for t in tokens if t not in ("const", "*"))
    return base + "*" if "*" in tokens else base


class _HostKernel:
    """A raw kernel's host build, launched as ``kernel(grid, block, args)``; its arguments
    checked against its parameters' C types."""

    def __init__(self, lib: ctypes.CDLL, name: str, params: list[str]) -> None:
        self._fn = getattr(lib, name)
        self._name = name
        self._params = params

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        # The kernels run a thread per item of their first parameter (FOR_EACH_THREAD).
        if block[0] > 1024 or not grid[0] * block[0] >= args[0] > (grid[0] - 1) * block[0]:
            raise ValueError(f"{self._name}: {grid} x {block} threads for {args[0]} items")
        self._fn(*_kernel_args(self._name, self._params, args))


def _kernel_args(name: str, params: list[str], args: tuple) -> list[Any]:
    """``args`` checked against kernel ``name``'s parameters' C types, as ctypes values."""
    if len(args) != len(params):
        raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
    out = []
    for k, (param, a) in enumerate(zip(params, args, strict=True)):
        where = f"{name} argument {k}"
        if param.endswith("*"):
            if not isinstance(a, DeviceArray) or a._a.dtype not in POINTEES[param[:-1]]:
                raise TypeError(f"{where} ({param}): got {type(a).__name__} {a.dtype}")
            if not a._a.flags.c_contiguous:
                raise ValueError(
                    f"{where}: a kernel reads a pointer, the array must be C-contiguous"
                )
            out.append(a._a.ctypes.data_as(ctypes.c_void_p))
        elif type(a) is not SCALARS[param]:
            raise TypeError(f"{where} ({param}): got {type(a).__name__}")
        else:
            out.append(np.ctypeslib.as_ctypes_type(SCALARS[param])(a))
    return out


class _RawModule:
    """``cupy.RawModule``: the source built for the host (g++, ``STREAMTRK_HOST``); the
    kernels of :data:`_RAW_AS_NUMPY` (written for the device only: shared memory, block
    loops) as NumPy's equivalents."""

    def __init__(self, code: str, options: tuple[str, ...] = ()) -> None:
        self._signatures = _signatures(code)
        if set(self._signatures) <= set(_RAW_AS_NUMPY):
            return
        order = "reversed" if cupy.reversed_threads else "forward"
        lib = cupy.build_dir / f"{hashlib.sha256(code.encode()).hexdigest()[:16]}-{order}.so"
        if lib.exists():
            self._lib = ctypes.CDLL(str(lib))
        else:
            self._lib = kernels.build_for_host(code, lib, cupy.reversed_threads)

    def get_function(self, name: str) -> Any:
        if name in _RAW_AS_NUMPY:
            return _numpy_kernel(name, self._signatures[name])
        return _HostKernel(self._lib, name, self._signatures[name])


#: Raw kernels of ``streamtrk.xp`` with no host form: NumPy's equivalent on their arguments.
_RAW_AS_NUMPY: dict[str, Callable[..., None]] = {
    "streamtrk_shared_bincount": lambda idx, n, size, out: _add_at(out, idx[:n], 1),
    "streamtrk_shared_bincount_weighted": lambda idx, w, n, size, out: _add_at(out, idx[:n], w[:n]),
    "streamtrk_compact": lambda mask, ends, n, total, out: _compact(mask[:n], ends[:n], out),
}


def _add_at(out: np.ndarray, idx: np.ndarray, values: Any) -> None:
    """``bincount``'s atomic adds: a bin outside ``out`` raises, as NumPy's ``bincount``
    does (``np.add.at`` would wrap a negative one; the device leaves it out)."""
    if len(idx) and not (idx.min() >= 0 and idx.max() < len(out)):
        raise ValueError(f"bincount: bins {idx.min()}..{idx.max()} outside [0, {len(out)})")
    np.add.at(out, idx, values)


def _compact(mask: np.ndarray, ends: np.ndarray, out: np.ndarray) -> None:
    """``streamtrk_compact``: each set entry's index at its running count less one; a count
    that is not the mask's (the device would leave entries unwritten) raises."""
    if int(mask.sum()) != len(out) or (len(mask) and int(ends[-1]) != len(out)):
        raise ValueError(f"streamtrk_compact: {int(mask.sum())} set, room for {len(out)}")
    out[ends[mask] - 1] = np.nonzero(mask)[0]


def _numpy_kernel(name: str, params: list[str]) -> Callable[..., None]:
    """A kernel of :data:`_RAW_AS_NUMPY`, its arguments checked as a host build's are."""

    def launch(grid: tuple[int, ...], block: tuple[int, ...], args: tuple, shared_mem: int = 0):
        _kernel_args(name, params, args)
        if shared_mem > 48 * 1024 or block[0] > 1024:
            raise ValueError(f"{name}: {shared_mem} bytes of shared memory, {block} threads")
        _RAW_AS_NUMPY[name](*_unwrap(args))

    return launch


#: ``ElementwiseKernel`` names known here: NumPy's equivalent on (args..., target).
_ELEMENTWISE: dict[str, Callable[..., None]] = {
    "streamtrk_bincount": lambda idx, out: _add_at(out, idx, 1),
    "streamtrk_bincount_weighted": lambda idx, w, out: _add_at(out, idx, w),
    "streamtrk_scatter_min": lambda idx, v, out: np.minimum.at(out, idx, v),
}


def _elementwise_kernel(in_params: str, out_params: str, operation: str, name: str) -> Any:
    if name not in _ELEMENTWISE:
        raise NotImplementedError(f"no host form of the ElementwiseKernel {name!r}")
    run = _ELEMENTWISE[name]

    def launch(*args: Any) -> None:
        _refuse_host(args, name)
        if not all(isinstance(a, DeviceArray) for a in args):
            raise TypeError(f"{name}: device arrays only")
        run(*_unwrap(args))

    return launch


def _stream() -> Any:
    done = types.SimpleNamespace(synchronize=lambda: None)
    return types.SimpleNamespace(synchronize=lambda: None, record=lambda: done)


cupy: Any = _Namespace("cupy", np)
cupy.ndarray = DeviceArray
cupy.asarray = cupy.array = _from_host
cupy.from_dlpack = _from_dlpack
cupy.get_array_module = lambda *a: cupy if any(isinstance(x, DeviceArray) for x in a) else np
cupy.RawModule = _RawModule
cupy.ElementwiseKernel = _elementwise_kernel
cupy.cuda = types.SimpleNamespace(
    get_current_stream=_stream,
    alloc_pinned_memory=bytearray,  # page-locked host memory: host memory here
    Device=lambda: types.SimpleNamespace(attributes={"MultiProcessorCount": 132}),  # an H200's
)
cupy.counts = Counter()
cupy.build_dir = Path()
cupy.reversed_threads = False

#: Caches of the chain that hold CuPy objects (kernels, tables): cleared on both sides.
_CACHES = (
    kernels._module,
    kernels._function,
    streamtrk_xp._atomic_add_kernels,
    streamtrk_xp._atomic_min_kernel,
    streamtrk_xp._raw_kernel,
    streamtrk_xp._raw_module,
    streamtrk_xp._multiprocessors,
    graph._device_tables,
    fit._layer_table,
    prune._fold_table,
    prune._window_tables,
)


@contextmanager
def installed(build_dir: Path, reversed_threads: bool = False) -> Iterator[Any]:
    """:data:`cupy` as ``sys.modules["cupy"]`` inside the block (kernels built in
    ``build_dir``, their threads run last to first where ``reversed_threads``), its counts
    reset; the module there before, and empty caches, after."""
    before = sys.modules.get("cupy")
    for c in _CACHES:
        c.cache_clear()
    sys.modules["cupy"] = cupy
    cupy.build_dir = build_dir
    cupy.reversed_threads = reversed_threads
    cupy.counts.clear()
    try:
        yield cupy
    finally:
        for c in _CACHES:
            c.cache_clear()
        if before is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = before
