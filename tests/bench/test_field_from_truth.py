"""``bench/field_from_truth.py``: the field the particles felt, from their truth momenta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bench_scripts import bench_script

from streamtrk.io.recording import RecordingWriter
from streamtrk.sim.generator import GeneratorConfig
from streamtrk.sim.simulate import SimConfig, simulate_event


def test_a_simulated_event_reads_the_detector_s_field(det, tmp_path: Path) -> None:
    """The simulation bends every particle in the detector's one field: the median over
    pairs of hits reads it within 1% in every |z| range, for either charge."""
    cfg = SimConfig(generator=GeneratorConfig(mu=20.0))
    event = simulate_event(det, cfg, np.random.default_rng(11))
    with RecordingWriter(tmp_path / "e.stk") as w:
        w.write_event(event)
    pairs = bench_script("field_from_truth").field_per_pair(tmp_path / "e.stk")
    for sel in (pairs["abs_z"] < 300, pairs["abs_z"] >= 300, pairs["q"] > 0, pairs["q"] < 0):
        assert sel.sum() >= 30
        assert abs(np.median(pairs["field"][sel]) - det.bfield) < 0.01 * abs(det.bfield)
