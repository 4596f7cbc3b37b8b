"""Events built by hand for the scoring tests: hits of given particles, nothing else."""

from __future__ import annotations

import numpy as np

from streamtrk.event import Event, Hits, HitTruth, Particles, Truth


def metrics_event(hit_pid: list[int], particles: dict[int, tuple[float, float, int]]) -> Event:
    """An event with the given per-hit particle ids, each hit on a layer of its own (so a
    particle's consecutive hits are a true segment); particles: id -> (pT, vertex r,
    nhits)."""
    n = len(hit_pid)
    z = np.zeros(n, np.float32)
    ints = np.zeros(n, np.int32)
    ids = np.array(list(particles), dtype=np.int64)
    pt, vr, nh = (np.array(v) for v in zip(*particles.values(), strict=True))
    zp = np.zeros(len(ids), np.float32)
    return Event(
        run=0,
        event=1,
        hits=Hits(np.arange(n, dtype=np.int64), z, z, z, ints, np.arange(n, dtype=np.int32), ints),
        truth=Truth(
            HitTruth(np.array(hit_pid, np.int64), z, z, z, z, z, z, z, ints),
            Particles(
                ids,
                vr.astype(np.float32),
                zp,
                zp,
                pt.astype(np.float32),
                zp,
                zp,
                np.ones(len(ids), np.int32),
                nh.astype(np.int32),
            ),
        ),
    )
