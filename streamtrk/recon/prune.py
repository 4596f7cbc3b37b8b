"""Edge pruning between graph construction and the GNN: triplet consistency, one code path
for NumPy and CuPy.

An edge (doublet) survives when it forms, with at least one neighbouring edge that shares a
hit (an inner edge ending where it starts, or an outer edge starting where it ends), a
triplet compatible with a track: the two segments agree in polar angle (r-z alignment) and
in curvature seen from the beam line, and the circle through the three hits is not tighter
than a pT_min track allows. Track ends survive through their one neighbour, so the first and
last segment of a track are kept. With ``min_hits`` = 4 an edge must also belong to a chain
of two compatible triplets (four hits), as a cellular automaton asking for quadruplets.

The windows are data, not physics formulas: per layer triplet (inner, middle, outer layer),
the |dtheta|, |dkappa| and |kappa| that true triplets of pT >= 1 GeV particles from the
luminous region stay within, at a stated quantile, learnt from simulated events
(``bench/prune_windows.py`` writes ``streamtrk/data/prune_windows.toml``). A triplet of
layers never seen in training has no window: its triplets are not compatible (a "module map"
at layer granularity). Optional per layer-pair windows on the doublet alone (|kappa| seen
from the beam line, |z0|) drop edges before the triplet search.

Work: per-edge geometry (on the GPU one CUDA kernel, a thread per edge), two sorts (inner
edges by (middle hit, theta), outer edges by (middle hit, theta)), two binary searches for
each inner edge's theta window among the outer edges at its middle hit, then the per-pair
cuts: on the CPU over the candidate pairs expanded in chunks, on the GPU in two CUDA kernels
(``triplet_search.cu``) a thread per inner edge. Nothing is per hit or per edge in Python;
on the GPU the host synchronisations are the two compactions' counts, together, the
work budget's check and, in ``select_edges``, the kept edges' count.
Edges of different events never share a hit, so a batched graph needs nothing special.
About 0.12-0.15 s per MU=200 event (780k edges) on the project's 2-core CPU.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamtrk.detector import BARREL, Detector
from streamtrk.recon.budget import Budget, enforce, event_by_event, per_event
from streamtrk.recon.graph import Graph, event_graphs
from streamtrk.recon.kernels import Launch, contiguous, cupy_launcher
from streamtrk.xp import Array, argsort, array_module, chunk_bounds, expand_ranges, nonzeros

WINDOWS_FILE = "prune_windows.toml"
#: A model's own windows (a training recipe's file, copied beside its card): a name that is
#: none of the package's, so that a model copied without them is refused, not served with
#: the package's windows.
MODEL_WINDOWS_FILE = "model_prune_windows.toml"
KERNELS = "triplet_search.cu"  # pruning's kernels on the GPU
# Join key: hit * _KEY_SPAN + theta, theta in (0, pi). A window narrower than _THETA_JOIN_MAX
# never reaches the keys of a neighbouring hit (those start 4 - pi = 0.86 rad away).
_KEY_SPAN = 4.0
_THETA_JOIN_MAX = 0.85
TRIPLET_CHUNK = 65_536  # candidate (inner, outer) pairs per chunk of the CPU triplet cuts
WINDOW_BLOCK = 8_192  # inner edges per binary search of the CPU's theta windows


def layer_code(det: Detector) -> np.ndarray:
    """Per layer-table index: volume_id * 100 + layer_id (e.g. 802 = pixel barrel layer 2)."""
    return det.volume_id.astype(np.int64) * 100 + det.layer_id.astype(np.int64)


@cache
def mirror_layers(det: Detector) -> np.ndarray:
    """Per layer index, the index windows are looked up under: disks at z < 0 map to their
    mirror disk at +z (same radii, same resolution); every other layer maps to itself."""
    out = np.arange(len(det))
    for a in np.nonzero((det.kind != BARREL) & (det.z < 0))[0]:
        same = (
            (det.kind != BARREL)
            & np.isclose(det.z, -det.z[a])
            & np.isclose(det.r_min, det.r_min[a])
            & np.isclose(det.r_max, det.r_max[a])
            & (det.res_b == det.res_b[a])
        )
        hit = np.nonzero(same)[0]
        if len(hit):
            out[a] = hit[0]
    return out


@cache
def _fold_table(det: Detector, xp: Any) -> Array:
    return xp.asarray(mirror_layers(det))


def read_windows(name: str) -> dict[str, tuple[tuple[float, ...], ...]]:
    """``triplets`` and ``pairs`` rows of a windows file: a name among the package's data
    files, or a path. Read again when the file changes (a model reload sees an edit)."""
    return _read_windows(name, _signature(name))


def windows_is_path(name: str) -> bool:
    """Whether a windows file's ``name`` is a path (it holds a "/"), not one of the
    package's data files."""
    return "/" in name


def windows_bytes(name: str) -> bytes:
    """The bytes of a windows file (a name among the package's data files, or a path)."""
    data: bytes = _windows_path(name).read_bytes()
    return data


def _windows_path(name: str) -> Any:
    return Path(name) if windows_is_path(name) else resources.files("streamtrk.data").joinpath(name)


def _signature(name: str) -> tuple[int, int] | None:
    """(modification time, size) of a windows file; None where it cannot be read."""
    try:
        st = os.stat(str(_windows_path(name)))
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@cache
def _read_windows(name: str, signature: tuple[int, int] | None) -> dict[str, Any]:
    """``read_windows`` of one version of the file (``signature``: the cache key's part)."""
    path = _windows_path(name)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # not the locale's
        return {
            "triplets": tuple(tuple(row[:6]) for row in doc["triplets"]["rows"]),
            "pairs": tuple(tuple(row[:4]) for row in doc["pairs"]["rows"]),
        }
    except (OSError, KeyError, TypeError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        hint = (
            f" (a name without '/' is one of the package's files; ./{name} for a file here)"
            if isinstance(e, FileNotFoundError) and not windows_is_path(name)
            else ""
        )
        raise ValueError(f"cannot read pruning windows {name}: {e}{hint}") from None


@dataclass(frozen=True)
class PruneConfig:
    """Triplet-consistency pruning; windows learnt from simulated truth.

    ``triplets`` rows: (inner, middle, outer layer code, |dtheta| max (rad), |dkappa| max
    (1/mm), |kappa| max (1/mm)); layer code = volume_id * 100 + layer_id, disks at -z folded
    onto +z. dtheta: polar angle of the outer segment minus that of the inner one; dkappa:
    curvature of the circle through the beam line and the outer segment's two hits, minus
    the same for the inner segment; kappa: curvature of the circle through the three hits.
    ``pairs`` rows: (inner, outer layer code, |kappa| seen from the beam line max, |z0| max
    (mm)), used when ``pair_cuts``.

    The shipped windows (``streamtrk/data/prune_windows.toml``, made by
    ``bench/prune_windows.py``; its header states the command) are, per layer triplet, the
    99.9% quantile of true triplets (consecutive hits of pT >= 1 GeV particles from r < 10 mm,
    both segments in the built graph: 900,753 of them in 100 simulated MU=200 events of the
    fresh training seed 5000), or 1.5 x the largest value where a layer triplet has fewer
    than 30; pair windows are 1.1 x the largest value over the true segments (1.03M).
    ``scale`` multiplies the |dtheta| and |dkappa| windows, ``kappa_scale`` the |kappa| one
    (a pT threshold, kept apart because its losses come whole tracks at a time). The default
    (quadruplets, scale 1.5, kappa_scale 1.1) was chosen on training events (seed 1000:
    99.91% of the target segments in the graph kept, 69.5k edges per event) and checked on
    10 validation events (seed 2000): 99.90% kept (pruned_edge_efficiency 99.60% against
    99.70% for the graph), 67.7k of 778k edges per event (``bench/RESULTS.md``).
    """

    windows: str = WINDOWS_FILE  # a data file of the package, or a path
    scale: float = 1.5
    kappa_cut: bool = True  # the |kappa| (three-hit curvature) window
    kappa_scale: float = 1.1  # multiplies the |kappa| window (a pT threshold, not a resolution)
    pair_cuts: bool = True  # per layer-pair doublet windows before the triplet search
    triplet_cuts: bool = True  # False: the pair windows alone (a layer-pair module map)
    min_hits: int = 4  # 3: in a compatible triplet; 4: in a chain of two (a quadruplet)

    def __post_init__(self) -> None:
        if self.min_hits not in (3, 4):
            raise ValueError(f"min_hits must be 3 or 4, got {self.min_hits}")
        if not all(math.isfinite(v) and v > 0 for v in (self.scale, self.kappa_scale)):
            raise ValueError(
                f"scales must be finite numbers > 0, got {self.scale}, {self.kappa_scale}"
            )

    @property
    def triplets(self) -> tuple[tuple[float, ...], ...]:
        return read_windows(self.windows)["triplets"]

    @property
    def pairs(self) -> tuple[tuple[float, ...], ...]:
        return read_windows(self.windows)["pairs"]


def window_tables(det: Detector, cfg: PruneConfig, xp: Any) -> dict[str, Array]:
    """Dense lookup tables over layer indices (after folding), on the array module's device;
    made again when the windows file changes."""
    return _window_tables(det, cfg, xp, _signature(cfg.windows))


@cache
def _window_tables(det: Detector, cfg: PruneConfig, xp: Any, signature: Any) -> dict[str, Array]:
    """``window_tables`` of one version of the windows file (``signature``)."""
    nl = len(det)
    idx = {int(c): k for k, c in enumerate(layer_code(det))}
    w_th = np.full(nl**3, -1.0)
    w_dk = np.full(nl**3, -1.0)
    w_k = np.full(nl**3, np.inf)
    for ci, cj, ck, th, dk, k in cfg.triplets:
        if int(ci) in idx and int(cj) in idx and int(ck) in idx:
            t = (idx[int(ci)] * nl + idx[int(cj)]) * nl + idx[int(ck)]
            w_th[t] = min(th * cfg.scale, _THETA_JOIN_MAX)
            w_dk[t] = dk * cfg.scale
            w_k[t] = k * cfg.kappa_scale if cfg.kappa_cut else np.inf
    # A pair can open a triplet (inner role) or close one (outer role) only if some window
    # exists; the theta join window of an inner edge is the widest over its outer layers.
    w3 = w_th.reshape(nl * nl, nl)
    join = w3.max(axis=1)
    closes = (w_th.reshape(nl, nl * nl) >= 0).any(axis=0)
    k2_max = np.full(nl * nl, np.inf)
    z0_max = np.full(nl * nl, np.inf)
    if cfg.pair_cuts:
        k2_max[:] = -1.0  # a pair never seen in training has no window
        for ci, cj, k2, z0 in cfg.pairs:
            if int(ci) in idx and int(cj) in idx:
                p = idx[int(ci)] * nl + idx[int(cj)]
                k2_max[p] = k2
                z0_max[p] = z0
    tables = {
        "w_th": w_th,
        "w_dk": w_dk,
        "w_k": w_k,
        "join": join,
        "opens": join >= 0,
        "closes": closes,
        "k2_max": k2_max,
        "z0_max": z0_max,
    }
    return {k: xp.asarray(v) for k, v in tables.items()}


def edge_geometry(graph: Graph, det: Detector) -> dict[str, Array]:
    """Per-edge quantities the cuts read, from the graph's node features (float32: the
    node features are float32 already, and the windows are far wider than its rounding).

    For every edge: ``pair`` is the folded layer pair (inner *
    n_layers + outer); ``lay_j`` the outer hit's folded layer; ``theta`` the polar angle of
    the segment in (0, pi); ``k2`` the signed curvature of the circle through the beam line
    and the two hits; ``z0`` the segment's z at r = 0; ``dx``, ``dy``, ``c`` its transverse
    vector and length.
    """
    xp = array_module(graph.edge_index)
    nl = len(det)
    x, y, z, r, lay = hit_positions(graph, det)
    i, j = graph.edge_index
    xi, xj, yi, yj = x[i], x[j], y[i], y[j]
    ri, rj, zi, zj = r[i], r[j], z[i], z[j]
    dx, dy, dz, dr = xj - xi, yj - yi, zj - zi, rj - ri
    c = xp.sqrt(dx * dx + dy * dy)
    lay_j = lay[j]
    return {
        "i": i,
        "j": j,
        "pair": lay[i] * nl + lay_j,
        "lay_j": lay_j,
        "theta": xp.arctan2(dr, dz),
        "k2": 2.0 * (xi * yj - yi * xj) / (ri * rj * c),
        "z0": zi - ri * dz / dr,
        "dx": dx,
        "dy": dy,
        "c": c,
    }


def hit_positions(graph: Graph, det: Detector) -> tuple[Array, ...]:
    """Per hit, x, y, z and r (float32, from the graph's node features) and its folded
    layer: what the per-edge geometry reads."""
    xp = array_module(graph.edge_index)
    nf = graph.node_features.astype(xp.float32, copy=False)
    with np.errstate(over="ignore"):  # a hit past float32's range (finite on the wire): inf
        r = nf[:, 0] * np.float32(1000.0)
        phi = nf[:, 1] * np.float32(np.pi)
        x, y, z = r * xp.cos(phi), r * xp.sin(phi), nf[:, 2] * np.float32(1000.0)
    return x, y, z, r, _fold_table(det, xp)[graph.layer]


def three_hit_curvature(
    dxa: Array, dya: Array, ca: Array, dxb: Array, dyb: Array, cb: Array
) -> Array:
    """Signed curvature of the circle through the hits of segments a then b (shared hit)."""
    xp = array_module(dxa)
    sx, sy = dxa + dxb, dya + dyb
    return 2.0 * (dxa * dyb - dya * dxb) / (ca * cb * xp.sqrt(sx * sx + sy * sy))


def triplet_geometry(g: dict[str, Array], a: Array, b: Array, n_layers: int) -> dict[str, Array]:
    """Quantities of triplets made of inner edges ``a`` and outer edges ``b`` (positions in
    ``g`` from :func:`edge_geometry`; ``j[a] == i[b]`` is assumed, not checked)."""
    return {
        "triple": g["pair"][a] * n_layers + g["lay_j"][b],
        "dtheta": g["theta"][b] - g["theta"][a],
        "dk2": g["k2"][b] - g["k2"][a],
        "kappa": three_hit_curvature(
            g["dx"][a], g["dy"][a], g["c"][a], g["dx"][b], g["dy"][b], g["c"][b]
        ),
    }


def triplet_inputs(
    graph: Graph, cfg: PruneConfig, det: Detector
) -> tuple[dict[str, Array], Array, dict[str, Array]]:
    """What the triplet search reads: the per-edge geometry, the edges within their layer
    pair's doublet windows (all, without ``pair_cuts``) and the window tables."""
    xp = array_module(graph.edge_index)
    t = window_tables(det, cfg, xp)
    if xp is not np:
        return *geometry_kernel(graph, det, t, cupy_launcher(KERNELS)), t
    g = edge_geometry(graph, det)
    pair = g["pair"]
    usable = (xp.abs(g["k2"]) <= t["k2_max"][pair]) & (xp.abs(g["z0"]) <= t["z0_max"][pair])
    return g, usable, t


def geometry_kernel(
    graph: Graph, det: Detector, t: dict[str, Array], launch: Launch
) -> tuple[dict[str, Array], Array]:
    """:func:`edge_geometry` and the doublet windows' mask as :func:`triplet_inputs` makes
    them, the per-edge part in one kernel (``edge_geometry`` of ``triplet_search.cu``, a
    thread per edge) where the arrays take about 40 launches; the hits' positions stay array
    operations (their cosines and sines are CuPy's, as the arrays')."""
    xp, i64 = array_module(graph.edge_index), np.int64
    x, y, z, r, lay = hit_positions(graph, det)
    i, j = contiguous(tuple(graph.edge_index.astype(xp.int64, copy=False)), xp)
    n = len(i)
    ints = xp.empty((2, n), dtype=xp.int64)
    floats = xp.empty((6, n), dtype=xp.float32)
    usable = xp.empty(n, dtype=bool)
    inputs = (i64(n), i, j, *contiguous((x, y, z, r, lay), xp), i64(len(det)))
    launch("edge_geometry", n, (*inputs, t["k2_max"], t["z0_max"], *ints, *floats, usable))
    names = ("theta", "k2", "z0", "dx", "dy", "c")
    g = {"i": i, "j": j, "pair": ints[0], "lay_j": ints[1], **dict(zip(names, floats, strict=True))}
    return g, usable


def triplet_candidates(
    g: dict[str, Array], usable: Array, t: dict[str, Array]
) -> tuple[Array, Array, Array, Array]:
    """Inner edges ``a_ids`` and, for each, the range ``[lo, hi)`` of outer edges ``b_ids``
    (positions in ``g``) sharing its outer hit within the theta window of the widest layer
    triplet it can open.

    Both are sorted by (middle hit, theta): the inner edges' binary searches, and the
    candidates' reads, run forward in memory.
    """
    pair = g["pair"]
    a_ids, b_ids = nonzeros(usable & t["opens"][pair], usable & t["closes"][pair])
    key_b = g["i"][b_ids] * _KEY_SPAN + g["theta"][b_ids]
    ob = argsort(key_b, stable=True)  # sorted by hit already (the graph's order): runs merged
    key_b, b_ids = key_b[ob], b_ids[ob]
    key_a = g["j"][a_ids] * _KEY_SPAN + g["theta"][a_ids]
    oa = argsort(key_a)
    key_a, a_ids = key_a[oa], a_ids[oa]
    # A margin keeps float rounding of the keys from losing a candidate at a window's edge.
    w = t["join"][g["pair"][a_ids]] + 1e-6
    lo = _search_sorted(key_b, key_a - w, "left")
    hi = _search_sorted(key_b, key_a + w, "right")
    return a_ids, b_ids, lo, hi


def _search_sorted(keys: Array, needles: Array, side: Literal["left", "right"]) -> Array:
    """``searchsorted(keys, needles, side)`` (``keys`` ascending). On the CPU, where the
    needles are nearly ascending (the windows' ends of inner edges in key order), by
    blocks of :data:`WINDOW_BLOCK` needles, each searched among the keys between its least
    and greatest (the same positions: no key outside lies between them): 12 steps of a
    binary search in cache, not 19 across all keys."""
    xp = array_module(keys)
    if xp is not np:
        return xp.searchsorted(keys, needles, side=side)
    out = np.empty(len(needles), dtype=np.intp)
    for s in range(0, len(needles), WINDOW_BLOCK):
        x = needles[s : s + WINDOW_BLOCK]
        least, most = x.min(), x.max()
        if not (np.isfinite(least) and np.isfinite(most)):  # NaN: the whole search
            out[s : s + WINDOW_BLOCK] = np.searchsorted(keys, x, side=side)
            continue
        lo = int(np.searchsorted(keys, least, side="left"))
        hi = int(np.searchsorted(keys, most, side="right"))
        np.add(np.searchsorted(keys[lo:hi], x, side=side), lo, out=out[s : s + WINDOW_BLOCK])
    return out


def compatible_triplets(
    g: dict[str, Array],
    usable: Array,
    t: dict[str, Array],
    n_layers: int,
    limit: tuple[np.ndarray, Budget] | None = None,
) -> tuple[Array, Array]:
    """(inner, outer) positions in ``g`` of every compatible triplet among ``usable`` edges:
    the candidates of :func:`triplet_candidates` cut with their own layer triplet's windows.
    Per-edge values are gathered into the sorted orders first (reads forward in memory). On
    the CPU the candidates are expanded and cut in chunks of about ``TRIPLET_CHUNK`` (the
    temporaries stay in cache; one expansion of a MU=300 event's 3.6M candidates wrote a
    dozen fresh arrays of 30 MB); on the GPU in one piece (launch count). The positions
    are int32 below 2^31 edges (a pile of hits within the budget can make 20M compatible
    triplets). ``limit`` (the
    batch's node offsets and budget) checks the candidates per event before they are
    expanded."""
    xp = array_module(usable)
    a_ids, b_ids, lo, hi = triplet_candidates(g, usable, t)
    within_budget(g, a_ids, lo, hi, limit)
    ends = np.cumsum(np.maximum(hi - lo, 0)) if xp is np else None
    pair_a, th_a, k2_a = (g[k][a_ids] for k in ("pair", "theta", "k2"))
    lay_b, th_b, k2_b = (g[k][b_ids] for k in ("lay_j", "theta", "k2"))
    found_a, found_b = [], []
    small = xp.int32 if len(usable) <= np.iinfo(np.int32).max else xp.int64  # 8 B a triplet
    for s, e in pairwise(chunk_bounds(len(lo), TRIPLET_CHUNK, xp, ends)):
        # The chunk's running total of candidates, from the whole's (the CPU's).
        part = None if ends is None else ends[s:e] - ends[s - 1] if s else ends[:e]
        q, pos = expand_ranges(lo[s:e], hi[s:e], part)
        if s:
            q += s
        tr = pair_a[q] * n_layers + lay_b[pos]
        dth = th_b[pos] - th_a[q]
        dk2 = k2_b[pos] - k2_a[q]
        ok = xp.nonzero((xp.abs(dth) <= t["w_th"][tr]) & (xp.abs(dk2) <= t["w_dk"][tr]))[0]
        a, b, tr = a_ids[q[ok]], b_ids[pos[ok]], tr[ok]
        kappa = three_hit_curvature(
            g["dx"][a], g["dy"][a], g["c"][a], g["dx"][b], g["dy"][b], g["c"][b]
        )
        ok = xp.abs(kappa) <= t["w_k"][tr]
        found_a.append(a[ok].astype(small))
        found_b.append(b[ok].astype(small))
    return xp.concatenate(found_a), xp.concatenate(found_b)


def within_budget(
    g: dict[str, Array],
    a_ids: Array,
    lo: Array,
    hi: Array,
    limit: tuple[np.ndarray, Budget] | None,
) -> None:
    """Raise EventTooDense for events with more triplet candidates (inner edges ``a_ids``,
    each with outer candidates ``[lo, hi)``) than ``limit`` (node offsets, budget) allows
    for their hits in the graph (those an edge touches)."""
    if limit is None:
        return
    node_offsets, budget = limit
    xp = array_module(lo)
    n = per_event(g["j"], node_offsets, xp.maximum(hi - lo, 0), of=a_ids)
    in_graph = xp.zeros(int(node_offsets[-1]), dtype=bool)  # the hits an edge touches
    in_graph[g["i"]] = True
    in_graph[g["j"]] = True
    n_nodes = len(in_graph)
    hits = per_event(xp.arange(n_nodes), node_offsets, in_graph.astype(xp.int64))  # no sync
    enforce("triplet candidates", n, hits, budget.triplets_per_hit, budget)


def keep_kernels(
    g: dict[str, Array],
    usable: Array,
    t: dict[str, Array],
    n_layers: int,
    min_hits: int,
    launch: Launch,
    limit: tuple[np.ndarray, Budget] | None = None,
) -> Array:
    """``prune_edges``'s mask after the triplet search, by the kernels of
    ``triplet_search.cu`` (a thread per inner edge): no candidate list, no host
    synchronisation after :func:`triplet_candidates` but the budget check's (``limit``)."""
    xp = array_module(usable)
    a_ids, b_ids, lo, hi = triplet_candidates(g, usable, t)
    within_budget(g, a_ids, lo, hi, limit)
    per_edge = (g["pair"], g["lay_j"], g["theta"], g["k2"], g["dx"], g["dy"], g["c"])
    args = contiguous(
        (
            np.int64(len(a_ids)),
            *(a_ids, lo, hi, b_ids, *per_edge, t["w_th"], t["w_dk"], t["w_k"]),
            np.int64(n_layers),
        ),
        xp,
    )  # the order of the kernels' TRIPLET_PARAMS
    has_in = xp.zeros(len(usable), dtype=bool)
    has_out = xp.zeros(len(usable), dtype=bool)
    launch("triplet_flags", len(a_ids), (*args, has_in, has_out))
    if min_hits == 3:
        return has_in | has_out
    keep = has_in & has_out
    launch("quadruplet_ends", len(a_ids), (*args, has_in, has_out, keep))
    return keep


def prune_edges(
    graph: Graph,
    cfg: PruneConfig | None = None,
    det: Detector | None = None,
    budget: Budget = Budget(),
) -> Array:
    """Mask over the graph's edges: True for edges kept (NumPy or CuPy, as the graph).
    EventTooDense names the events with more triplet candidates than ``budget`` allows."""
    if det is None:
        from streamtrk.detector import load_detector

        det = load_detector()
    cfg = cfg or PruneConfig()
    xp = array_module(graph.edge_index)
    if graph.num_edges == 0:
        return xp.zeros(0, dtype=bool)
    if xp is np and len(graph.node_offsets) > 2:
        # Event by event on the CPU: the same mask, from working sets that stay in cache.
        masks = event_by_event(event_graphs(graph), lambda e: prune_edges(e, cfg, det, budget))
        return np.concatenate(masks)
    g, usable, t = triplet_inputs(graph, cfg, det)
    if not cfg.triplet_cuts:
        return usable
    limit = (graph.node_offsets, budget)
    if xp is np:
        return keep_arrays(g, usable, t, len(det), cfg.min_hits, limit)
    return keep_kernels(g, usable, t, len(det), cfg.min_hits, cupy_launcher(KERNELS), limit)


def keep_arrays(
    g: dict[str, Array],
    usable: Array,
    t: dict[str, Array],
    n_layers: int,
    min_hits: int,
    limit: tuple[np.ndarray, Budget] | None = None,
) -> Array:
    """``prune_edges``'s mask after the triplet search, in array operations (NumPy or CuPy):
    the list of compatible triplets, then the edges in one (``min_hits`` 3) or in a chain of
    two (4)."""
    xp = array_module(usable)
    a, b = compatible_triplets(g, usable, t, n_layers, limit)
    has_in = xp.zeros(len(usable), dtype=bool)  # the outer edge of a compatible triplet
    has_out = xp.zeros(len(usable), dtype=bool)  # the inner edge of one
    has_in[b] = True
    has_out[a] = True
    if min_hits == 3:
        return has_in | has_out
    # Quadruplets: an edge with a compatible inner and outer neighbour is the middle of one;
    # else it needs a compatible neighbour that itself continues on the far side.
    keep = has_in & has_out
    keep[b[has_in[a]]] = True
    keep[a[has_out[b]]] = True
    return keep
