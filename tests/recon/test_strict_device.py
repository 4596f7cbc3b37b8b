"""The chain's shared NumPy/CuPy code path run on the CPU with strict device arrays
(``strict_xp``: CuPy's refusals on NumPy-backed arrays, the CUDA kernels as host builds)
against the NumPy run: graph, pruning, GNN, tracks, fit, layer counts, the daemon's
physics metrics and the offline evaluation."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from needs import missing
from piles import assert_same_refusals, pile
from prometheus_client import CollectorRegistry
from strict_xp import DeviceArray, installed
from torch.utils.dlpack import from_dlpack

from streamtrk import xp as xp_module
from streamtrk.detector import BARREL
from streamtrk.eval.evaluate import Evaluation
from streamtrk.event import Event, Hits
from streamtrk.recon import fit, prune
from streamtrk.recon import graph as graph_stage
from streamtrk.recon.budget import Budget, EventTooDense
from streamtrk.recon.gnn import GNNScorer
from streamtrk.recon.graph import Graph, GraphConfig, batch_columns, build_graph
from streamtrk.recon.load import ChainSettings
from streamtrk.recon.model import default_model_path, load_model
from streamtrk.recon.prune import PruneConfig
from streamtrk.recon.reconstructor import OracleScorer, ReconResult, Reconstructor
from streamtrk.recon.tracks import TrackConfig, build_tracks
from streamtrk.service.physics import Observation, PhysicsMetrics
from streamtrk.xp import (
    _staging,
    array_module,
    bincount,
    compact,
    concatenate_to_device,
    csr_rows,
    lexsort,
    nonzeros,
    to_host,
)


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        missing("g++ not found: cannot build the CUDA kernels for the host")
    return tmp_path_factory.mktemp("strict_kernels")


@pytest.fixture
def strict_cupy(kernel_dir: Path) -> Iterator[Any]:
    with installed(kernel_dir) as cupy:
        yield cupy


class HashScorer:
    """Scores from a hash of each edge's ends (no truth needed; the same on any device)."""

    def __call__(self, graph: Graph, events: Sequence[Event]) -> Any:
        xp = array_module(graph.edge_index)
        a, b = (graph.edge_index[k].astype(xp.int64) for k in (0, 1))
        u = (a * 2654435761 + b * 40503) % 1000003
        return (u.astype(xp.float64) / 1000003).astype(xp.float32)


def _empty_event() -> Event:
    columns = ("hit_id", "x", "y", "z", "volume_id", "layer_id", "module_id")
    return Event(1, 99, Hits.from_columns({k: np.zeros(0) for k in columns}))


def _gnn_chain() -> tuple[Any, dict[str, Any]]:
    """The shipped model's scorer and chain settings (pruning, stitching, fit cuts)."""
    path = default_model_path()
    model, card = load_model(path)
    chain = ChainSettings.of_card(card, path)
    kwargs = {"prune": chain.prune, "tracks": chain.tracks, "threshold": chain.threshold}
    return GNNScorer(model), kwargs


CHAINS = {
    "gnn": _gnn_chain,
    "oracle-unpruned-beam-spot": lambda: (
        OracleScorer(),
        {
            "beam_spot": (0.4, -0.2),
            "tracks": TrackConfig(
                junction_passes=2,
                stitch_threshold=0.05,
                join_doubles=True,
                min_mean_score=0.5,
                max_chi2_ndf=2.0,
            ),
        },
    ),
    "hash-pruned-with-empty-event": lambda: (
        HashScorer(),
        {  # random scores: stitching and joined doubles have work to do
            "prune": PruneConfig(),
            "tracks": TrackConfig(max_d0=0.5, stitch_threshold=0.3, join_doubles=True),
        },
    ),
}


def _host(result: ReconResult) -> dict[str, Any]:
    """What a reconstruction gives, on the host (device arrays copied down)."""
    out: dict[str, Any] = {"layer_hits": result.layer_hits, "node_offsets": result.node_offsets}
    out["scores"] = to_host(result.scores)
    for name, g in (("graph", result.graph), ("built", result.built)):
        for k in ("node_features", "edge_index", "edge_features", "layer"):
            out[f"{name}.{k}"] = to_host(getattr(g, k))
    for e, t in enumerate(result.tracks):
        out[f"tracks{e}.offsets"], out[f"tracks{e}.hit_index"] = t.offsets, t.hit_index
        out |= {f"tracks{e}.{k}": v for k, v in t.params.items()}
    return out


def _metrics(events: list[Event], result: ReconResult, rec: Reconstructor) -> dict[str, Any]:
    """The daemon's physics metrics and the offline evaluation's track table of a result."""
    registry = CollectorRegistry()
    PhysicsMetrics(registry).observe(Observation.of(events, result, rec))
    samples = {(s.name, tuple(s.labels.items())): s.value for m in registry.collect()
               for s in m.samples}  # fmt: skip
    evaluation = Evaluation.of(rec)
    evaluation.add(events, result, 0.0, rec.threshold)
    return {"samples": samples, "tracks": evaluation.track_table()}


def _run(device: str, chain: str, events: list[Event]) -> tuple[dict, dict]:
    scorer, kwargs = CHAINS[chain]()
    rec = Reconstructor(scorer, device=device, **kwargs)
    result = rec.reconstruct(events)
    return _host(result), _metrics(events, result, rec)


@pytest.mark.parametrize("chain", CHAINS)
def test_the_chain_on_strict_device_arrays_equals_numpy(small_events, kernel_dir, chain):
    events = list(small_events)
    if chain == "hash-pruned-with-empty-event":
        events.insert(1, _empty_event())
    expected, expected_metrics = _run("cpu", chain, events)
    with installed(kernel_dir) as cupy:
        got, metrics = _run("cuda", chain, events)
        counts = dict(cupy.counts)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        if k.startswith("tracks") and v.dtype.kind == "f":
            # The fit's sums and turns are kernels, summing in another order than the
            # arrays: the last bits of a float64 differ, and may move a float32 parameter
            # by one step of its rounding (1.2e-7 of it; d0 and z0 by 6e-8 seen). Near
            # zero, within 1e-9 of the column's largest value.
            atol = 1e-9 * float(np.abs(v).max(initial=0.0))
            np.testing.assert_allclose(got[k], v, rtol=3e-7, atol=atol, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert sum(len(got[k]) - 1 for k in got if k.endswith(".offsets")) > 100  # tracks made
    assert metrics["samples"] == pytest.approx(expected_metrics["samples"])
    np.testing.assert_allclose(metrics["tracks"], expected_metrics["tracks"], rtol=3e-7)
    assert counts.get("host-to-device (index)", 0) == 0, counts  # no host index arrays


@pytest.mark.parametrize("chain", CHAINS)
def test_the_chain_does_not_hang_on_the_order_of_the_kernels_threads(
    small_events, kernel_dir, chain
):
    """The chain's kernels built with their threads run last to first give what they give
    first to last, bit for bit (a GPU runs them in any order): outputs placed by prefix
    sums, flags, atomic minima and in-place label propagation whatever the order."""
    events = list(small_events)
    runs = []
    for reversed_threads in (False, True):
        with installed(kernel_dir, reversed_threads):
            runs.append(_run("cuda", chain, events))
    (forward, forward_metrics), (backward, backward_metrics) = runs
    assert forward.keys() == backward.keys()
    for k, v in forward.items():
        np.testing.assert_array_equal(backward[k], v, err_msg=k)
    samples = [{k: v for k, v in m["samples"].items() if not k[0].endswith("_created")}
               for m in (forward_metrics, backward_metrics)]  # fmt: skip
    assert samples[0] == samples[1]  # but the metrics' creation times
    np.testing.assert_array_equal(forward_metrics["tracks"], backward_metrics["tracks"])


def _array_paths(events: list[Event], det: Any, xp: Any) -> dict[str, np.ndarray]:
    """The stages' array-operation forms that the GPU runs only in ``bench/gpu_bench.py``
    (against their kernels): candidate search, triplet cuts (3 and 4 hits), GLS sums."""
    cols, offsets = batch_columns(events, xp)
    ctx, _, _ = graph_stage.prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    out = dict(zip("ijf", map(to_host, graph_stage.search_arrays(ctx)), strict=True))
    g = build_graph(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    geo, usable, t = prune.triplet_inputs(g, PruneConfig(), det)
    for hits in (3, 4):
        mask = prune.keep_arrays(geo, usable, t, len(det), hits, (g.node_offsets, Budget()))
        out[f"keep{hits}"] = to_host(mask)
    offs, _ = build_tracks(g.edge_index, OracleScorer()(g, events), g.node_features[:, 0])
    n_hits = int(offs[-1])
    values = np.random.default_rng(0).normal(size=(n_hits, 15))
    values[:, 4] = 1.0 + np.abs(values[:, 4])  # the variances
    columns = list(xp.asarray(values).T)
    out["gls"] = to_host(fit.gram_arrays(columns, 4, (2, 3), offs, csr_rows(offs, n_hits)))
    return out


def test_the_array_paths_on_strict_device_arrays_equal_numpy(small_events, det, kernel_dir):
    expected = _array_paths(small_events, det, np)
    with installed(kernel_dir) as cupy:
        got = _array_paths(small_events, det, cupy)
    assert len(expected["i"]) > 1000 and expected["keep4"].any()
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, err_msg=k)


def test_the_candidate_search_scans_its_flags_in_parts(small_events, det, kernel_dir, monkeypatch):
    """Past ``SCAN_CHUNK`` candidates (CuPy's scan is wrong past 2^31 elements; batch 64 of
    MU=200 within the budget has 2.8 billion), the flags' running total is scanned in parts,
    each continuing the last on the device: the same graph (here with parts of 1,000)."""
    cols, offsets = batch_columns(small_events, np)
    expected = build_graph(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    monkeypatch.setattr(xp_module, "SCAN_CHUNK", 1000)
    with installed(kernel_dir) as cupy:
        cols, _ = batch_columns(small_events, cupy)
        got = build_graph(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
        edges, features = to_host(got.edge_index), to_host(got.edge_features)
    assert expected.num_edges > 10 * 1000  # ten parts of candidates at least
    np.testing.assert_array_equal(edges, expected.edge_index)
    np.testing.assert_array_equal(features, expected.edge_features)


#: The candidate search's per-query windows, made by a kernel on the device.
QUERY_FIELDS = ("qi", "ri", "zi", "row0", "b_lo", "b_hi", "reach", "centre", "p_lo", "p_hi")


def _query_batch(events: Sequence[Event], det: Any) -> list[Event]:
    """A full event, the next one's barrel hits only (no queries into the disks), an event
    without hits, then the first again with hits of unknown layers and hits moved off their
    surface (no queries from them)."""
    full, other = events
    layer = det.layer_lut[other.hits.volume_id, other.hits.layer_id]
    barrel = Event(1, 2, other.hits.take(np.nonzero(det.kind[layer] == BARREL)[0]))
    odd = Event(1, 4, full.hits.take(np.arange(len(full.hits))))
    rng = np.random.default_rng(5)
    picks = rng.choice(len(odd.hits), 600, replace=False)
    odd.hits.volume_id[picks[:300]] = 99  # no such volume
    odd.hits.x[picks[300:]] *= 1.3  # far off their layer
    return [full, barrel, _empty_event(), odd]


def test_the_query_windows_on_strict_device_arrays_equal_numpy(small_events, det, kernel_dir):
    """``query_pairs`` and ``doublet_queries`` (the device's queries and windows) give the
    arrays' queries, in their order, with their windows bit for bit (the edges alone would
    not tell a window wider than it needs be), and each event's hits on a layer, on a batch
    whose events lack layers, hits, or have hits off every layer."""
    events = _query_batch(small_events, det)
    cols, offsets = batch_columns(events, np)
    expected, _, _ = graph_stage.prepare_search(**cols, node_offsets=offsets, det=det,
                                                cfg=GraphConfig())  # fmt: skip
    with installed(kernel_dir) as cupy:
        cols, _ = batch_columns(events, cupy)
        ctx, _, _ = graph_stage.prepare_search(**cols, node_offsets=offsets, det=det,
                                               cfg=GraphConfig())  # fmt: skip
        got = {k: to_host(getattr(ctx, k)) for k in (*QUERY_FIELDS, "on_layer")}
    assert len(expected.qi) > 10_000 and (expected.p_lo < expected.p_hi).any()
    assert (expected.b_hi < expected.b_lo).any() and (expected.centre > 2 * np.pi).any()
    on_layer = expected.on_layer
    assert on_layer[2] == 0 and 0 < on_layer[3] <= on_layer[0] - 300  # unknown or off
    for k in (*QUERY_FIELDS, "on_layer"):
        np.testing.assert_array_equal(got[k], getattr(expected, k), err_msg=k)


def test_host_synchronisations_do_not_grow_with_the_batch(small_events, kernel_dir):
    """CuPy's own synchronisations (``strict_xp``'s count: copies down, and outputs sized by
    their values) of a reconstruction, the same for one event and two."""
    scorer, kwargs = _gnn_chain()
    syncs = []
    with installed(kernel_dir) as cupy:
        rec = Reconstructor(scorer, device="cuda", **kwargs)
        for n in (1, 2):
            cupy.counts.clear()
            rec.reconstruct(small_events[:n])
            syncs.append(cupy.counts["sync"])
    assert syncs[0] == syncs[1] and 0 < syncs[0] < 91, syncs  # 91: the GPU test's bound


def test_the_budget_refuses_the_same_events_on_strict_device_arrays(small_events, det, kernel_dir):
    refused = {}
    for k in (2000, 400, 60):  # candidates, doublets, triplet candidates
        batch = [small_events[0], pile(det, k, 2), small_events[1], pile(det, k, 4)]
        for device in ("cpu", "cuda"):
            with installed(kernel_dir):
                rec = Reconstructor.oracle(device=device, detector=det, prune=PruneConfig())
                with pytest.raises(EventTooDense) as e:
                    rec.reconstruct(batch)
            refused[device] = e.value
        assert_same_refusals(refused["cpu"], refused["cuda"])
        assert refused["cpu"].events == [1, 3]


def test_strict_arrays_refuse_what_cupy_refuses(strict_cupy):
    d, h = strict_cupy.arange(5), np.arange(5)
    assert array_module(d) is strict_cupy and isinstance(d.sum(), DeviceArray)
    refused = {
        "np.asarray": lambda: np.asarray(d),
        "np.array": lambda: np.array(d),
        "device op host": lambda: d + h,
        "host op device": lambda: h < d,
        "host operand of a function": lambda: np.searchsorted(h, d),
        "list operand": lambda: d * [1] * 5,
        "host indexed by device": lambda: h[d],
        "host array into a slice": lambda: d.__setitem__(slice(None), h),
        "float of many": lambda: float(d),
        "torch.from_numpy": lambda: torch.from_numpy(d),
        "unstable sort": lambda: strict_cupy.argsort(d, kind="quicksort"),
        "CuPy's lexsort (a comparison sort)": lambda: strict_cupy.lexsort(strict_cupy.stack([d])),
        "set of another dtype": lambda: d.set(h.astype(np.float64)),
        "set of another shape": lambda: d.set(h[:4]),
        "set of a device array": lambda: d.set(d),
        # bincount's kernels: NumPy raises on a bin outside [0, size), the device skips it
        "bincount below its bins": lambda: bincount(d - 1, 5),
        "bincount past its bins": lambda: bincount(d + 1, 5),
        "bincount past many bins": lambda: bincount(d + 3000, 3000, d * 1.0),
    }
    for name, fn in refused.items():
        with pytest.raises((TypeError, ValueError)):
            fn()
            pytest.fail(name)
    np.testing.assert_array_equal(to_host(d[h[1:3]]), [1, 2])  # CuPy copies the index up
    np.testing.assert_array_equal(from_dlpack(d).numpy(), h)
    assert strict_cupy.counts["host-to-device (index)"] == 1


def test_columns_go_up_through_one_reused_page_locked_buffer(strict_cupy):
    """The upload's host buffer is the thread's page-locked one, reused while it is large
    enough and doubled when not; each batch's columns are its own on the device."""

    def capacity(view: np.ndarray) -> int:
        assert view.base is not None
        return int(view.base.nbytes)

    first: dict[str, list[np.ndarray]] = {
        "x": [np.arange(6, dtype=np.float32)],
        "id": [np.arange(3), np.arange(2)],
    }
    up = concatenate_to_device(first, strict_cupy)
    held = _staging(64, strict_cupy)
    assert np.shares_memory(held, _staging(32, strict_cupy))  # reused
    grown = _staging(4 * capacity(held), strict_cupy)
    assert not np.shares_memory(held, grown) and capacity(grown) == 4 * capacity(held)
    assert capacity(_staging(capacity(grown) + 1, strict_cupy)) == 2 * capacity(grown)
    again = concatenate_to_device({"x": [np.full(6, 7, np.float32)]}, strict_cupy)
    np.testing.assert_array_equal(to_host(up["x"]), np.arange(6))  # not overwritten
    np.testing.assert_array_equal(to_host(up["id"]), [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(to_host(again["x"]), np.full(6, 7))
    assert strict_cupy.counts["host-to-device"] == 2  # one copy a batch


def test_lexsort_by_stable_argsorts_is_numpys(strict_cupy):
    """``streamtrk.xp.lexsort`` on device arrays (an argsort a key) gives NumPy's order:
    three keys of many ties (ints, floats with zeros of both signs, ints), one key, none
    tied, and no synchronisation."""
    rng = np.random.default_rng(5)
    n = 4000
    keys = (
        rng.integers(0, 3, n),
        rng.choice([-0.0, 0.0, 0.5, -1.5], n),
        rng.integers(0, 40, n).astype(np.int32),
    )
    device = tuple(strict_cupy.asarray(k) for k in keys)
    strict_cupy.counts.clear()
    takes = (slice(None), slice(1, 2), slice(2, 3))
    got = [lexsort(device[take]) for take in takes]
    assert strict_cupy.counts["sync"] == 0
    for g, take in zip(got, takes, strict=True):
        np.testing.assert_array_equal(to_host(g), np.lexsort(keys[take]))
    unique = rng.permutation(n).astype(np.float64)
    got = lexsort((strict_cupy.asarray(unique),))
    np.testing.assert_array_equal(to_host(got), np.argsort(unique))


def test_nonzeros_of_several_masks_cost_one_synchronisation(strict_cupy):
    """``streamtrk.xp.nonzeros`` gives NumPy's indices of each mask (empty, none set, all
    set, random, integers), their counts brought down in one synchronisation; ``compact`` none, and
    its kernel's stand-in refuses a count that is not the mask's."""
    rng = np.random.default_rng(3)
    masks = [np.zeros(0, bool), np.zeros(7, bool), np.ones(300, bool), rng.random(5000) < 0.3]
    masks.append((rng.random(900) < 0.5).astype(np.uint8) * 2)  # not bools: not zero
    device = [strict_cupy.asarray(m) for m in masks]
    strict_cupy.counts.clear()
    got = nonzeros(*device)
    assert strict_cupy.counts["sync"] == 1
    for g, m in zip(got, masks, strict=True):
        assert g.dtype == np.int64 and np.array_equal(to_host(g), np.nonzero(m)[0])
    ends = strict_cupy.cumsum(device[3], dtype=strict_cupy.int64)
    for given in (ends, None):
        strict_cupy.counts.clear()
        kept = compact(device[3], int(masks[3].sum()), given)
        assert strict_cupy.counts["sync"] == 0
        assert np.array_equal(to_host(kept), np.nonzero(masks[3])[0])
    with pytest.raises(ValueError, match="room for"):
        compact(device[3], int(masks[3].sum()) - 1)


def test_the_page_locked_buffer_is_reused_at_exactly_its_size(strict_cupy: Any) -> None:
    """A batch of exactly the buffer's size fits it: reused, not grown."""
    held = xp_module._staging(64, strict_cupy)
    assert held.base is not None
    whole = xp_module._staging(int(held.base.nbytes), strict_cupy)
    assert np.shares_memory(held, whole) and whole.base is held.base
