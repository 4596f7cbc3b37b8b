"""Compare simulated events with real TrackML barrel data (the qallse subsets in shared/).

The real subsets hold barrel hits only and at most one hit per particle and layer (their
maker removed double hits): the hits per particle count a simulated particle's layers, not
its hits, likewise. The layer counts and the noise fraction count every simulated hit (a
particle's second hit on a layer, about 0.9% of the signal barrel hits without overlaps,
among them; a review's figure, 2026-12-06).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from streamtrk.event import Event

BARREL_LAYERS: tuple[tuple[int, int], ...] = (
    (8, 2),
    (8, 4),
    (8, 6),
    (8, 8),
    (13, 2),
    (13, 4),
    (13, 6),
    (13, 8),
    (17, 2),
    (17, 4),
)
HPP_BINS: tuple[tuple[int, int], ...] = ((1, 2), (3, 5), (6, 8), (9, 10))


def barrel_layer_counts(event: Event) -> np.ndarray:
    """Hits per barrel layer, in the order of :data:`BARREL_LAYERS`."""
    key = event.hits.volume_id.astype(np.int64) * 100 + event.hits.layer_id
    return np.array([(key == v * 100 + l).sum() for v, l in BARREL_LAYERS])


def barrel_noise_fraction(event: Event) -> float:
    """Fraction of barrel hits that are noise (needs truth)."""
    assert event.truth is not None
    bar = np.isin(event.hits.volume_id, [v for v, _ in BARREL_LAYERS])
    return float((event.truth.hits.particle_id[bar] == 0).mean())


def barrel_hits_per_particle(event: Event) -> np.ndarray:
    """Histogram (index = number of distinct barrel layers hit) over particles with hits."""
    assert event.truth is not None
    h, pid = event.hits, event.truth.hits.particle_id
    sel = np.isin(h.volume_id, [v for v, _ in BARREL_LAYERS]) & (pid > 0)
    pairs = np.unique(np.stack([pid[sel], h.volume_id[sel] * 100 + h.layer_id[sel]]), axis=1)
    _, n = np.unique(pairs[0], return_counts=True)
    return np.bincount(n, minlength=len(BARREL_LAYERS) + 1)


def binned_shares(hist: np.ndarray) -> np.ndarray:
    """Shares of particles in the coarse bins :data:`HPP_BINS` (normalised to 1)."""
    counts = np.array([hist[a : b + 1].sum() for a, b in HPP_BINS], dtype=float)
    return counts / counts.sum()


def summarize(events: Iterable[Event]) -> dict[str, np.ndarray | float]:
    """Mean per-layer counts, noise fraction and hits-per-particle histogram of events."""
    layers, noise, hpp = [], [], []
    for ev in events:
        layers.append(barrel_layer_counts(ev))
        if ev.truth is not None:
            noise.append(barrel_noise_fraction(ev))
            hpp.append(barrel_hits_per_particle(ev))
    return {
        "layer_hits": np.mean(layers, axis=0),
        "noise_fraction": float(np.mean(noise)) if noise else float("nan"),
        "hits_per_particle": np.mean(hpp, axis=0) if hpp else np.zeros(0),
    }
