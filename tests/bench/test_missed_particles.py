"""``bench/missed_particles.py`` lists the particles that ``streamtrk evaluate`` counts as
missed, each at the stage it counts it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from bench_scripts import bench_script

from streamtrk.eval.evaluate import evaluate
from streamtrk.eval.missed import STAGES
from streamtrk.io.recording import RecordingWriter
from streamtrk.recon.budget import Budget
from streamtrk.recon.load import load_reconstructor
from streamtrk.recon.reconstructor import Reconstructor


@pytest.fixture
def recording(small_events, tmp_path: Path) -> Path:
    """``small_events`` as a recording."""
    with RecordingWriter(tmp_path / "e.stk") as w:
        for ev in small_events:
            w.write_event(ev)
    return tmp_path / "e.stk"


def test_the_missed_particles_are_those_evaluate_counts(small_events, recording: Path) -> None:
    bench = bench_script("missed_particles")
    rows = bench.missed_particles(recording, None, None)
    report = evaluate(load_reconstructor(), small_events).report()
    assert len(rows) == report["n_reconstructable"]
    missed = Counter(r["stage"] for r in rows if r["stage"] is not None)
    assert dict.fromkeys(STAGES, 0) | missed == report["missed_by_stage"]
    assert sum(missed.values()) > 0
    efficiency = f"| (efficiency) | {100 * report['tracking_efficiency']:.2f}% |"
    assert efficiency in bench.table(rows)


def test_the_particles_of_events_over_the_budget_are_lost_at_refused(
    small_events, recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``streamtrk evaluate`` counts them: every reconstructable particle, at ``refused``."""
    bench = bench_script("missed_particles")
    rec = Reconstructor.oracle(budget=Budget(0, 0, 0, allowance=0))
    monkeypatch.setattr(bench, "load_reconstructor", lambda model: rec)
    rows = bench.missed_particles(recording, None, None)
    report = evaluate(rec, small_events).report()
    assert len(rows) == report["n_reconstructable"] > 0
    assert {r["stage"] for r in rows} == {"refused"}
    assert report["missed_by_stage"]["refused"] == len(rows)


def test_a_particle_from_outside_the_luminous_region_is_lost_at_graph(
    outside_luminous_region: tuple[Path, float],
) -> None:
    """The ``outside_luminous_region`` event: its displaced particle alone is missed, at
    ``graph``, in the table's |z0| > 30 mm column, and its row's z0 and d0 are its
    perigee's (it leaves radially: it passes through the beam line)."""
    recording, z0 = outside_luminous_region
    bench = bench_script("missed_particles")
    rows = bench.missed_particles(recording, None, None)
    assert len(rows) == 5
    missed = [r for r in rows if r["stage"] is not None]
    assert [r["stage"] for r in missed] == ["graph"]
    assert missed[0]["z0"] == pytest.approx(z0, abs=0.05)
    assert abs(missed[0]["d0"]) < 0.01
    assert max(abs(r["z0"]) for r in rows if r["stage"] is None) < 0.01
    graph_row = next(line for line in bench.table(rows).splitlines() if line.startswith("| graph"))
    assert graph_row.split("|")[2:-1] == [" 1 ", " 0 ", " 1 ", " 0 ", " 0 ", " 0 ", " 0 ", " 1 "]
