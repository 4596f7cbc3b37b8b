"""Hit-graph construction: doublets between detector layers, one code path for NumPy and CuPy.

A batch of events is one disjoint graph: hits are sorted into grid cells (event, layer,
bin in z or r, phi bin) with every hit entered twice (phi and phi + 2 pi) so that a phi
window never wraps. For every layer pair and every hit of the inner layer, the window of
candidate outer hits is, per bin it reaches, one slice of consecutive cells (their offsets
looked up, no search); the candidates are cut on phi slope, z0 and eta consistency. On the
CPU they are expanded in vectorised chunks; on the GPU CUDA kernels (``doublet_search.cu``:
the queries, counted then written a thread per hit, their windows, then the candidates
flagged and the edges filled, a thread per candidate) run the same cuts. The work grows
with hits x candidates per window, and the number of host synchronisations per batch is
constant, not per layer pair: on the GPU three (the queries' total, the candidates' per
event against the budget, which also sizes the flags, and the edges' per event, which
size the output). Hits piled into one window would still make hits squared candidates: an
event with more candidates (counted before they are expanded) or doublets (counted once
found; on the GPU before they are written) than its
:class:`~streamtrk.recon.budget.Budget` allows raises
:class:`~streamtrk.recon.budget.EventTooDense`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from itertools import pairwise
from typing import Any

import numpy as np

from streamtrk.detector import BARREL, GEV_PER_TESLA_MM, MAX_BEAM_SPOT, Detector, lookup_layer
from streamtrk.event import Event
from streamtrk.recon.budget import Budget, enforce, event_by_event, per_event
from streamtrk.recon.kernels import Launch, contiguous, cupy_launcher
from streamtrk.threads import available_cpus
from streamtrk.xp import (
    Array,
    NotFinite,
    argsort,
    array_module,
    bincount,
    chunk_bounds,
    compact,
    concatenate_to_device,
    expand_ranges,
    running_total,
    to_host,
)

SEARCH_CHUNK = 65_536  # candidates per chunk of the CPU candidate search (MU=200: 34k bin queries)
QUERY_HIT_CHUNK = 8_192  # inner hits per chunk of the CPU query set-up
SEARCH_GROUP = 4  # chunks a thread searches between two checks of the doublet budget
QUERY_BIN_CHUNK = 8_192  # queries per chunk of the CPU (query, bin) expansion (MU=200: 44k pairs)
KERNELS = "doublet_search.cu"  # graph construction's kernels on the GPU
MIN_QUERY_R = 1.0  # mm: hits closer to the beam line enter no search (and buy no budget)
PHI_CAP = float(np.nextafter(np.pi, 0.0))  # the widest |dphi| searched, just under pi


#: Most search-grid cells per layer (``n_bins x n_phi_bins``; the shipped 32 x 256 = 8192):
#: each costs 16 bytes per layer and event in a batch's grid (two halves, int64 starts).
MAX_GRID_CELLS = 2**16


@dataclass(frozen=True)
class GraphConfig:
    """Doublet cuts, aimed by default at pT >= 1 GeV particles from the luminous region."""

    pt_min: float = 1.0  # GeV
    phi_slope_margin: float = 1.5  # times the slope of a pt_min track from the beam line
    phi_tolerance: float = 0.002  # rad, added to every phi window (resolution, scattering)
    z0_max: float = 30.0  # mm: luminous region (5 sigma), plus the segment's own z0 error
    z0_sigmas: float = 5.0  # z0 error allowance, in standard deviations from hit resolutions
    z0_lever_max: float = 25.0  # z0 error bound of any pair: lever x worst hit resolution
    z0_limit: float = 250.0  # mm: hard bound on |z0|
    deta_max: float = 0.5  # |eta(segment) - eta(outer hit seen from the origin)|
    skip_layers: bool = True  # also connect layer i to i + 2
    n_bins: int = 32  # search grid: bins along z (barrel) or r (disk) per layer
    n_phi_bins: int = 256  # search grid: bins in phi per layer
    threads: int = 2  # most CPU threads for the candidate search (NumPy; no more than usable)
    # mm: search windows reach this far off a layer's surface (plus the beam offset); hits
    # further off make no edge (they enter no search)
    layer_margin: float = 10.0

    def __post_init__(self) -> None:
        """ValueError naming the first setting out of range (a card's ``[graph]`` table is
        read through this class: a bad value would fail, or empty, every event)."""
        positive = ("pt_min", "phi_slope_margin", "z0_max", "z0_limit", "deta_max")
        non_negative = ("phi_tolerance", "z0_sigmas", "z0_lever_max", "layer_margin")
        checks = [(name, getattr(self, name) > 0, "a finite number > 0") for name in positive]
        checks += [(n, getattr(self, n) >= 0, "a finite number >= 0") for n in non_negative]
        for name, ok, rule in checks:
            if not (ok and math.isfinite(getattr(self, name))):
                raise ValueError(f"GraphConfig.{name} must be {rule}, got {getattr(self, name)}")
        for name in ("n_bins", "n_phi_bins", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"GraphConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bins * self.n_phi_bins > MAX_GRID_CELLS:
            raise ValueError(
                f"GraphConfig.n_bins x n_phi_bins must be at most {MAX_GRID_CELLS} (cells per "
                f"layer and event), got {self.n_bins} x {self.n_phi_bins}"
            )

    def phi_slope_max(self, bfield: float) -> float:
        """Largest |dphi/dr| (rad/mm) accepted (either sign of the field: tracks turn the
        other way, as much)."""
        return self.phi_slope_margin * GEV_PER_TESLA_MM * abs(bfield) / (2 * self.pt_min)


@cache
def layer_pairs(det: Detector, z0_max: float = 50.0, skip: bool = True) -> np.ndarray:
    """Ordered layer pairs (inner, outer, gap) crossed in sequence by straight lines.

    Lines from the beam axis (z0 = -z0_max, 0 and z0_max) at every pseudorapidity up to the
    detector's reach; consecutive crossings give the pairs (gap 1) and, with ``skip``, the
    crossings two apart (gap 2). Shaped only by the detector file.
    """
    eta = np.linspace(-4.5, 4.5, 3601)
    pairs: set[tuple[int, int, int]] = set()
    barrel = det.kind == BARREL
    for z0 in (-z0_max, 0.0, z0_max):
        t = np.sinh(eta)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            r_disk = (det.z[None, :] - z0) / t
            r = np.where(barrel[None, :], det.r[None, :], r_disk)
            z = z0 + t * r
        ok = np.where(
            barrel[None, :],
            np.abs(z) <= det.half_length[None, :],
            (r >= det.r_min[None, :]) & (r <= det.r_max[None, :]),
        )
        r = np.where(ok, r, np.inf)
        order = np.argsort(r, axis=1)
        n_ok = ok.sum(axis=1)
        for row, n in zip(order, n_ok, strict=True):
            seq = row[:n]
            pairs.update((int(a), int(b), 1) for a, b in pairwise(seq))
            if skip:
                pairs.update((int(a), int(b), 2) for a, b in zip(seq[:-2], seq[2:], strict=True))
    # A pair seen both adjacent and across a layer keeps gap 1: one entry per (inner, outer).
    best: dict[tuple[int, int], int] = {}
    for a, b, gap in sorted(pairs, key=lambda p: p[2], reverse=True):
        best[(a, b)] = gap
    return np.array(sorted((a, b, g) for (a, b), g in best.items()), dtype=np.int64).reshape(-1, 3)


@dataclass
class Graph:
    """A (batched) hit graph. Edges point outwards along the track, inner -> outer hit."""

    node_features: Array  # (n, 3) float32: r/1000, phi/pi, z/1000
    edge_index: Array  # (2, e) int64
    edge_features: Array  # (e, 6) float32
    node_offsets: Array  # (events + 1,) host int64: hits of event k are [o[k], o[k+1])
    layer: Array  # (n,) int64 detector layer index per hit (0 for hits off the detector)

    @property
    def num_nodes(self) -> int:
        return int(self.node_features.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])


def batch_columns(events: Sequence[Event], xp: Any = np) -> tuple[dict[str, Array], np.ndarray]:
    """The hit columns ``build_graph`` takes (x, y, z, volume_id, layer_id, in its order) of
    a batch of events, concatenated on ``xp``'s device (one host-to-device copy for all),
    and the events' node offsets. ValueError for an empty batch, or an event with a NaN or
    infinite coordinate (the wire refuses those; here for callers of the API)."""
    if not events:
        raise ValueError("a batch needs at least one event")
    offsets = np.concatenate([[0], np.cumsum([len(ev.hits) for ev in events])]).astype(np.int64)
    names = ("x", "y", "z", "volume_id", "layer_id")
    columns = {k: [getattr(ev.hits, k) for ev in events] for k in names}
    try:  # the coordinates checked as they are concatenated
        cols = concatenate_to_device(columns, xp, finite=("x", "y", "z"))
    except NotFinite as e:
        for ev in events:  # which event
            if not all(bool(np.isfinite(getattr(ev.hits, k)).all()) for k in e.columns):
                raise ValueError(
                    f"event {ev.run}/{ev.event}: a hit coordinate is NaN or infinite"
                ) from None
        raise
    return cols, offsets


def batch_graph(
    events: Sequence[Event],
    det: Detector,
    cfg: GraphConfig = GraphConfig(),
    xp: Any = np,
    budget: Budget = Budget(),
) -> Graph:
    """The graph of a batch of events (their hits concatenated, on ``xp``'s device)."""
    cols, offsets = batch_columns(events, xp)
    return build_graph(**cols, node_offsets=offsets, det=det, cfg=cfg, budget=budget)


def event_graph(event: Event, det: Detector, cfg: GraphConfig = GraphConfig()) -> Graph:
    """The graph of one event."""
    return batch_graph([event], det, cfg)


@cache
def _device_tables(det: Detector, z0_limit: float, skip: bool, xp: Any) -> dict[str, Array]:
    pairs = layer_pairs(det, z0_max=min(z0_limit, 50.0), skip=skip)
    barrel = det.kind == BARREL
    f64 = np.float64
    tables = {
        "lut": det.layer_lut,
        "pair_inner": pairs[:, 0],
        "pair_outer": pairs[:, 1],
        # The pairs of inner layer l are pair_start[l] to pair_start[l + 1] (pairs sorted).
        "pair_start": np.searchsorted(pairs[:, 0], np.arange(len(det) + 1), side="left"),
        "barrel": barrel,
        "r": np.nan_to_num(det.r).astype(f64),
        "z": np.nan_to_num(det.z).astype(f64),
        # The binned coordinate: z along a barrel layer, r across a disk.
        "u_min": np.where(barrel, -det.half_length, det.r_min).astype(f64),
        "u_max": np.where(barrel, det.half_length, det.r_max).astype(f64),
        # Hit resolution along z (barrel layers) and along r (disks).
        "sigma_z": np.where(barrel, det.res_b, 0.0).astype(f64),
        "sigma_r": np.where(barrel, 0.0, det.res_b).astype(f64),
        "sigma": det.res_b.astype(f64),
    }
    return {k: xp.asarray(v) for k, v in tables.items()}


def _barrel_range(
    ri: Array, zi: Array, r_t: Array, zmax: Array, margin: float, xp: Any
) -> tuple[Array, Array]:
    """Range of a barrel target layer's z (at radius ``r_t``) on lines from (r_i, z_i) to
    |z0| <= zmax. ``margin`` (mm) widens it for hits off the nominal surface (modules are
    not exact cylinders, and strip measurements along r are coarse)."""
    # z = z0 + (z_i - z0) r / r_i at r = r_t +- margin, linear in z0.
    ends = []
    for rt in (r_t - margin, r_t + margin):
        s = rt / ri
        ends.append((-zmax + (zi + zmax) * s, zmax + (zi - zmax) * s))
    (za, zb), (zc, zd) = ends
    lo = xp.minimum(xp.minimum(za, zb), xp.minimum(zc, zd))
    hi = xp.maximum(xp.maximum(za, zb), xp.maximum(zc, zd))
    # 1 mm of slack keeps rounding at the range ends from losing candidates.
    return lo - 1.0, hi + 1.0


def _disk_range(
    ri: Array, zi: Array, z_t: Array, u_max: Array, zmax: Array, margin: float, xp: Any
) -> tuple[Array, Array]:
    """Range of a disk target layer's r (at ``z_t``, out to ``u_max``) on lines from
    (r_i, z_i) to |z0| <= zmax, widened by ``margin`` (mm) as :func:`_barrel_range`'s."""
    # r = r_i (z_t - z0) / (z_i - z0), monotonic in z0 when |z_i| > zmax.
    far = xp.abs(zi) > zmax
    den_a = xp.where(far, zi + zmax, 1.0)
    den_b = xp.where(far, zi - zmax, 1.0)
    ra, rb = ri * (z_t + zmax) / den_a, ri * (z_t - zmax) / den_b
    r_lo = xp.where(far, xp.maximum(xp.minimum(ra, rb), ri), ri) - margin
    r_hi = xp.where(far, xp.minimum(xp.maximum(ra, rb), u_max), u_max) + margin
    return r_lo - 1.0, r_hi + 1.0


def _part(mask: np.ndarray) -> slice | np.ndarray | None:
    """Where NumPy ``mask`` holds: all (a slice, no gather), some (their indices) or none
    (None)."""
    if mask.all():
        return slice(None)
    k = np.nonzero(mask)[0]
    return k if len(k) else None


def build_graph(
    x: Array,
    y: Array,
    z: Array,
    volume_id: Array,
    layer_id: Array,
    node_offsets: np.ndarray,
    det: Detector,
    cfg: GraphConfig = GraphConfig(),
    budget: Budget = Budget(),
    beam_offset: float = 0.0,
) -> Graph:
    """Build the doublet graph of a batch of events (hits concatenated, ``node_offsets``);
    EventTooDense names the events over ``budget``. ``beam_offset``: how far (mm, at most
    ``MAX_BEAM_SPOT``) the hits were moved to centre the beam spot: a hit may lie that much
    further off its layer's surface, and the search windows reach as far.

    On the CPU the events are built one by one and joined (the same edges in the same
    order: no edge joins two events): a batch's working set past a few 10k hits leaves
    the cache, and built whole a batch of 8 MU=200 events cost 2.3 times its events one
    by one. On the GPU the batch is built whole (launch count)."""
    cols = (x, y, z, volume_id, layer_id)
    if array_module(x) is np and len(node_offsets) > 2:

        def one(bounds: tuple[int, int]) -> Graph:
            lo, hi = bounds
            part = [c[lo:hi] for c in cols]
            return _build(part, np.array([0, hi - lo]), det, cfg, budget, beam_offset)

        parts = event_by_event(pairwise(int(o) for o in node_offsets), one)
        return _join(parts, np.asarray(node_offsets, dtype=np.int64))
    return _build(cols, node_offsets, det, cfg, budget, beam_offset)


def _join(parts: list[Graph], node_offsets: np.ndarray) -> Graph:
    """One graph of the per-event graphs ``parts`` (hit numbers shifted by ``node_offsets``,
    in place in the joined edges: no shifted copy of each event's edges)."""
    edge_bounds = np.cumsum([0, *(g.num_edges for g in parts)])
    edge_index = np.empty((2, int(edge_bounds[-1])), dtype=np.int64)
    for g, off, lo, hi in zip(
        parts, node_offsets[:-1], edge_bounds[:-1], edge_bounds[1:], strict=True
    ):
        np.add(g.edge_index, off, out=edge_index[:, lo:hi])
    return Graph(
        node_features=np.concatenate([g.node_features for g in parts]),
        edge_index=edge_index,
        edge_features=np.concatenate([g.edge_features for g in parts]),
        node_offsets=node_offsets,
        layer=np.concatenate([g.layer for g in parts]),
    )


def _build(
    cols: Sequence[Array],
    node_offsets: np.ndarray,
    det: Detector,
    cfg: GraphConfig,
    budget: Budget = Budget(),
    beam_offset: float = 0.0,
) -> Graph:
    """``build_graph`` of one batch, built whole (``cols``: its hit columns, in order)."""
    xp = array_module(cols[0])
    x, y, z, volume_id, layer_id = cols
    ctx, node_features, layer = prepare_search(
        x, y, z, volume_id, layer_id, node_offsets, det, cfg, budget, beam_offset
    )
    if xp is np:  # the chunks' edges joined straight into the edge index's rows
        i, j, features = _search_chunks(ctx)
        edge_index = np.empty((2, sum(len(part) for part in i)), dtype=np.int64)
        np.concatenate(i, out=edge_index[0])
        np.concatenate(j, out=edge_index[1])
        edge_features = np.concatenate(features)
    else:
        i, j, edge_features = search_kernels(ctx, cupy_launcher(KERNELS))
        edge_index = xp.stack([i, j])
    return Graph(
        node_features=node_features,
        edge_index=edge_index,
        edge_features=edge_features,
        node_offsets=np.asarray(node_offsets, dtype=np.int64),
        layer=layer,
    )


def prepare_search(
    x: Array,
    y: Array,
    z: Array,
    volume_id: Array,
    layer_id: Array,
    node_offsets: np.ndarray,
    det: Detector,
    cfg: GraphConfig,
    budget: Budget = Budget(),
    beam_offset: float = 0.0,
) -> tuple[CandidateSearch, Array, Array]:
    """The candidate search's inputs (hits sorted into grid cells, one query per inner hit
    and layer pair with its bin and phi windows), the node features and each hit's layer.
    The windows reach ``layer_margin`` and ``beam_offset`` off each layer's surface (see
    :func:`build_graph`)."""
    if not 0 <= beam_offset <= MAX_BEAM_SPOT:
        raise ValueError(f"beam_offset must lie in [0, {MAX_BEAM_SPOT:g}] mm, got {beam_offset}")
    windows = replace(cfg, layer_margin=cfg.layer_margin + beam_offset) if beam_offset else cfg
    xp = array_module(x)
    t = _device_tables(det, cfg.z0_limit, cfg.skip_layers, xp)
    n = int(x.shape[0])
    n_layers, nb, nphi = len(det), cfg.n_bins, cfg.n_phi_bins
    # Geometry in float64 so that the NumPy and CuPy paths agree on every cut decision
    # (float32 rounding differs between CPU and GPU maths libraries at cut boundaries).
    two_pi = 2 * np.pi
    x, y, z = (a.astype(xp.float64) for a in (x, y, z))
    r = xp.hypot(x, y)
    phi = xp.arctan2(y, x)
    phi_p = phi + np.pi  # in [0, 2 pi]
    event = xp.searchsorted(xp.asarray(node_offsets[1:]), xp.arange(n), side="right")
    layer = lookup_layer(t["lut"], volume_id, layer_id)
    n_events = int(node_offsets.shape[0] - 1)
    n_cells = n_events * n_layers * nb * 2 * nphi
    per_hit = (r, z, phi_p, event, layer)
    if xp is np:
        on, cell, lay0 = hit_cells(per_hit, n_cells, t, windows)
    else:
        on, cell, lay0 = hit_cells_kernel(per_hit, n_cells, t, windows, cupy_launcher(KERNELS))
    # int32 keys while the grid's cells fit: on the device a radix sort of half the passes
    # of int64 keys; the same order
    order = argsort(cell.astype(xp.int32) if n_cells < 2**31 else cell, stable=True)
    hit_of = order % n
    phi_sorted = xp.concatenate([phi_p, phi_p + two_pi])[order]
    cell_start = xp.concatenate(
        [xp.zeros(1, dtype=xp.int64), xp.cumsum(bincount(cell, n_cells + 1))]
    )

    # Queries: (inner hit, layer pair), then one per bin of the outer layer it can reach.
    # Layers without a hit in the query's event (the disks of a barrel-only event) get no
    # queries: nothing to find there.
    layer_cells = nb * 2 * nphi
    if xp is np:
        hits_on = np.nonzero(on)[0]
        occupied = bincount(event[hits_on] * n_layers + layer[hits_on], n_events * n_layers)

        def queries(hits: Array) -> int:
            """The queries of ``hits`` (hit, its r and z, first grid row of the outer layer,
            bins, z0 reach, phi centre and phi bins), written into ``fields`` from
            ``made`` on; their count."""
            starts = t["pair_start"]
            lay_on = layer[hits]
            q_hit, q_pair = expand_ranges(starts[lay_on], starts[lay_on + 1])
            qi = hits[q_hit]
            outer = t["pair_outer"][q_pair]
            alive = np.nonzero(occupied[event[qi] * n_layers + outer] > 0)[0]
            out = tuple(field[made : made + len(alive)] for field in fields)
            np.take(qi, alive, out=out[0])
            columns = (r, z, lay0, event, phi_p, cell_start)
            _query_windows_arrays(out[0], outer[alive], columns, t, windows, det, out)
            return len(alive)

        # Each chunk's queries written straight into the fields' arrays, sized from the
        # queries a hit makes on each layer of each event (its pairs to occupied layers):
        # no chunk kept for a join.
        events = np.arange(n_events)[:, None] * n_layers
        live = occupied[events + t["pair_outer"]] > 0
        per_layer = np.zeros(n_events * n_layers, dtype=np.int64)
        np.add.at(per_layer, (events + t["pair_inner"]).ravel(), live.ravel())
        total = int(per_layer[event[hits_on] * n_layers + layer[hits_on]].sum())
        fields = [np.empty(total, dtype=f) for f in QUERY_FIELDS]
        made = 0
        for lo, hi in pairwise(chunk_bounds(len(hits_on), QUERY_HIT_CHUNK, np)):
            made += queries(hits_on[lo:hi])
        parts = [tuple(field[:made] for field in fields)]  # all of them: made == total
        on_layer = per_event(hits_on, node_offsets)
    else:
        launch = cupy_launcher(KERNELS)
        qi, outer = query_pairs(on, event, lay0, cell_start, t, layer_cells, launch)
        columns = (r, z, lay0, event, phi_p, cell_start)
        parts = [query_windows(qi, outer, columns, t, windows, det.bfield, launch)]
        # Each event's hits on a layer: half its cells' entries (a hit is in two cells).
        event_cells = np.arange(n_events + 1, dtype=np.int64) * (n_layers * layer_cells)
        on_layer = xp.diff(cell_start[xp.asarray(event_cells)]) // 2
    qi, ri, zi, row0, b_lo, b_hi, reach, centre, p_lo, p_hi = parts[0]
    ctx = CandidateSearch(
        qi=qi,
        ri=ri,
        zi=zi,
        row0=row0,
        b_lo=b_lo,
        b_hi=b_hi,
        reach=reach,
        centre=centre,
        p_lo=p_lo,
        p_hi=p_hi,
        cell_start=cell_start,
        hit_of=hit_of,
        phi_sorted=phi_sorted,
        r_sorted=xp.concatenate([r, r])[order],
        z_sorted=z[hit_of],
        r=r,
        eta0=_eta(z, r, xp),
        sigma=t["sigma"][lay0],
        sigma_z=t["sigma_z"][lay0],
        sigma_r=t["sigma_r"][lay0],
        nphi=nphi,
        slope=cfg.phi_slope_max(det.bfield),
        cfg=cfg,
        xp=xp,
        node_offsets=np.asarray(node_offsets, dtype=np.int64),
        on_layer=on_layer,
        budget=budget,
    )
    node_features = xp.stack([r / 1000.0, phi / np.pi, z / 1000.0], axis=1).astype(xp.float32)
    return ctx, node_features, lay0


HitColumns = tuple[Array, Array, Array, Array, Array]  # r, z, phi + pi, event, layer
#: dtypes of the queries' fields on the CPU: hit, r, z, grid row, bins, reach, centre, phi bins
QUERY_FIELDS = (
    np.int64,
    np.float64,
    np.float64,
    *[np.int64] * 3,
    *[np.float64] * 2,
    *[np.int64] * 2,
)


def hit_cells(
    per_hit: HitColumns, n_cells: int, t: dict[str, Array], cfg: GraphConfig
) -> tuple[Array, Array, Array]:
    """Per hit (``per_hit``: r, z, phi + pi, event, layer or -1 where unknown, of a batch
    whose grid has ``n_cells``; ``t``: the layer tables of ``_device_tables``), whether it is on its
    layer's surface, its two grid cells and its layer (0 where unknown). On the surface: up
    to ``cfg``'s margin (the windows' reach: the margin plus the beam line's offset) and off
    the beam line (a hit further off was found or not as its grid cell overlapped a window);
    the others (an unknown layer, or bad input: a hit placed anywhere) can make
    no edge, so they enter no search and buy no budget (they would pay for a pile): their
    cells are one past the grid's. A grid cell is (event, layer, u bin, phi bin), u the z
    along a barrel layer or the r across a disk; each hit also in phi bin + n_phi, at phi +
    2 pi, so that a window never wraps (the second half of the cells). Cells are contiguous
    in phi: a window is a slice."""
    r, z, phi_p, event, layer = per_hit
    xp = array_module(r)
    n_layers, nb, nphi = len(t["r"]), cfg.n_bins, cfg.n_phi_bins
    lay0 = xp.where(layer >= 0, layer, 0)
    barrel = t["barrel"][lay0]
    u = xp.where(barrel, z, r)
    off = xp.abs(xp.where(barrel, r - t["r"][lay0], z - t["z"][lay0]))
    near = cfg.layer_margin
    on = (layer >= 0) & (off <= near) & (u >= t["u_min"][lay0] - near)
    on &= (u <= t["u_max"][lay0] + near) & (r >= MIN_QUERY_R)
    pbin = xp.minimum((phi_p * (nphi / (2 * np.pi))).astype(xp.int64), nphi - 1)
    row = ((event * n_layers + lay0) * nb + _bin_of(u, lay0, t, nb)) * (2 * nphi)
    cell = xp.concatenate(
        [xp.where(on, row + pbin, n_cells), xp.where(on, row + pbin + nphi, n_cells)]
    )
    return on, cell, lay0


def _bin_of(u: Array, lay: Array, t: dict[str, Array], nb: int) -> Array:
    """The bin of coordinate ``u`` among the ``nb`` of layer ``lay``'s range, clipped into
    them."""
    xp = array_module(u)
    frac = (u - t["u_min"][lay]) / (t["u_max"][lay] - t["u_min"][lay])
    return xp.clip(xp.floor(frac * nb), 0, nb - 1).astype(xp.int64)


def hit_cells_kernel(
    per_hit: HitColumns, n_cells: int, t: dict[str, Array], cfg: GraphConfig, launch: Launch
) -> tuple[Array, Array, Array]:
    """:func:`hit_cells` in one kernel (``hit_cells``), a thread per hit, for about forty
    array operations."""
    r = per_hit[0]
    xp, i64, n = array_module(r), np.int64, len(r)
    n_layers, nb, nphi = len(t["r"]), cfg.n_bins, cfg.n_phi_bins
    on = xp.empty(n, dtype=bool)
    cell = xp.empty(2 * n, dtype=xp.int64)
    lay0 = xp.empty(n, dtype=xp.int64)
    floats = (a.astype(xp.float64, copy=False) for a in per_hit[:3])
    columns = (*floats, *(a.astype(xp.int64, copy=False) for a in per_hit[3:]))
    tables = (t[k] for k in ("barrel", "r", "z", "u_min", "u_max"))
    sizes = (i64(n_layers), i64(nb), i64(nphi), i64(n_cells))
    scalars = (cfg.layer_margin, MIN_QUERY_R, nphi / (2 * np.pi))
    args = contiguous((i64(n), *columns, *tables), xp)
    launch("hit_cells", n, (*args, *sizes, *map(np.float64, scalars), on, cell, lay0))
    return on, cell, lay0


def _query_windows_arrays(
    qi: Array,
    outer: Array,
    columns: tuple[Array, ...],
    t: dict[str, Array],
    cfg: GraphConfig,
    det: Detector,
    out: tuple[np.ndarray, ...],
) -> None:
    """:func:`query_windows` in array operations (the CPU's): the windows of the queries
    (inner hit ``qi``, ``outer`` layer; ``columns``: per hit r, z, layer, event, phi + pi,
    then the grid's cell starts), written into ``out`` (arrays of :data:`QUERY_FIELDS`,
    ``qi`` the first, the length of ``qi``)."""
    r, z, lay0, event, phi_p, cell_start = columns
    n_layers, nb, nphi, m = len(det), cfg.n_bins, cfg.n_phi_bins, cfg.layer_margin
    _, ri, zi, row0, b_lo, b_hi, reach, centre, p_lo, p_hi = out
    ob = t["barrel"][outer]
    np.take(r, qi, out=ri)
    np.take(z, qi, out=zi)
    # z0 reach: between barrel layers the resolution term at the outer layer's nearest
    # radius (a hit there, up to the margin inside, has the largest error: the reach holds
    # every segment the final cut keeps), else the bound. Each formula (hypot, barrel and
    # disk ranges) is computed on the queries it is for only (elementwise: the same values
    # as computed on all and picked).
    inner = lay0[qi]
    r_out = t["r"][outer]
    sig = cfg.z0_lever_max * np.maximum(t["sigma"][inner], t["sigma"][outer])
    if (k := _part(ob & t["barrel"][inner])) is not None:
        ri_k, r_near = ri[k], r_out[k] - m
        dr_b = np.maximum(r_near - ri_k, 1.0)
        sz_in, sz_out = t["sigma_z"][inner[k]], t["sigma_z"][outer[k]]
        sig[k] = np.hypot(sz_in * r_near / dr_b, sz_out * ri_k / dr_b)
    np.minimum(cfg.z0_max + cfg.z0_sigmas * sig, cfg.z0_limit, out=reach)

    # The more common kind of target on all queries (no gather), the other's gathered and
    # put in its place.
    def barrel(k: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _barrel_range(ri[k], zi[k], r_out[k], reach[k], m, np)

    def disk(k: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o = outer[k]
        return _disk_range(ri[k], zi[k], t["z"][o], t["u_max"][o], reach[k], m, np)

    most, other, fewer = (
        (barrel, disk, ~ob) if 2 * np.count_nonzero(ob) >= len(ob) else (disk, barrel, ob)
    )
    u_lo, u_hi = most(slice(None))
    if len(k := np.nonzero(fewer)[0]):
        u_lo[k], u_hi[k] = other(k)
    dr_max = np.where(ob, r_out + m, u_hi) - ri
    # Half-width of the phi window, just under pi (the whole circle; more would reach
    # outside the grid). The dphi cut stops there too: a hit exactly opposite, at dphi -pi
    # in one copy and +pi in the other, is found as neither (no segment from the beam line
    # turns by pi), not as both.
    w = np.minimum(
        cfg.phi_slope_max(det.bfield) * np.maximum(dr_max, 0.0) + cfg.phi_tolerance, PHI_CAP
    )
    u_min = t["u_min"][outer]  # _bin_of of both ends, the outer layer's range read once
    width = t["u_max"][outer] - u_min
    for u, b in ((u_lo, b_lo), (u_hi, b_hi)):
        b[:] = np.clip(np.floor((u - u_min) / width * nb), 0, nb - 1).astype(np.int64)
    # A query whose bins hold no hit at all searches nothing (the disks of a barrel-only
    # event, windows clipped onto an empty bin). Exact: the hits of rows [first, last] are a
    # difference of two cell starts.
    np.multiply(event[qi] * n_layers + outer, nb, out=row0)
    first, last = (row0 + b_lo) * (2 * nphi), (row0 + b_hi + 1) * (2 * nphi)
    np.copyto(b_hi, b_lo - 1, where=cell_start[last] - cell_start[first] <= 0)
    # phi-bin range, moved up by n_phi (and 2 pi) when it would start below 0.
    to_bin = nphi / (2 * np.pi)
    phi_i = phi_p[qi]
    lo_bin = np.floor((phi_i - w) * to_bin).astype(np.int64)
    hi_bin = np.floor((phi_i + w) * to_bin).astype(np.int64)
    low = lo_bin < 0
    np.add(lo_bin, low * nphi, out=p_lo)
    np.minimum(hi_bin + low * nphi, 2 * nphi - 1, out=p_hi)
    np.add(phi_i, low * (2 * np.pi), out=centre)


def query_pairs(
    on: Array,
    event: Array,
    lay0: Array,
    cell_start: Array,
    t: dict[str, Array],
    layer_cells: int,
    launch: Launch,
) -> tuple[Array, Array]:
    """The queries (inner hit, outer layer) of the hits ``on`` their layer's surface, hit by
    hit, a hit's in the order of its layer pairs, but where the outer layer holds no hit of
    the hit's event (its ``layer_cells`` cells from ``cell_start`` are empty): what the
    arrays' expansion and compaction give, in two kernels (``query_counts``, then
    ``query_fill`` from the counts' prefix sum), a thread per hit, and one host
    synchronisation (the total)."""
    xp, i64, n = array_module(on), np.int64, len(on)
    counts = xp.zeros(n + 1, dtype=xp.int64)
    per_hit = (on, *(a.astype(xp.int64, copy=False) for a in (event, lay0)), cell_start)
    sizes = (i64(len(t["r"])), i64(layer_cells))  # layers, cells a layer
    args = contiguous((i64(n), *per_hit, t["pair_start"], t["pair_outer"], *sizes), xp)
    launch("query_counts", n, (*args, counts[1:]))
    start = xp.cumsum(counts)
    total = int(start[-1])
    qi, outer = xp.empty(total, dtype=xp.int64), xp.empty(total, dtype=xp.int64)
    if total:
        launch("query_fill", n, (*args, start, qi, outer))
    return qi, outer


def query_windows(
    qi: Array,
    outer: Array,
    columns: tuple[Array, ...],
    t: dict[str, Array],
    cfg: GraphConfig,
    bfield: float,
    launch: Launch,
) -> tuple[Array, ...]:
    """The windows of the queries (inner hit ``qi``, ``outer`` layer) as
    :func:`prepare_search`'s ``queries`` gives them (hit, r, z, grid row, bins, z0 reach,
    phi centre, phi bins), in one kernel (``doublet_queries``), a thread per query, where
    the arrays take about 150 launches. ``columns``: per hit r, z, layer, event, phi + pi,
    then the grid's cell starts; ``t``: the layer tables (``_device_tables``)."""
    xp = array_module(qi)
    n, i64, f64 = len(qi), np.int64, np.float64
    floats, ints = xp.empty((4, n)), xp.empty((5, n), dtype=xp.int64)
    r, z, lay0, event, phi_p, cell_start = columns
    ids = (a.astype(xp.int64, copy=False) for a in (qi, outer))
    per_hit = (r, z, lay0.astype(xp.int64, copy=False), event, phi_p, cell_start)
    tables = (t[k] for k in ("barrel", "r", "z", "u_min", "u_max", "sigma_z", "sigma"))
    sizes = (i64(len(t["r"])), i64(cfg.n_bins), i64(cfg.n_phi_bins))
    cuts = (cfg.layer_margin, cfg.z0_lever_max, cfg.z0_max, cfg.z0_sigmas, cfg.z0_limit)
    phi = (cfg.phi_slope_max(bfield), cfg.phi_tolerance, cfg.n_phi_bins / (2 * np.pi), 2 * np.pi)
    args = contiguous((i64(n), *ids, *per_hit, *tables), xp)
    launch("doublet_queries", n, (*args, *sizes, *map(f64, (*cuts, *phi)), floats, ints))
    ri, zi, reach, centre = floats
    row0, b_lo, b_hi, p_lo, p_hi = ints
    return qi, ri, zi, row0, b_lo, b_hi, reach, centre, p_lo, p_hi


def _eta(z: Array, r: Array, xp: Any) -> Array:
    """Pseudorapidity seen from the origin: asinh(z / r) (+-inf on the beam line, where only
    bad input puts a hit)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.arcsinh(z / r)


def search_arrays(ctx: CandidateSearch) -> tuple[Array, Array, Array]:
    """The candidate search in array operations, edges in query, bin, slot order. On the CPU
    the (query, bin) pairs and their slots are made by chunks of queries, and the
    candidates searched by chunks of candidates, small enough for their temporaries to stay
    in cache (1.5x faster at MU=200 than one pass), on threads when allowed (NumPy releases
    the GIL in its loops); on CuPy in one chunk (``bench/gpu_bench.py`` compares it with the
    kernels). The candidates are checked against the budget before they are expanded, the
    doublets as they are found."""
    i, j, edge_features = (ctx.xp.concatenate(cols) for cols in _search_chunks(ctx))
    return i, j, edge_features


def _search_chunks(ctx: CandidateSearch) -> tuple[tuple[Array, ...], ...]:
    """:func:`search_arrays`'s edges (i, j) and features, chunk by chunk (not joined)."""
    xp = ctx.xp
    bounds = list(pairwise(chunk_bounds(len(ctx.qi), QUERY_BIN_CHUNK, xp)))
    threads = min(ctx.cfg.threads, available_cpus()[0], len(bounds))

    def slots(b: tuple[int, int]) -> tuple[Array, ...]:
        """A piece's bin queries and, on the CPU, the running total of their candidates,
        summed while the slots are in cache (the chunks' bounds and their expansion read
        it)."""
        q, lo, hi = ctx.bin_slots(*b)  # hi >= lo: the cell starts ascend
        return q, lo, hi, np.cumsum(hi - lo) if xp is np else None

    def search(c: tuple[Array, ...]) -> tuple[Array, ...]:
        q, lo, hi, ends, s, e = c
        if ends is not None:  # the chunk's own running total
            ends = ends[s:e] - ends[s - 1] if s else ends[:e]
        return ctx.run(q[s:e], lo[s:e], hi[s:e], ends)

    with ThreadPoolExecutor(threads) as pool:
        run = map if threads == 1 else pool.map
        pieces = list(run(slots, bounds))
        per_ev = [per_event(ctx.qi, ctx.node_offsets, hi - lo, of=q) for q, lo, hi, _ in pieces]
        enforce(
            "doublet candidates",
            sum(per_ev[1:], per_ev[0]),
            ctx.on_layer,
            ctx.budget.candidates_per_hit,
            ctx.budget,
        )
        chunks = [
            (q, lo, hi, ends, s, e)
            for q, lo, hi, ends in pieces
            for s, e in pairwise(chunk_bounds(len(q), SEARCH_CHUNK, xp, ends))
        ]
        # The doublets counted as the chunks are searched, a group at a time: an event over
        # its budget is refused once it passes it (with the count so far), not after its
        # every doublet is built (up to candidates_per_hit / edges_per_hit times as many).
        parts: list[tuple[Array, Array, Array]] = []
        found = xp.zeros(len(ctx.node_offsets) - 1, dtype=xp.int64)
        group = SEARCH_GROUP * threads
        for start in range(0, len(chunks), group):
            done = list(run(search, chunks[start : start + group]))
            parts += done
            for i, _, _ in done:
                found += per_event(i, ctx.node_offsets)
            enforce("doublets", found, ctx.on_layer, ctx.budget.edges_per_hit, ctx.budget)
    i, j, features = zip(*parts, strict=True)
    return i, j, features


def search_kernels(ctx: CandidateSearch, launch: Launch) -> tuple[Array, Array, Array]:
    """The candidate search as kernels: a thread per query counts its candidates (for the
    budget), then a thread per candidate flags the edges and, from the flags' prefix sum,
    writes them; one host synchronisation (the per-event counts, checked against the
    budget) sizes the output, after one that checks the candidates and sizes the flags.
    Same edges, order and features as :func:`search_arrays`."""
    xp, i64 = ctx.xp, np.int64
    args = search_args(ctx)
    budget = ctx.budget
    cand_start = candidate_starts(ctx, launch, args)
    # Each event's queries (sorted by hit), then its candidates: ranges of their numbering.
    events = cand_start[xp.searchsorted(ctx.qi, xp.asarray(ctx.node_offsets))]
    per_ev = enforce(
        "doublet candidates",
        xp.diff(events),
        ctx.on_layer,
        budget.candidates_per_hit,
        budget,
    )
    n_cand = int(per_ev.sum())
    flags = xp.zeros(n_cand + 1, dtype=xp.uint8)  # candidate t's at t + 1
    launch("doublet_flags", n_cand, (i64(n_cand), cand_start, *args, flags[1:]))
    edge_start = running_total(flags)  # edges before candidate t (past 2^31 at batch 64)
    per_ev = enforce(
        "doublets",
        xp.diff(edge_start[events]),
        ctx.on_layer,
        budget.edges_per_hit,
        budget,
    )
    total = int(per_ev.sum())
    i = xp.empty(total, dtype=xp.int64)
    j = xp.empty(total, dtype=xp.int64)
    features = xp.empty((total, 6), dtype=xp.float32)
    if total:
        edges = (flags[1:], edge_start, i, j, features)
        launch("doublet_fill", n_cand, (i64(n_cand), cand_start, *args, *edges))
    return i, j, features


def candidate_starts(ctx: CandidateSearch, launch: Launch, args: tuple[Any, ...]) -> Array:
    """Where each query's candidates (the slots of its phi window in each of its bins)
    start in their numbering (query, bin, slot order), then their total: the exclusive
    prefix sum of each query's count, counted in one kernel (a thread a query) without
    expanding the (query, bin) pairs, no host synchronisation (``args``:
    :func:`search_args`). What the work budget checks before the search."""
    counts = ctx.xp.zeros(len(ctx.qi) + 1, dtype=ctx.xp.int64)
    launch("doublet_candidates", len(ctx.qi), (*args, counts[1:]))
    return ctx.xp.cumsum(counts)


def search_args(ctx: CandidateSearch) -> tuple[Any, ...]:
    """The kernels' arguments (SEARCH_PARAMS of doublet_search.cu), in their order."""
    cfg, i64, f64 = ctx.cfg, np.int64, np.float64
    return contiguous(
        (
            i64(len(ctx.qi)),
            *(ctx.qi, ctx.ri, ctx.zi, ctx.row0, ctx.b_lo, ctx.b_hi, ctx.p_lo, ctx.p_hi),
            *(ctx.reach, ctx.centre, ctx.cell_start, ctx.hit_of),
            *(ctx.r_sorted, ctx.phi_sorted, ctx.z_sorted),
            *(ctx.r, ctx.eta0, ctx.sigma, ctx.sigma_z, ctx.sigma_r),
            i64(ctx.nphi),
            *(f64(v) for v in (ctx.slope, cfg.phi_tolerance, cfg.z0_max, cfg.z0_sigmas)),
            *(f64(v) for v in (cfg.z0_lever_max, cfg.z0_limit, cfg.deta_max)),
        ),
        ctx.xp,
    )


@dataclass(frozen=True, kw_only=True)
class CandidateSearch:
    """What the candidate search of one chunk of (query, bin) pairs reads."""

    qi: Array  # per query: inner hit, its r and z, first grid row of its outer layer
    ri: Array
    zi: Array
    row0: Array
    b_lo: Array  # per query: bins [b_lo, b_hi] and phi bins [p_lo, p_hi] to search
    b_hi: Array
    reach: Array  # per query: |z0| bound before the resolution-aware cut, phi centre
    centre: Array
    p_lo: Array
    p_hi: Array
    cell_start: Array  # per grid cell: first slot; per slot: hit, phi (+ 2 pi), r, z

    hit_of: Array
    phi_sorted: Array
    r_sorted: Array
    z_sorted: Array
    r: Array
    eta0: Array  # per hit: eta seen from the origin
    sigma: Array  # per hit: resolution, and its z (barrel) and r (disk) parts
    sigma_z: Array
    sigma_r: Array
    nphi: int
    slope: float  # largest |dphi/dr| accepted
    cfg: GraphConfig
    xp: Any
    node_offsets: np.ndarray  # the batch's events, their hits on a layer, what each may make
    on_layer: Array
    budget: Budget

    def slots(
        self, q: Array, b: Array, start: int = 0, stop: int | None = None
    ) -> tuple[Array, Array]:
        """The candidates of each bin query ``(q, b)``: its slots ``[lo, hi)`` (the hits in
        its phi window); ``q`` counts from query ``start``, and only queries ``[start,
        stop)`` are read. Per query, the cells of its first bin are one gather; a bin
        further is 2 n_phi cells on."""
        span = 2 * self.nphi
        queries = slice(start, stop)
        first = self.row0[queries] * span
        row = b * span
        lo = self.cell_start[row + (first + self.p_lo[queries])[q]]
        return lo, self.cell_start[row + (first + self.p_hi[queries] + 1)[q]]

    def bin_slots(self, start: int, stop: int) -> tuple[Array, Array, Array]:
        """The bin queries of queries ``[start, stop)``: their query and slots ``[lo, hi)``."""
        if self.xp is np:
            return self._bin_slots_cpu(start, stop)
        q, b = expand_ranges(self.b_lo[start:stop], self.b_hi[start:stop] + 1)
        lo, hi = self.slots(q, b, start, stop)
        q += start
        return q, lo, hi

    def _bin_slots_cpu(self, start: int, stop: int) -> tuple[Array, Array, Array]:
        """:meth:`bin_slots` on the CPU, the same numbers: the k-th bin query of a query
        reads the cells (row0 + b_lo + k) * 2 n_phi + p_lo (to p_hi + 1), k * 2 n_phi past
        those of the query's first, so each bin query's cells are a per-query number plus
        its place in the expansion times 2 n_phi (no bin gathered and scaled per bin
        query)."""
        queries = slice(start, stop)
        span = 2 * self.nphi
        b_lo = self.b_lo[queries]
        counts = np.maximum(self.b_hi[queries] + 1 - b_lo, 0)
        ends = np.cumsum(counts)
        q = np.repeat(np.arange(len(counts)), counts)
        first = (b_lo - ends + counts + self.row0[queries]) * span  # less k * span
        step = np.arange(int(ends[-1]) if len(ends) else 0) * span
        lo = self.cell_start[step + (first + self.p_lo[queries])[q]]
        hi = self.cell_start[step + (first + self.p_hi[queries] + 1)[q]]
        q += start
        return q, lo, hi

    def run(self, q: Array, lo: Array, hi: Array, ends: Array | None = None) -> tuple[Array, ...]:
        """Edges (i, j) of bin queries of queries ``q``, whose candidates are the slots
        ``[lo, hi)`` (``ends``: the running total of their counts, where at hand), and their
        features (float32, one row an edge: dr, dphi, dz, deta, dphi/dr over the largest
        slope, z0; each scaled to about unit range)."""
        xp, cfg = self.xp, self.cfg
        cand, pos = expand_ranges(lo, hi, ends)
        qq = q[cand]
        # Per-query values are read through qq, per-hit ones through the sorted slots (both
        # gathers run mostly forward in memory). The phi window and the z0 reach are cut in
        # one pass, and only the indices are compacted: cheaper than compacting every column
        # after each cut. (dr <= 0 candidates divide by zero; the first term drops them.)
        ri, zi = self.ri[qq], self.zi[qq]
        dr = self.r_sorted[pos] - ri
        dphi = self.phi_sorted[pos] - self.centre[qq]
        slope = self.slope
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = zi - ri * (self.z_sorted[pos] - zi) / dr
        keep = (dr > 0) & (xp.abs(dphi) <= xp.minimum(slope * dr + cfg.phi_tolerance, PHI_CAP))
        keep &= xp.abs(z0) <= self.reach[qq]
        k = xp.nonzero(keep)[0]
        qq, pos, dr, dphi, z0 = qq[k], pos[k], dr[k], dphi[k], z0[k]
        dz = self.z_sorted[pos] - self.zi[qq]
        i, j = self.qi[qq], self.hit_of[pos]
        # The resolution-aware z0 cut and eta consistency on the survivors.
        deta = xp.arcsinh(dz / dr) - self.eta0[j]
        cap = cfg.z0_lever_max * xp.maximum(self.sigma[i], self.sigma[j])
        sig = xp.minimum(self.z0_error(i, j, dr, dz), cap)
        z0_cut = xp.minimum(cfg.z0_max + cfg.z0_sigmas * sig, cfg.z0_limit)
        k = xp.nonzero((xp.abs(z0) <= z0_cut) & (xp.abs(deta) <= cfg.deta_max))[0]
        dr, dphi = dr[k], dphi[k]
        features = xp.empty((len(k), 6), dtype=xp.float32)
        features[:, 0] = dr / 100.0
        features[:, 1] = dphi / 0.01
        features[:, 2] = dz[k] / 100.0
        features[:, 3] = deta[k] / 0.1
        features[:, 4] = (dphi / dr) / slope
        features[:, 5] = z0[k] / cfg.z0_limit
        return i[k], j[k], features

    def z0_error(self, i: Array, j: Array, dr: Array, dz: Array) -> Array:
        """Standard deviation of the segments' z0 from their two hits' resolutions."""
        r, sz, sr, xp = self.r, self.sigma_z, self.sigma_r, self.xp
        ri, rj, dr2 = r[i], r[j], dr * dr
        # Products, not ** 2: CuPy's float64 power is pow(), off by up to 2 ulp.
        a, c = sz[i] * rj / dr, sz[j] * ri / dr
        d, e = sr[i] * dz * rj / dr2, sr[j] * dz * ri / dr2
        return xp.sqrt(a * a + c * c + d * d + e * e)


def event_graphs(graph: Graph) -> list[Graph]:
    """The batch's graph cut into one graph per event (views; hits numbered from 0 in each).
    Needs edges sorted by inner hit, as :func:`build_graph` makes them and selections keep."""
    offsets: np.ndarray = graph.node_offsets  # on the host
    source = to_host(graph.edge_index[0])
    edge_bounds = np.searchsorted(source, offsets)
    return [
        Graph(
            node_features=graph.node_features[lo:hi],
            edge_index=graph.edge_index[:, e_lo:e_hi] - lo,
            edge_features=graph.edge_features[e_lo:e_hi],
            node_offsets=np.array([0, hi - lo], dtype=np.int64),
            layer=graph.layer[lo:hi],
        )
        for lo, hi, e_lo, e_hi in zip(
            offsets[:-1], offsets[1:], edge_bounds[:-1], edge_bounds[1:], strict=True
        )
    ]


def select_edges(graph: Graph, mask: Array) -> Graph:
    """The graph with only the edges of ``mask`` (hits, their numbering and offsets kept).
    One host synchronisation on the device (the kept count)."""
    keep = array_module(mask).nonzero(mask)[0]
    return Graph(
        node_features=graph.node_features,
        edge_index=graph.edge_index[:, keep],
        edge_features=graph.edge_features[keep],
        node_offsets=graph.node_offsets,
        layer=graph.layer,
    )


def without_isolated_hits(graph: Graph) -> Graph:
    """The graph without the hits that no edge touches, edges in the same order.

    After pruning most hits have no edge left; a GNN's per-hit work (every step updates
    every hit) shrinks with them and its edge scores are unchanged (a hit without edges
    sends and receives nothing). ``node_offsets`` still delimit the events.
    """
    xp = array_module(graph.edge_index)
    used = xp.zeros(graph.num_nodes, dtype=bool)
    used[graph.edge_index[0]] = True
    used[graph.edge_index[1]] = True
    ends = xp.cumsum(used, dtype=xp.int64)
    # The kept hits before each event's first: events + 1 numbers down (one host
    # synchronisation), not every kept hit; the last, all of them, sizes the compaction.
    before = xp.concatenate([xp.zeros(1, dtype=xp.int64), ends])
    offsets = to_host(before[xp.asarray(graph.node_offsets)]).astype(np.int64)
    kept = compact(used, int(offsets[-1]), ends)
    new_id = ends - 1
    return Graph(
        node_features=graph.node_features[kept],
        edge_index=new_id[graph.edge_index],
        edge_features=graph.edge_features,
        node_offsets=offsets,
        layer=graph.layer[kept],
    )
