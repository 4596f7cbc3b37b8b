"""The device run's script, dry-run once on the CPU for the tests of its steps and of the
benchmark result it writes (the dry run takes about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from bench_scripts import bench_script

from streamtrk.io.recording import RecordingWriter
from streamtrk.sim import simulate as simulate_module
from streamtrk.sim.generator import GeneratedParticles
from streamtrk.sim.simulate import SimConfig, simulate_event

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def device_dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``bench/device_run.sh`` with DEVICE=cpu: its stdout and the folder it wrote ($OUT)."""
    out_dir = tmp_path_factory.mktemp("device-run")
    env = {"DEVICE": "cpu", "OUT": str(out_dir), "PYTHON": sys.executable}
    env["PATH"] = os.environ["PATH"]
    out = subprocess.run(["sh", str(ROOT / "bench" / "device_run.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout, out_dir


@pytest.fixture(scope="session")
def gpu_report() -> ModuleType:
    """``bench/gpu_report.py`` as a module."""
    return bench_script("gpu_report")


@pytest.fixture
def outside_luminous_region(
    det, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, float]:
    """A recording of one event of five 10 GeV particles at eta 0.3 without noise: four from
    the origin, one made 3 mm from the beam line at z = 80 mm leaving radially, whose helix
    passes the beam line at z0 = 80 - 3 sinh(0.3) = 79.1 mm (returned), outside the 30 mm
    that the shipped graph's z0 cut admits."""
    pt, eta = 10.0, 0.3
    phi = np.array([0.3, 1.5, 2.7, -1.2, 0.0])
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), np.full(5, pt * np.sinh(eta))], 1)
    vertex = np.zeros((5, 3))
    vertex[4] = (3.0, 0.0, 80.0)
    planted = GeneratedParticles(vertex, mom, np.array([1, -1, 1, -1, 1], np.int32))
    monkeypatch.setattr(simulate_module, "generate", lambda cfg, rng: planted)
    ev = simulate_event(det, SimConfig(noise_fraction=0.0), np.random.default_rng(7))
    assert ev.truth is not None and (ev.truth.particles.nhits >= 8).all()
    with RecordingWriter(tmp_path / "planted.stk") as w:
        w.write_event(ev)
    return tmp_path / "planted.stk", 80 - 3 * float(np.sinh(eta))
