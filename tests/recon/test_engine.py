"""Inference engines on the CPU: buckets and padding, engine choice and fallback, the TensorRT
cache key and cache, and compiled tracing reused across graph sizes (torch.compile's ``eager``
backend: dynamo's tracing and guards without code generation)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from streamtrk.recon.buckets import (
    ALIGN,
    MAX_PADDED_EDGES,
    PAD_EDGES_PER_HIT,
    PRUNED_EDGES_PER_NODE,
    UNPRUNED_EDGES_PER_NODE,
    Buckets,
    bucket,
    ladder,
    pad_graph,
)
from streamtrk.recon.engine import (
    GRAPHS_IGNORED,
    EngineError,
    EngineScorer,
    Run,
    cached,
    default_cache_dir,
    engine_cache_key,
    engine_unavailable,
    model_hash,
    resolve_engine,
    synthetic_graph,
    tensorrt_build,
)
from streamtrk.recon.gnn import GNNConfig, GNNScorer, InteractionNetwork
from streamtrk.recon.graph import Graph

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SMALL = Buckets(min_nodes=1024, max_nodes=8192, min_edges=2048, max_edges=16384, steps=1)


@pytest.fixture(scope="module")
def model() -> InteractionNetwork:
    torch.manual_seed(0)
    return InteractionNetwork(GNNConfig(hidden=16, edge_hidden=8, steps=3)).eval()


def _graph(n: int, e: int, seed: int) -> Graph:
    x, ei, ea = synthetic_graph(n, e, CPU, seed)
    return Graph(x.numpy(), ei.numpy(), ea.numpy(), np.array([0, n]), np.zeros(n, np.int64))


def test_ladder_and_bucket() -> None:
    sizes = ladder(16 * 1024, 16 * 1024 * 1024, steps=2)
    assert sizes[0] == 16 * 1024 and sizes[-1] >= 16 * 1024 * 1024
    assert all(s % ALIGN == 0 for s in sizes)
    ratios = np.diff(np.log2(sizes))
    assert (ratios > 0).all() and (ratios < 0.53).all()  # steps of about sqrt(2)
    assert bucket(1, sizes) == sizes[0] and bucket(sizes[3], sizes) == sizes[3]
    assert bucket(sizes[3] + 1, sizes) == sizes[4]
    assert bucket(sizes[-1] + 1, sizes) == 2 * sizes[-1]  # above the top: multiples of it
    with pytest.raises(ValueError):
        ladder(10, 5)


def test_bucket_shapes_keep_a_padding_hit_for_each_256_padding_edges() -> None:
    b = SMALL
    assert b.shape(1024, 0) == (2048, 2048)  # 1024 hits need a 1025th, the padding hit
    assert b.shape(1023, 4096) == (1024, 4096)  # no padding edge: one padding hit
    assert b.shape(1023, 2049) == (2048, 4096)  # 2047 self-loops: not all on one hit
    rng = np.random.default_rng(5)
    for n, e in rng.integers(1, 3_000_000, size=(2000, 2)):
        n_to, e_to = Buckets().shape(int(n), int(e))
        assert n_to > n and (n_to - n) * PAD_EDGES_PER_HIT >= e_to - e
    assert b.opt_pair() == (8192, 16384)  # opt_edges above the top: the top buckets
    assert Buckets().opt_pair() == (742400, 1024 * 1024)  # 1Mi edges, 655k hits
    # Past the top bucket, the ladder goes on, but never so many edges that edges x 64
    # features reach 2**31 (64 MU=200 events used to pad to exactly that).
    assert Buckets().shape(10, 16_000_000)[1] == 16 * 1024 * 1024
    assert Buckets().shape(10, 20_000_000)[1] == 23_727_104  # 16 Mi x sqrt(2), aligned
    assert Buckets().shape(10, 30_000_000)[1] == MAX_PADDED_EDGES  # 32 Mi x 64: 2**31
    assert Buckets().shape(10, 60_000_000)[1] == 60_000_256


@pytest.mark.parametrize(
    ("edges_per_node", "other"),
    [
        (PRUNED_EDGES_PER_NODE, UNPRUNED_EDGES_PER_NODE),
        (UNPRUNED_EDGES_PER_NODE, PRUNED_EDGES_PER_NODE),
    ],
)
def test_warm_pairs_are_the_shapes_of_graphs_at_the_chains_ratio(
    edges_per_node: float, other: float
) -> None:
    b = Buckets(edges_per_node=edges_per_node)
    pairs = b.pairs()
    assert pairs == sorted(set(pairs), key=lambda p: (p[1], p[0]))
    assert all(n in b.nodes for n, _ in pairs)  # none past the top node bucket
    ladder_ends = np.array(b.edges)
    edges = np.geomspace(1, b.edges[-1], 20_000).astype(int)
    edges = np.unique(np.concatenate([edges, ladder_ends, ladder_ends[:-1] + 1]))
    served = {b.shape(round(e / edges_per_node), int(e)) for e in edges}
    assert {s for s in served if s[0] <= b.nodes[-1]} == set(pairs)  # each reached, none missing
    # a megaedge graph of the other chain's ratio pads to a shape not warmed
    assert b.shape(round(2**20 / other), 2**20) not in pairs


def test_ladder_takes_two_steps_a_doubling_by_default_and_none_past_the_top() -> None:
    assert ladder(16 * 1024, 64 * 1024) == (16384, 23552, 32768, 47104, 65536)
    assert ladder(16 * 1024, 64 * 1024, steps=1) == (16384, 32768, 65536)
    # a top within rounding of a step (1024 x 2**19.5) takes that step, not one more
    sizes = ladder(1024, 759_250_125)
    assert len(sizes) == 39 and sizes[-1] == 759_250_944
    assert ladder(4096, 4096) == (4096,) and ladder(1, 1024) == (1024,)  # one size


@pytest.mark.parametrize(
    ("lo", "hi", "steps"), [(0, 4096, 2), (-1024, 4096, 2), (5000, 4096, 2), (1024, 4096, 0)]
)
def test_ladder_refuses_a_range_from_zero_or_inverted_and_steps_below_one(
    lo: int, hi: int, steps: int
) -> None:
    with pytest.raises(ValueError, match="need 0 < lo <= hi and steps >= 1"):
        ladder(lo, hi, steps)


def test_the_default_ladders_span_16ki_to_2mi_hits_and_16ki_to_16mi_edges() -> None:
    b = Buckets()
    assert (b.nodes[0], b.nodes[-1], len(b.nodes)) == (16 * 1024, 2 * 1024 * 1024, 15)
    assert (b.edges[0], b.edges[-1], len(b.edges)) == (16 * 1024, 16 * 1024 * 1024, 21)


def test_the_edge_ladder_goes_on_above_the_top_to_the_largest_padding_and_stops() -> None:
    """The largest padded edge count is 2**31 / 64 less one ALIGN: 7 times a top bucket of
    4,681 ALIGN. Above the top the ladder goes on (a few shapes, not one a graph size: a
    CUDA graph apiece; padded by about sqrt(2) at most with two steps a doubling, not twice) to
    the largest; a graph that would pad past it keeps its own size, rounded up to ALIGN."""
    top = 4681 * ALIGN
    assert 7 * top == MAX_PADDED_EDGES and MAX_PADDED_EDGES * 64 < 2**31
    b = Buckets(min_edges=top, max_edges=top)
    assert b.edges == (top,)
    assert b.shape(10, 6 * top + 1)[1] == 7 * top  # the largest
    assert b.shape(10, 7 * top + 1)[1] == 7 * top + ALIGN  # past it: its own size
    default = Buckets()
    sizes = range(default.edges[-1] + 1, MAX_PADDED_EDGES + 1, 99_991)
    padded = [default.shape(10, e)[1] for e in sizes]
    assert len(set(padded)) == 2 and max(p / e for p, e in zip(padded, sizes, strict=True)) < 1.42


def test_warm_pairs_of_aligned_ladders_are_exactly_the_shapes_graphs_reach() -> None:
    """Node and edge ladders on the same sizes, one edge a hit: an edge bucket's graphs have
    more hits than the bucket under it holds edges, so they never pad to its node bucket."""
    b = Buckets(1024, 8192, 1024, 8192, steps=1, edges_per_node=1.0)
    assert b.pairs() == [
        (1024, 1024),
        (2048, 1024),
        (2048, 2048),
        (4096, 2048),
        (4096, 4096),
        (8192, 4096),
        (8192, 8192),
    ]


def test_padding_leaves_real_edges_unchanged(model: InteractionNetwork) -> None:
    x, ei, ea = synthetic_graph(300, 2000, CPU, seed=1)
    xp, eip, eap = pad_graph(x, ei, ea, 1024, 4096)
    pad = eip[:, 2000:]
    assert (pad[0] == pad[1]).all() and (pad >= 300).all()  # self-loops on padding hits
    assert len(pad[0].unique()) == 1024 - 300  # spread over all of them, not piled on one
    assert (xp[300:] == 0).all() and (eap[2000:] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(model(xp, eip, eap)[:2000], model(x, ei, ea))
    with pytest.raises(ValueError, match="cannot pad"):
        pad_graph(x, ei, ea, 300, 4096)


def test_engine_choice() -> None:
    assert resolve_engine("eager", CUDA) == ("eager", None)
    assert resolve_engine("compile", CPU) == ("compile", None)
    engine, why = resolve_engine("auto", CPU)
    assert why is not None
    assert engine == "eager" and "CPU" in why
    with pytest.raises(EngineError, match="needs device=cuda"):
        resolve_engine("tensorrt", CPU)
    with pytest.raises(ValueError, match="engine must be one of"):
        resolve_engine("onnx", CPU)


def test_without_tensorrt_auto_falls_back_and_tensorrt_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import raises ImportError
    engine, why = resolve_engine("auto", CUDA)
    assert why is not None
    assert engine == "compile" and "torch_tensorrt cannot be imported" in why
    with pytest.raises(EngineError, match=r"torch_tensorrt cannot be imported.*engine=compile"):
        resolve_engine("tensorrt", CUDA)


def test_model_hash_and_engine_cache_key(model: InteractionNetwork) -> None:
    digest = model_hash(model)
    other = InteractionNetwork(model.config)
    other.load_state_dict(model.state_dict())
    assert model_hash(other) == digest
    first = other.head[0]
    assert isinstance(first, torch.nn.Linear)
    with torch.no_grad():
        first.bias[0] += 1e-3
    assert model_hash(other) != digest
    build = tensorrt_build("2.11.0", {"min_block_size": 1})
    assert set(build) == {"torch_tensorrt", "cuda", "network", "options"}
    args = (digest, "NVIDIA H200", "10.9.0", "bf16", Buckets(), build)
    key = engine_cache_key(*args)
    assert key == engine_cache_key(*args)
    assert key.startswith(f"{digest}-nvidia-h200-trt10.9.0-bf16-")
    assert all(c.isalnum() or c in "-." for c in key)
    changed = [
        (model_hash(other), *args[1:]),
        (digest, "NVIDIA A100-SXM4-80GB", *args[2:]),
        (*args[:2], "10.10.0", *args[3:]),
        (*args[:3], "fp16", *args[4:]),
        (*args[:4], Buckets(max_edges=32 * 1024 * 1024), build),
        (*args[:4], Buckets(edges_per_node=8.0), build),  # another opt shape
        *((*args[:5], build | {k: "other"}) for k in build),
    ]
    assert len({engine_cache_key(*a) for a in changed} | {key}) == 7 + len(build)


def test_tensorrt_build_names_the_options_and_versions() -> None:
    one = tensorrt_build("2.11.0", {"min_block_size": 1})
    assert one == tensorrt_build("2.11.0", {"min_block_size": 1})
    assert one["torch_tensorrt"] == "2.11.0" and one["cuda"] == str(torch.version.cuda)
    assert tensorrt_build("2.11.0", {"min_block_size": 2})["options"] != one["options"]


def test_cached_program_is_loaded_built_or_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "engines" / "key.ep"
    built: list[Path] = []

    def build(p: Path) -> str:
        built.append(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("program")
        return "built"

    def load(p: Path) -> str:
        if p.read_text() != "program":
            raise RuntimeError("truncated file")
        return "loaded"

    assert cached(path, load, build) == "built" and built == [path]  # absent: built
    assert cached(path, load, build) == "loaded" and len(built) == 1  # present: loaded
    path.write_text("progr")
    with caplog.at_level(logging.WARNING, logger="streamtrk.recon.engine"):
        assert cached(path, load, build) == "built"  # unreadable: rebuilt over
    assert len(built) == 2 and path.read_text() == "program"
    assert "does not load (RuntimeError: truncated file); rebuilding" in caplog.text


def test_eager_engine_matches_gnn_scorer(model: InteractionNetwork) -> None:
    g = _graph(500, 3000, 2)
    ref = GNNScorer(model)(g, [])
    scorer = EngineScorer(model, "cpu", "eager")
    assert scorer.warm_up() > 0
    out = scorer(g, [])
    assert out.dtype == np.float32 and out.shape == (3000,)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
    low = EngineScorer(model, "cpu", "eager", "bf16")(g, [])
    np.testing.assert_allclose(low, ref, rtol=0, atol=0.03)
    with pytest.raises(ValueError, match="precision must be one of"):
        EngineScorer(model, "cpu", "eager", "int8")


def test_compiled_tracing_is_reused_across_buckets(model: InteractionNetwork) -> None:
    torch._dynamo.reset()
    counters.clear()
    scorer = EngineScorer(model, "cpu", "compile", buckets=SMALL, backend="eager")
    assert scorer.warm_shapes() == [(SMALL.pairs()[0][0] - 1, SMALL.pairs()[0][1])]
    scorer.warm_up()  # on the CPU the smallest bucket compiles the code for all of them
    assert counters["stats"]["unique_graphs"] == 1
    ref = EngineScorer(model, "cpu", "eager")
    for n, e in ((700, 3000), (5000, 12000), (9000, 40000)):  # the last is above the top
        g = _graph(n, e, n)
        np.testing.assert_allclose(scorer(g, []), ref(g, []), rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_a_compile_past_the_recompile_limit_fails_to_warm_up(
    model: InteractionNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dynamo compiles a function in so many variants, then runs it eagerly: a scorer that
    warms up past that (a daemon reloaded with models of other sizes) is not ``compile``
    (auto: eager, noted), rather than saying it while running eagerly."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    other = InteractionNetwork(GNNConfig(hidden=8, edge_hidden=4, steps=2)).eval()
    try:
        with torch._dynamo.config.patch(recompile_limit=1):
            EngineScorer(model, "cpu", "compile", buckets=SMALL, backend="eager").warm_up()
            second = EngineScorer(other, "cpu", "compile", buckets=SMALL, backend="eager")
            with pytest.raises(Exception, match="recompile_limit"):
                second.warm_up()
            monkeypatch.setattr(second, "requested", "auto")  # auto picks eager on the CPU
            second.warm_up()
        assert second.engine == "eager" and second.degraded
        assert "compile failed to warm up" in (second.fallback_reason or "")
    finally:
        torch._dynamo.reset()


def test_the_eager_engine_leaves_dynamo_unimported() -> None:
    """Warmed up and reconstructing, the eager engine imports neither dynamo nor, through
    it, sympy: 110,000 objects more for every full collection of the daemon's heap to scan
    (the pause of each reload tripled). A fresh process: this one has imported them."""
    code = (
        "import sys\n"
        "from streamtrk.detector import load_detector\n"
        "from streamtrk.recon.load import load_reconstructor\n"
        "from streamtrk.sim.generator import GeneratorConfig\n"
        "from streamtrk.sim.simulate import SimConfig, simulate\n"
        "rec = load_reconstructor(engine='eager', warm_up=True)\n"
        "rec.reconstruct(list(simulate(load_detector(), SimConfig(GeneratorConfig(mu=5)), 1, 1)))\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "[]"


def test_the_graph_thread_fails_past_the_recompile_limit_while_warming_up_only(
    model: InteractionNetwork,
) -> None:
    """Dynamo's settings are per thread: with CUDA graphs the network compiles on the
    scorer's own thread, which raises past the recompile limit during the warm-up (as the
    warming thread does), and not once serving (a batch would fail, not run eagerly)."""
    scorer = EngineScorer(model, "cpu", "eager")
    scorer.engine = "compile"  # the engine of CUDA graphs; ``run`` below stands in for it
    seen: list[bool] = []

    def run(x: torch.Tensor, ei: torch.Tensor, ea: torch.Tensor) -> torch.Tensor:
        seen.append(torch._dynamo.config.fail_on_recompile_limit_hit)
        return x.sum() + ei.shape[1] + ea.shape[0]

    scorer._run = scorer._on_graph_thread(run)
    scorer.warm_up()
    scorer.logits(*synthetic_graph(10, 20, CPU, 0))
    assert seen == [True, False]
    scorer.close()


def test_auto_falls_back_when_an_engine_fails_to_warm_up(
    model: InteractionNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("no compiler")

    scorer = EngineScorer(model, "cpu", "compile", buckets=SMALL, backend="eager")
    assert not scorer.degraded
    monkeypatch.setattr(scorer, "_run", broken)
    with pytest.raises(RuntimeError, match="no compiler"):
        scorer.warm_up()  # asked for explicitly: no fallback
    monkeypatch.setattr(scorer, "requested", "auto")
    scorer.warm_up()
    assert scorer.engine == "eager"
    assert scorer.fallback_reason == (
        "compile failed to warm up (RuntimeError: no compiler); using eager"
    )
    g = _graph(200, 900, 3)
    np.testing.assert_allclose(scorer(g, []), GNNScorer(model)(g, []), rtol=0, atol=1e-6)


@pytest.mark.parametrize("engine", ["eager", "compile", "auto"])
def test_cuda_graphs_asked_where_none_are_replayed_are_said_to_be_ignored(
    model: InteractionNetwork, engine: str
) -> None:
    """On the CPU no engine replays CUDA graphs: the note says so (status, logs), not a
    failure; without them asked for, nothing is said of them."""
    scorer = EngineScorer(model, "cpu", engine, buckets=SMALL, backend="eager", cuda_graphs=True)
    assert not scorer.cuda_graphs and not scorer.degraded
    assert "cuda_graphs ignored" in (scorer.fallback_reason or "")
    plain = EngineScorer(model, "cpu", engine, buckets=SMALL, backend="eager")
    assert "cuda_graphs" not in (plain.fallback_reason or "")


def test_auto_warmed_up_on_tensorrt_says_the_cuda_graphs_asked_are_ignored(
    model: InteractionNetwork,
) -> None:
    """auto keeps CUDA graphs for compile, which it may come to; once TensorRT (which
    replays none) has warmed up, the scorer says it has none. Emulated on the CPU as
    below, the engine built as the eager one."""
    scorer = EngineScorer(model, "cpu", "eager", buckets=SMALL)
    scorer.requested, scorer.engine, scorer.cuda_graphs = "auto", "tensorrt", True
    scorer._tensorrt = lambda: scorer._eager  # type: ignore[method-assign]
    scorer._run = scorer._make("tensorrt")
    with warnings.catch_warnings():  # torch 2.13's import of torch.jit.script_method
        warnings.simplefilter("ignore", DeprecationWarning)
        scorer.warm_up()
    assert (scorer.engine, scorer.cuda_graphs, scorer.degraded) == ("tensorrt", False, False)
    assert scorer.fallback_reason == GRAPHS_IGNORED


def test_a_tensorrt_failure_falls_back_to_compile_with_cuda_graphs_as_asked(
    model: InteractionNetwork,
) -> None:
    """TensorRT replays no CUDA graphs: its failure is its own (built once, not taken for
    the graphs'), and compile, next, keeps the graphs asked for; the note keeps every step.
    Emulated on the CPU: the scorer as ``auto`` on CUDA makes it (the device only gates
    ``cuda_graphs`` at construction and the warm shapes)."""
    scorer = EngineScorer(model, "cpu", "eager", buckets=SMALL, backend="eager")
    scorer.requested, scorer.engine, scorer.cuda_graphs = "auto", "tensorrt", True
    scorer.fallback_reason = "as resolved"
    builds = []

    def failing_build() -> Run:
        builds.append(1)
        raise RuntimeError("unsupported op index_add")

    scorer._tensorrt = failing_build  # type: ignore[method-assign]
    scorer._run = scorer._make("tensorrt")
    with warnings.catch_warnings():  # the eager backend ignores mode="reduce-overhead"
        warnings.simplefilter("ignore")
        scorer.warm_up()
    assert (scorer.engine, scorer.cuda_graphs, len(builds)) == ("compile", True, 1)
    assert scorer.fallback_reason == (
        "as resolved; tensorrt failed to warm up (RuntimeError: unsupported op index_add); "
        "using compile"
    )
    assert scorer.degraded  # a failure, said at WARNING by the daemon, not auto's choice
    scorer.close()
    torch._dynamo.reset()


def test_graph_thread_has_graph_trees_of_its_own(model: InteractionNetwork) -> None:
    """The scorer's thread can set up CUDA-graph trees although another thread imported
    torch's graph-tree module (torch 2.11 failed an assertion there: the daemon's reload,
    the gpu tests), gets its own, and drops them when graphs are turned off."""
    with warnings.catch_warnings():  # torch 2.13's import of torch.jit.script_method
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch._inductor import cudagraph_trees as trees  # imported on this thread

    scorer = EngineScorer(model, "cpu", "eager")
    # (the ignore: deliberately wrong, a probe giving the thread's graph-tree container, not logits)
    call = scorer._on_graph_thread(lambda *_: trees.get_container(0))  # type: ignore[arg-type]
    x, ei, ea = synthetic_graph(10, 20, CPU, 0)
    theirs = call(x, ei, ea)
    assert isinstance(theirs, trees.TreeManagerContainer) and theirs.device_index == 0
    assert call(x, ei, ea) is theirs  # one state for every call
    assert theirs is not trees.get_container(0)  # this thread's own
    assert scorer._graph_thread is not None
    held = scorer._graph_thread.submit(lambda: dict(trees.local.tree_manager_containers))
    assert held.result() == {0: theirs}
    scorer._graphs_off(RuntimeError("test"))
    # (the ignore: mypy keeps the narrowing above across _graphs_off, which clears it)
    assert scorer._graph_thread is None and "CUDA graphs off" in scorer.fallback_reason  # type: ignore[unreachable]


def test_close_drops_the_graph_trees_and_stops_their_thread(model: InteractionNetwork) -> None:
    """``close`` (a model a reload replaced) frees the thread's graph trees on that thread
    and stops it, the scorer's notes unchanged."""
    with warnings.catch_warnings():  # torch 2.13's import of torch.jit.script_method
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch._inductor import cudagraph_trees as trees

    scorer = EngineScorer(model, "cpu", "eager")
    call = scorer._on_graph_thread(lambda *_: trees.get_container(0))  # type: ignore[arg-type]
    call(*synthetic_graph(10, 20, CPU, 0))
    pool = scorer._graph_thread
    assert pool is not None
    held = pool.submit(lambda: trees.local.tree_manager_containers).result()
    thread = pool.submit(threading.current_thread).result()
    scorer.close()
    thread.join(timeout=10)
    assert held == {} and not thread.is_alive()
    assert (scorer._graph_thread, scorer.fallback_reason) == (None, None)
    scorer.close()  # again: nothing to do


def test_graph_thread_runs_every_call_on_one_thread(model: InteractionNetwork) -> None:
    """With CUDA graphs every call runs on the scorer's own thread (graph trees keep their
    state per thread), under inference mode, whichever thread calls."""
    scorer = EngineScorer(model, "cpu", "eager")
    seen = []

    def run(x: torch.Tensor, ei: torch.Tensor, ea: torch.Tensor) -> torch.Tensor:
        seen.append((threading.current_thread().name, torch.is_inference_mode_enabled()))
        return x.sum() + ei.shape[1] + ea.shape[0]

    call = scorer._on_graph_thread(run)
    x, ei, ea = synthetic_graph(10, 20, CPU, 0)
    with ThreadPoolExecutor(2) as callers:
        outs = list(callers.map(lambda _: call(x, ei, ea), range(4)))
    assert all(torch.equal(o, x.sum() + 40) for o in outs)
    assert {name for name, _ in seen} == {"cuda-graphs_0"}
    assert all(inference for _, inference in seen)


def test_a_count_that_is_a_multiple_of_the_top_bucket_keeps_its_size() -> None:
    sizes = Buckets().nodes
    assert bucket(2 * sizes[-1], sizes) == 2 * sizes[-1]
    assert bucket(3 * sizes[-1], sizes) == 3 * sizes[-1]


def test_no_padding_hit_takes_more_than_256_self_loops() -> None:
    # 257 padding edges need two padding hits: 2047 + 2 hits pad to the next node bucket
    assert SMALL.shape(2047, 3839) == (4096, 4096)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_compile_engine_runs_at_the_precision_asked(
    model: InteractionNetwork, precision: str
) -> None:
    g = _graph(500, 3000, 2)
    fp32 = EngineScorer(model, "cpu", "eager")(g, [])
    eager = EngineScorer(model, "cpu", "eager", precision)(g, [])
    torch._dynamo.reset()
    try:
        compiled = EngineScorer(model, "cpu", "compile", precision, buckets=SMALL, backend="eager")
        out = compiled(g, [])
    finally:
        torch._dynamo.reset()
    assert np.abs(out - fp32).max() > 1e-5  # not float32
    np.testing.assert_allclose(out, eager, rtol=0, atol=2e-3)


def test_fp16_on_the_cpu_is_fp16_not_bf16(model: InteractionNetwork) -> None:
    g = _graph(500, 3000, 2)
    fp32 = EngineScorer(model, "cpu", "eager")(g, [])
    bf16 = EngineScorer(model, "cpu", "eager", "bf16")(g, [])
    fp16 = EngineScorer(model, "cpu", "eager", "fp16")(g, [])
    assert not np.array_equal(fp16, bf16)
    assert np.abs(fp16 - fp32).max() < np.abs(bf16 - fp32).max()  # 10 mantissa bits, not 7


def test_auto_on_the_cpu_raises_the_eager_engines_own_failure(
    model: InteractionNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("out of memory")

    scorer = EngineScorer(model, "cpu", "auto")
    assert scorer.engine == "eager"
    monkeypatch.setattr(scorer, "_run", broken)
    with pytest.raises(RuntimeError, match="out of memory"):  # no next engine: not KeyError
        scorer.warm_up()


def test_an_empty_engine_cache_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTRK_ENGINE_CACHE", "")
    assert default_cache_dir().is_absolute()  # not "." (the working directory)


def test_blocked_inference_of_one_edge_past_a_block(model: InteractionNetwork) -> None:
    x, ei, ea = synthetic_graph(50, 129, CPU, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.infer(x, ei, ea, block=128), model(x, ei, ea))


def test_eager_warms_up_on_one_small_graph(model: InteractionNetwork) -> None:
    assert EngineScorer(model, "cpu", "eager", buckets=SMALL).warm_shapes() == [(1000, 8000)]


def test_model_hash_is_16_hex_digits_of_names_dtypes_shapes_and_bytes() -> None:
    """The same bytes in another shape or dtype are another model (another cached program)."""
    a, b, c = (torch.nn.Module() for _ in range(3))
    a.register_buffer("w", torch.arange(6, dtype=torch.int16).reshape(2, 3))
    b.register_buffer("w", torch.arange(6, dtype=torch.int16).reshape(3, 2))
    c.register_buffer("w", torch.arange(6, dtype=torch.int16).view(torch.float16).reshape(2, 3))
    digests = {model_hash(m) for m in (a, b, c)}
    assert len(digests) == 3
    assert all(len(d) == 16 and int(d, 16) >= 0 for d in digests)


def test_engine_unavailable_says_why_instead_of_raising() -> None:
    """An engine this host cannot run is said (checked before a command starts), one it
    can is None; an unknown engine name is a caller's error (ValueError), not a reason."""
    assert engine_unavailable("tensorrt", "cpu") == "engine=tensorrt needs device=cuda"
    assert engine_unavailable("eager", "cpu") is None
    with pytest.raises(ValueError, match="engine must be one of"):
        engine_unavailable("onnx", "cpu")


def test_a_graph_of_more_edges_than_the_tensorrt_range_runs_eagerly(
    model: InteractionNetwork,
) -> None:
    """TensorRT's program covers the bucket range: a graph over it in edges alone (hits
    within) runs the network eagerly rather than the program, whose profile it exceeds."""
    scorer = EngineScorer(model, "cpu", "eager", buckets=SMALL)

    def program(x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the program ran on a graph above its range")

    run = scorer._padded(program, eager_above_range=True)
    x, ei, ea = synthetic_graph(1000, SMALL.edges[-1] + 1, CPU)
    with torch.inference_mode():
        got = run(x, ei, ea)
        torch.testing.assert_close(got, scorer._logits(x, ei, ea))
