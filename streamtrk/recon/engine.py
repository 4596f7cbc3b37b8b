"""Inference engines for the edge classifier: eager, ``torch.compile`` and TensorRT.

``EngineScorer`` is an EdgeScorer (like ``GNNScorer``) that runs an InteractionNetwork
through one of

- ``eager``: the model as written; blocked ``infer`` on the CPU, ``forward`` on CUDA;
- ``compile``: ``torch.compile`` of ``forward`` on graphs padded to shape buckets
  (``streamtrk.recon.buckets``), the node and edge dimensions marked dynamic: one
  compilation serves every bucket, and with ``cuda_graphs`` (``mode="reduce-overhead"``)
  each bucket shape is captured once as a CUDA graph and replayed;
- ``tensorrt``: torch-tensorrt's dynamo frontend (``torch.export`` with dynamic node and edge
  dimensions over the bucket range, then ``torch_tensorrt.dynamo.compile``), the built
  program cached on disk under a key of model hash, GPU name, TensorRT version and what else
  shapes the build (``engine_cache_key``); an unreadable cached program is rebuilt;
- ``auto``: ``tensorrt`` on CUDA when torch_tensorrt imports, else ``compile``; ``eager`` on
  the CPU. A failure to build or warm up an engine chosen by ``auto`` falls back to the next
  one (tensorrt -> compile -> eager). ``engine`` and ``fallback_reason`` say what happened.

``precision`` ``bf16``/``fp16`` runs the network under ``torch.autocast`` (sums over edges
stay float32, see ``streamtrk.recon.gnn``); TensorRT gets the same through its own autocast.
Scores come back as float32 sigmoids of the logits, on the graph's device (DLPack to CuPy).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from streamtrk.event import Event
from streamtrk.recon import gnn
from streamtrk.recon.buckets import Buckets, pad_graph
from streamtrk.recon.choices import ENGINE_CACHE_ENV, ENGINES, PRECISIONS
from streamtrk.recon.gnn import EDGE_FEATURES, NODE_FEATURES, InteractionNetwork, edge_scores
from streamtrk.recon.graph import Graph

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
assert tuple(DTYPES) == PRECISIONS
FALLBACK = {"tensorrt": "compile", "compile": "eager"}

Run = Callable[[Tensor, Tensor, Tensor], Tensor]


class EngineError(RuntimeError):
    """An engine that cannot run here; the message says why and what to choose instead."""


def tensorrt_unavailable() -> str | None:
    """Why ``torch_tensorrt`` cannot be used here, or None when it imports."""
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"torch_tensorrt cannot be imported ({type(exc).__name__}: {exc})"
    return None


GRAPHS_IGNORED = "cuda_graphs ignored: only the compile engine on CUDA replays CUDA graphs"


def _strict_recompiles(engine: str) -> contextlib.AbstractContextManager[None]:
    """With ``compile``: compiling past dynamo's ``recompile_limit`` raises, where dynamo
    would run the function eagerly, for the calling thread only (dynamo's settings are per
    thread). Other engines: nothing, and dynamo is not imported for them (with its sympy,
    110,000 objects more for every full collection of the daemon to scan)."""
    if engine != "compile":
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)


def resolve_engine(requested: str, device: torch.device) -> tuple[str, str | None]:
    """The engine to start with and, when it is not what was asked for, the reason."""
    if requested not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    cuda = device.type == "cuda"
    if requested == "tensorrt":
        if not cuda:
            raise EngineError("engine=tensorrt needs device=cuda")
        if why := tensorrt_unavailable():
            raise EngineError(
                f"engine=tensorrt: {why}; install torch-tensorrt built for torch "
                f"{torch.__version__}, or choose engine=compile or engine=auto"
            )
    if requested != "auto":
        return requested, None
    if not cuda:
        return "eager", "auto on the CPU: eager (TensorRT and compiled kernels target CUDA)"
    if why := tensorrt_unavailable():
        return "compile", f"auto: {why}; using compile"
    return "tensorrt", None


def engine_unavailable(requested: str, device: str) -> str | None:
    """Why engine ``requested`` cannot run on ``device`` (``cpu`` or ``cuda``) here, as
    :func:`resolve_engine` would refuse it, or None: checked before a command starts."""
    try:
        resolve_engine(requested, torch.device(device))
    except EngineError as e:
        return str(e)
    return None


def model_hash(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the parameters and buffers: names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def engine_cache_key(
    model_digest: str,
    gpu: str,
    tensorrt_version: str,
    precision: str,
    buckets: Buckets,
    build: Mapping[str, str],
) -> str:
    """File stem of a cached TensorRT program: readable parts, then a hash of everything.

    ``build`` names the rest of what shapes the program (:func:`tensorrt_build`: versions,
    the network's code, the build options); any change to it is another file.
    """
    parts = (
        model_digest,
        gpu,
        tensorrt_version,
        precision,
        torch.__version__,
        f"{buckets.nodes[0]}-{buckets.nodes[-1]}",
        f"{buckets.edges[0]}-{buckets.edges[-1]}",
        "opt {}x{}".format(*buckets.opt_pair()),
        *(f"{k}={v}" for k, v in sorted(build.items())),
    )
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
    gpu_slug = "".join(c if c.isalnum() else "-" for c in gpu).strip("-").lower()
    return f"{model_digest}-{gpu_slug}-trt{tensorrt_version}-{precision}-{digest}"


def tensorrt_build(torch_tensorrt_version: str, options: Mapping[str, Any]) -> dict[str, str]:
    """What shapes a TensorRT program besides the model, GPU, TensorRT and precision: the
    torch-tensorrt and CUDA versions, the network's code (``gnn.py`` and :class:`Logits`) and
    the build options."""
    code = hashlib.sha256(Path(gnn.__file__).read_bytes())
    code.update(inspect.getsource(Logits).encode())
    return {
        "torch_tensorrt": torch_tensorrt_version,
        "cuda": str(torch.version.cuda),
        "network": code.hexdigest()[:16],
        "options": repr(sorted(options.items())),
    }


def cached(path: Path, load: Callable[[Path], T], build: Callable[[Path], T]) -> T:
    """The program cached at ``path``; else ``build(path)``, which writes it there. A cached
    file that does not load (truncated, or written by another version) is logged and
    rebuilt over."""
    if path.is_file():
        try:
            return load(path)
        except Exception as exc:  # whatever a broken file makes the loader raise
            log.warning(
                "cached engine %s does not load (%s: %s); rebuilding it",
                path,
                type(exc).__name__,
                exc,
            )
    return build(path)


def own_graph_trees() -> None:
    """Give the calling thread its own CUDA-graph tree state, unless it has some.

    torch 2.11 sets the state (a ``threading.local`` of tree managers) up only on the
    thread that imports ``torch._inductor.cudagraph_trees``: on any other thread a new shape
    fails an assertion (pytorch issue 123177). Later versions set it up on a thread's first
    use; this does the same, in Python only (not ``torch._C._stash_obj_in_tls``, which shares
    the importer's managers and crashed torch 2.11 at exit). Before that module is imported
    there is nothing to do: the thread that imports it gets the state.
    """
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    if trees is not None and not hasattr(trees.local, "tree_manager_containers"):
        trees.local.tree_manager_containers = {}
        trees.local.tree_manager_locks = defaultdict(threading.Lock)


def drop_graph_trees() -> None:
    """Shut down the calling thread's CUDA-graph trees set up by :func:`own_graph_trees`,
    freeing their memory pool (torch's ``reset_cudagraph_trees`` only sees state it set up
    itself)."""
    from torch._inductor import cudagraph_trees as trees

    containers = getattr(trees.local, "tree_manager_containers", {})
    locks = getattr(trees.local, "tree_manager_locks", {})
    for device, container in list(containers.items()):
        with locks[device]:
            if container.tree_manager is not None:
                container.tree_manager.shutdown()
    containers.clear()


def default_cache_dir() -> Path:
    """``$STREAMTRK_ENGINE_CACHE``, else ``~/.cache/streamtrk/engines``."""
    env = os.environ.get(ENGINE_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "streamtrk" / "engines"


def synthetic_graph(
    n: int, e: int, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Random features and edges of the model's input shapes (warm-up, tracing), made on
    ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, NODE_FEATURES, generator=g, device=device)
    ei = torch.randint(0, n, (2, e), generator=g, device=device)
    ea = torch.randn(e, EDGE_FEATURES, generator=g, device=device)
    return x, ei, ea


class Logits(nn.Module):
    """The network's float32 logits, under autocast to ``dtype`` when given."""

    def __init__(self, model: InteractionNetwork, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        if self.dtype is None:
            return self.model(x, edge_index, edge_attr).float()
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x, edge_index, edge_attr).float()


class EngineScorer:
    """EdgeScorer through the chosen engine and precision (see the module docstring).

    ``buckets`` bound the padded shapes (compile, tensorrt); ``cuda_graphs`` replays CUDA
    graphs per bucket (compile on CUDA); ``backend`` is torch.compile's (tests use
    ``"eager"`` to check tracing without code generation); ``cache_dir`` keeps TensorRT
    programs. Call :meth:`warm_up` before serving.
    """

    def __init__(
        self,
        model: InteractionNetwork,
        device: str | torch.device = "cpu",
        engine: str = "auto",
        precision: str = "fp32",
        *,
        buckets: Buckets | None = None,
        cuda_graphs: bool = False,
        backend: str = "inductor",
        cache_dir: Path | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.requested = engine
        self.buckets = buckets or Buckets()
        # Replayed by the compile engine on CUDA only (auto may come to it from tensorrt).
        self.cuda_graphs = (
            cuda_graphs and self.device.type == "cuda" and engine not in ("eager", "tensorrt")
        )
        self.backend = backend
        self.cache_dir = cache_dir or default_cache_dir()
        self.engine, self.fallback_reason = resolve_engine(engine, self.device)
        if cuda_graphs and not self.cuda_graphs:
            self._say(GRAPHS_IGNORED)
        self.degraded = False  # an engine or CUDA graphs failed at warm-up (see _note)
        self._warming = False  # in warm_up: compiling past the recompile limit raises
        self._logits = Logits(self.model, DTYPES[precision])
        self._graph_thread: ThreadPoolExecutor | None = None  # with CUDA graphs (compile)
        self._run: Run = self._make(self.engine)

    # ------------------------------------------------------------------ engines

    def _make(self, engine: str) -> Run:
        if engine == "eager":
            return self._eager
        if engine == "compile":
            mode = "reduce-overhead" if self.cuda_graphs else None
            run = self._padded(torch.compile(self._logits, backend=self.backend, mode=mode))
            return self._on_graph_thread(run) if self.cuda_graphs else run
        built: list[Run] = []

        def tensorrt(x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
            if not built:  # built (or loaded from the cache) on first use: the warm-up
                built.append(self._tensorrt())
            return built[0](x, edge_index, edge_attr)

        return self._padded(tensorrt, eager_above_range=True)

    def _eager(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        dtype = DTYPES[self.precision]
        if self.device.type != "cpu":
            return self._logits(x, edge_index, edge_attr)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return self.model.infer(x, edge_index, edge_attr).float()

    def _padded(self, run: Run, eager_above_range: bool = False) -> Run:
        """``run`` on the graph padded to its bucket, the padding edges sliced off."""
        marks = ((0, 0), (1, 1), (2, 0))  # (input, dimension) that vary with the graph

        def call(x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
            n, e = self.buckets.shape(x.shape[0], edge_index.shape[1])
            if eager_above_range and (n > self.buckets.nodes[-1] or e > self.buckets.edges[-1]):
                return self._logits(x, edge_index, edge_attr)
            padded = pad_graph(x, edge_index, edge_attr, n, e)
            for i, dim in marks:
                torch._dynamo.mark_dynamic(padded[i], dim)
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return run(*padded)[: edge_index.shape[1]]

        return call

    def _tensorrt(self) -> Run:
        """The TensorRT program for the bucket range: from the cache, else built and cached."""
        import tensorrt
        import torch_tensorrt

        b = self.buckets
        low = DTYPES[self.precision]
        options: dict[str, Any] = {"use_explicit_typing": True, "min_block_size": 1}
        if low is not None:
            options |= {"enable_autocast": True, "low_precision_type": low}
        key = engine_cache_key(
            model_hash(self.model),
            torch.cuda.get_device_name(self.device),
            tensorrt.__version__,
            self.precision,
            b,
            tensorrt_build(torch_tensorrt.__version__, options),
        )
        nodes = torch.export.Dim("nodes", min=b.nodes[0], max=b.nodes[-1])
        edges = torch.export.Dim("edges", min=b.edges[0], max=b.edges[-1])
        dynamic = {"x": {0: nodes}, "edge_index": {1: edges}, "edge_attr": {0: edges}}
        n_opt, e_opt = b.opt_pair()

        def build(path: Path) -> Run:
            example = pad_graph(*synthetic_graph(n_opt - 1, e_opt, self.device), n_opt, e_opt)
            program = torch.export.export(Logits(self.model, None), example, dynamic_shapes=dynamic)
            shapes = [
                ((b.nodes[0], NODE_FEATURES), (n_opt, NODE_FEATURES), (b.nodes[-1], NODE_FEATURES)),
                ((2, b.edges[0]), (2, e_opt), (2, b.edges[-1])),
                ((b.edges[0], EDGE_FEATURES), (e_opt, EDGE_FEATURES), (b.edges[-1], EDGE_FEATURES)),
            ]
            inputs = [
                torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=t.dtype)
                for (lo, opt, hi), t in zip(shapes, example, strict=True)
            ]
            module = torch_tensorrt.dynamo.compile(program, arg_inputs=inputs, **options)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.ep")
            torch_tensorrt.save(
                module,
                str(tmp),
                output_format="exported_program",
                arg_inputs=list(example),
                dynamic_shapes=dynamic,
                retrace=True,
            )
            tmp.replace(path)
            return module

        return cached(
            self.cache_dir / f"{key}.ep", lambda p: torch_tensorrt.load(str(p)).module(), build
        )

    # ------------------------------------------------------------------ use

    def logits(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """Float32 logits of the real edges (call under ``torch.inference_mode``). With CUDA
        graphs they live in the graphs' memory pool: valid until the next call."""
        return self._run(x, edge_index, edge_attr)

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any:
        return edge_scores(graph, self.device, self.logits)

    def warm_up(self) -> float:
        """Run every warm shape (:meth:`warm_shapes`) once, twice with CUDA graphs; seconds
        taken.

        Compilation, autotuning, CUDA-graph capture and TensorRT engine building happen here.
        With ``engine="auto"``, a failure moves to the next engine and records why. Past
        dynamo's ``recompile_limit`` (compiled variants of the network, kept for the
        process: reloads of other sizes or precisions) compiling fails here, where dynamo
        would run the network eagerly while the scorer said ``compile``.
        """
        t0 = time.perf_counter()
        while True:
            try:
                self._warming = True
                with _strict_recompiles(self.engine):  # this thread's; the graph thread its own
                    self._warm()
                break
            except Exception as exc:
                if self.requested != "auto" or self.engine not in FALLBACK:
                    raise
                nxt = FALLBACK[self.engine]
                self._note(
                    f"{self.engine} failed to warm up ({type(exc).__name__}: {exc}); using {nxt}"
                )
                self.engine = nxt
                self._run = self._make(nxt)
            finally:
                self._warming = False
        if self.cuda_graphs and self.engine != "compile":  # auto: TensorRT warmed up
            self.cuda_graphs = False
            self._say(GRAPHS_IGNORED)
        return time.perf_counter() - t0

    def warm_shapes(self) -> list[tuple[int, int]]:
        """(hits, edges) of the graphs :meth:`warm_up` runs.

        On CUDA every pair of ``Buckets.pairs`` (the shapes graphs of the chain's edges per
        hit pad to; CUDA graphs and TensorRT profiles are per shape), largest first: the
        allocator grows once, to the size every later one fits in. On the CPU one
        compilation with dynamic hit and edge counts serves every bucket, so the smallest
        bucket compiles it (all of them took minutes and 8 GB there); eager, a small graph.
        """
        if self.engine == "eager":
            return [(1000, 8000)]
        pairs = sorted(self.buckets.pairs(), reverse=True)
        return [(n - 1, e) for n, e in (pairs if self.device.type == "cuda" else pairs[-1:])]

    def _warm(self) -> None:
        if self.cuda_graphs and self.engine == "compile":  # the engine that replays them
            try:
                self._warm_shapes(runs=2)
                return
            except Exception as exc:
                self._graphs_off(exc)
        self._warm_shapes(runs=1)

    def _warm_shapes(self, runs: int) -> None:
        """Run every warm shape ``runs`` times (with CUDA graphs twice: torch's graph trees
        run a shape's first call in the graph pool and record it on the second)."""
        with torch.inference_mode():
            for k, (n, e) in enumerate(self.warm_shapes()):
                graph = synthetic_graph(n, e, self.device, seed=k)
                for _ in range(runs):
                    self._run(*graph)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _on_graph_thread(self, run: Run) -> Run:
        """``run`` on this scorer's own thread, whichever thread calls.

        torch's CUDA-graph trees keep their state per thread, and record a shape's graph on
        its second call. The daemon warms up on its loading thread and scores on its worker;
        here both run on one thread, which has its own trees (:func:`own_graph_trees`). Same
        CUDA stream (the default one) as the caller, so no synchronisation is added.
        """
        if self._graph_thread is None:
            self._graph_thread = ThreadPoolExecutor(1, thread_name_prefix="cuda-graphs")
        thread = self._graph_thread

        def call(x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
            def job() -> Tensor:
                own_graph_trees()
                warming = self._warming
                strict = _strict_recompiles(self.engine) if warming else contextlib.nullcontext()
                with strict, torch.inference_mode():
                    return run(x, edge_index, edge_attr)

            return thread.submit(job).result()

        return call

    def _graphs_off(self, exc: BaseException) -> None:
        """Turn CUDA graphs off after ``exc`` (why: ``fallback_reason``), free their memory
        pool (on the thread that made them) and stop that thread. Not
        ``torch._dynamo.reset()``: a reload's warm-up runs while the worker still scores
        with the old model."""
        self._note(f"CUDA graphs off: {exc!r:.300}")
        self.cuda_graphs = False
        self._stop_graph_thread()
        self._run = self._make(self.engine)

    def _note(self, why: str) -> None:
        """Add ``why`` to ``fallback_reason``: every step away from what was asked; a failure
        (``degraded``), not a choice of ``auto``."""
        self._say(why)
        self.degraded = True

    def _say(self, why: str) -> None:
        """Add ``why`` to ``fallback_reason`` (a choice, not a failure)."""
        self.fallback_reason = f"{self.fallback_reason}; {why}" if self.fallback_reason else why

    def close(self) -> None:
        """Free what the scorer holds outside Python's reach, now: its CUDA graphs' memory
        pool and their thread (a model a reload replaced; else both go only when the
        collector finds the scorer). The scorer scores no more with CUDA graphs after."""
        self._stop_graph_thread()

    def _stop_graph_thread(self) -> None:
        """Free the CUDA-graph trees on the thread that made them and stop that thread."""
        if self._graph_thread is not None:
            # A failure to free them leaves them to the thread's end.
            with contextlib.suppress(Exception):
                self._graph_thread.submit(drop_graph_trees).result()
            self._graph_thread.shutdown()
            self._graph_thread = None
