"""``bench/z0_window.py``: what widening the graph's z0 window joins, and the edges it costs."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import bench_script

from streamtrk.recon.budget import Budget
from streamtrk.recon.reconstructor import Reconstructor


def test_a_wider_window_joins_the_particle_from_outside_the_luminous_region(
    outside_luminous_region: tuple[Path, float],
) -> None:
    """The displaced particle (z0 79 mm) is lost at the graph stage with the shipped 30 mm,
    still with 60 mm, and joined with 100 mm; a wider window builds no fewer edges."""
    recording, _ = outside_luminous_region
    bench = bench_script("z0_window")
    out = bench.z0_window(recording, None, [60.0, 100.0], None)
    assert out["lost_at_graph"] == 1
    shipped, narrow, wide = out["rows"]
    assert [r["z0_max"] for r in out["rows"]] == [30.0, 60.0, 100.0]
    assert [r["joined"] for r in out["rows"]] == [0, 0, 1]
    assert [r["events"] for r in out["rows"]] == [1, 1, 1]
    assert shipped["edges"] <= narrow["edges"] < wide["edges"]
    assert "| 100 | " in bench.table(out)


def test_an_event_over_the_work_budget_is_counted_refused_not_raised(
    outside_luminous_region: tuple[Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event the shipped chain refuses loses no particle at the graph stage (``streamtrk
    evaluate`` counts them at ``refused``); every window's graph of it is refused too, and the
    table says so without a ratio to divide by."""
    recording, _ = outside_luminous_region
    bench = bench_script("z0_window")
    rec = Reconstructor.oracle(budget=Budget(0, 0, 0, allowance=0))
    monkeypatch.setattr(bench, "load_reconstructor", lambda model: rec)
    out = bench.z0_window(recording, None, [100.0], None)
    assert out["lost_at_graph"] == 0
    assert [(r["events"], r["refused"], r["edges"]) for r in out["rows"]] == [(0, 1, 0)] * 2
    assert "| 100 | - | - | - | 1 | 0 |" in bench.table(out)
