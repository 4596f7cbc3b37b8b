"""The beam spot seen by the tracks over a sliding window of the last tracks: the luminous
region along z (mean and width of z0) and the transverse position (x, y) from d0 against
phi. For a track from the point (x, y), ``d0 = -x sin(phi) + y cos(phi)`` to first order
(``streamtrk.recon.fit``'s sign convention), so (x, y) is a linear least-squares fit.

The error of the mean z treats events as independent clusters: the tracks of one vertex
share its z, so tracks are not independent, events are (a cluster-robust standard error)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

WINDOW_TRACKS = 20_000  # at least ten MU=200 events (1,932 tracks each, before the d0 cut)
D0_MAX_MM = 10.0  # tracks this far or farther from the beam line are left out (secondaries, fakes)
CLIP_SIGMAS = 4.0  # the fit's second pass drops residuals beyond this many robust sigmas


@dataclass(frozen=True)
class BeamSpot:
    """Positions, width and the error of ``z`` in mm; ``tracks`` is how many tracks the
    estimate rests on: the window's, or 0 (and all NaN) while they come from fewer than two
    events, so that a rule asking for enough tracks never reads a NaN."""

    x: float
    y: float
    z: float
    z_width: float
    z_error: float
    tracks: int


def _fit_xy(d0: np.ndarray, phi: np.ndarray) -> tuple[float, float, np.ndarray]:
    a = np.stack([-np.sin(phi), np.cos(phi)], axis=1)
    (x, y), *_ = np.linalg.lstsq(a, d0, rcond=None)
    return float(x), float(y), d0 - a @ np.array([x, y])


def _mean_error(z: np.ndarray, event: np.ndarray) -> float:
    """Cluster-robust standard error of ``z.mean()``, with the events as clusters."""
    _, cluster = np.unique(event, return_inverse=True)
    g = int(np.max(cluster)) + 1
    sums = np.bincount(cluster, weights=z - z.mean(), minlength=g)
    return float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / len(z))


class BeamSpotWindow:
    """A ring buffer of (d0 about the z axis, z0, phi, event) of the last ``capacity`` tracks
    that passed within ``D0_MAX_MM`` of the beam line (with a finite z0 and phi: one NaN
    would spoil every estimate while it is in the window); safe to fill from one thread and
    estimate from another."""

    def __init__(self, capacity: int = WINDOW_TRACKS) -> None:
        self._data = np.zeros((4, capacity))
        self._next = 0  # tracks ever added; the slot of the next one is _next % capacity
        self._lock = threading.Lock()
        self._cached: tuple[int, BeamSpot] | None = None

    def add(
        self,
        d0: np.ndarray,
        z0: np.ndarray,
        phi: np.ndarray,
        event: np.ndarray,
        beam_line: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Append tracks (d0 about ``beam_line``, x, y in mm: the line the tracks' parameters
        are of; z0 in mm, phi in rad, and a number that tells events apart); the oldest ones
        leave when the window is full."""
        keep = (np.abs(d0) < D0_MAX_MM) & np.isfinite(z0) & np.isfinite(phi)
        bx, by = beam_line
        d0 = d0 - bx * np.sin(phi) + by * np.cos(phi)  # about the z axis
        rows = np.stack([d0[keep], z0[keep], phi[keep], event[keep]])[:, -self._data.shape[1] :]
        n, capacity = rows.shape[1], self._data.shape[1]
        with self._lock:
            slots = (self._next + np.arange(n)) % capacity
            self._data[:, slots] = rows
            self._next += n

    def estimate(self) -> BeamSpot:
        """The beam spot of the tracks in the window; computed once per change."""
        with self._lock:
            added = self._next
            if self._cached is not None and self._cached[0] == added:
                return self._cached[1]
            d0, z0, phi, event = self._data[:, : min(added, self._data.shape[1])].copy()
        n = len(d0)
        if n < 2 or np.all(event == event[0]):
            spot = BeamSpot(np.nan, np.nan, np.nan, np.nan, np.nan, 0)
        else:
            x, y, residual = _fit_xy(d0, phi)
            sigma = 1.4826 * np.median(np.abs(residual))  # robust: secondaries have long tails
            inlier = np.abs(residual) <= CLIP_SIGMAS * sigma
            if inlier.sum() >= 2:
                x, y, _ = _fit_xy(d0[inlier], phi[inlier])
            spot = BeamSpot(x, y, float(z0.mean()), float(z0.std()), _mean_error(z0, event), n)
        with self._lock:
            self._cached = (added, spot)
        return spot
