"""The CPU cores this process may use: its affinity, bounded by a container's cgroup v2 CPU quota.

Its own module so that the engine (lanes) and the runtime (onnxruntime's threads) size themselves alike.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def read_cpu_max() -> str | None:
    """The text of this cgroup's ``cpu.max``, or None where there is no cgroup v2 CPU controller."""
    try:
        return CPU_MAX.read_text()
    except OSError:
        return None


def available_cores() -> int:
    """CPU cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota (as in a container)."""
    cores = len(os.sched_getaffinity(0))
    cpu_max = read_cpu_max()
    quota = None if cpu_max is None else quota_cores(cpu_max)
    return cores if quota is None else min(cores, quota)


def quota_cores(cpu_max: str) -> int | None:
    """The cores a cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>") allows, rounded, at least 1."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return max(1, round(int(fields[0]) / int(fields[1])))
    except (ValueError, ZeroDivisionError):
        return None
