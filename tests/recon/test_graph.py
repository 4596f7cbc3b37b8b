"""Graph construction: exact against brute force, batching, wrap-around, efficiency."""

import math
import re
from dataclasses import replace

import numpy as np
import pytest
from numpy.typing import ArrayLike

from streamtrk.detector import BARREL, lookup_layer
from streamtrk.event import Event, Hits
from streamtrk.recon import graph as graph_module
from streamtrk.recon.budget import Budget, EventTooDense
from streamtrk.recon.graph import (
    KERNELS,
    Graph,
    GraphConfig,
    _build,
    _device_tables,
    batch_columns,
    batch_graph,
    build_graph,
    candidate_starts,
    event_graph,
    event_graphs,
    hit_cells,
    hit_cells_kernel,
    layer_pairs,
    prepare_search,
    search_args,
    search_arrays,
    search_kernels,
    select_edges,
    without_isolated_hits,
)
from streamtrk.recon.kernels import source as kernels_source
from streamtrk.recon.truth import particle_pt, true_segments

NO_LIMIT = Budget(math.inf, math.inf, math.inf)  # one cell per layer: every hit pair


def _keys(g):
    n = g.num_nodes
    return np.sort(g.edge_index[0] * n + g.edge_index[1])


def test_grid_search_equals_brute_force(small_events, det):
    # One cell per layer (1 bin in u, 1 in phi) makes the search test every hit pair of
    # every layer pair: the fine grid must find exactly the same edges.
    fine = batch_graph(small_events[:1], det)
    brute = batch_graph(small_events[:1], det, GraphConfig(n_bins=1, n_phi_bins=1), budget=NO_LIMIT)
    assert fine.num_edges > 10_000
    assert np.array_equal(_keys(fine), _keys(brute))


@pytest.mark.parametrize("beam_spot", [(20.0, 0.0), (-9.0, 17.0)])
def test_the_search_off_a_beam_spot_equals_brute_force(det, beam_spot):
    """Collisions up to 20 mm off the axis (the most a reconstructor takes): centred on
    them, hits lie up to that much further off their layer's nominal surface, and the
    search windows reach as far (with the layer margin alone they missed segments, true
    ones among them, from 15 mm on)."""
    from streamtrk.recon.reconstructor import OracleScorer, Reconstructor
    from streamtrk.sim.generator import GeneratorConfig
    from streamtrk.sim.simulate import SimConfig, simulate

    gen = GeneratorConfig(mu=10, beam_spot=(*beam_spot, 0.0))
    [ev] = simulate(det, SimConfig(generator=gen), seed=4, n_events=1)

    def built(cfg: GraphConfig) -> Graph:
        rec = Reconstructor(OracleScorer(), graph_config=cfg, budget=NO_LIMIT, beam_spot=beam_spot)
        return rec.reconstruct([ev]).built

    fine, brute = built(GraphConfig()), built(GraphConfig(n_bins=1, n_phi_bins=1))
    assert fine.num_edges > 5_000
    assert np.array_equal(_keys(fine), _keys(brute))


def test_the_z0_reach_keeps_every_edge_the_final_cut_keeps(small_events, det, monkeypatch):
    """Barrel hits moved inward by up to the layer margin (real modules are not on the
    layer's radius): the queries' z0 reach, a pre-cut, drops nothing that the graph built
    with the widest reach (the final cut alone deciding) holds."""
    ev = small_events[0]
    r = np.hypot(ev.hits.x, ev.hits.y)
    barrel = det.kind[det.layer_index(ev.hits.volume_id, ev.hits.layer_id)] == BARREL
    inward = np.where(barrel, np.random.default_rng(7).uniform(0, 0.99, len(r)), 0.0)
    scale = (1 - inward * GraphConfig().layer_margin / r).astype(np.float32)
    moved = replace(ev, hits=replace(ev.hits, x=ev.hits.x * scale, y=ev.hits.y * scale))
    built = batch_graph([moved], det)
    search = prepare_search

    def widest(*args, **kwargs):
        ctx, *rest = search(*args, **kwargs)
        return (replace(ctx, reach=np.full_like(ctx.reach, ctx.cfg.z0_limit)), *rest)

    monkeypatch.setattr(graph_module, "prepare_search", widest)
    wide = batch_graph([moved], det)
    assert built.num_edges > 10_000
    assert np.array_equal(_keys(built), _keys(wide))


def test_queries_set_up_in_chunks_equal_one_piece(small_events, det, monkeypatch):
    cols, offsets = batch_columns(small_events[:1], np)
    fields = ("qi", "ri", "zi", "row0", "b_lo", "b_hi", "reach", "centre", "p_lo", "p_hi")

    def queries(chunk: int) -> list[np.ndarray]:
        monkeypatch.setattr(graph_module, "QUERY_HIT_CHUNK", chunk)
        ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
        return [getattr(ctx, f) for f in fields]

    assert len(cols["x"]) > 50 * 97  # dozens of chunks of 97 hits
    for chunked, whole in zip(queries(97), queries(1 << 40), strict=True):
        assert chunked.dtype == whole.dtype and np.array_equal(chunked, whole)


def test_edges_are_unique_outward_and_within_layer_pairs(small_events, det):
    g = batch_graph(small_events[:1], det)
    i, j = g.edge_index
    assert len(np.unique(_keys(g))) == g.num_edges
    r = g.node_features[:, 0]
    assert np.all(r[j] > r[i])
    pairs = {(a, b) for a, b, _ in layer_pairs(det).tolist()}
    assert {(a, b) for a, b in zip(g.layer[i].tolist(), g.layer[j].tolist(), strict=True)} <= pairs
    assert np.isfinite(g.edge_features).all() and g.edge_features.shape == (g.num_edges, 6)


def test_layer_pairs_follow_the_detector(det):
    pairs = layer_pairs(det)
    names = {
        (
            int(det.volume_id[a]) * 100 + int(det.layer_id[a]),
            int(det.volume_id[b]) * 100 + int(det.layer_id[b]),
            int(gap),
        )
        for a, b, gap in pairs
    }
    assert (802, 804, 1) in names and (802, 806, 2) in names  # barrel next and skip-one
    assert (808, 1302, 1) in names  # pixel to strip barrel
    assert (902, 904, 1) in names and (1412, 1312, 1) not in names  # disks outwards only
    assert any(det.kind[a] == BARREL and det.kind[b] != BARREL for a, b, _ in pairs)


def test_skip_pairs_come_only_with_skip_and_never_replace_adjacent_ones(det):
    adjacent = {(a, b) for a, b, gap in layer_pairs(det, skip=False).tolist()}
    assert {gap for _, _, gap in layer_pairs(det, skip=False).tolist()} == {1}
    both = layer_pairs(det).tolist()
    assert {(a, b) for a, b, gap in both if gap == 1} == adjacent
    assert len({(a, b) for a, b, _ in both}) == len(both)  # one entry per pair


def test_edges_obey_the_cuts_by_their_features(small_events, det):
    """dr > 0, |dphi| within the slope window plus tolerance, |z0| within the hard limit,
    |deta| within deta_max: read back from each edge's features (float32 rounding aside)."""
    for cfg in (GraphConfig(), GraphConfig(deta_max=0.05, z0_limit=40.0, phi_tolerance=0.0)):
        g = batch_graph(small_events[:1], det, cfg)
        f = g.edge_features.astype(np.float64)
        dr, dphi = f[:, 0] * 100, f[:, 1] * 0.01
        slope = cfg.phi_slope_max(det.bfield)
        assert (dr > 0).all()
        assert (np.abs(dphi) <= slope * dr + cfg.phi_tolerance + 1e-6).all()
        assert (np.abs(f[:, 3] * 0.1) <= cfg.deta_max + 1e-6).all()
        assert (np.abs(f[:, 5]) <= 1 + 1e-6).all()  # z0 / z0_limit
    # (the ignore: g is the loop's last graph, of the loop's two configs)
    assert g.num_edges < 0.8 * batch_graph(small_events[:1], det).num_edges  # type: ignore[possibly-undefined]  # they bite


def test_a_field_pointing_the_other_way_finds_the_same_edges(small_events, det):
    flipped = replace(det, bfield=-det.bfield)  # the windows take |B|
    assert np.array_equal(
        _keys(batch_graph(small_events[:1], flipped)), _keys(batch_graph(small_events[:1], det))
    )


def test_a_batch_without_events_or_with_a_nan_hit_is_refused(small_events, det):
    with pytest.raises(ValueError, match="at least one event"):
        batch_graph([], det)
    ev = small_events[0]
    x = ev.hits.x.copy()
    x[3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        batch_graph([replace(ev, hits=replace(ev.hits, x=x))], det)
    # In a batch, the event that holds it is named (an infinite z of the second)
    z = small_events[1].hits.z.copy()
    z[-1] = -np.inf
    bad = replace(small_events[1], hits=replace(small_events[1].hits, z=z))
    with pytest.raises(ValueError, match=f"event {bad.run}/{bad.event}: a hit coordinate"):
        batch_graph([small_events[0], bad], det)


def test_batch_is_the_disjoint_union_of_events(small_events, det):
    both = batch_graph(small_events, det)
    offset = len(small_events[0].hits)
    i, j = both.edge_index
    assert np.all((i < offset) == (j < offset))
    for k, ev in enumerate(small_events):
        alone = batch_graph([ev], det)
        lo, hi = both.node_offsets[k], both.node_offsets[k + 1]
        mine = both.edge_index[:, (i >= lo) & (i < hi)] - lo
        assert set(map(tuple, mine.T.tolist())) == set(map(tuple, alone.edge_index.T.tolist()))
    assert both.num_edges == sum(batch_graph([ev], det).num_edges for ev in small_events)


def test_the_cpu_builds_a_batch_event_by_event_as_the_gpu_builds_it_whole(small_events, det):
    batch = batch_graph(small_events, det)
    cols = [np.concatenate([getattr(e.hits, k) for e in small_events]) for k in
            ("x", "y", "z", "volume_id", "layer_id")]  # fmt: skip
    whole = _build(cols, batch.node_offsets, det, GraphConfig())
    for name in ("node_features", "edge_index", "edge_features", "node_offsets", "layer"):
        assert np.array_equal(getattr(batch, name), getattr(whole, name)), name
    assert np.all(np.diff(batch.edge_index[0]) >= 0)  # sorted by inner hit


def test_event_graphs_are_the_events_own_graphs(small_events, det):
    parts = event_graphs(batch_graph(small_events, det))
    assert len(parts) == len(small_events)
    for part, ev in zip(parts, small_events, strict=True):
        alone = batch_graph([ev], det)
        for name in ("node_features", "edge_index", "edge_features", "node_offsets", "layer"):
            assert np.array_equal(getattr(part, name), getattr(alone, name)), name


def test_a_track_at_phi_exactly_pi_is_found_as_at_phi_0(det):
    radii = det.r[det.kind == BARREL][:4]

    def at(sign: float) -> set:
        hits = Hits(
            hit_id=np.arange(1, 5, dtype=np.int64),
            x=(sign * radii).astype(np.float32),
            y=np.zeros(4, np.float32),  # atan2(0, -r) = pi: the last phi bin's edge
            z=(radii * 0.1).astype(np.float32),
            volume_id=np.full(4, 8, np.int32),
            layer_id=np.array([2, 4, 6, 8], np.int32),
            module_id=np.ones(4, np.int32),
        )
        return set(map(tuple, batch_graph([Event(0, 0, hits)], det).edge_index.T.tolist()))

    assert at(-1.0) == at(1.0) == {(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)}


def test_phi_wrap_around_connects_a_track(det):
    # A straight radial track at phi = pi (x < 0, y changes sign between layers).
    radii = det.r[det.kind == BARREL][:4]
    phis = np.array([np.pi - 1e-4, -np.pi + 1e-4, np.pi - 2e-4, -np.pi + 2e-4])
    hits = Hits(
        hit_id=np.arange(1, 5, dtype=np.int64),
        x=(radii * np.cos(phis)).astype(np.float32),
        y=(radii * np.sin(phis)).astype(np.float32),
        z=np.zeros(4, np.float32) + radii.astype(np.float32) * 0.1,
        volume_id=np.full(4, 8, np.int32),
        layer_id=np.array([2, 4, 6, 8], np.int32),
        module_id=np.ones(4, np.int32),
    )
    g = batch_graph([Event(0, 0, hits)], det)
    edges = set(map(tuple, g.edge_index.T.tolist()))
    assert {(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)} <= edges


def test_hits_with_unknown_layer_ids_join_no_edge(det):
    """Hits whose (volume_id, layer_id) the detector lacks (negative, past its ids, or a
    layer id that would overflow into the next volume's codes) are off the detector (layer
    -1; 0 in the graph) and join no edge; the track through the other hits is built."""
    radii = det.r[det.kind == BARREL][:4]
    bad = [(-1, 2), (99, 2), (8, -2), (8, 40), (7, det.layer_lut.shape[1] + 2)]
    n = 4 + len(bad)
    r = np.concatenate([radii, np.full(len(bad), radii[1])])
    vol = np.array([8, 8, 8, 8] + [v for v, _ in bad], np.int32)
    lay = np.array([2, 4, 6, 8] + [la for _, la in bad], np.int32)
    hits = Hits(
        hit_id=np.arange(1, n + 1, dtype=np.int64),
        x=r.astype(np.float32),
        y=np.zeros(n, np.float32),
        z=(r * 0.1).astype(np.float32),
        volume_id=vol,
        layer_id=lay,
        module_id=np.ones(n, np.int32),
    )
    g = batch_graph([Event(0, 0, hits)], det)
    expected = [np.flatnonzero((det.volume_id == 8) & (det.layer_id == la))[0] for la in lay[:4]]
    assert g.layer.tolist() == expected + [0] * len(bad)  # 0: off the detector
    assert det.layer_index(vol, lay).tolist() == expected + [-1] * len(bad)
    huge = np.array([2**62, 2**63 - 1, 2**63 // det.layer_lut.shape[1] + 1])  # v x cols overflows
    assert det.layer_index(huge, np.full(3, 2)).tolist() == [-1, -1, -1]
    assert set(map(tuple, g.edge_index.T.tolist())) == {(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)}


def test_edge_efficiency_on_mu200(mu200_events, det):
    found = total = 0
    for ev in mu200_events:
        g = batch_graph([ev], det)
        seg = true_segments(ev, 1.0)
        p = ev.truth.particles
        pid = ev.truth.hits.particle_id[seg[0]]
        central = p.vr[pid - 1] < 10
        n = len(ev.hits)
        hit = np.isin(seg[0] * n + seg[1], _keys(g))
        found += hit[central].sum()
        total += central.sum()
    assert found / total >= 0.99


@pytest.mark.realdata
def test_real_event_graph_efficiency(shared_trackml, det):
    from streamtrk.io.trackml import read_event

    ev = read_event(shared_trackml / "qallse_ez-0.5_hpt-1.0" / "event000001000")
    g = batch_graph([ev], det)
    seg = true_segments(ev, 1.0)
    n = len(ev.hits)
    assert np.isin(seg[0] * n + seg[1], _keys(g)).mean() >= 0.98


def test_select_edges_keeps_hits(small_events, det):
    g = batch_graph(small_events[:1], det)
    mask = np.arange(g.num_edges) % 3 == 0
    p = select_edges(g, mask)
    assert p.num_nodes == g.num_nodes and p.num_edges == int(mask.sum())
    assert np.array_equal(p.edge_features, g.edge_features[mask])


def _two_events(edges: list[tuple[int, int]]) -> Graph:
    """Two events of three hits each, the given edges between them."""
    return Graph(
        node_features=np.zeros((6, 3), np.float32),
        edge_index=np.array(edges, np.int64).T.reshape(2, -1),
        edge_features=np.zeros((len(edges), 6), np.float32),
        node_offsets=np.array([0, 3, 6]),
        layer=np.zeros(6, np.int64),
    )


def test_truth_labels_of_an_event_without_truth_are_refused(small_events):
    ev = replace(small_events[0], truth=None)
    with pytest.raises(ValueError, match="has no truth"):
        true_segments(ev)
    with pytest.raises(ValueError, match="has no truth"):
        particle_pt(ev, np.array([1]))


def test_events_start_at_their_first_hit_when_it_has_an_edge() -> None:
    g = _two_events([(0, 1), (3, 4)])  # each event's first hit starts an edge
    assert without_isolated_hits(g).node_offsets.tolist() == [0, 2, 4]
    parts = event_graphs(g)
    assert [p.edge_index.T.tolist() for p in parts] == [[[0, 1]], [[0, 1]]]


def test_without_isolated_hits_keeps_edges_and_events(small_events, det):
    g = batch_graph(small_events, det)
    p = select_edges(g, np.arange(g.num_edges) % 7 == 0)  # most hits lose their edges
    c = without_isolated_hits(p)
    kept = np.unique(p.edge_index)
    assert c.num_nodes == len(np.unique(p.edge_index)) < p.num_nodes
    assert np.array_equal(kept[c.edge_index], p.edge_index)
    assert np.array_equal(c.node_features, p.node_features[kept])
    assert np.array_equal(c.layer, p.layer[kept])
    # Events stay delimited: every hit of event k lies in [offsets[k], offsets[k + 1]).
    event_old = np.searchsorted(p.node_offsets[1:], kept, side="right")
    event_new = np.searchsorted(c.node_offsets[1:], np.arange(c.num_nodes), side="right")
    assert np.array_equal(event_old, event_new)


# ---------------------------------------------------------------- the GPU kernels, on the host


def _both(events, det, cfg):
    cols, offsets = batch_columns(events)
    ctx, _, _ = prepare_search(  # brute force too
        **cols, node_offsets=offsets, det=det, cfg=cfg, budget=NO_LIMIT
    )
    return search_arrays(ctx), ctx


@pytest.mark.parametrize(
    ("which", "cfg"),
    [
        ("one event", GraphConfig()),
        ("two events built whole", GraphConfig()),
        ("one cell per layer", GraphConfig(n_bins=1, n_phi_bins=1)),
        ("no skip-one pairs, coarse phi", GraphConfig(skip_layers=False, n_phi_bins=16)),
    ],
)
def test_host_kernels_find_the_numpy_edges(host_launcher, small_events, det, which, cfg):
    events = small_events if which == "two events built whole" else small_events[:1]
    (i, j, features), ctx = _both(events, det, cfg)
    ki, kj, kfeatures = search_kernels(ctx, host_launcher(KERNELS))
    assert len(i) > 5_000
    assert np.array_equal(ki, i) and np.array_equal(kj, j)  # same edges, same order
    assert kfeatures.dtype == np.float32 and np.array_equal(kfeatures, features)


def test_host_kernel_puts_hits_in_the_arrays_cells(host_launcher, small_events, det):
    """hit_cells, built for the host, gives the arrays' surface test, cells and layers: two
    events and an empty third, hits of unknown layers, moved off their surface (past the
    margin, along it past the layer's ends) and onto the beam line; phi up to 2 pi."""
    cols, offsets = batch_columns(small_events)
    offsets = np.append(offsets, offsets[-1])  # a third event, without hits
    n = int(offsets[-1])
    rng = np.random.default_rng(8)
    x, y, z = (cols[k].astype(np.float64) for k in ("x", "y", "z"))
    r, phi_p = np.hypot(x, y), np.arctan2(y, x) + np.pi
    picks = rng.choice(n, 500, replace=False)
    r[picks[:100]] += rng.choice([-40.0, -29.0, 29.0, 40.0], 100)  # off the surface or not
    z[picks[100:200]] *= rng.uniform(0.9, 1.3, 100)  # along it, some past the ends
    r[picks[200:220]] = rng.uniform(0, 1.5, 20)  # at the beam line
    phi_p[picks[220:230]] = 2 * np.pi
    t = _device_tables(det, GraphConfig().z0_limit, True, np)
    layer = lookup_layer(t["lut"], cols["volume_id"], cols["layer_id"])
    layer[picks[230:260]] = -1
    event = np.searchsorted(offsets[1:], np.arange(n), side="right")
    for cfg in (GraphConfig(), GraphConfig(n_bins=1, n_phi_bins=16)):
        per_hit = (r, z, phi_p, event, layer)
        past = 3 * len(det) * cfg.n_bins * 2 * cfg.n_phi_bins  # the grid of three events
        arrays = hit_cells(per_hit, past, t, cfg)
        kernel = hit_cells_kernel(per_hit, past, t, cfg, host_launcher(KERNELS))
        off = ~arrays[0]
        assert 100 < off.sum() < 400 and (arrays[1] == past).sum() == 2 * off.sum()
        for got, want in zip(kernel, arrays, strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want)


def test_host_kernels_on_a_mu200_event(host_launcher, mu200_events, det):
    (i, j, features), ctx = _both(mu200_events[:1], det, GraphConfig())
    ki, kj, kfeatures = search_kernels(ctx, host_launcher(KERNELS))
    assert len(i) > 500_000
    assert np.array_equal(ki, i) and np.array_equal(kj, j)
    assert np.array_equal(kfeatures, features)


def test_host_kernels_without_queries(host_launcher, small_events, det):
    # Hits of one layer only: no query has an outer layer with hits, no edge anywhere.
    ev = small_events[0]
    one = (ev.hits.layer_id == ev.hits.layer_id[0]) & (ev.hits.volume_id == ev.hits.volume_id[0])
    cols = {k: v[one] for k, v in batch_columns([ev])[0].items()}
    offsets = np.array([0, len(cols["x"])])
    ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    i, j, features = search_kernels(ctx, host_launcher(KERNELS))
    assert len(ctx.qi) == 0 and len(i) == len(j) == 0 and features.shape == (0, 6)


def test_a_phi_window_past_pi_is_the_whole_circle(host_launcher, small_events, det):
    # pT_min 0.02 GeV asks for phi windows wider than the detector: clipped to +-pi, every
    # pair is searched once, and the search still equals brute force and the kernels.
    ev = small_events[0]
    hits = ev.hits.take(np.arange(0, len(ev.hits), 20))
    cfg = GraphConfig(pt_min=0.02)
    g = batch_graph([Event(0, 0, hits)], det, cfg)
    brute = batch_graph([Event(0, 0, hits)], det, GraphConfig(pt_min=0.02, n_bins=1, n_phi_bins=1))
    assert g.num_edges > 1000 and len(np.unique(_keys(g))) == g.num_edges
    assert np.array_equal(_keys(g), _keys(brute))
    (i, j, features), ctx = _both([Event(0, 0, hits)], det, cfg)
    assert (cfg.phi_slope_max(det.bfield) * 1000 > np.pi) and ctx.p_lo.min() >= 0
    ki, kj, kfeatures = search_kernels(ctx, host_launcher(KERNELS))
    assert np.array_equal(ki, i) and np.array_equal(kj, j) and np.array_equal(kfeatures, features)


def test_a_hit_on_the_beam_line_searches_nothing(host_launcher, small_events, det):
    """A finite hit at r = 0 (bad input that passes the wire) would divide its window by
    r: NaN bins, and a kernel loop over 2**64 bins. It makes no query; the rest stands."""
    ev = small_events[0]
    cols = ev.hits.columns()
    k = int(np.flatnonzero((cols["volume_id"] == 13) & (cols["layer_id"] == 2))[0])
    for name, value in (("x", 0.0), ("y", 0.0), ("z", 31.75)):  # z: on a query's z0 reach
        cols[name] = cols[name].copy()
        cols[name][k] = value
    bad = Event(0, 0, Hits(**cols))
    (i, j, features), ctx = _both([bad], det, GraphConfig())
    assert k not in ctx.qi and len(ctx.qi) > 10_000
    assert ctx.b_lo.min() >= 0 and ctx.b_hi.max() < GraphConfig().n_bins
    ki, kj, kfeatures = search_kernels(ctx, host_launcher(KERNELS))
    assert np.array_equal(ki, i) and np.array_equal(kj, j) and np.array_equal(kfeatures, features)
    (i0, j0, _), _ = _both(small_events[:1], det, GraphConfig())
    kept = (i0 != k) & (j0 != k)
    assert np.array_equal(i, i0[kept]) and np.array_equal(j, j0[kept])  # only its edges go


def test_a_hit_far_off_its_layer_makes_no_edge(host_launcher, det):
    """A hit labelled with a layer but placed 1e30 mm away (bad input that passes the wire)
    was found by windows that widen to any angle over such a distance: its edges' features
    overflowed the network, whose scores went NaN for every edge near it (the track there
    lost). Hits off their layer's surface make no edge; the rest stands."""
    layers = np.nonzero(det.kind == BARREL)[0][:10]
    n = len(layers)
    line = {  # a straight track at z = 0 through ten barrel layers
        "hit_id": np.arange(1, n + 1),
        "x": det.r[layers] * np.cos(0.3),
        "y": det.r[layers] * np.sin(0.3),
        "z": np.zeros(n),
        "volume_id": det.volume_id[layers],
        "layer_id": det.layer_id[layers],
        "module_id": np.ones(n),
    }
    (i0, j0, _), _ = _both([Event(0, 0, Hits.from_columns(line))], det, GraphConfig())
    far = {**line, "x": line["x"] * np.r_[np.ones(n - 1), 1e28],
           "y": line["y"] * np.r_[np.ones(n - 1), 1e28]}  # fmt: skip
    (i, j, features), ctx = _both([Event(0, 0, Hits.from_columns(far))], det, GraphConfig())
    kept = (i0 != n - 1) & (j0 != n - 1)
    assert kept.sum() < len(i0)  # it had edges on its layer
    assert np.array_equal(i, i0[kept]) and np.array_equal(j, j0[kept])
    assert np.isfinite(features).all()
    ki, kj, _ = search_kernels(ctx, host_launcher(KERNELS))
    assert np.array_equal(ki, i) and np.array_equal(kj, j)


def test_a_hit_exactly_opposite_is_not_found_twice(host_launcher, det):
    """With windows as wide as the circle, a hit at dphi = pi exactly (-pi in one grid copy,
    +pi in the other) is found as neither copy: the cut stops just under pi, in the NumPy
    search and in the kernels (the same constant)."""
    inner, outer = 7, 9  # two barrel layers of the pixel detector, skip-one apart
    assert det.kind[inner] == det.kind[outer] == BARREL
    hits = Hits(
        hit_id=np.arange(1, 4, dtype=np.int64),
        x=np.array([det.r[inner], -det.r[outer], 0.0], np.float32),
        y=np.array([0.0, -0.0, det.r[outer]], np.float32),  # atan2(-0, -r) = -pi
        z=np.zeros(3, np.float32),
        volume_id=det.volume_id[[inner, outer, outer]].astype(np.int32),
        layer_id=det.layer_id[[inner, outer, outer]].astype(np.int32),
        module_id=np.ones(3, np.int32),
    )
    cfg = GraphConfig(pt_min=0.03)
    (i, j, _), ctx = _both([Event(0, 0, hits)], det, cfg)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2)]  # the one at dphi pi/2
    ki, kj, _ = search_kernels(ctx, host_launcher(KERNELS))
    assert np.array_equal(ki, i) and np.array_equal(kj, j)
    define = re.search(r"#define PHI_CAP ([0-9.]+)", kernels_source(KERNELS))
    assert define is not None
    cap = define.group(1)
    assert float(cap) == graph_module.PHI_CAP < np.pi


def test_the_graph_config_defaults_are_the_documented_cuts() -> None:
    """The defaults the docstring states (pT >= 1 GeV from the luminous region), pinned: the
    graph tests compare searches of one config, which a changed default passes."""
    assert GraphConfig() == GraphConfig(
        pt_min=1.0,
        phi_slope_margin=1.5,
        phi_tolerance=0.002,
        z0_max=30.0,
        z0_sigmas=5.0,
        z0_lever_max=25.0,
        z0_limit=250.0,
        deta_max=0.5,
        skip_layers=True,
        n_bins=32,
        n_phi_bins=256,
        threads=2,
        layer_margin=10.0,
    )


def _hits(layers: list[int], r: ArrayLike, z: ArrayLike, phi: ArrayLike = 0.0) -> Hits:
    """Hits of the given layer codes at (r, phi, z); ``phi`` one for all or one a hit."""
    rr, ph = np.asarray(r, float), np.asarray(phi, float)
    return Hits.from_columns(
        {
            "hit_id": np.arange(1, len(rr) + 1),
            "x": rr * np.cos(ph),
            "y": rr * np.sin(ph),
            "z": np.asarray(z, float),
            "volume_id": np.array([c // 100 for c in layers]),
            "layer_id": np.array([c % 100 for c in layers]),
            "module_id": np.ones(len(rr)),
        }
    )


def _queries_hit(det, code: int, x: float, z: float, beam_offset: float) -> bool:
    """Whether a hit of layer ``code`` at (x, 0, z) makes queries (is taken to be on its
    layer), with one hit on the first layer it pairs with to make them."""
    at = {
        int(v) * 100 + int(la): k
        for k, (v, la) in enumerate(zip(det.volume_id, det.layer_id, strict=True))
    }
    inner = at[code]
    outer = int(next(b for a, b, _ in layer_pairs(det).tolist() if a == inner))
    if det.kind[outer] == BARREL:
        x_out, z_out = det.r[outer], 0.0
    else:
        x_out, z_out = (det.r_min[outer] + det.r_max[outer]) / 2, det.z[outer]
    outer_code = int(det.volume_id[outer]) * 100 + int(det.layer_id[outer])
    hits = _hits([code, outer_code], [x, x_out], [z, z_out])  # at phi 0: (x, 0, z)
    cols, offsets = batch_columns([Event(0, 0, hits)])
    ctx, _, _ = prepare_search(
        **cols, node_offsets=offsets, det=det, cfg=GraphConfig(), beam_offset=beam_offset
    )
    return 0 in ctx.qi.tolist()


def _surface_cases(reach: float) -> list[tuple[int, float, float, bool]]:
    """(layer, x, z, on) at the edges of the surfaces ``reach`` mm thick about layers 804
    (barrel: r 72, |z| <= 491) and 902 (disk: z 600, 30 <= r <= 176), and 1 mm from the
    beam line (hits closer enter no search)."""
    on, off = reach, reach + 0.25
    return [
        *[(804, 72 + s * d, 0.0, d == on) for s in (1, -1) for d in (on, off)],
        *[(804, 72.0, s * (491 + d), d == on) for s in (1, -1) for d in (on, off)],
        *[(902, 100.0, 600 + s * d, d == on) for s in (1, -1) for d in (on, off)],
        *[(902, 176 + d, 600.0, d == on) for d in (on, off)],
        *[(902, 30 - d, 600.0, d == on) for d in (on, off) if reach < 29],
        *[(902, 1.0, 600.0, True), (902, 0.75, 600.0, False)] * (reach >= 29),
    ]


@pytest.mark.parametrize(
    ("beam_offset", "case"),
    [(b, c) for b in (0.0, 20.0) for c in _surface_cases(10 + b)],
)
def test_a_hit_is_on_its_layer_as_far_as_the_windows_reach_exactly(
    det, beam_offset: float, case: tuple[int, float, float, bool]
) -> None:
    """Up to the margin (10 mm) and the beam line's offset off a layer: the windows' reach.
    A hit further off, up to 20 mm more, was searched whatever the offset, and found or not
    as its grid cell overlapped a window (edges that changed with the grid's bins)."""
    code, x, z, on = case
    assert _queries_hit(det, code, x, z, beam_offset) == on


def test_the_candidates_counted_for_the_budget_are_those_searched(
    host_launcher, small_events, det
) -> None:
    """The kernels' budget counts each query's candidates without expanding its bins: the
    same numbers as the expanded (query, bin) slots of the array search."""
    cols, offsets = batch_columns(small_events[:1])
    ctx, _, _ = prepare_search(**cols, node_offsets=offsets, det=det, cfg=GraphConfig())
    q, lo, hi = ctx.bin_slots(0, len(ctx.qi))
    expected = np.bincount(q, weights=hi - lo, minlength=len(ctx.qi)).astype(np.int64)
    assert expected.sum() > 100_000 and (ctx.b_hi < ctx.b_lo).any()  # some query reads no bin
    starts = candidate_starts(ctx, host_launcher(KERNELS), search_args(ctx))
    assert starts[0] == 0 and np.array_equal(np.diff(starts), expected)


def test_the_kernels_check_the_candidates_against_the_budget(host_launcher, small_events, det):
    cols, offsets = batch_columns(small_events[:1])
    tight = Budget(candidates_per_hit=1.0, allowance=0)
    ctx, _, _ = prepare_search(
        **cols, node_offsets=offsets, det=det, cfg=GraphConfig(), budget=tight
    )
    with pytest.raises(EventTooDense, match="too many doublet candidates"):
        search_kernels(ctx, host_launcher(KERNELS))


def _barrel_pair_event(outer: list[tuple[float, float, float]]) -> Event:
    """Hit 0 on barrel layer 802 at (r 32, phi 0, z 0), then hits on layer 804 at the given
    (r, phi, z)."""
    r, phi, z = np.array([(32.0, 0.0, 0.0), *outer]).T
    return Event(0, 0, _hits([802] + [804] * len(outer), r, z, phi))


def _edge_set(g: Graph) -> set[tuple[int, int]]:
    return set(map(tuple, g.edge_index.T.tolist()))


def test_edges_off_the_surfaces_do_not_depend_on_the_search_grid(det) -> None:
    """Hits 11 and 21 mm off layers 804 and 806 (past the 10 mm margin): an edge with a grid
    of 1 x 1 or 4 x 4 bins and none with the shipped 32 x 256 (a hit past the windows' reach
    was searched, and found where its cell overlapped a window); none now whatever the grid,
    and with a beam offset of 20 mm (windows reaching 30 mm) one with each."""
    hits = _hits([804, 806], [60.9, 137.2], [146.08, 347.13], [3.1175, 3.1042])
    cols, offsets = batch_columns([Event(0, 0, hits)])
    for beam_offset, edges in ((0.0, set()), (20.0, {(0, 1)})):
        for nb, nphi in ((1, 1), (4, 4), (32, 256), (2048, 1)):
            cfg = GraphConfig(n_bins=nb, n_phi_bins=nphi)
            g = build_graph(**cols, node_offsets=offsets, det=det, cfg=cfg, beam_offset=beam_offset)
            assert _edge_set(g) == edges, (beam_offset, nb, nphi)


def test_segments_at_the_far_ends_of_the_z_window_are_found_by_a_fine_grid(det) -> None:
    """Hits 10 mm outside layer 804 (the margin) on lines to z0 = +-30.1 mm (the cut there is
    30.13): the farthest z the window must reach, found with bins of half a millimetre."""
    assert det.r[0] == 32.0 and det.r[1] == 72.0
    r = 82.0
    outer = [(r, 0.0, z0 - z0 * r / 32.0) for z0 in (-30.1, 30.1)]
    ev = _barrel_pair_event(outer)
    fine = batch_graph([ev], det, GraphConfig(n_bins=2048, n_phi_bins=1))
    brute = batch_graph([ev], det, GraphConfig(n_bins=1, n_phi_bins=1))
    assert _edge_set(fine) == _edge_set(brute) == {(0, 1), (0, 2)}


def test_segments_at_the_edges_of_the_phi_window_are_found_by_a_fine_grid(det) -> None:
    """Hits 10 mm outside layer 804 (less what rounding their float32 x and y may add) at
    |dphi| just inside the slope cut there: the widest the window must open, found with phi
    bins of 0.8 mrad."""
    cfg = GraphConfig(n_bins=1, n_phi_bins=8192)
    r = 81.999
    dphi = cfg.phi_slope_max(det.bfield) * (r - 32.0) + cfg.phi_tolerance - 1e-6
    ev = _barrel_pair_event([(r, -dphi, 0.0), (r, dphi, 0.0)])
    fine = batch_graph([ev], det, cfg)
    brute = batch_graph([ev], det, GraphConfig(n_bins=1, n_phi_bins=1))
    assert _edge_set(fine) == _edge_set(brute) == {(0, 1), (0, 2)}


def test_layer_pairs_are_the_same_seen_from_either_end_of_the_detector(det) -> None:
    """The detector is mirror symmetric in z, and so are its layer pairs (lines from z0 = -50,
    0 and +50 mm): 181 pairs with the skip-one ones, 106 without."""
    mirror = np.arange(len(det))
    for a in np.flatnonzero(det.kind != BARREL):
        same = (det.kind != BARREL) & (det.z == -det.z[a]) & (det.r_min == det.r_min[a])
        mirror[a] = np.flatnonzero(same)[0]
    for skip, count in ((True, 181), (False, 106)):
        pairs = {(a, b, gap) for a, b, gap in layer_pairs(det, skip=skip).tolist()}
        assert len(pairs) == count
        assert {(int(mirror[a]), int(mirror[b]), gap) for a, b, gap in pairs} == pairs


def test_an_edge_exactly_at_each_final_cut_is_kept_and_just_past_it_is_not(det) -> None:
    """|z0|, |deta| and |dphi| exactly at their cut keep the edge; a cut one ulp tighter drops
    it (the values computed as the search computes them, in float64)."""
    # z0 = -32 * 10 / 40 = -8 exactly
    straight = [Event(0, 0, _hits([802, 804], [32.0, 72.0], [0.0, 10.0]))]
    deta = float(np.arcsinh(10.0 / 40.0) - np.arcsinh(10.0 / 72.0))
    below = float(np.nextafter(deta, 0))
    for at_cut, past_cut in (
        (GraphConfig(z0_limit=8.0), GraphConfig(z0_limit=float(np.nextafter(8.0, 0)))),
        (GraphConfig(deta_max=deta), GraphConfig(deta_max=below)),
    ):
        assert _edge_set(batch_graph(straight, det, at_cut)) == {(0, 1)}, at_cut
        assert batch_graph(straight, det, past_cut).num_edges == 0, past_cut
    turned = [Event(0, 0, _hits([802, 804], [32.0, 72.0], [0.0, 10.0], [0.0, 0.03]))]
    cols, _ = batch_columns(turned)
    x, y = cols["x"].astype(np.float64), cols["y"].astype(np.float64)
    r, phi = np.hypot(x, y), np.arctan2(y, x) + np.pi
    dphi, sdr = phi[1] - phi[0], GraphConfig().phi_slope_max(det.bfield) * (r[1] - r[0])
    tol = past = dphi - sdr
    assert tol > 0  # the hit lies past the slope's own window (else the loop never ends)
    while sdr + past >= dphi:  # the next tolerance down whose window misses the hit
        past = np.nextafter(past, 0)
    assert sdr + tol == dphi and past < tol
    at = batch_graph(turned, det, GraphConfig(phi_tolerance=tol))
    assert _edge_set(at) == {(0, 1)}
    assert batch_graph(turned, det, GraphConfig(phi_tolerance=past)).num_edges == 0


def test_event_graph_is_the_graph_of_a_batch_of_one(small_events, det) -> None:
    one = event_graph(small_events[0], det)
    assert one.num_edges > 10_000
    assert np.array_equal(one.edge_index, batch_graph(small_events[:1], det).edge_index)


def test_node_features_are_r_phi_and_z_scaled(det) -> None:
    g = batch_graph([Event(0, 0, _hits([802, 804], [32.0, 72.0], [0.0, 10.0], math.pi / 2))], det)
    expected = np.array([[0.032, 0.5, 0.0], [0.072, 0.5, 0.01]], np.float32)
    assert g.node_features.dtype == np.float32
    assert np.allclose(g.node_features, expected, rtol=1e-6, atol=1e-7)


def test_a_segment_a_millimetre_long_in_r_is_an_edge(det) -> None:
    """Disks 902 and 904 (z 600, 700) on a line from the origin at r 6 and 7: dr is 1 mm
    (the disks start at r 30: a margin of 25 mm takes the hits in)."""
    hits = _hits([902, 904], [6.0, 7.0], [600.0, 700.0])
    g = batch_graph([Event(0, 0, hits)], det, GraphConfig(layer_margin=25.0))
    assert _edge_set(g) == {(0, 1)}


def test_every_event_of_a_batch_built_whole_keeps_its_first_hit(det) -> None:
    """Two events of one track each, built whole (the GPU's way): each event's first hit (the
    track's innermost) belongs to its own event's grid, not the previous one's."""
    track = _hits([802, 804, 806, 808], [32.0, 72.0, 116.0, 172.0], [3.2, 7.2, 11.6, 17.2])
    cols, offsets = batch_columns([Event(0, 0, track), Event(0, 1, track)])
    whole = _build(list(cols.values()), offsets, det, GraphConfig())
    one = {(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)}
    assert _edge_set(whole) == one | {(a + 4, b + 4) for a, b in one}


def test_a_barrel_to_disk_segment_has_no_z_error_from_the_disk_hit(det) -> None:
    """From barrel layer 806 (r 116) to disk 902 (z 600, r 150): the disk measures z exactly
    (its r resolution alone counts), the z0 cut there is about 31.0 mm, under the 31.875 of
    the lever bound: a segment at z0 = 30.5 is an edge, one at z0 = 31.5 is not."""

    def edges(z0: float) -> set[tuple[int, int]]:
        z_inner = z0 + (600.0 - z0) * 116.0 / 150.0
        ev = Event(0, 0, _hits([806, 902], [116.0, 150.0], [z_inner, 600.0]))
        return _edge_set(batch_graph([ev], det))

    assert edges(30.5) == {(0, 1)}
    assert edges(31.5) == set()


def test_the_search_pairs_layers_seen_from_z0_up_to_50_mm(det) -> None:
    """The search's layer pairs are those of lines from z0 in [-50, 50] mm (the default z0
    limit is wider): two skip-one pairs of strip disks are seen only off z0 = 0."""
    tables = graph_module._device_tables(det, GraphConfig().z0_limit, True, np)
    pairs = layer_pairs(det)
    assert np.array_equal(tables["pair_inner"], pairs[:, 0])
    assert np.array_equal(tables["pair_outer"], pairs[:, 1])
    off_axis = {(a, b) for a, b, _ in pairs.tolist()} - {
        (a, b) for a, b, _ in layer_pairs(det, z0_max=0.0).tolist()
    }
    assert off_axis == {(40, 38), (43, 45)}


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("pt_min", 0.0),
        ("pt_min", math.nan),
        ("pt_min", -1.0),
        ("z0_limit", math.inf),
        ("deta_max", 0.0),
        ("phi_tolerance", -0.001),
        ("layer_margin", math.nan),
        ("n_bins", 0),
        ("n_phi_bins", 0),
        ("threads", 0),
        ("n_bins", 100_000_000),  # 17.9 TiB of grid: a MemoryError at the first event
        ("n_phi_bins", 2**16 + 1),
    ],
)
def test_graph_settings_out_of_range_are_refused(setting, value) -> None:
    """A model card's [graph] table is read through GraphConfig: these failed every event
    (pt_min 0: a division by zero) or emptied it (pt_min -1: no edge), unsaid."""
    with pytest.raises(ValueError, match=f"GraphConfig.({setting}|n_bins x n_phi_bins) must be"):
        GraphConfig(**{setting: value})


def test_a_grid_of_exactly_the_most_cells_is_allowed() -> None:
    """'at most' MAX_GRID_CELLS: 256 x 256 (2**16) cells a layer are a valid grid."""
    cfg = GraphConfig(n_bins=256, n_phi_bins=256)
    assert cfg.n_bins * cfg.n_phi_bins == graph_module.MAX_GRID_CELLS


@pytest.mark.parametrize("offset", [-0.5, 20.5])
def test_a_beam_offset_outside_the_beam_spot_is_refused(det, offset) -> None:
    """beam_offset lies in [0, MAX_BEAM_SPOT]: a negative one would narrow every window
    below the layer margin, unsaid."""
    cols, offsets = batch_columns([Event(0, 0, _hits([802, 804], [32.0, 72.0], [0.0, 10.0]))])
    with pytest.raises(ValueError, match=r"beam_offset must lie in \[0, 20\] mm"):
        graph_module.build_graph(**cols, node_offsets=offsets, det=det, beam_offset=offset)


def test_the_z0_reach_holds_the_final_cut_past_the_outer_layers_nearest_radius(det) -> None:
    """Windows 30 mm off the surfaces (beam_offset 20): a hit of 802 at r 52 lies past 804's
    nearest radius (72 - 30); its segment to r 60 at z0 -30.7 is within the final cut (about
    30.74 mm there) and so within the queries' z0 reach."""
    ri, rj, z0 = 52.0, 60.0, -30.7
    ev = Event(0, 0, _hits([802, 804], [ri, rj], [0.0, z0 - z0 * rj / ri]))
    cols, offsets = batch_columns([ev])
    g = graph_module.build_graph(**cols, node_offsets=offsets, det=det, beam_offset=20.0)
    assert _edge_set(g) == {(0, 1)}


def test_each_event_of_a_batch_gets_the_windows_of_the_beam_offset(det) -> None:
    """The CPU builds a batch event by event, each with the windows ``beam_offset`` widens: a
    hit 15 mm outside layer 804 on a line to z0 = 30.1 mm (the far end of the z window) is
    an edge with an offset of 5 mm, not without; alone or in a batch."""
    r = 87.0
    ev = _barrel_pair_event([(r, 0.0, 30.1 - 30.1 * r / 32.0)])
    cfg = GraphConfig(n_bins=2048, n_phi_bins=1)
    for events, edges in (([ev], {(0, 1)}), ([ev, ev], {(0, 1), (2, 3)})):
        cols, offsets = batch_columns(events)
        for offset, expected in ((0.0, set()), (5.0, edges)):
            g = graph_module.build_graph(
                **cols, node_offsets=offsets, det=det, cfg=cfg, beam_offset=offset
            )
            assert _edge_set(g) == expected, (len(events), offset)


def test_a_disk_window_from_a_hit_within_the_z0_reach_spans_the_whole_disk(det) -> None:
    """Lines from z0 in [-reach, z_i) cross a disk anywhere past r(-reach), out to its edge:
    a track of a beam spot 20 mm off the axis (hits centred on it), 12 mm from the spot on
    802 at z 31 (within the 31.9 mm reach), then on disk 902 at r 160 (z0 = -15.1 mm)."""
    ev = Event(0, 0, _hits([802, 902], [12.0, 160.0], [31.0, 600.0]))
    cols, offsets = batch_columns([ev])
    for cfg in (GraphConfig(), GraphConfig(n_bins=1, n_phi_bins=1)):
        g = graph_module.build_graph(
            **cols, node_offsets=offsets, det=det, cfg=cfg, beam_offset=20.0
        )
        assert _edge_set(g) == {(0, 1)}, cfg


def test_a_disk_hit_inside_its_plane_is_found_at_the_near_end_of_the_r_window(det) -> None:
    """Disk 902 (z 600) at r 150 to disk 904 (z 700), the outer hit 10 mm short of its disk's
    plane (the margin) on a line to z0 = -29 mm: the nearest r the window must reach (the
    line from -reach at the plane, less the margin), found with bins of 0.07 mm in r."""
    ri, zi, zj, z0 = 150.0, 600.0, 690.0, -29.0
    ev = Event(0, 0, _hits([902, 904], [ri, ri * (zj - z0) / (zi - z0)], [zi, zj]))
    fine = batch_graph([ev], det, GraphConfig(n_bins=2048, n_phi_bins=1))
    brute = batch_graph([ev], det, GraphConfig(n_bins=1, n_phi_bins=1))
    assert _edge_set(fine) == _edge_set(brute) == {(0, 1)}


def test_a_barrel_to_disk_z0_cut_counts_the_disk_hits_r_error_alone(det) -> None:
    """From barrel layer 806 (r 116) to disk 902 (z 600, r 150) the z0 cut is 30 + 5 sigma
    from the barrel hit's z and the disk hit's r resolution, about 31.025 mm: a z error of
    the disk hit (it measures z exactly) would raise it to about 31.057 mm. A segment at
    z0 = 31.0 is an edge, one at 31.04 is not."""

    def edges(z0: float) -> set[tuple[int, int]]:
        z_inner = z0 + (600.0 - z0) * 116.0 / 150.0
        ev = Event(0, 0, _hits([806, 902], [116.0, 150.0], [z_inner, 600.0]))
        return _edge_set(batch_graph([ev], det))

    assert edges(31.0) == {(0, 1)}
    assert edges(31.04) == set()


def test_graphs_have_the_documented_dtypes_with_an_empty_event_in_the_batch(det) -> None:
    """A graph's arrays are float32 features and int64 hit numbers, offsets and layers, as
    :class:`Graph` documents (the GNN gathers with the edge index), for one event and for a
    batch (joined event by event) whose middle event has no hit: its offsets repeat, it
    has no edge, and the third event's edges are numbered past the first's hits."""
    track = _hits([802, 804, 806, 808], [32.0, 72.0, 116.0, 172.0], [3.2, 7.2, 11.6, 17.2])
    empty = _hits([], [], [])
    one = {(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)}
    for events, edges, offsets in (
        ([Event(0, 0, track)], one, [0, 4]),
        (
            [Event(0, 0, track), Event(0, 1, empty), Event(0, 2, track)],
            one | {(a + 4, b + 4) for a, b in one},
            [0, 4, 4, 8],
        ),
    ):
        g = batch_graph(events, det)
        assert _edge_set(g) == edges and g.node_offsets.tolist() == offsets
        assert g.edge_index.dtype == g.node_offsets.dtype == g.layer.dtype == np.int64
        assert g.node_features.dtype == g.edge_features.dtype == np.float32
