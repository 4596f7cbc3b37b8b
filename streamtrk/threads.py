"""CPU threads: how many this process may use, and torch's thread count chosen from that.

A process may run on the CPUs of its affinity mask (``taskset``, cpusets) and, under a
cgroup CPU quota (what a Kubernetes CPU limit sets), for quota / period CPUs' worth of time.
Threads beyond that only take turns and, in OpenMP's barriers, wait for each other. OpenMP
workers are also told to wait passively (``OMP_WAIT_POLICY=PASSIVE``, read once when the
OpenMP runtime starts, so :func:`wait_passively` must run before torch is imported): a
spinning worker would burn a core that another process on the node needs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from streamtrk.errors import SettingError

#: The most torch intra-op threads one may ask for (a few thousand more crash torch).
MAX_TORCH_THREADS = 4096


def wait_passively() -> None:
    """Make OpenMP's idle workers sleep instead of spinning (unless the environment says
    otherwise); effective only before torch starts its OpenMP runtime."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), cgroups: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or None without a quota: the smallest on
    the way from the process's own cgroup (``cgroups``, as ``/proc/self/cgroup`` names it:
    a systemd unit's ``CPUQuota=`` is on the unit's) up to ``root`` (a container's)."""
    v2, v1 = _own_cgroups(cgroups)
    quotas = [q for d in _up(root, v2) if (q := _v2_quota(d)) is not None]
    # v1's cpu controller: mounted as cpu, or only as cpu,cpuacct (no cpu link to it)
    cpu = next((d for d in (root / "cpu", root / "cpu,cpuacct") if d.is_dir()), root / "cpu")
    quotas += [q for d in _up(cpu, v1) if (q := _v1_quota(d)) is not None]
    return min(quotas, default=None)


def _own_cgroups(cgroups: Path) -> tuple[str, str]:
    """The process's cgroup v2 path and its v1 ``cpu`` controller's path ("/" if unknown)."""
    v2 = v1 = "/"
    try:
        lines = cgroups.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _up(base: Path, path: str) -> list[Path]:
    """``base`` joined with ``path`` and with each of its parents, ``base`` last (only
    ``base`` for a path outside it, as a cgroup namespace shows one above its root)."""
    if ".." in Path(path).parts:
        return [base]
    inner = base / path.strip("/")
    return [inner, *[p for p in inner.parents if p.is_relative_to(base)]]


def _v2_quota(directory: Path) -> float | None:
    try:
        max_quota, max_period = (directory / "cpu.max").read_text().split()[:2]
        return None if max_quota == "max" else int(max_quota) / int(max_period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def available_cpus() -> tuple[int, str]:
    """CPUs this process may keep busy, and where the figure comes from (for logs)."""
    mask = len(os.sched_getaffinity(0))
    quota = cpu_quota()
    if quota is not None and math.ceil(quota) < mask:
        return max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g} CPUs ({mask} in the mask)"
    return mask, f"{mask} CPUs in the affinity mask" + (
        "" if quota is None else f", quota {quota:g}"
    )


def set_torch_threads(requested: int = 0) -> str:
    """Set torch's intra-op threads to ``requested``, or with 0 to :func:`available_cpus`;
    returns a line saying what was chosen and why. ValueError outside 0 to
    :data:`MAX_TORCH_THREADS`."""
    import torch

    if not 0 <= requested <= MAX_TORCH_THREADS:
        raise SettingError(f"torch threads must be 0 to {MAX_TORCH_THREADS}, got {requested}")
    if requested > 0:
        torch.set_num_threads(requested)
        return f"torch threads {requested} (asked for)"
    n, why = available_cpus()
    torch.set_num_threads(n)
    return f"torch threads {n} ({why})"
