"""The benchmark scripts that no other test runs, each run once at its smallest settings (a few
seconds each): a script that no longer runs as RESULTS.md gives it (``track_report.py`` failed
so for days) is found here, not when its figures are wanted. The long ones (daemons, soaks,
MU=200-only scripts) are not run; ``chain_profile.py`` has a test of its own, below;
``test_bench_outputs.py`` runs every script's ``main()`` up to its parser, and
``test_bench_openmp.py`` imports every one."""

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


def test_chain_profile_figures_are_in_ms_and_its_profile_has_both_orders(tmp_path: Path) -> None:
    """The wall time's median lies within its least and most; the stages' medians are in ms
    as the wall time is (together most of it); cProfile's table is by own time and by
    cumulative time."""
    cmd = [sys.executable, str(ROOT / "bench" / "chain_profile.py"), "--device", "cpu",
           "--mu", "5", "--events", "2", "--batches", "1", "--repeats", "3",
           "--kernel-repeats", "1", "--workers", "1", "--out", str(tmp_path),
           "--json", str(tmp_path / "profile.json")]  # fmt: skip
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'bench'}"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == json.loads((tmp_path / "profile.json").read_text())
    b = json.loads(out.stdout)["batches"]["1"]
    least, most = b["wall_ms_min_max"]
    assert least <= b["wall_ms"] <= most
    assert least / 4 <= sum(b["stage_ms"].values()) <= 2 * most, b
    text = (tmp_path / "cprofile-b1.txt").read_text()
    assert "==== by tottime" in text and "==== by cumulative" in text


def test_chain_profile_reconstructs_the_next_batch_at_each_call() -> None:
    """Each call profiled reconstructs the next batch, cycling through the events as
    bench/gpu_bench.py does (not the same, cache-warm batch again and again)."""
    from bench_scripts import bench_script

    chain_profile, gpu_bench = bench_script("chain_profile"), bench_script("gpu_bench")

    class Echo:  # a reconstructor that answers the batch it was given
        def reconstruct(self, events: list[str]) -> list[str]:
            return events

    run = chain_profile._cycling(Echo(), gpu_bench.batch, list("abcde"), 2)
    assert [run() for _ in range(3)] == [["a", "b"], ["c", "d"], ["e", "a"]]
