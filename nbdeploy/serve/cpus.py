"""How many CPUs this process may really use: affinity mask and cgroup CPU quota.

``os.cpu_count()`` reports the host's cores even inside a container limited to one CPU; sizing
onnxruntime's thread pool from it makes threads fight over the quota and get throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cpus(
    cgroup_root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
) -> int:
    """CPUs allowed by the affinity mask, lowered to a cgroup v2/v1 CPU quota when one is set."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(cgroup_root), Path(proc_cgroup))
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when no quota applies or none can be read."""
    paths = _cgroup_paths(proc_cgroup)
    if "" in paths:
        quota = _v2_quota(root, paths[""])
        if quota is not None:
            return quota
    for controllers, relative in paths.items():
        if "cpu" in controllers.split(","):
            return _v1_quota(root, controllers, relative)
    return None


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """``{controllers: path}`` from /proc/self/cgroup; the v2 unified entry has key ``""``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2].lstrip("/")
    return paths


def _v2_quota(root: Path, relative: str) -> float | None:
    """The tightest ``cpu.max`` from this cgroup up to the root of the mounted hierarchy."""
    quotas: list[float] = []
    directory = root / relative
    candidates = [directory, *directory.parents] if relative else [directory]
    for candidate in candidates:
        if candidate != root and root not in candidate.parents:
            break
        quota = _read_cpu_max(candidate / "cpu.max")
        if quota is not None:
            quotas.append(quota)
    return min(quotas, default=None)


def _read_cpu_max(path: Path) -> float | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(root: Path, controllers: str, relative: str) -> float | None:
    """cfs_quota_us / cfs_period_us of the cpu controller (in the container's own mount first)."""
    for mount in (controllers, "cpu", "cpu,cpuacct"):
        for directory in (root / mount / relative, root / mount):
            try:
                quota = int((directory / "cpu.cfs_quota_us").read_text())
                period = int((directory / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            return quota / period if quota > 0 and period > 0 else None
    return None
