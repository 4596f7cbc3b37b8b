"""``bench/missed_particles.py`` lists the particles that ``streamtrk evaluate`` counts as
missed, each at the stage it counts it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench_scripts import bench_script

from streamtrk.eval.evaluate import evaluate
from streamtrk.eval.missed import STAGES
from streamtrk.io.recording import RecordingWriter
from streamtrk.recon.load import load_reconstructor


def test_the_missed_particles_are_those_evaluate_counts(small_events, tmp_path: Path) -> None:
    bench = bench_script("missed_particles")
    with RecordingWriter(tmp_path / "e.stk") as w:
        for ev in small_events:
            w.write_event(ev)
    rows = bench.missed_particles(tmp_path / "e.stk", None, None)
    report = evaluate(load_reconstructor(), small_events).report()
    assert len(rows) == report["n_reconstructable"]
    missed = Counter(r["stage"] for r in rows if r["stage"] is not None)
    assert dict.fromkeys(STAGES, 0) | missed == report["missed_by_stage"]
    assert sum(missed.values()) > 0
    efficiency = f"| (efficiency) | {100 * report['tracking_efficiency']:.2f}% |"
    assert efficiency in bench.table(rows)
