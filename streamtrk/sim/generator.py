"""Particle generation: pileup vertices, charged primaries, secondaries, optional hard scatter.

Pileup vertices (and the hard scatter on the first one) are spread around ``beam_spot``;
secondaries keep the production radii of the real ones, measured from the detector axis.

Spectra are calibrated on the particle list of real TrackML event 1000 (mu ~ 200): the
quantile tables below are read off that list (primaries: production radius < 1 mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streamtrk.detector import MAX_BEAM_SPOT
from streamtrk.tomlio import require

MAX_MU = 10_000  # fifty times the HL-LHC's 200: millions of hits an event, not a hang
MAX_HARD_SCATTER = 100_000  # hard-scatter particles: a million hits an event, not a hang
MAX_BEAM_SPOT_Z = 250.0  # mm: a luminous region centred farther along z gives no tracks
# GeV: the LHC's beam energy, which no particle's pT exceeds (from about 1e5 GeV, float64
# loses the crossings of so straight a helix: hits 0.2 mm off their layer)
MAX_HARD_SCATTER_PT = 7000.0

_Q = np.array(
    [
        0,
        0.02,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.85,
        0.9,
        0.95,
        0.98,
        0.99,
        0.995,
        0.999,
        1.0,
    ]
)
# pT quantiles (GeV) of primaries and of secondaries in real event 1000.
_PRIMARY_PT_Q = np.array(
    [
        0.1001,
        0.1187,
        0.1421,
        0.179,
        0.2401,
        0.3051,
        0.3762,
        0.4535,
        0.5464,
        0.6663,
        0.8568,
        0.9885,
        1.2425,
        1.7092,
        2.4021,
        3.1457,
        4.1013,
        8.3551,
        45.0,
    ]
)
_SECONDARY_PT_Q = np.array(
    [
        0.1001,
        0.1038,
        0.1098,
        0.1196,
        0.1429,
        0.167,
        0.1968,
        0.2308,
        0.2704,
        0.3159,
        0.3758,
        0.419,
        0.4843,
        0.7485,
        1.3654,
        1.9973,
        3.0995,
        13.7,
        55.0,
    ]
)
# Production-radius quantiles (mm) of secondaries (r > 1 mm): decays and material interactions.
_SECONDARY_R_Q = np.array(
    [
        1.03,
        3.09,
        7.27,
        19.0,
        31.6,
        38.2,
        71.9,
        118.8,
        200.0,
        255.4,
        356.3,
        471.6,
        571.6,
        814.6,
        884.0,
        946.6,
        960.6,
        987.0,
        991.2,
    ]
)


@dataclass(frozen=True)
class GeneratorConfig:
    """Pileup and spectrum settings (defaults: real TrackML event 1000)."""

    mu: float = 200.0
    primaries_per_vertex: float = 42.0  # mean charged primaries per vertex
    multiplicity_shape: float = 1.0  # negative-binomial k of the per-vertex multiplicity
    sigma_z: float = 6.0  # mm, luminous region
    sigma_r: float = 0.015  # mm
    beam_spot: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mm, centre of the pileup vertices
    eta_max: float = 4.0
    positive_fraction: float = 0.5
    secondary_fraction: float = 0.30  # of all particles
    secondary_positive_fraction: float = 0.68
    hard_scatter: int = 0  # extra high-pT particles on the first vertex
    hard_scatter_pt: tuple[float, float] = (5.0, 50.0)

    def __post_init__(self) -> None:
        """ValueError naming the first setting out of range (an event is a crossing with at
        least one collision: max(1, Poisson(mu)) vertices, so mu must be above 0)."""
        checks = [
            ("mu", 0 < self.mu <= MAX_MU, f"> 0 and at most {MAX_MU}"),
            ("primaries_per_vertex", self.primaries_per_vertex > 0, "> 0"),
            ("multiplicity_shape", self.multiplicity_shape > 0, "> 0"),
            ("sigma_z", self.sigma_z >= 0, ">= 0"),
            ("sigma_r", self.sigma_r >= 0, ">= 0"),
            (
                "beam_spot",
                math.hypot(*self.beam_spot[:2]) <= MAX_BEAM_SPOT
                and abs(self.beam_spot[2]) <= MAX_BEAM_SPOT_Z,
                f"within {MAX_BEAM_SPOT:g} mm of the z axis and {MAX_BEAM_SPOT_Z:g} mm of z = 0",
            ),
            ("eta_max", self.eta_max > 0, "> 0"),
            ("positive_fraction", 0 <= self.positive_fraction <= 1, "in [0, 1]"),
            ("secondary_fraction", 0 <= self.secondary_fraction < 1, "in [0, 1)"),
            (
                "secondary_positive_fraction",
                0 <= self.secondary_positive_fraction <= 1,
                "in [0, 1]",
            ),
            (
                "hard_scatter",
                0 <= self.hard_scatter <= MAX_HARD_SCATTER,
                f">= 0 and at most {MAX_HARD_SCATTER}",
            ),
            (
                "hard_scatter_pt",
                0 < self.hard_scatter_pt[0] <= self.hard_scatter_pt[1] <= MAX_HARD_SCATTER_PT,
                f"0 < low <= high <= {MAX_HARD_SCATTER_PT:g}",
            ),
        ]
        require(self, checks)


@dataclass
class GeneratedParticles:
    """Particles at production (float64 kinematics), one row each."""

    vertex: np.ndarray  # (n, 3) mm
    momentum: np.ndarray  # (n, 3) GeV
    charge: np.ndarray  # (n,) int

    def __len__(self) -> int:
        return len(self.charge)


def _quantile_sample(rng: np.random.Generator, q: np.ndarray, n: int, log: bool) -> np.ndarray:
    u = rng.random(n)
    if log:
        return np.exp(np.interp(u, _Q, np.log(q)))
    return np.interp(u, _Q, q)


def _directions(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=1)


def generate(cfg: GeneratorConfig, rng: np.random.Generator) -> GeneratedParticles:
    """Draw one event's charged particles."""
    n_vtx = max(1, int(rng.poisson(cfg.mu)))
    k = cfg.multiplicity_shape
    mult = rng.negative_binomial(k, k / (k + cfg.primaries_per_vertex), size=n_vtx)
    vtx = np.stack(
        [
            rng.normal(0, cfg.sigma_r, n_vtx),
            rng.normal(0, cfg.sigma_r, n_vtx),
            rng.normal(0, cfg.sigma_z, n_vtx),
        ],
        axis=1,
    ) + np.asarray(cfg.beam_spot, dtype=float)
    n_prim = int(mult.sum())
    prim_vtx = np.repeat(vtx, mult, axis=0)
    prim_mom = _directions(
        _quantile_sample(rng, _PRIMARY_PT_Q, n_prim, log=True),
        rng.uniform(-cfg.eta_max, cfg.eta_max, n_prim),
        rng.uniform(-np.pi, np.pi, n_prim),
    )
    prim_q = np.where(rng.random(n_prim) < cfg.positive_fraction, 1, -1)

    # Secondaries: production radius from the real distribution, position along a random
    # pseudorapidity, direction isotropic (the real ones are: median |eta| 0.6).
    n_sec = int(rng.poisson(n_prim * cfg.secondary_fraction / (1 - cfg.secondary_fraction)))
    r = _quantile_sample(rng, _SECONDARY_R_Q, n_sec, log=False)
    vphi = rng.uniform(-np.pi, np.pi, n_sec)
    vz = np.clip(r * np.sinh(rng.uniform(-cfg.eta_max, cfg.eta_max, n_sec)), -2900, 2900)
    sec_vtx = np.stack([r * np.cos(vphi), r * np.sin(vphi), vz], axis=1)
    cos_t = rng.uniform(-1, 1, n_sec)
    sec_eta = np.arctanh(np.clip(cos_t, -0.9999, 0.9999))
    sec_mom = _directions(
        _quantile_sample(rng, _SECONDARY_PT_Q, n_sec, log=True),
        sec_eta,
        rng.uniform(-np.pi, np.pi, n_sec),
    )
    sec_q = np.where(rng.random(n_sec) < cfg.secondary_positive_fraction, 1, -1)

    n_hs = cfg.hard_scatter
    lo, hi = cfg.hard_scatter_pt
    hs_mom = _directions(
        np.exp(rng.uniform(np.log(lo), np.log(hi), n_hs)),
        rng.uniform(-2.5, 2.5, n_hs),
        rng.uniform(-np.pi, np.pi, n_hs),
    )
    hs_vtx = np.repeat(vtx[:1], n_hs, axis=0)
    hs_q = np.where(rng.random(n_hs) < 0.5, 1, -1)

    return GeneratedParticles(
        vertex=np.concatenate([hs_vtx, prim_vtx, sec_vtx]),
        momentum=np.concatenate([hs_mom, prim_mom, sec_mom]),
        charge=np.concatenate([hs_q, prim_q, sec_q]).astype(np.int32),
    )
