"""``bench/displaced_pointing.py``: particles by production distance, and where their helices
pass the beam line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_scripts import bench_script

from streamtrk.event import PARTICLE_DTYPES, Particles


def _particles(
    vertices: list[tuple[float, float, float]], pt: list[float], nhits: list[int] | None = None
) -> Particles:
    """Particles leaving radially along +x at eta 0.3, from ``vertices``, with ``nhits`` hits
    (10 each by default)."""
    n = len(vertices)
    v, p = np.array(vertices, dtype=float), np.array(pt)
    cols = {"particle_id": np.arange(1, n + 1), "vx": v[:, 0], "vy": v[:, 1], "vz": v[:, 2],
            "px": p, "py": np.zeros(n), "pz": p * np.sinh(0.3), "q": np.ones(n),
            "nhits": np.full(n, 10) if nhits is None else np.array(nhits)}  # fmt: skip
    return Particles.from_columns({k: cols[k].astype(dt) for k, dt in PARTICLE_DTYPES.items()})


def test_rows_count_per_class_and_take_z0_at_the_perigee() -> None:
    """Two events: prompt particles at z 0 (two in the first event, one in the second:
    three production vertices) and 4 mm, one made 3 mm out at z 80 mm (z0 79.1 mm:
    outside), one 7 mm out at z 10 mm (z0 7.9: inside), and neither a 0.5 GeV particle nor
    a prompt one of 4 hits at z 50 mm (outside) counted."""
    bench = bench_script("displaced_pointing")
    events = [
        _particles([(0, 0, 0), (3, 0, 80), (0, 0, 10), (0, 0, 0)], [5.0, 5.0, 0.5, 5.0]),
        _particles(
            [(0, 0, 4), (7, 0, 10), (0, 0, 50), (0, 0, 0)], [5.0, 20.0, 5.0, 5.0], [10, 10, 4, 10]
        ),
    ]
    prompt, near, far = bench.pointing(events, 2.0)
    assert (prompt["particles"], prompt["per_event"], prompt["outside"]) == (4, 2.0, 0)
    assert prompt["vertices"] == 3
    assert prompt["median_abs_z0_mm"] == pytest.approx(0.0, abs=0.01)
    assert (near["particles"], near["vertices"], near["outside"]) == (1, 1, 1)
    assert near["median_abs_z0_mm"] == pytest.approx(80 - 3 * np.sinh(0.3), abs=0.05)
    assert (far["particles"], far["vertices"], far["outside"]) == (1, 1, 0)
    assert far["median_abs_z0_mm"] == pytest.approx(10 - 7 * np.sinh(0.3), abs=0.05)


@pytest.mark.realdata
def test_the_real_list_against_one_simulated_event(shared_trackml: Path) -> None:
    """``p`` is the chance of the real count with none outside at the simulated share,
    ``p_vertices`` that of the real vertices."""
    bench = bench_script("displaced_pointing")
    out = bench.compare(shared_trackml.parents[1], 1, 2024)
    real, sim = out["real"], out["simulated"]
    assert real[0]["particles"] > 1000 and sim[0]["particles"] > 1000
    for r, s in zip(real, sim, strict=True):
        if r["outside"] == 0:
            share = s["outside"] / s["particles"] if s["particles"] else 0.0
            assert r["p"] == pytest.approx((1 - share) ** r["particles"])
            assert r["p_vertices"] == pytest.approx((1 - share) ** r["vertices"])
            assert r["vertices"] <= r["particles"]
    assert "| real | 1-5 |" in bench.table(out)
