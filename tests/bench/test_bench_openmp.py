"""The CPU benchmarks measure torch as the daemon runs it: OpenMP's workers told to wait
passively before torch loads its OpenMP runtime (which reads the setting once, as it loads).
A benchmark that set it after importing torch kept the spinning default, and beside one busy
process its GNN took ten times as long. Every script is probed, not only those that call
``wait_passively``: one that never called it (``budget.py``, ``track_building.py``, which time
the GNN) went unchecked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Imports a benchmark (not as __main__) and says what OMP_WAIT_POLICY was as torch loaded:
# null when its module level does not load torch (then its main() must set it first).
PROBE = """
import importlib.abc, json, os, runpy, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
        return None
sys.meta_path.insert(0, Watch())
runpy.run_path(sys.argv[1], run_name="bench_probe")
print(json.dumps(seen[0] if seen else None))
"""


def test_benchmarks_set_passive_waiting_before_torch_loads() -> None:
    scripts = sorted((ROOT / "bench").glob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'bench'}"  # its siblings, as when run

    def probe(script: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", PROBE, str(script)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    # As many at once as there are CPUs: 37 scripts importing torch at once held GBs.
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        runs = dict(zip((p.name for p in scripts), pool.map(probe, scripts), strict=True))
    policies = {}
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"
        policies[name] = json.loads(run.stdout.splitlines()[-1])
    assert {name: p for name, p in policies.items() if p not in (None, "PASSIVE")} == {}
