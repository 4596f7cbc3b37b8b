"""Helix fit: exact on ideal helices, and within the resolution targets on simulated tracks."""

from dataclasses import replace

import numpy as np
import pytest

from streamtrk.recon.fit import fit_tracks
from streamtrk.sim.generator import GeneratedParticles
from streamtrk.sim.propagate import propagate


def _csr(groups, key):
    """CSR tracks from per-hit group ids (hits ordered by ``key`` within a group)."""
    order = np.lexsort((key, groups))
    _, counts = np.unique(groups[order], return_counts=True)
    return np.concatenate([[0], np.cumsum(counts)]), order


def test_ideal_helices_are_fitted_exactly(det):
    ideal = replace(det, x0=np.full(len(det), 1e-12))
    rng = np.random.default_rng(1)
    n = 200
    pt = rng.uniform(1, 10, n)
    eta = rng.uniform(-2.5, 2.5, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    q = np.where(rng.random(n) < 0.5, 1, -1)
    vz = rng.normal(0, 10, n)
    parts = GeneratedParticles(
        np.stack([np.zeros(n), np.zeros(n), vz], 1),
        np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], 1),
        q.astype(np.int32),
        np.ones(n, bool),
    )
    c = propagate(ideal, parts, rng, max_turns=0.5)
    offsets, idx = _csr(c.particle, c.order)
    x, y, z = c.position.T
    p = fit_tracks(offsets, idx, x, y, z, c.layer, det)
    who = np.unique(c.particle)
    assert np.allclose(p["pt"], pt[who], rtol=1e-3)
    assert np.array_equal(p["charge"], q[who])
    assert np.allclose(p["eta"], eta[who], atol=1e-3)
    assert np.allclose(p["phi"], phi[who], atol=1e-3)
    assert np.allclose(p["z0"], vz[who], atol=1e-2)
    assert np.allclose(p["d0"], 0, atol=1e-2)
    assert np.all(p["chi2"] < 1e-3)


def test_resolution_on_simulated_tracks(mu200_events, det):
    # Truth tracks of primaries with 1 <= pT <= 10 GeV, fitted from measured hits.
    rel, right, n_tracks = [], 0, 0
    for ev in mu200_events:
        h, t = ev.hits, ev.truth
        part = t.particles
        pid = t.hits.particle_id
        pt_true = np.where(pid > 0, part.pt[np.maximum(pid - 1, 0)], 0)
        vr = np.where(pid > 0, part.vr[np.maximum(pid - 1, 0)], 99)
        sel = (pt_true >= 1) & (pt_true <= 10) & (vr < 1)
        counts = np.bincount(pid[sel], minlength=len(part) + 1)
        sel &= counts[pid] >= 5
        offsets, idx = _csr(pid[sel], t.hits.hit_order[sel])
        hit_idx = np.flatnonzero(sel)[idx]
        layer = det.layer_index(h.volume_id, h.layer_id)
        p = fit_tracks(offsets, hit_idx, h.x, h.y, h.z, layer, det)
        who = np.unique(pid[sel]) - 1
        rel.append(p["pt"] / part.pt[who] - 1)
        right += int((p["charge"] == part.q[who]).sum())
        n_tracks += len(who)
    rel = np.concatenate(rel)
    assert n_tracks > 1000
    # Resolution as the half-width of the central 68% interval (robust to tails).
    lo, hi = np.percentile(rel, [16, 84])
    assert (hi - lo) / 2 < 0.05
    assert right / n_tracks > 0.99
    assert np.median(rel) == pytest.approx(0, abs=0.01)
