"""Event simulation: generation, propagation, digitisation, noise, truth.

Each event has its own random stream, spawned from the run seed, so the same seed gives
byte-identical events whatever the number of events or the order they are made in.
Detector faults for data-quality tests: dead layers read nothing (their hits are dropped
once the particles, crossings and noise are drawn: the other hits stay the same, only their
ids and their order within a module change), noisy layers get extra noise hits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields

import numpy as np

from streamtrk.detector import BARREL, Detector
from streamtrk.errors import SettingError
from streamtrk.event import Event, Hits, HitTruth, Particles, Truth
from streamtrk.io.weights import hit_order_and_weights
from streamtrk.sim.generator import GeneratorConfig, generate
from streamtrk.sim.propagate import Crossings, cos_incidence, propagate, surface_normals
from streamtrk.wire.schema import MAX_INT

SIMULATOR_VERSION = 2  # 2: bent with c = 0.299792458 GeV/(T m) (1: with 0.3); a card records it


MAX_NOISE_FRACTION = 0.99  # 99 noise hits a signal hit: beyond it, tens of GB an event
MAX_NOISY_HITS = 10_000_000  # mean extra noise hits of a noisy layer (a mu = 10000 event's)
OVERLAP_GAP = 3.0  # mm between a module and the one overlapping it, along the surface's normal

#: A detector layer as (volume_id, layer_id).
LayerId = tuple[int, int]


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings. ``noise_fraction`` is the fraction of all hits that are noise;
    ``dead_layers`` read nothing; ``noisy_layers`` maps a layer to the mean number of extra
    noise hits per event on it; ``overlap_fraction`` is the share of crossings that also
    cross the neighbouring module of their layer where the two overlap (a second hit of the
    particle on that layer, as real detectors give; none by default)."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    noise_fraction: float = 0.19
    max_turns: float = 0.5
    min_pt: float = 0.15  # GeV; as in TrackML, softer particles are generated but not propagated
    dead_layers: frozenset[LayerId] = frozenset()
    noisy_layers: tuple[tuple[LayerId, float], ...] = ()
    overlap_fraction: float = 0.0

    def __post_init__(self) -> None:
        # Written so that a NaN fails each check (it fails every comparison).
        if not 0 <= self.overlap_fraction <= 1:
            raise SettingError(f"overlap fraction must be in [0, 1], got {self.overlap_fraction}")
        if not 0 <= self.noise_fraction <= MAX_NOISE_FRACTION:
            raise SettingError(
                f"noise fraction must be in [0, {MAX_NOISE_FRACTION}], got {self.noise_fraction}"
            )
        if not 0 < self.max_turns < math.inf:
            raise SettingError(f"max_turns must be a finite number > 0, got {self.max_turns}")
        if not self.min_pt >= 0:
            raise SettingError(f"min_pt must be >= 0, got {self.min_pt}")
        for layer, hits in self.noisy_layers:
            if not 0 <= hits <= MAX_NOISY_HITS:
                raise SettingError(
                    f"extra noise hits of layer {layer} must be >= 0 and at most "
                    f"{MAX_NOISY_HITS}, got {hits}"
                )
        both = sorted(set(self.dead_layers) & {tuple(layer) for layer, _ in self.noisy_layers})
        if both:
            v, la = both[0]
            raise SettingError(f"layer {v}:{la} is both dead and noisy: a dead layer reads nothing")


def layer_indices(det: Detector, layers: Iterable[LayerId]) -> np.ndarray:
    """Table indices of (volume_id, layer_id) pairs; ValueError names one the detector lacks."""
    pairs = list(layers)
    if not pairs:
        return np.zeros(0, dtype=np.int64)
    vol, lay = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    index = det.layer_index(vol, lay)
    for (v, la), i in zip(pairs, index, strict=True):
        if i < 0:
            raise SettingError(f"the detector has no layer {v}:{la} (volume:layer)")
    return index


def smear(det: Detector, c: Crossings, rng: np.random.Generator) -> np.ndarray:
    """Measured positions: true crossings smeared by the layer resolution, on the surface."""
    x, y, z = c.position.T
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    a = rng.normal(size=len(x)) * det.res_a[c.layer]
    b = rng.normal(size=len(x)) * det.res_b[c.layer]
    barrel = det.kind[c.layer] == BARREL
    r_m = np.where(barrel, r, r + b)
    z_m = np.where(barrel, z + b, z)
    phi_m = phi + a / r_m
    return np.stack([r_m * np.cos(phi_m), r_m * np.sin(phi_m), z_m], axis=1)


def overlaps(
    det: Detector, c: Crossings, fraction: float, rng: np.random.Generator
) -> tuple[Crossings, np.ndarray]:
    """``c`` and, for a share ``fraction`` of its crossings, a second crossing of the same
    layer by the same particle: the overlapping module, ``OVERLAP_GAP`` further across the
    surface along the particle's way out of it (a straight line along the momentum: the
    helix's sagitta over a few mm is microns), appended after ``c``'s; and the indices in
    ``c`` of the crossings given a second, in the seconds' order."""
    first = np.flatnonzero(rng.random(len(c.layer)) < fraction)
    extra = c.take(first)
    u = extra.momentum / np.linalg.norm(extra.momentum, axis=1)[:, None]
    cos_inc = cos_incidence(u, surface_normals(det, extra.layer, extra.position))
    extra.position = extra.position + u * (OVERLAP_GAP / cos_inc)[:, None]
    both = Crossings(
        *(np.concatenate([getattr(c, f.name), getattr(extra, f.name)]) for f in fields(c))
    )
    return both, first


def _noise(det: Detector, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noise hits, uniform over modules (as in real TrackML data): (layer, position)."""
    weight = det.n_modules / det.n_modules.sum()
    return _noise_on(det, rng.choice(len(det), size=n, p=weight), rng)


def _noise_on(
    det: Detector, layer: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One noise hit on each of ``layer`` (table indices), uniform over its modules."""
    n = len(layer)
    phi = rng.uniform(-np.pi, np.pi, n)
    u = rng.random(n)
    barrel = det.kind[layer] == BARREL
    r = np.where(barrel, det.r[layer], 0.0)
    z = np.where(barrel, (2 * u - 1) * det.half_length[layer], det.z[layer])
    for i in np.unique(layer[~barrel]):
        sel = layer == i
        rings = np.asarray(det.rings[i], dtype=float)
        width = (det.r_max[i] - det.r_min[i]) / len(rings)
        ring = rng.choice(len(rings), size=int(sel.sum()), p=rings / rings.sum())
        r[sel] = det.r_min[i] + (ring + u[sel]) * width
    return layer, np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def simulate_event(
    det: Detector, cfg: SimConfig, rng: np.random.Generator, *, run: int = 0, event: int = 0
) -> Event:
    """Simulate one bunch crossing with truth."""
    gen = generate(cfg.generator, rng)
    cross = propagate(det, gen, rng, max_turns=cfg.max_turns, min_pt=cfg.min_pt)
    c = cross.take(rng.random(len(cross.layer)) >= det.inefficiency[cross.layer])
    first = np.zeros(0, dtype=np.int64)  # the crossings given a second hit
    if cfg.overlap_fraction > 0:  # no draw without: the default's events stay as they were
        c, first = overlaps(det, c, cfg.overlap_fraction, rng)
    measured = smear(det, c, rng)
    n_sig = len(c.layer)
    f = cfg.noise_fraction
    n_noise = int(rng.poisson(n_sig * f / (1 - f))) if f > 0 else 0
    noise_layer, noise_pos = _noise(det, n_noise, rng)
    if cfg.noisy_layers:
        index = layer_indices(det, (layer for layer, _ in cfg.noisy_layers))
        extra = rng.poisson([hits for _, hits in cfg.noisy_layers])
        extra_layer, extra_pos = _noise_on(det, np.repeat(index, extra), rng)
        noise_layer = np.concatenate([noise_layer, extra_layer])
        noise_pos = np.concatenate([noise_pos, extra_pos])
        n_noise = len(noise_layer)

    layer = np.concatenate([c.layer, noise_layer])
    pos = np.concatenate([measured, noise_pos])
    true_pos = np.concatenate([c.position, noise_pos])
    true_mom = np.concatenate([c.momentum, np.zeros((n_noise, 3))])
    particle_id = np.concatenate([c.particle + 1, np.zeros(n_noise, dtype=np.int64)])
    module = det.module_id(layer, pos[:, 0], pos[:, 1], pos[:, 2])
    if len(first):  # a second hit is on the module overlapping the first's
        p = pos[first]
        second = slice(n_sig - len(first), n_sig)
        module[second] = det.overlapping_module(layer[first], p[:, 0], p[:, 1], p[:, 2])
    if cfg.dead_layers:
        live = ~np.isin(layer, layer_indices(det, sorted(cfg.dead_layers)))
        layer, pos, true_pos, module = layer[live], pos[live], true_pos[live], module[live]
        true_mom, particle_id = true_mom[live], particle_id[live]

    # TrackML convention: hits sorted by volume, layer, module, ids from 1.
    perm = rng.permutation(len(layer))
    srt = perm[np.lexsort((module[perm], det.layer_id[layer][perm], det.volume_id[layer][perm]))]
    nhits = np.bincount(particle_id, minlength=len(gen) + 1)[1:].astype(np.int32)
    # A row past the particles' for noise (read only by an event without particles: noise
    # hits take row 0, their order and weight ignore it).
    p_pt = np.append(np.hypot(gen.momentum[:, 0], gen.momentum[:, 1]), 0.0)
    p_vz = np.append(gen.vertex[:, 2], 0.0)
    pid_s = particle_id[srt]
    pidx = np.maximum(pid_s - 1, 0)
    # Order along the track by |z - vz| (the TrackML convention, also what the CSV reader
    # recomputes), so that the recording and the CSV files hold the same truth.
    dist = np.abs(true_pos[srt, 2].astype(np.float32) - p_vz[pidx].astype(np.float32))
    order, weight = hit_order_and_weights(pid_s, dist, np.where(pid_s > 0, p_pt[pidx], 0.0))
    hits = Hits(
        hit_id=np.arange(1, len(srt) + 1, dtype=np.int64),
        x=pos[srt, 0].astype(np.float32),
        y=pos[srt, 1].astype(np.float32),
        z=pos[srt, 2].astype(np.float32),
        volume_id=det.volume_id[layer[srt]].astype(np.int32),
        layer_id=det.layer_id[layer[srt]].astype(np.int32),
        module_id=module[srt].astype(np.int32),
    )
    f32 = np.float32
    hit_truth = HitTruth(
        particle_id=pid_s.astype(np.int64),
        tx=true_pos[srt, 0].astype(f32),
        ty=true_pos[srt, 1].astype(f32),
        tz=true_pos[srt, 2].astype(f32),
        tpx=true_mom[srt, 0].astype(f32),
        tpy=true_mom[srt, 1].astype(f32),
        tpz=true_mom[srt, 2].astype(f32),
        weight=weight.astype(f32),
        hit_order=order.astype(np.int32),
    )
    particles = Particles(
        particle_id=np.arange(1, len(gen) + 1, dtype=np.int64),
        vx=gen.vertex[:, 0].astype(f32),
        vy=gen.vertex[:, 1].astype(f32),
        vz=gen.vertex[:, 2].astype(f32),
        px=gen.momentum[:, 0].astype(f32),
        py=gen.momentum[:, 1].astype(f32),
        pz=gen.momentum[:, 2].astype(f32),
        q=gen.charge.astype(np.int32),
        nhits=nhits,
    )
    return Event(run=run, event=event, hits=hits, truth=Truth(hits=hit_truth, particles=particles))


def simulate(
    det: Detector, cfg: SimConfig, seed: int, n_events: int, *, run: int = 0, first_event: int = 0
) -> Iterator[Event]:
    """Simulate ``n_events`` events numbered from ``first_event``; event number ``k`` uses
    the ``k``-th stream spawned from ``seed`` (made as its event comes, not all first), so a
    run continued with ``first_event`` holds the events of the longer run. Layers the
    detector lacks, a count, seed or run below 0 and event or run numbers past the wire's
    2**63 are refused here, before the first event."""
    last = first_event + n_events - 1
    for name, value in (
        ("n_events", n_events), ("first_event", first_event), ("seed", seed), ("run", run)
    ):  # fmt: skip
        if value < 0:
            raise SettingError(f"{name} must be >= 0, got {value}")
    if max(run, last) >= MAX_INT:
        raise SettingError(f"run and event numbers must be below 2**63, got {max(run, last)}")
    layer_indices(det, [*cfg.dead_layers, *(layer for layer, _ in cfg.noisy_layers)])
    return (
        simulate_event(det, cfg, _stream(seed, k), run=run, event=k)
        for k in range(first_event, first_event + n_events)
    )


def _stream(seed: int, k: int) -> np.random.Generator:
    """The generator of the ``k``-th stream spawned from ``seed`` (as
    ``SeedSequence(seed).spawn(k + 1)[k]``)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,)))
