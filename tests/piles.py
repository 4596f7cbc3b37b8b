"""Events of hits piled at one point (graphs far past the work budget), and how two devices
must refuse them."""

from __future__ import annotations

import numpy as np

from streamtrk.detector import BARREL
from streamtrk.event import Event, Hits
from streamtrk.recon.budget import EventTooDense


def pile(det, k: int, event: int = 1) -> Event:
    """``k`` hits at one point of each of the first four barrel layers: every pair of them
    on neighbouring layers is a doublet, every pair of doublets through a hit a triplet."""
    layers = np.nonzero(det.kind == BARREL)[0][:4]
    n = 4 * k
    columns = {
        "hit_id": np.arange(n),
        "x": np.repeat(det.r[layers], k),
        "y": np.zeros(n),
        "z": np.zeros(n),
        "volume_id": np.repeat(det.volume_id[layers], k),
        "layer_id": np.repeat(det.layer_id[layers], k),
        "module_id": np.zeros(n),
    }
    return Event(1, event, Hits.from_columns(columns))


def assert_same_refusals(cpu: EventTooDense, cuda: EventTooDense) -> None:
    """Both devices refuse the same events at the same stages and limits. The CPU stops
    searching an event past its doublet limit: its count, so far, is past the limit and at
    most the device's, which counts every doublet before writing any."""
    assert (cuda.whats, cuda.events, cuda.limits) == (cpu.whats, cpu.events, cpu.limits)
    assert all(lim < c <= d for lim, c, d in zip(cpu.limits, cpu.counts, cuda.counts, strict=True))
    assert cpu.counts == cuda.counts or set(cpu.whats) == {"doublets"}
