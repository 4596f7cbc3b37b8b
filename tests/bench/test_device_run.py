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
