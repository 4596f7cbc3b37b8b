"""Edge pruning: the vectorised mask against a brute-force loop, batching, physics sanity."""

import math
import os
from collections import defaultdict
from dataclasses import replace
from importlib import resources
from typing import Any

import numpy as np
import pytest
from gpu_only import cupy_on_cuda

from streamtrk.detector import BARREL
from streamtrk.recon import prune
from streamtrk.recon.budget import Budget, EventTooDense
from streamtrk.recon.graph import (
    Graph,
    batch_graph,
    select_edges,
    without_isolated_hits,
)
from streamtrk.recon.prune import (
    KERNELS,
    PruneConfig,
    compatible_triplets,
    edge_geometry,
    geometry_kernel,
    keep_kernels,
    layer_code,
    mirror_layers,
    prune_edges,
    read_windows,
    three_hit_curvature,
    triplet_candidates,
    triplet_geometry,
    triplet_inputs,
    window_tables,
    within_budget,
)
from streamtrk.recon.truth import particle_pt, true_segments


def _reference(graph: Graph, cfg: PruneConfig, det) -> np.ndarray:
    """Pure-Python loops over hits and their edge pairs, windows looked up in dicts.

    Per-edge quantities come from ``edge_geometry`` (checked on its own against Python maths
    below); the three-hit curvature is recomputed here in float32 scalars in the same order
    of operations, so that every cut decision can be compared exactly.
    """
    g = {k: np.asarray(v) for k, v in edge_geometry(graph, det).items()}
    code = layer_code(det).tolist()
    fold = mirror_layers(det).tolist()
    lay = [fold[int(v)] for v in np.asarray(graph.layer)]
    trip = {(int(r[0]), int(r[1]), int(r[2])): r[3:6] for r in cfg.triplets}
    pairs = {(int(r[0]), int(r[1])): r[2:4] for r in cfg.pairs}
    i, j = (a.tolist() for a in np.asarray(graph.edge_index))
    n_edges = len(i)
    usable = []
    for e in range(n_edges):
        if not cfg.pair_cuts:
            usable.append(True)
            continue
        w = pairs.get((code[lay[i[e]]], code[lay[j[e]]]))
        usable.append(
            w is not None and abs(float(g["k2"][e])) <= w[0] and abs(float(g["z0"][e])) <= w[1]
        )
    into, out_of = defaultdict(list), defaultdict(list)
    for e in range(n_edges):
        into[j[e]].append(e)
        out_of[i[e]].append(e)
    compatible = []
    for h in into:
        for a in into[h]:
            for b in out_of.get(h, []):
                if not (usable[a] and usable[b]):
                    continue
                w = trip.get((code[lay[i[a]]], code[lay[h]], code[lay[j[b]]]))
                if w is None:
                    continue
                w_th = min(w[0] * cfg.scale, 0.85)
                w_dk = w[1] * cfg.scale
                w_k = w[2] * cfg.kappa_scale if cfg.kappa_cut else math.inf
                dth = abs(float(g["theta"][b] - g["theta"][a]))
                dk = abs(float(g["k2"][b] - g["k2"][a]))
                dxa, dya, ca = g["dx"][a], g["dy"][a], g["c"][a]
                dxb, dyb, cb = g["dx"][b], g["dy"][b], g["c"][b]
                sx, sy = dxa + dxb, dya + dyb
                kap = 2.0 * (dxa * dyb - dya * dxb) / (ca * cb * np.sqrt(sx * sx + sy * sy))
                if dth <= w_th and dk <= w_dk and abs(float(kap)) <= w_k:
                    compatible.append((a, b))
    keep = np.zeros(n_edges, bool)
    if cfg.min_hits == 3:
        for a, b in compatible:
            keep[a] = keep[b] = True
        return keep
    has_in, has_out = set(), set()
    for a, b in compatible:
        has_in.add(b)
        has_out.add(a)
    for e in has_in & has_out:
        keep[e] = True
    for a, b in compatible:
        if a in has_in:
            keep[b] = True
        if b in has_out:
            keep[a] = True
    return keep


CONFIGS: dict[str, dict[str, Any]] = {
    "default (quadruplets)": {},
    "triplets": {"min_hits": 3, "scale": 1.0},
    "no pair cuts": {"pair_cuts": False},
    "triplets, no kappa, wide": {"min_hits": 3, "kappa_cut": False, "scale": 3.0},
    "narrow": {"scale": 0.5, "kappa_scale": 0.8},
    # theta windows capped (0.85 rad) so that the join never reaches another hit's edges
    "very wide": {"min_hits": 3, "kappa_cut": False, "scale": 1000.0},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vectorised_mask_equals_brute_force(small_events, det, name):
    g = batch_graph(small_events[:1], det)
    cfg = replace(PruneConfig(), **CONFIGS[name])
    ref = _reference(g, cfg, det)
    mask = prune_edges(g, cfg, det)
    assert mask.dtype == bool and mask.shape == (g.num_edges,)
    assert 0 < ref.sum() < g.num_edges  # the comparison means something
    assert np.array_equal(mask, ref)


def test_cuts_in_small_chunks_equal_brute_force(small_events, det, monkeypatch):
    # Hundreds of chunks: every chunk boundary splits the candidates somewhere new.
    monkeypatch.setattr(prune, "TRIPLET_CHUNK", 37)
    g = batch_graph(small_events[:1], det)
    geo, usable, t = triplet_inputs(g, PruneConfig(), det)
    _, _, lo, hi = triplet_candidates(geo, usable, t)
    assert (hi - lo).sum() > 100 * prune.TRIPLET_CHUNK
    assert np.array_equal(prune_edges(g, PruneConfig(), det), _reference(g, PruneConfig(), det))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_host_kernels_mask_equals_numpy(host_launcher, small_events, det, name):
    # The GPU's triplet kernels, built for the host, on the NumPy path's candidates.
    g = batch_graph(small_events, det)
    cfg = replace(PruneConfig(), **CONFIGS[name])
    geo, usable, t = triplet_inputs(g, cfg, det)
    assert geo["theta"].dtype == geo["k2"].dtype == geo["c"].dtype == np.float32
    launch = host_launcher(KERNELS)
    mask = keep_kernels(geo, usable, t, len(det), cfg.min_hits, launch)
    expected = prune_edges(g, cfg, det)
    assert 1000 < expected.sum() < g.num_edges
    assert mask.dtype == bool and np.array_equal(mask, expected)


def test_host_kernels_on_a_mu200_event(host_launcher, mu200_events, det):
    g = batch_graph(mu200_events[:1], det)
    geo, usable, t = triplet_inputs(g, PruneConfig(), det)
    mask = keep_kernels(geo, usable, t, len(det), 4, host_launcher(KERNELS))
    assert np.array_equal(mask, prune_edges(g, PruneConfig(), det))


def test_host_geometry_kernel_is_the_arrays(host_launcher, mu200_events, det):
    """The per-edge geometry kernel gives the arrays' quantities and mask bit for bit, but
    theta: its atan2f is the C library's (within an ulp), NumPy's float32 arctan2 may be its
    own, by the machine's SIMD (AVX-512's SVML: within 4 ulp, numpy pull request 19478;
    3 ulp apart on a Sapphire Rapids machine): within 5."""
    g = batch_graph(mu200_events[:1], det)
    geo, usable, t = triplet_inputs(g, PruneConfig(), det)
    k_geo, k_usable = geometry_kernel(g, det, t, host_launcher(KERNELS))
    assert sorted(k_geo) == sorted(geo) and 0 < usable.sum() < len(usable)
    assert np.array_equal(k_usable, usable)
    for name, v in geo.items():
        assert k_geo[name].dtype == v.dtype or name in ("i", "j"), name
        if name == "theta":
            np.testing.assert_array_max_ulp(k_geo[name], v, maxulp=5)
        else:
            assert np.array_equal(k_geo[name], v), name


def test_edge_geometry_matches_python_maths(small_events, det):
    g = batch_graph(small_events[:1], det)
    geo = edge_geometry(g, det)
    nf = g.node_features.astype(np.float64)
    for e in range(0, g.num_edges, 97):
        a, b = (int(v) for v in g.edge_index[:, e])
        ra, rb = nf[a, 0] * 1000, nf[b, 0] * 1000
        pa, pb = nf[a, 1] * math.pi, nf[b, 1] * math.pi
        za, zb = nf[a, 2] * 1000, nf[b, 2] * 1000
        dx = rb * math.cos(pb) - ra * math.cos(pa)
        dy = rb * math.sin(pb) - ra * math.sin(pa)
        c = math.hypot(dx, dy)
        assert geo["theta"][e] == pytest.approx(math.atan2(rb - ra, zb - za), abs=2e-6)
        assert geo["k2"][e] == pytest.approx(2 * math.sin(pb - pa) / c, rel=1e-3, abs=1e-7)
        assert geo["z0"][e] == pytest.approx(za - ra * (zb - za) / (rb - ra), abs=1e-2)
        assert geo["c"][e] == pytest.approx(c, rel=1e-5)


def test_mirror_layers_fold_minus_z_disks(det):
    fold = mirror_layers(det)
    code = layer_code(det)
    at = {int(c): k for k, c in enumerate(code)}
    assert fold[at[702]] == at[914]  # pixel disk at z = -1500 onto z = +1500
    assert fold[at[1212]] == at[1402]  # short-strip disk z = -1220 onto +1220
    barrel = np.nonzero(det.kind == BARREL)[0]
    assert np.array_equal(fold[barrel], barrel)
    assert (det.z[fold][det.kind != BARREL] > 0).all()
    # a disk whose resolution differs from its mirror's keeps windows of its own
    res_b = det.res_b.copy()
    res_b[at[702]] *= 2
    assert mirror_layers(replace(det, res_b=res_b))[at[702]] == at[702]


def test_batched_mask_is_the_per_event_masks(small_events, det):
    both = batch_graph(small_events, det)
    mask = prune_edges(both, PruneConfig(), det)
    src = both.edge_index[0]
    for k, ev in enumerate(small_events):
        lo, hi = both.node_offsets[k], both.node_offsets[k + 1]
        alone = batch_graph([ev], det)
        single = prune_edges(alone, PruneConfig(), det)
        sel = (src >= lo) & (src < hi)
        assert np.array_equal(both.edge_index[:, sel] - lo, alone.edge_index)
        assert np.array_equal(mask[sel], single)


def test_empty_graph_and_bad_config(det):
    g = Graph(
        node_features=np.zeros((3, 3), np.float32),
        edge_index=np.zeros((2, 0), np.int64),
        edge_features=np.zeros((0, 6), np.float32),
        node_offsets=np.array([0, 3]),
        layer=np.zeros(3, np.int64),
    )
    assert prune_edges(g, PruneConfig(), det).shape == (0,)
    for min_hits in (2, 5):
        with pytest.raises(ValueError, match="min_hits"):
            PruneConfig(min_hits=min_hits)
    zero_scales: tuple[dict[str, Any], ...] = ({"scale": 0}, {"kappa_scale": 0})
    for scales in zero_scales:
        with pytest.raises(ValueError, match="scales"):
            PruneConfig(**scales)


def test_windows_are_learnt_from_the_quantities_the_cuts_read(small_events, det):
    """``triplet_geometry`` (what bench/prune_windows.py learns from) agrees with the cuts:
    every compatible triplet lies within its own windows by its measure."""
    g = batch_graph(small_events[:1], det)
    geo, usable, t = triplet_inputs(g, PruneConfig(), det)
    a, b = compatible_triplets(geo, usable, t, len(det))
    q = triplet_geometry(geo, a, b, len(det))
    assert len(a) > 100 and np.array_equal(geo["j"][a], geo["i"][b])
    assert (np.abs(q["dtheta"]) <= t["w_th"][q["triple"]]).all()
    assert (np.abs(q["dk2"]) <= t["w_dk"][q["triple"]]).all()
    assert (np.abs(q["kappa"]) <= t["w_k"][q["triple"]]).all()


def _windows_file(tmp_path, triplets: list[list[float]], pairs: list[list[float]]) -> str:
    """A windows file of the given rows (its path, for ``PruneConfig.windows``)."""
    path = tmp_path / "windows.toml"
    rows = {"triplets": triplets, "pairs": pairs}
    path.write_text("".join(f"[{k}]\nrows = {v!r}\n" for k, v in rows.items()))
    return str(path)


def test_a_value_exactly_at_its_window_is_within_it(tmp_path, small_events, det):
    g = batch_graph(small_events[:1], det)
    cfg = PruneConfig(scale=1.0, kappa_scale=1.0)
    geo, usable, t = triplet_inputs(g, cfg, det)
    a, b = compatible_triplets(geo, usable, t, len(det))
    q = triplet_geometry(geo, a, b, len(det))
    code = layer_code(det)[mirror_layers(det)]
    n = len(det)
    triple = int(q["triple"][0])
    trip = (code[triple // (n * n)], code[triple // n % n], code[triple % n])
    pair = (code[int(geo["pair"][a[0]]) // n], code[int(geo["pair"][a[0]]) % n])
    rows = {"triplets": [list(r) for r in cfg.triplets], "pairs": [list(r) for r in cfg.pairs]}
    for r in rows["triplets"]:
        if tuple(r[:3]) == trip:  # the first triplet's |dtheta| is its layer triple's window
            r[3] = float(abs(q["dtheta"][0]))
    for r in rows["pairs"]:
        if tuple(r[:2]) == pair:  # its inner edge's |kappa| and |z0| are its pair's windows
            r[2] = float(abs(geo["k2"][a[0]]))
            r[3] = float(abs(geo["z0"][a[0]]))
    edge = replace(cfg, windows=_windows_file(tmp_path, rows["triplets"], rows["pairs"]))
    geo, usable, t = triplet_inputs(g, edge, det)
    assert usable[a[0]]
    found = set(zip(*compatible_triplets(geo, usable, t, len(det)), strict=True))
    assert (a[0], b[0]) in found


def test_without_triplet_cuts_the_pair_windows_alone_decide(small_events, det):
    g = batch_graph(small_events[:1], det)
    cfg = PruneConfig(triplet_cuts=False)
    _, usable, _ = triplet_inputs(g, cfg, det)
    mask = prune_edges(g, cfg, det)
    assert np.array_equal(mask, usable)
    assert mask.sum() > prune_edges(g, PruneConfig(), det).sum()


def test_a_layer_pair_without_a_window_keeps_no_edge(tmp_path, small_events, det):
    from importlib import resources

    text = resources.files("streamtrk.data").joinpath("prune_windows.toml").read_text()
    head, _ = text.split("[pairs]")
    path = tmp_path / "no-pairs.toml"
    path.write_text(head + "[pairs]\nrows = []\n")  # triplet windows only
    g = batch_graph(small_events[:1], det)
    assert not prune_edges(g, PruneConfig(windows=str(path)), det).any()
    assert prune_edges(g, PruneConfig(windows=str(path), pair_cuts=False), det).any()


def test_triplet_budget_counts_every_hit_an_edge_touches() -> None:
    # edges 0 -> 1 -> 2 touch three hits; inner edge 0 has three outer candidates
    g = {"i": np.array([0, 1]), "j": np.array([1, 2])}
    lo, hi = np.array([0]), np.array([3])
    budget = Budget(triplets_per_hit=1.0, allowance=0)
    within_budget(g, np.array([0]), lo, hi, (np.array([0, 4]), budget))  # 3 <= 3 hits
    with pytest.raises(EventTooDense):
        within_budget(g, np.array([0]), lo, np.array([4]), (np.array([0, 4]), budget))


@pytest.mark.slow
def test_mu200_keeps_target_segments_and_drops_most_edges(mu200_events, det):
    """Seed 90210 (no tuning): at least 99.5% of the central pT >= 1 GeV segments in the
    graph survive, and at most 1 edge in 5."""
    ev = mu200_events[0]
    g = batch_graph([ev], det)
    mask = prune_edges(g, PruneConfig(), det)
    n = len(ev.hits)
    seg = true_segments(ev, 1.0)
    p = ev.truth.particles
    srt = np.argsort(p.particle_id)
    pid = ev.truth.hits.particle_id[seg[0]]
    assert (particle_pt(ev, pid) >= 1).all()
    vr = p.vr[srt][np.searchsorted(p.particle_id[srt], pid)]
    key = seg[0][vr < 10] * n + seg[1][vr < 10]
    in_graph = np.isin(key, g.edge_index[0] * n + g.edge_index[1])
    kept = np.isin(key, g.edge_index[0][mask] * n + g.edge_index[1][mask])
    assert kept.sum() >= 0.995 * in_graph.sum()
    assert mask.sum() <= g.num_edges / 5


@pytest.mark.gpu
def test_cupy_mask_equals_numpy(mu200_events, det):
    """The same code on CuPy arrays (skips without a CUDA device). Cut decisions may differ
    only where float rounding of sin, cos or arctan2 differs between the two libraries."""
    cupy = cupy_on_cuda()
    cpu = batch_graph(mu200_events[:2], det)
    gpu = batch_graph(mu200_events[:2], det, xp=cupy)
    assert np.array_equal(gpu.edge_index.get(), cpu.edge_index)
    for cfg in (PruneConfig(), PruneConfig(min_hits=3, scale=1.0)):
        m_cpu = prune_edges(cpu, cfg, det)
        m_gpu = prune_edges(gpu, cfg, det)
        assert isinstance(m_gpu, cupy.ndarray)
        assert (m_gpu.get() != m_cpu).sum() <= max(1, cpu.num_edges // 100_000)
    mask = prune_edges(gpu, PruneConfig(), det)
    pruned = select_edges(gpu, mask)
    small = without_isolated_hits(pruned)
    kept = np.unique(pruned.edge_index.get())
    assert np.array_equal(kept[small.edge_index.get()], gpu.edge_index.get()[:, mask.get()])


def test_a_windows_file_with_a_byte_order_mark_is_read(tmp_path):
    text = resources.files("streamtrk.data").joinpath("prune_windows.toml").read_text()
    path = tmp_path / "w.toml"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_windows(str(path)) == read_windows("prune_windows.toml")


def test_an_edited_windows_file_is_read_again(tmp_path, det):
    """A model reload must see its windows file as it is now, not as first read, even where
    the edit keeps the file's size (it is known by modification time and size)."""
    path = tmp_path / "w.toml"
    text = resources.files("streamtrk.data").joinpath("prune_windows.toml").read_text()
    path.write_text(text)
    cfg = PruneConfig(windows=str(path))
    before = read_windows(str(path))["triplets"][0]
    tables = window_tables(det, cfg, np)
    first = "[802, 804, 806, 0.004479,"  # the first triplet row: its |dtheta| window
    assert first in text and before[3] == 0.004479
    path.write_text(text.replace(first, "[802, 804, 806, 0.009479,", 1))  # the same size
    assert path.stat().st_size == len(text.encode())
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the clock
    after = read_windows(str(path))["triplets"][0]
    assert after != before and after[3] == 0.009479
    assert window_tables(det, cfg, np) is not tables


def _three_barrel_hits(det, dz_outer: float) -> Graph:
    """Hits on pixel barrel layers 802, 804, 806 at phi 0 (a straight line in x-y: no
    curvature) with edges 0 -> 1 -> 2: the inner edge at z = 0 (theta pi/2), the outer one
    rising by ``dz_outer``."""
    at = {int(c): k for k, c in enumerate(layer_code(det))}
    layers = [at[802], at[804], at[806]]
    r = det.r[layers]
    z = np.array([0.0, 0.0, dz_outer])
    return Graph(
        node_features=np.stack([r / 1000, np.zeros(3), z / 1000], axis=1).astype(np.float32),
        edge_index=np.array([[0, 1], [1, 2]], np.int64),
        edge_features=np.zeros((2, 6), np.float32),
        node_offsets=np.array([0, 3]),
        layer=np.array(layers, np.int64),
    )


def test_theta_windows_are_capped_below_the_gap_between_hits_keys(det) -> None:
    """However wide the scaled |dtheta| window, it stops at 0.85 rad (the join of inner and
    outer edges by hit * 4 + theta keys must not reach a neighbouring hit): a bend of 0.8
    rad is kept, one of 1.0 rad is not."""
    cfg = PruneConfig(scale=1000.0, kappa_cut=False, pair_cuts=False, min_hits=3)
    dr = det.r[2] - det.r[1]
    for bend, kept in ((0.8, True), (1.0, False)):
        g = _three_barrel_hits(det, dz_outer=dr * math.tan(bend))
        geo = edge_geometry(g, det)
        assert float(geo["theta"][0] - geo["theta"][1]) == pytest.approx(bend, abs=1e-5)
        assert prune_edges(g, cfg, det).tolist() == [kept, kept]


def test_a_graph_of_one_edge_gets_a_mask_of_one_edge(det) -> None:
    g = _three_barrel_hits(det, dz_outer=0.0)
    one = select_edges(g, np.array([True, False]))
    assert prune_edges(one, PruneConfig(), det).tolist() == [False]  # no triplet: dropped
    assert prune_edges(g, PruneConfig(min_hits=3, pair_cuts=False), det).tolist() == [True] * 2


def test_prune_edges_defaults_to_the_shipped_detector_and_config(small_events, det) -> None:
    g = batch_graph(small_events[:1], det)
    assert np.array_equal(prune_edges(g), prune_edges(g, PruneConfig(), det))


def test_the_defaults_are_the_documented_choice() -> None:
    """Quadruplets, |dtheta| and |dkappa| windows x 1.5, |kappa| x 1.1, pair windows on (the
    choice ``PruneConfig``'s docstring and bench/RESULTS.md report)."""
    assert PruneConfig() == PruneConfig(
        windows="prune_windows.toml",
        scale=1.5,
        kappa_cut=True,
        kappa_scale=1.1,
        pair_cuts=True,
        triplet_cuts=True,
        min_hits=4,
    )


def _one_layer_tables(w_th: float, w_dk: float, w_k: float) -> dict[str, np.ndarray]:
    """Window tables of a one-layer detector (every pair and triplet index 0)."""
    return {
        "w_th": np.array([w_th]),
        "w_dk": np.array([w_dk]),
        "w_k": np.array([w_k]),
        "join": np.array([w_th]),
        "opens": np.array([True]),
        "closes": np.array([True]),
    }


def _two_edges(theta: tuple[float, float], k2: tuple[float, float]) -> dict[str, np.ndarray]:
    """Edge geometry of hits 0 -> 1 -> 2 (edges 0 and 1) turning left by 90 degrees in x-y."""
    f32 = np.float32
    return {
        "i": np.array([0, 1]),
        "j": np.array([1, 2]),
        "pair": np.zeros(2, np.int64),
        "lay_j": np.zeros(2, np.int64),
        "theta": np.array(theta, f32),
        "k2": np.array(k2, f32),
        "dx": np.array([10.0, 0.0], f32),
        "dy": np.array([0.0, 10.0], f32),
        "c": np.array([10.0, 10.0], f32),
    }


def test_the_join_margin_keeps_a_triplet_whose_theta_keys_round_past_its_window() -> None:
    """|dtheta| is cut in float32, the join searches float64 keys: 0.7 - 0.1 rounds down
    in float32, so the keys differ by more than a window of exactly that |dtheta|; the join's
    1e-6 margin still finds the pair, and the cut keeps it."""
    a, b = np.float32(0.1), np.float32(0.7)
    window = float(b - a)  # float32 subtraction
    assert float(b) - float(a) > window
    g = _two_edges((float(a), float(b)), (0.0, 0.0))
    t = _one_layer_tables(window, 1.0, np.inf)
    found_a, found_b = compatible_triplets(g, np.ones(2, bool), t, 1)
    assert found_a.tolist() == [0] and found_b.tolist() == [1]


def test_a_triplet_exactly_at_its_dkappa_and_kappa_windows_is_compatible() -> None:
    g = _two_edges((1.0, 1.0), (0.001, 0.003))
    dk = float(np.abs(g["k2"][1] - g["k2"][0]))
    kappa = float(
        np.abs(
            three_hit_curvature(
                g["dx"][:1], g["dy"][:1], g["c"][:1], g["dx"][1:], g["dy"][1:], g["c"][1:]
            )[0]
        )
    )
    assert dk > 0 and kappa > 0
    usable = np.ones(2, bool)
    at_edge = compatible_triplets(g, usable, _one_layer_tables(0.0, dk, kappa), 1)
    assert [v.tolist() for v in at_edge] == [[0], [1]]
    for w_dk, w_k in ((np.nextafter(dk, 0), kappa), (dk, np.nextafter(kappa, 0))):
        just_out = compatible_triplets(g, usable, _one_layer_tables(0.0, w_dk, w_k), 1)
        assert [v.tolist() for v in just_out] == [[], []]


def test_only_layer_pairs_of_a_windowed_triplet_open_or_close_one(tmp_path, det) -> None:
    """One triplet window (802, 804, 806), of zero |dtheta| (it still admits dtheta = 0):
    pair 802-804 opens triplets, 804-806 closes them, no other pair does either."""
    at = {int(c): k for k, c in enumerate(layer_code(det))}
    path = _windows_file(tmp_path, [[802, 804, 806, 0.0, 1e-3, 1e-3]], [[802, 804, 1.0, 50.0]])
    t = prune.window_tables(det, PruneConfig(windows=path), np)
    n = len(det)
    assert np.flatnonzero(t["opens"]).tolist() == [at[802] * n + at[804]]
    assert np.flatnonzero(t["closes"]).tolist() == [at[804] * n + at[806]]
    assert t["join"][at[802] * n + at[804]] == 0.0


def test_windows_of_layers_the_detector_lacks_are_ignored(tmp_path, det) -> None:
    triplets = [[802, 804, 806, 0.004, 3e-4, 7e-4]]
    pairs = [[802, 804, 1e-3, 50.0]]
    known = PruneConfig(windows=_windows_file(tmp_path, triplets, pairs))
    tables = prune.window_tables(det, known, np)
    foreign = [
        [802, 804, 9999, 0.1, 0.1, 0.1],
        [802, 9999, 806, 0.1, 0.1, 0.1],
        [9999, 804, 806, 0.1, 0.1, 0.1],
    ]
    (tmp_path / "more").mkdir()
    more = PruneConfig(
        windows=_windows_file(
            tmp_path / "more",
            triplets + foreign,
            [*pairs, [802, 9999, 1.0, 1.0], [9999, 804, 1, 1]],
        )
    )
    for name, table in prune.window_tables(det, more, np).items():
        assert np.array_equal(table, tables[name]), name


def test_triplet_budget_counts_per_event_and_nothing_for_edges_without_candidates() -> None:
    # event 0: hits 0..3, edges 0 -> 1 -> 2 (3 hits), inner edge 0 with three candidates and
    # inner edge 1 with none; event 1: hits 4..7, edges 4 -> 5 -> 6, three candidates
    g = {"i": np.array([0, 1, 4, 5]), "j": np.array([1, 2, 5, 6])}
    a_ids = np.array([0, 1, 2])
    lo, hi = np.array([0, 5, 7]), np.array([3, 5, 10])
    budget = Budget(triplets_per_hit=1.0, allowance=0)
    within_budget(g, a_ids, lo, hi, (np.array([0, 4, 8]), budget))  # 3 <= 3 hits in each
    with pytest.raises(EventTooDense) as e:
        within_budget(g, a_ids, lo, hi + np.array([0, 0, 1]), (np.array([0, 4, 8]), budget))
    assert e.value.events == [1]


def test_both_triplet_searches_check_the_budget(host_launcher, small_events, det) -> None:
    g = batch_graph(small_events[:1], det)
    geo, usable, t = triplet_inputs(g, PruneConfig(), det)
    tight = (g.node_offsets, Budget(triplets_per_hit=0.0, allowance=0))
    with pytest.raises(EventTooDense, match="triplet candidates"):
        compatible_triplets(geo, usable, t, len(det), tight)
    with pytest.raises(EventTooDense, match="triplet candidates"):
        keep_kernels(geo, usable, t, len(det), 4, host_launcher(KERNELS), tight)


def test_inner_edges_are_searched_in_middle_hit_and_theta_order(small_events, det) -> None:
    g = batch_graph(small_events[:1], det)
    geo, usable, t = triplet_inputs(g, PruneConfig(), det)
    a_ids, b_ids, _, _ = triplet_candidates(geo, usable, t)
    for ids, hit in ((a_ids, geo["j"]), (b_ids, geo["i"])):
        assert len(ids) > 1000
        key = hit[ids] * 4.0 + geo["theta"][ids]
        assert (np.diff(key) >= 0).all()


def test_a_layer_pair_without_a_window_makes_even_a_straight_edge_unusable(tmp_path, det) -> None:
    """Edges of a pair the windows file lacks are unusable, even at |kappa| = 0 exactly (hits
    at one phi) where a zero window would admit them."""
    g = _three_barrel_hits(det, dz_outer=0.0)
    path = _windows_file(tmp_path, [[802, 804, 806, 0.01, 1e-3, 1e-3]], [[804, 806, 1e-3, 50.0]])
    geo, usable, _ = triplet_inputs(g, PruneConfig(windows=path), det)
    assert geo["k2"].tolist() == [0.0, 0.0]
    assert usable.tolist() == [False, True]  # 802-804 has no pair window; 804-806 has one


@pytest.mark.parametrize("scales", [(0.0, 1.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.inf)])
def test_window_scales_that_are_not_finite_and_positive_are_refused(scales) -> None:
    with pytest.raises(ValueError, match="scales must be finite numbers > 0"):
        PruneConfig(scale=scales[0], kappa_scale=scales[1])


def test_a_chain_length_other_than_a_triplet_or_quadruplet_is_refused() -> None:
    with pytest.raises(ValueError, match="min_hits must be 3 or 4, got 5"):
        PruneConfig(min_hits=5)


def test_a_windows_path_relative_to_the_working_directory_is_a_path(tmp_path, monkeypatch):
    """A name with a '/' is a path, relative ones too (the error's hint offers ./name)."""
    (tmp_path / "sub").mkdir()
    text = resources.files("streamtrk.data").joinpath("prune_windows.toml").read_text()
    (tmp_path / "sub" / "w.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    shipped = PruneConfig().triplets
    for name in ("./sub/w.toml", "sub/w.toml"):
        assert PruneConfig(windows=name).triplets == shipped


@pytest.mark.parametrize("block", [1, 3, 8_192])
def test_the_blocked_window_search_is_searchsorted(monkeypatch, block) -> None:
    """Ties at a block's least and greatest needles, and a NaN needle (the whole search)."""
    monkeypatch.setattr(prune, "WINDOW_BLOCK", block)
    keys = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0])
    for needles in (
        np.array([1.0, 1.0, 1.5, 3.0, 3.0, 3.5, 4.0, 5.0, -1.0]),
        np.array([0.5, np.nan, 3.0]),
    ):
        for side in ("left", "right"):
            got = prune._search_sorted(keys, needles, side)
            assert np.array_equal(got, np.searchsorted(keys, needles, side)), (side, needles)


def test_a_disk_whose_radii_or_place_differ_from_its_mirrors_keeps_its_own_windows(det) -> None:
    """A -z disk folds onto the +z disk of the same |z|, inner and outer radius (and
    resolution): change any of them and it keeps its own index."""
    code = layer_code(det)
    at = {int(c): k for k, c in enumerate(code)}
    a = at[702]  # pixel disk at z = -1500, folded onto 914
    assert mirror_layers(det)[a] == at[914]
    for field in ("r_min", "r_max", "z"):
        values = getattr(det, field).copy()
        values[a] *= 1.01
        assert mirror_layers(replace(det, **{field: values}))[a] == a, field


def test_the_theta_cap_is_0_85_rad_not_more(det) -> None:
    """The capped |dtheta| window is 0.85 rad exactly (below the 4 - pi = 0.858 rad gap
    between two hits' keys): a bend of 0.84 rad is kept, one of 0.86 rad is not."""
    cfg = PruneConfig(scale=1000.0, kappa_cut=False, pair_cuts=False, min_hits=3)
    dr = det.r[2] - det.r[1]
    for bend, kept in ((0.84, True), (0.86, False)):
        g = _three_barrel_hits(det, dz_outer=dr * math.tan(bend))
        assert prune_edges(g, cfg, det).tolist() == [kept, kept], bend


def test_the_theta_join_never_reaches_the_edges_of_the_next_hit() -> None:
    """Keys are hit * 4 + theta: an inner edge ending at hit 1 at theta just below pi and an
    outer edge starting at hit 2 at theta just above 0 are 0.86 rad apart in key, past the
    widest (0.85 rad) join window: no candidate, although the keys are close."""
    f32 = np.float32
    g = {
        "i": np.array([0, 2]),
        "j": np.array([1, 3]),
        "pair": np.zeros(2, np.int64),
        "theta": np.array([math.pi - 1e-3, 1e-3], f32),
    }
    t = {"join": np.array([0.85]), "opens": np.array([True]), "closes": np.array([True])}
    _, _, lo, hi = triplet_candidates(g, np.ones(2, bool), t)
    assert (hi - lo).tolist() == [0, 0]


def test_only_a_missing_bare_name_gets_the_hint_to_write_a_path(tmp_path) -> None:
    """A missing windows file named without '/' is looked for among the package's files:
    its error says how to name a file here; a missing path's error does not."""
    with pytest.raises(
        ValueError, match=r"cannot read pruning windows none\.toml: .*\./none\.toml"
    ):
        read_windows("none.toml")
    missing = str(tmp_path / "none.toml")
    with pytest.raises(ValueError, match="cannot read pruning windows") as e:
        read_windows(missing)
    assert "a name without '/'" not in str(e.value)


def test_a_windows_file_without_its_pairs_table_is_a_clear_error(tmp_path) -> None:
    """A file lacking the ``[pairs]`` table (or its rows) is refused as unreadable
    windows, a ValueError naming it, not a bare KeyError."""
    path = tmp_path / "triplets-only.toml"
    path.write_text("[triplets]\nrows = [[802, 804, 806, 0.01, 1e-3, 1e-3]]\n")
    with pytest.raises(ValueError, match=r"cannot read pruning windows .*triplets-only\.toml"):
        read_windows(str(path))
