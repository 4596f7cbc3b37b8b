"""CPU threads: the CPUs a process may use (affinity mask, cgroup quota) and torch's count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import streamtrk.threads as threads
from streamtrk.threads import available_cpus, cpu_quota, set_torch_threads, wait_passively


def test_cgroup_quotas_v2_and_v1(tmp_path: Path) -> None:
    at_root = tmp_path / "cgroup"
    at_root.write_text("0::/\n")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(v2, at_root) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2, at_root) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path / "v1", at_root) == 0.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path / "v1", at_root) is None
    assert cpu_quota(tmp_path / "nothing", at_root) is None
    assert cpu_quota(tmp_path / "nothing", tmp_path / "no-proc-file") is None


def test_the_quota_is_the_smallest_from_the_own_cgroup_up(tmp_path: Path) -> None:
    """A systemd unit's ``CPUQuota=`` is on the unit's cgroup, not at the root (a host
    without a cgroup namespace): read where /proc/self/cgroup says, and above it."""
    unit = tmp_path / "v2" / "system.slice" / "streamtrk.service"
    unit.mkdir(parents=True)
    (unit / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "v2" / "cpu.max").write_text("400000 100000\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/system.slice/streamtrk.service\n")
    assert cpu_quota(tmp_path / "v2", own) == 1.0
    (unit / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path / "v2", own) == 4.0  # the one above it
    v1 = tmp_path / "v1" / "cpu" / "system.slice" / "streamtrk.service"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    own.write_text("4:memory:/x\n2:cpu,cpuacct:/system.slice/streamtrk.service\n0::/\n")
    assert cpu_quota(tmp_path / "v1", own) == 0.5
    merged = tmp_path / "v1merged" / "cpu,cpuacct" / "system.slice" / "streamtrk.service"
    merged.mkdir(parents=True)  # mounted under its controllers' names alone
    (merged / "cpu.cfs_quota_us").write_text("150000\n")
    (merged / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path / "v1merged", own) == 1.5
    own.write_text("0::/../elsewhere\n")  # outside the namespace's root: the root's
    assert cpu_quota(tmp_path / "v2", own) == 4.0


def test_the_affinity_mask_bounds_the_threads() -> None:
    n, why = available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0)) and why
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from streamtrk.threads import set_torch_threads; print(set_torch_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch threads 1 (1 CPUs in the affinity mask)"


def test_asked_for_threads_win() -> None:
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(1) == "torch threads 1 (asked for)"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_openmp_workers_wait_passively_in_every_command() -> None:
    code = (
        "import os\nfrom streamtrk.cli import main\n"
        "main(['inspect', 'missing.stk'])\nprint(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout == "PASSIVE\n", out.stderr


def test_an_omp_wait_policy_the_environment_sets_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_v1_cpu_controller_is_not_cpuset(tmp_path: Path) -> None:
    """/proc/self/cgroup lists ``cpuset`` apart from ``cpu,cpuacct`` (here after it, at "/"):
    the quota is read at the cpu controller's path, not at cpuset's."""
    unit = tmp_path / "v1" / "cpu,cpuacct" / "system.slice" / "streamtrk.service"
    unit.mkdir(parents=True)
    (unit / "cpu.cfs_quota_us").write_text("50000\n")
    (unit / "cpu.cfs_period_us").write_text("100000\n")
    own = tmp_path / "cgroup"
    own.write_text("3:cpu,cpuacct:/system.slice/streamtrk.service\n2:cpuset:/\n0::/\n")
    assert cpu_quota(tmp_path / "v1", own) == 0.5


def test_a_fractional_quota_rounds_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "cpu_quota", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert available_cpus() == (2, "cgroup CPU quota 1.5 CPUs (4 in the mask)")
    monkeypatch.setattr(threads, "cpu_quota", lambda: 0.5)
    assert available_cpus()[0] == 1
    monkeypatch.setattr(threads, "cpu_quota", lambda: 4.0)
    assert available_cpus() == (4, "4 CPUs in the affinity mask, quota 4")


@pytest.mark.parametrize("requested", [-1, 4097])
def test_threads_asked_for_outside_the_range_are_refused(requested: int) -> None:
    with pytest.raises(ValueError, match=rf"^torch threads must be 0 to 4096, got {requested}$"):
        set_torch_threads(requested)


def test_no_quota_is_read_outside_the_root(tmp_path: Path) -> None:
    """Only ``root`` and below it: not above it, and not where ``..`` leads (a cgroup
    namespace shows a path above its root so)."""
    (tmp_path / "v2" / "unit").mkdir(parents=True)
    (tmp_path / "v2" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # above the root
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "cpu.max").write_text("100000 100000\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/unit\n")
    assert cpu_quota(tmp_path / "v2", own) == 4.0
    own.write_text("0::/../elsewhere\n")
    assert cpu_quota(tmp_path / "v2", own) == 4.0


def test_a_quota_above_the_own_cgroup_that_is_smaller_wins(tmp_path: Path) -> None:
    """A pod's limit (on its slice) below a container's looser one: the smallest anywhere on
    the way up, not the first found."""
    unit = tmp_path / "v2" / "pod" / "container"
    unit.mkdir(parents=True)
    (unit / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "v2" / "pod" / "cpu.max").write_text("150000 100000\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/pod/container\n")
    assert cpu_quota(tmp_path / "v2", own) == 1.5


def test_quota_files_that_do_not_parse_are_no_quota(tmp_path: Path) -> None:
    """A cpu.max or cfs file that holds no numbers is read as no quota, not a crash at
    startup."""
    own = tmp_path / "cgroup"
    own.write_text("0::/\n")
    v2 = tmp_path / "v2"
    v2.mkdir()
    for text in ("", "150000\n", "lots 100000\n"):
        (v2 / "cpu.max").write_text(text)
        assert cpu_quota(v2, own) is None, text
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("lots\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path / "v1", own) is None


def test_the_threads_chosen_are_set_in_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 0 asked for, torch runs the count chosen (a quota of 1 CPU under a mask of 4),
    not only the line saying it."""
    monkeypatch.setattr(threads, "cpu_quota", lambda: 1.0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert set_torch_threads() == "torch threads 1 (cgroup CPU quota 1 CPUs (4 in the mask))"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_up_to_the_limit_are_taken() -> None:
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(4096) == "torch threads 4096 (asked for)"
    finally:
        torch.set_num_threads(before)
