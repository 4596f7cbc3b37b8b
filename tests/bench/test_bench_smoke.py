"""The benchmark scripts that no other test runs, each run once at its smallest settings (a few
seconds each): a script that no longer runs as RESULTS.md gives it (``track_report.py`` failed
so for days) is found here, not when its figures are wanted. The long ones (daemons, soaks,
MU=200-only scripts) are not run; ``test_bench_outputs.py`` runs every script's ``main()`` up
to its parser, and ``test_bench_openmp.py`` imports every one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# script: its arguments ({tmp} a scratch folder); True where it prints JSON.
RUNS = {
    "sim_speed": (["--events", "1", "--mu", "2"], True),
    "fit_resolution": (["--tracks", "20"], True),
    "prune_windows": (["--events", "1", "--mu", "5", "--out", "{tmp}/windows.toml"], False),
    "prune_chunks": (["--mu", "5", "--events", "1", "--repeats", "1", "--chunks", "0", "4096"],
                     True),
    "edge_budget": (["--events", "1", "--mu", "5", "--repeats", "1", "--scales", "1",  # no 1.5
                     "--json", "{tmp}/budget.json", "--png", "{tmp}/budget.png"], False),
    "gnn_cpu": (["--mu", "5", "--events", "1", "--real", ""], True),
    "recon_cpu": (["--mu", "5", "--events", "1", "--repeats", "1", "--shared", "{tmp}"], True),
    "batch_cpu": (["--mu", "5", "--events", "1"], False),
    "physics_overhead": (["--events", "1", "--mu", "5", "--repeats", "1"], True),
    "precision_parity": (["--events", "1", "--mu", "5"], True),
    "chain_profile": (["--device", "cpu", "--mu", "5", "--events", "1", "--batches", "1",
                       "--repeats", "1", "--kernel-repeats", "1", "--workers", "1",
                       "--out", "{tmp}"], True),
    "launch_count": (["--mu", "5", "--batches", "1", "--top", "3"], True),
    "search_balance": (["--mu", "5", "--events", "1"], True),
    "host_path": (["--events", "1", "--mu", "5", "--repeats", "1", "--messages", "20",
                   "--transfers", "1"], True),
    "gc_pause": (["--events", "1", "--mu", "5", "--repeats", "1"], True),
    "monitor_cost": (["--probes", "50", "--repeats", "1"], True),
    "dense_events": (["--uniform", "500", "--bands", "500x85", "--clusters", "5x3", "--json",
                      "{tmp}/d.json"], False),
}  # fmt: skip


@pytest.mark.parametrize("script", sorted(RUNS))
def test_the_script_runs_at_its_smallest_settings(script: str, tmp_path: Path) -> None:
    args, prints_json = RUNS[script]
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py")]
    cmd += [a.format(tmp=tmp_path) for a in args]
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
    if prints_json:
        json.loads(out.stdout)
