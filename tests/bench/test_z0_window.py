"""``bench/z0_window.py``: what widening the graph's z0 window joins, and the edges it costs."""

from __future__ import annotations

from pathlib import Path

from bench_scripts import bench_script


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
