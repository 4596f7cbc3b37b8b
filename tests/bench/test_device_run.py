"""The prepared device run, dry-run on the CPU: its import check, the `gpu` tests (skipped
here) and the benchmark run, and every result file lands under $OUT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_device_run_dry_run_on_the_cpu(device_dry_run: tuple[str, Path], tmp_path: Path) -> None:
    stdout, out_dir = device_dry_run
    assert {p.name for p in out_dir.iterdir()} == {
        "imports.txt", "gpu-tests.txt", "gpu-bench.log", "gpu_bench.json", "host_path.json",
        "host-path.log", "chain_profile.json", "chain-profile.tar",
    }  # fmt: skip
    assert len(list(out_dir.iterdir())) <= 8  # what a device run brings back
    # 5: pytest's "no tests collected", as the module skips at import (no CuPy or no CUDA)
    assert re.search(r"^device_run: gpu thread test exit [05]$", stdout, re.M)
    assert "device_run: gpu tests exit 0" in stdout
    assert "device_run: gpu_bench exit 0" in stdout
    assert "device_run: host_path exit 0" in stdout
    assert "device_run: chain_profile exit 0" in stdout
    with tarfile.open(out_dir / "chain-profile.tar") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"cprofile-b1.txt", "kernels-b1.txt", "log.txt"} <= names
    assert json.loads((out_dir / "chain_profile.json").read_text())["batches"]["1"]["wall_ms"] > 0
    assert "zmq " in (out_dir / "imports.txt").read_text()
    parts = json.loads((out_dir / "gpu_bench.json").read_text())["parts"]
    assert {"info", "eager_fp32", "kernels", "daemon"} <= set(parts)
    host = json.loads((out_dir / "host_path.json").read_text())
    assert host["host_us_per_event"] > 0 and host["zmq_tcp"]["hits_message"]["messages_per_s"] > 0
    # what the device session runs next: the report, with the host's figures
    report = [sys.executable, str(ROOT / "bench" / "gpu_report.py")]
    report += [str(out_dir / "gpu_bench.json"), "--host-path", str(out_dir / "host_path.json")]
    report += ["--results-dir", str(tmp_path / "results"), "--markdown", str(tmp_path / "s.md")]
    done = subprocess.run(report, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    [saved] = (tmp_path / "results").iterdir()
    assert json.loads(saved.read_text())["host_path"] == host
    text = (tmp_path / "s.md").read_text()
    assert "| decode | " in text and "| of which the edge-score histogram | " in text
    assert f"| host total | {host['host_us_per_event']:,.0f} |" in text


def test_device_run_reruns_the_steps_named(tmp_path: Path) -> None:
    """STEPS runs the steps it names after the import check (a rerun in what is left of the
    device time), says which it skipped, and refuses a name it does not know before any."""
    env = {"DEVICE": "cpu", "PYTHON": sys.executable, "PATH": os.environ["PATH"]}
    script = ["sh", str(ROOT / "bench" / "device_run.sh")]
    out_dir = tmp_path / "out"
    done = subprocess.run(script, cwd=ROOT, env={**env, "OUT": str(out_dir), "STEPS": "host"},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out_dir.iterdir()} == {"imports.txt", "host_path.json", "host-path.log"}
    assert "device_run: host_path exit 0" in done.stdout
    for skipped in ("tests", "bench", "profile"):
        assert f"device_run: {skipped} not in STEPS, skipped" in done.stdout
    misspelt = tmp_path / "misspelt"
    env |= {"OUT": str(misspelt), "STEPS": "host bnech"}
    done = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown step bnech" in done.stdout
    assert not misspelt.exists()


#: Stands in for python3: logs each call with its PYTHONPATH to $CALLS; "-" is the import
#: check, which exits $IMPORT_RC; any other call prints its arguments.
FAKE_PYTHON = """#!/bin/sh
echo "PYTHONPATH=${PYTHONPATH:-} $*" >>"$CALLS"
if [ "$1" = - ]; then cat >/dev/null; exit "${IMPORT_RC:-0}"; fi
echo "ran $*"
"""


def _device_run(
    tmp_path: Path, cwd: Path = ROOT, **env: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    """bench/device_run.sh run in ``cwd`` with the stand-in PYTHON: its result and the calls."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    env = {"PATH": os.environ["PATH"], "PYTHON": str(fake), "CALLS": str(calls),
           "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "STEPS": "host"} | env  # fmt: skip
    done = subprocess.run(["sh", str(ROOT / "bench" / "device_run.sh")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done, calls.read_text()


def test_device_run_ends_at_a_failed_import_and_goes_on_past_a_slow_one(tmp_path: Path) -> None:
    """A failed import check ends the run (exit 1, no step run); one cut by its 30 s (124:
    cold caches) goes on to the steps, said; one that passed says nothing of a limit."""
    failed, _ = _device_run(tmp_path / "failed", IMPORT_RC="1")
    assert failed.returncode == 1 and "device_run: an import failed" in failed.stdout
    assert "host_path exit" not in failed.stdout
    slow, _ = _device_run(tmp_path / "slow", IMPORT_RC="124")
    assert slow.returncode == 0, slow.stdout
    assert "the import check ran past 30 s" in slow.stdout
    assert "device_run: host_path exit 0" in slow.stdout
    ok, _ = _device_run(tmp_path / "ok")
    assert ok.returncode == 0 and "ran past" not in ok.stdout


def test_device_run_unpacks_the_wheels_on_the_device_only_and_exports_its_path(
    tmp_path: Path,
) -> None:
    """On the device the carried wheels go to /tmp/site, first on the steps' PYTHONPATH
    (exported: the device has no editable install of the checkout); a CPU dry run leaves
    them and puts only the checkout on it."""
    checkout = tmp_path / "checkout"
    (checkout / ".whl").mkdir(parents=True)
    (checkout / ".whl" / "pyzmq-27.3.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    done, calls = _device_run(tmp_path, cwd=checkout, DEVICE="cuda")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"-m pip install .*--target /tmp/site .whl/pyzmq", calls), calls
    assert f"PYTHONPATH=/tmp/site:{checkout} bench/host_path.py" in calls
    done, calls = _device_run(tmp_path, cwd=checkout, DEVICE="cpu")
    assert done.returncode == 0 and "pip" not in calls, calls
    assert f"PYTHONPATH={checkout} bench/host_path.py" in calls


def test_device_run_without_the_wheels_on_the_device_says_so_before_any_python(tmp_path):
    """No .whl on the device: it went on to the import check, which failed on zmq after
    the machine's start; now it says what to bring, exit 1, before any call."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    done, calls = _device_run(tmp_path, cwd=checkout, DEVICE="cuda")
    assert done.returncode == 1 and calls == ""
    assert "device_run: no .whl/*.whl (pyzmq and tomli-w" in done.stdout


def test_the_gpu_tests_log_keeps_both_pytest_runs(tmp_path: Path) -> None:
    """gpu-tests.txt holds the thread test's run and the other files' run after it."""
    done, _ = _device_run(tmp_path, STEPS="tests")
    assert done.returncode == 0, done.stdout
    log = (tmp_path / "out" / "gpu-tests.txt").read_text()
    assert "-k test_cuda_graphs_score_from_another_thread" in log
    assert "-k not test_cuda_graphs_score_from_another_thread" in log


def test_the_device_runs_limits_fit_its_call() -> None:
    """The steps' limits with the kill grace are at most the 465 s the header promises (the
    `run` call gets 480), and each benchmark budget leaves its step 15 s to write its
    results and stop the daemon before `timeout` interrupts it."""
    script = (ROOT / "bench" / "device_run.sh").read_text()
    limits = re.findall(r"(?<!-)timeout (?:-s \w+ )?(?:-k (\d+) )?(\d+) ", script)
    assert sum(int(grace or 0) + int(limit) for grace, limit in limits) <= 465, limits
    bench = re.search(r"timeout -s INT -k \d+ (\d+) \"\$PYTHON\" bench/gpu_bench.py", script)
    assert bench is not None
    budgets = [int(b) for b in re.findall(r"--budget-s (\d+)", script)]
    assert budgets and all(b + 15 <= int(bench.group(1)) for b in budgets), budgets


#: What the device machine has installed, as /work/.library/device/KINDS.md lists it
#: (read 2026-11-17; distribution names): the project's other needs travel as wheels.
DEVICE_PACKAGES = {
    "numpy", "scipy", "torch", "msgpack", "prometheus-client", "tqdm", "matplotlib", "pytest",
    "hypothesis", "pytest-timeout", "pyyaml", "onnx", "onnxruntime", "onnxscript",
    "setuptools", "cupy-cuda13x", "nvidia-cuda-nvrtc",
}  # fmt: skip


def test_the_carried_wheels_cover_what_the_device_lacks() -> None:
    """Every dependency of the package and its dev extra (less the linters: ruff, mypy and
    its stubs, not run there) is on the device or among the wheels the script's header
    downloads, and in the script's import check."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {
        re.split(r"[<>=\[; ]", req, maxsplit=1)[0].lower()
        for req in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    } - {"ruff", "mypy", "types-tqdm"}
    script = (ROOT / "bench" / "device_run.sh").read_text()
    download = re.search(r"-d \.whl ([^\n]+)", script)
    assert download is not None
    carried = {spec.split("==")[0].lower() for spec in download.group(1).split()}
    assert needed <= DEVICE_PACKAGES | carried, needed - DEVICE_PACKAGES - carried
    imports = {"pyzmq": "zmq", "tomli-w": "tomli_w"}
    assert all(f'"{imports.get(name, name)}"' in script for name in carried)


def test_host_path_cut_during_its_transfers_keeps_its_per_event_figures(
    tmp_path: Path, gpu_report: Any
) -> None:
    """The device run gives host_path a time limit: cut in its ZeroMQ transfers (here, far
    too many messages), its per-event figures are on file already, and the report says the
    transfers were not measured."""
    result = tmp_path / "host_path.json"
    cmd = [sys.executable, str(ROOT / "bench" / "host_path.py"), "--events", "1", "--mu", "5",
           "--repeats", "1", "--messages", "100000000", "--json", str(result)]  # fmt: skip
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL) as run:
        try:
            deadline = time.monotonic() + 60
            while not result.exists() and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # the file is written whole before the transfers start
            senders = _children(run.pid)
        finally:
            run.kill()
    # Its sender process ends with it: left, it connected to the port again and again and
    # handed its messages to whatever bound it next (a later test's daemon).
    assert senders
    deadline = time.monotonic() + 10
    while (left := [pid for pid in senders if Path(f"/proc/{pid}").exists()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "host_path's sender outlived it"
    host = json.loads(result.read_text())
    assert host["host_us_per_event"] > 0 and host["zmq_tcp"] is None
    text = gpu_report.host_path_markdown(host)
    assert f"| host total | {host['host_us_per_event']:,.0f} |" in text
    assert "ZeroMQ over TCP loopback: not measured (run cut)." in text


def test_on_the_device_the_host_path_report_says_the_copy_is_in_its_columns(
    gpu_report: Any,
) -> None:
    """host_path times batch_columns to the copy's end on the device: so labelled, and the
    total with it, lest the copy be read as host work."""
    host = {
        "events": 2,
        "mu": 200,
        "device": "cuda",
        "per_event_us": {"decode": 10.0, "batch_columns": 700.0},
        "host_us_per_event": 710.0,
        "share_of_budget": {"500 events/s": 0.36},
        "zmq_tcp": None,
    }
    text = gpu_report.host_path_markdown(host)
    assert "| batch_columns (with the copy up and its wait) | 700 |" in text
    assert "| host total (the copy up included) | 710 |" in text
    assert "| batch_columns | 6 |" in gpu_report.host_path_markdown(
        host | {"device": "cpu", "per_event_us": {"batch_columns": 6.0}}
    )


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc)."""
    return [
        int(task.name)
        for task in Path("/proc").iterdir()
        if task.name.isdigit() and _parent(task) == pid
    ]


def _parent(task: Path) -> int | None:
    try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
        return int((task / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
