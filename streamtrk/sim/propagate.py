"""Helix propagation through a uniform solenoid field, surface by surface.

All live particles advance together to their next surface crossing (barrel cylinder or
endcap disk), found analytically: the helix is a circle in x-y, so cylinder crossings solve
a circle-circle intersection and disk crossings a linear equation in the turning angle.
Multiple scattering (Highland formula) deflects the direction at every crossing. A particle
stops when it leaves the envelope, when no surface is ahead, after ``max_turns`` turns, or
at its ``MAX_CROSSINGS``-th crossing (a looper of several turns).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from streamtrk.detector import BARREL, GEV_PER_TESLA_MM, Detector, highland
from streamtrk.sim.generator import GeneratedParticles

TWO_PI = 2 * np.pi
_EPS = 1e-9
MAX_CROSSINGS = 64  # steps of the propagation: surface crossings of one particle at most
MIN_COS_INCIDENCE = 0.05  # see cos_incidence


@dataclass
class Crossings:
    """Surface crossings, sorted by particle then order along the trajectory."""

    particle: np.ndarray  # index into the generated particles
    layer: np.ndarray  # detector layer-table index
    position: np.ndarray  # (n, 3) mm
    momentum: np.ndarray  # (n, 3) GeV, after the crossing's scattering
    order: np.ndarray  # index along the particle's trajectory

    def take(self, idx: np.ndarray) -> Crossings:
        """The crossings at ``idx`` (indices or a mask), in its order."""
        return Crossings(*(getattr(self, f.name)[idx] for f in fields(self)))


def surface_normals(det: Detector, layer: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Unit normals (n, 3) of the layers' surfaces at the crossings ``pos``: radial on a
    barrel cylinder, along z on a disk."""
    barrel = det.kind[layer] == BARREL
    return np.where(
        barrel[:, None],
        pos * np.array([1.0, 1.0, 0.0]) / np.hypot(pos[:, 0], pos[:, 1])[:, None],
        np.array([0.0, 0.0, 1.0]),
    )


def cos_incidence(u: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """|cos| of the angle between the unit directions ``u`` and the surfaces' ``normal``, at
    least ``MIN_COS_INCIDENCE`` (a grazing crossing's path across a layer: at most 20 times
    its thickness)."""
    return np.maximum(np.abs(np.einsum("ij,ij->i", u, normal)), MIN_COS_INCIDENCE)


def _scatter(
    rng: np.random.Generator, mom: np.ndarray, normal: np.ndarray, x0: np.ndarray
) -> np.ndarray:
    p = np.linalg.norm(mom, axis=1)
    u = mom / p[:, None]
    theta0 = highland(p, x0 / cos_incidence(u, normal))
    e1 = np.cross(u, np.array([0.0, 0.0, 1.0]))
    n1 = np.linalg.norm(e1, axis=1)
    e1 = np.where(n1[:, None] > 1e-6, e1 / np.maximum(n1, 1e-12)[:, None], [1.0, 0.0, 0.0])
    e2 = np.cross(u, e1)
    a = rng.normal(size=(len(p), 2)) * theta0[:, None]
    v = u + a[:, :1] * e1 + a[:, 1:] * e2
    return v / np.linalg.norm(v, axis=1)[:, None] * p[:, None]


def propagate(
    det: Detector,
    particles: GeneratedParticles,
    rng: np.random.Generator,
    *,
    max_turns: float = 1.0,
    min_pt: float = 0.0,
) -> Crossings:
    """Propagate every charged particle above ``min_pt`` (GeV); return its layer crossings."""
    if not (det.x0 >= 0).all():  # 0: no scattering, as the detector file allows
        raise ValueError("every detector layer needs a material thickness x0 >= 0")
    cyl = np.flatnonzero(det.kind == BARREL)
    dsk = np.flatnonzero(det.kind != BARREL)
    # Cylinders: the layers, then the envelope (an exit). Disks likewise.
    cyl_r = np.append(det.r[cyl], det.envelope_r)
    cyl_hl = np.append(det.half_length[cyl], np.inf)
    dsk_z = np.concatenate([det.z[dsk], [-det.envelope_z, det.envelope_z]])
    dsk_rmin = np.append(det.r_min[dsk], [0.0, 0.0])
    dsk_rmax = np.append(det.r_max[dsk], [np.inf, np.inf])
    # Candidate surface ids: 2 roots per cylinder, then disks; map to layer index or -1 (exit).
    surf_layer = np.concatenate([np.repeat(np.append(cyl, -1), 2), dsk, [-1, -1]])
    surf_id = np.concatenate(
        [np.repeat(np.arange(len(cyl_r)), 2), len(cyl_r) + np.arange(len(dsk_z))]
    )

    pos = particles.vertex.astype(np.float64).copy()
    mom = particles.momentum.astype(np.float64).copy()
    charge = particles.charge.astype(np.float64)
    last_surf = np.full(len(charge), -1)
    budget = np.full(len(charge), max_turns * TWO_PI)
    n_seen = np.zeros(len(charge), dtype=np.int64)
    active = np.flatnonzero((np.hypot(mom[:, 0], mom[:, 1]) > max(min_pt, 1e-3)) & (charge != 0))
    out: list[tuple[np.ndarray, ...]] = []
    kappa = GEV_PER_TESLA_MM * abs(det.bfield)  # GeV per mm of radius; h below turns with B

    for _ in range(MAX_CROSSINGS):
        if active.size == 0:
            break
        x, y, z = pos[active].T
        px, py, pz = mom[active].T
        pt = np.hypot(px, py)
        R = pt / kappa
        h = -np.sign(charge[active] * det.bfield)
        th0 = np.arctan2(py, px) - h * np.pi / 2
        xc, yc = x - R * np.cos(th0), y - R * np.sin(th0)
        d = np.hypot(xc, yc)
        thc = np.arctan2(yc, xc)
        dz_da = R * pz / pt

        with np.errstate(divide="ignore", invalid="ignore"):
            k = (cyl_r**2 - (d * d + R * R)[:, None]) / (2 * R * d)[:, None]
            ac = np.arccos(np.clip(k, -1, 1))
            base = (thc - th0)[:, None]
            a_cyl = np.stack(
                [
                    np.mod(h[:, None] * (base + ac), TWO_PI),
                    np.mod(h[:, None] * (base - ac), TWO_PI),
                ],
                axis=2,
            ).reshape(len(active), -1)
            ok_cyl = np.repeat(np.abs(k) <= 1, 2, axis=1)
            z_cyl = z[:, None] + dz_da[:, None] * a_cyl
            ok_cyl &= np.abs(z_cyl) <= np.repeat(cyl_hl, 2)

            a_dsk = (dsk_z - z[:, None]) / dz_da[:, None]
            ok_dsk = np.isfinite(a_dsk) & (a_dsk > _EPS)
            a_dsk = np.where(ok_dsk, a_dsk, np.inf)
            th = th0[:, None] + h[:, None] * a_dsk
            r_dsk = np.hypot(
                xc[:, None] + R[:, None] * np.cos(th), yc[:, None] + R[:, None] * np.sin(th)
            )
            ok_dsk &= (r_dsk >= dsk_rmin) & (r_dsk <= dsk_rmax)

        alpha = np.concatenate([a_cyl, a_dsk], axis=1)
        ok = np.concatenate([ok_cyl, ok_dsk], axis=1) & (alpha > _EPS)
        on_same = surf_id[None, :] == last_surf[active][:, None]
        ok &= ~(on_same & ((alpha < 1e-7) | (alpha > TWO_PI - 1e-7)))
        ok &= alpha <= budget[active][:, None]
        alpha = np.where(ok, alpha, np.inf)
        best = np.argmin(alpha, axis=1)
        a = alpha[np.arange(len(active)), best]
        layer = surf_layer[best]
        hit = np.isfinite(a) & (layer >= 0)

        idx, a, layer, best = active[hit], a[hit], layer[hit], best[hit]
        th = th0[hit] + h[hit] * a
        new_pos = np.stack(
            [xc[hit] + R[hit] * np.cos(th), yc[hit] + R[hit] * np.sin(th), z[hit] + dz_da[hit] * a],
            axis=1,
        )
        phi = th + h[hit] * np.pi / 2
        new_mom = np.stack([pt[hit] * np.cos(phi), pt[hit] * np.sin(phi), pz[hit]], axis=1)
        normal = surface_normals(det, layer, new_pos)
        new_mom = _scatter(rng, new_mom, normal, det.x0[layer])
        out.append((idx, layer, new_pos, new_mom, n_seen[idx].copy()))

        pos[idx], mom[idx] = new_pos, new_mom
        last_surf[idx] = surf_id[best]
        budget[idx] -= a
        n_seen[idx] += 1
        active = idx

    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return Crossings(empty, empty, np.zeros((0, 3)), np.zeros((0, 3)), empty)
    part, layer, position, momentum, order = (np.concatenate(c) for c in zip(*out, strict=True))
    srt = np.lexsort((order, part))
    return Crossings(part[srt], layer[srt], position[srt], momentum[srt], order[srt])
