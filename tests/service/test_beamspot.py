"""The beam-spot window on tracks of a known beam spot: its position from d0 against phi,
secondaries left out, z and its error with the events as clusters, no estimate from one
event."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamtrk.recon.reconstructor import Reconstructor
from streamtrk.service.beamspot import D0_MAX_MM, BeamSpotWindow
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate


def _tracks_from(x: float, y: float, n: int, rng: np.random.Generator) -> tuple:
    """(d0, z0, phi, event) of ``n`` tracks from (x, y), 50 per event, the events' vertices
    at z ~ N(3, 6) mm and the tracks' z0 within 0.1 mm of their vertex."""
    phi = rng.uniform(-np.pi, np.pi, n)
    d0 = -x * np.sin(phi) + y * np.cos(phi) + rng.normal(0, 0.02, n)
    event = np.arange(n) // 50
    z0 = rng.normal(3.0, 6.0, event[-1] + 1)[event] + rng.normal(0, 0.1, n)
    return d0, z0, phi, event


def test_beam_spot_window_fits_the_tracks_it_holds() -> None:
    rng = np.random.default_rng(1)
    window = BeamSpotWindow(capacity=5000)
    assert window.estimate().tracks == 0 and np.isnan(window.estimate().z)
    d0, z0, phi, event = _tracks_from(-1.0, 2.0, 5000, rng)  # these leave the window below
    one = BeamSpotWindow(capacity=5000)
    one.add(d0[event == 0], z0[event == 0], phi[event == 0], event[event == 0])
    assert np.isnan(one.estimate().x) and one.estimate().tracks == 0  # one event: no estimate
    window.add(d0, z0, phi, event)
    d0, z0, phi, event = _tracks_from(0.4, -0.25, 5000, rng)
    d0[:500] += rng.choice([-1.0, 1.0], 500) * rng.uniform(0.5, 8.0, 500)  # secondaries
    window.add(d0, z0, phi, event + 100)
    window.add(np.array([D0_MAX_MM + 1]), np.array([500.0]), np.array([0.0]), np.array([200]))
    spot = window.estimate()
    assert spot.tracks == 5000
    error = 0.02 * np.sqrt(2 / 4500)
    assert spot.x == pytest.approx(0.4, abs=4 * error)
    assert spot.y == pytest.approx(-0.25, abs=4 * error)
    # 100 events: the mean z is known to 6 / sqrt(100) mm, not 6 / sqrt(5000)
    assert spot.z_error == pytest.approx(0.6, rel=0.25)
    assert spot.z == pytest.approx(3.0, abs=3 * spot.z_error)
    assert spot.z_width == pytest.approx(6.0, rel=0.2)
    assert window.estimate() is spot  # computed once per change


def test_tracks_are_kept_by_their_distance_from_the_beam_line() -> None:
    """A beam 12 mm off the axis: every track from it is kept (about the axis, those with
    |12 sin(phi)| >= 10 mm would be cut), and the estimate is in detector coordinates."""
    rng = np.random.default_rng(2)
    d0, z0, phi, event = _tracks_from(12.0, 0.0, 4000, rng)
    about_line = d0 + 12.0 * np.sin(phi)
    window = BeamSpotWindow(capacity=5000)
    window.add(about_line, z0, phi, event, beam_line=(12.0, 0.0))
    spot = window.estimate()
    assert spot.tracks == 4000
    assert spot.x == pytest.approx(12.0, abs=0.01) and spot.y == pytest.approx(0.0, abs=0.01)


def test_tracks_with_non_finite_parameters_are_left_out() -> None:
    """A NaN phi would fail the fit (LinAlgError) at every scrape of /metrics, and a NaN or
    infinite z0 make z NaN, until 20,000 tracks later it left the window."""
    rng = np.random.default_rng(3)
    d0, z0, phi, event = _tracks_from(0.4, -0.25, 1000, rng)
    window = BeamSpotWindow(capacity=5000)
    window.add(d0, z0, phi, event)
    bad_phi, bad_z0 = phi[:2].copy(), z0[:2].copy()
    bad_phi[0], bad_z0[1] = np.nan, np.inf
    window.add(d0[:2], bad_z0, bad_phi, event[:2] + 100)
    spot = window.estimate()
    assert spot.tracks == 1000
    assert spot.x == pytest.approx(0.4, abs=0.01) and spot.y == pytest.approx(-0.25, abs=0.01)
    assert np.isfinite(spot.z) and np.isfinite(spot.z_width)


@pytest.mark.parametrize("field_sign", [1, -1])
def test_the_window_finds_the_collisions_from_fitted_tracks_in_either_field(det, field_sign):
    """The window's d0 = -x sin(phi) + y cos(phi) is the fit's, in either sense of the field:
    tracks reconstructed from collisions at (0.8, -0.5) mm put the beam spot there (in -B_z
    the fit's d0 had the opposite sign, and the window put it at (-0.8, 0.5))."""
    d = replace(det, bfield=field_sign * det.bfield)
    cfg = SimConfig(generator=GeneratorConfig(mu=20, beam_spot=(0.8, -0.5, 0.0)))
    events = list(simulate(d, cfg, seed=3, n_events=3))
    window = BeamSpotWindow()
    for k, tracks in enumerate(Reconstructor.oracle(detector=d).reconstruct(events).tracks):
        p = tracks.params
        window.add(p["d0"], p["z0"], p["phi"], np.full(len(tracks), k))
    spot = window.estimate()
    assert spot.tracks > 500
    assert spot.x == pytest.approx(0.8, abs=0.1) and spot.y == pytest.approx(-0.5, abs=0.1)


def test_one_addition_past_the_capacity_keeps_its_last_tracks() -> None:
    """The oldest tracks leave, those of one addition too: of 150 tracks into a window of
    100, the last 100 stay."""
    rng = np.random.default_rng(4)
    old = _tracks_from(5.0, 0.0, 50, rng)
    new = _tracks_from(0.4, -0.25, 100, rng)
    window = BeamSpotWindow(capacity=100)
    (d0, z0, phi, event), (d0_new, z0_new, phi_new, event_new) = old, new
    window.add(
        np.concatenate([d0, d0_new]),
        np.concatenate([z0, z0_new]),
        np.concatenate([phi, phi_new]),
        np.concatenate([event, event_new + 1]),  # events 0, then 1 and 2
    )
    spot = window.estimate()
    assert spot.tracks == 100
    assert spot.x == pytest.approx(0.4, abs=0.05) and spot.y == pytest.approx(-0.25, abs=0.05)


def test_the_z_error_is_that_of_the_mean_of_the_events() -> None:
    """Events of equal track counts: the standard error of the mean of their mean z (the
    sample standard deviation over the square root of their count), few as they are."""
    means = np.array([0.0, 1.0, 5.0])
    offsets = np.array([-0.3, -0.1, 0.1, 0.3])
    z0 = (means[:, None] + offsets).ravel()
    event = np.repeat(np.arange(3), 4)
    window = BeamSpotWindow(capacity=100)
    window.add(np.zeros(12), z0, np.linspace(-3, 3, 12), event)
    spot = window.estimate()
    assert spot.z == pytest.approx(2.0)
    assert spot.z_error == pytest.approx(np.std(means, ddof=1) / np.sqrt(3))


def test_the_window_holds_the_tracks_within_10_mm_of_the_beam_line() -> None:
    """docs/metrics.md: |d0| < 10 mm; a track at 10 mm itself is left out, one just inside
    it kept."""
    rng = np.random.default_rng(6)
    d0, z0, phi, event = _tracks_from(0.0, 0.0, 100, rng)
    window = BeamSpotWindow(capacity=1000)
    window.add(d0, z0, phi, event)
    window.add(np.array([10.0, -10.0]), np.zeros(2), np.zeros(2), np.array([50, 50]))
    assert window.estimate().tracks == 100
    window.add(np.array([np.nextafter(10.0, 0.0)]), np.zeros(1), np.zeros(1), np.array([51]))
    assert window.estimate().tracks == 101


def test_the_window_holds_the_last_20000_tracks() -> None:
    """docs/metrics.md: the daemon's last 20,000 tracks (about eleven MU = 200 events)."""
    rng = np.random.default_rng(7)
    window = BeamSpotWindow()
    d0, z0, phi, event = _tracks_from(0.4, -0.25, 25_000, rng)
    window.add(d0, z0, phi, event)
    assert window.estimate().tracks == 20_000


def test_the_refit_drops_only_tracks_beyond_4_robust_standard_deviations() -> None:
    """Residuals within 3 standard deviations all count (the estimate is the least-squares
    fit of those tracks); tracks 7.5 standard deviations off (secondaries) are dropped."""
    rng = np.random.default_rng(8)
    n, sigma = 2000, 0.02
    phi = rng.uniform(-np.pi, np.pi, n)
    noise = rng.normal(0, sigma, 3 * n)
    noise = noise[np.abs(noise) < 3 * sigma][:n]
    d0 = -0.4 * np.sin(phi) - 0.25 * np.cos(phi) + noise
    d0[:20] += 7.5 * sigma  # secondaries
    window = BeamSpotWindow(capacity=n)
    window.add(d0, rng.normal(0, 6, n), phi, np.arange(n) // 50)
    spot = window.estimate()
    a = np.stack([-np.sin(phi), np.cos(phi)], axis=1)[20:]
    (x, y), *_ = np.linalg.lstsq(a, d0[20:], rcond=None)
    assert (spot.x, spot.y) == pytest.approx((x, y), abs=1e-9)


def test_the_z_error_counts_the_events_in_the_window_whatever_their_numbers() -> None:
    """The daemon numbers events from its start: three events numbered 1000-1002 in the
    window are three clusters (the small-sample factor 3/2), not a thousand."""
    means = np.array([0.0, 1.0, 5.0])
    offsets = np.array([-0.3, -0.1, 0.1, 0.3])
    z0 = (means[:, None] + offsets).ravel()
    window = BeamSpotWindow(capacity=100)
    window.add(np.zeros(12), z0, np.linspace(-3, 3, 12), 1000 + np.repeat(np.arange(3), 4))
    assert window.estimate().z_error == pytest.approx(np.std(means, ddof=1) / np.sqrt(3))
