"""Events of hits piled at one point: graphs far past the work budget."""

from __future__ import annotations

import numpy as np

from streamtrk.detector import BARREL
from streamtrk.event import Event, Hits


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
