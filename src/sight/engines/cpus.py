"""How many CPUs this process may use, and how many single-threaded session runs fit on them.

Engines load their sessions by it (a detector gets a second, wide session only where a run can ever hold
every core), and the local runtime sizes its run slots by it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sight.config import YoloSettings

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs in this process's affinity mask, capped by a cgroup v2 quota (``docker run --cpus``)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return max(1, count)


def cpu_slots(yolo: YoloSettings) -> int:
    """Session runs CPU detectors may make at once: ``SIGHT_YOLO__CONCURRENCY``, else usable cores over the
    threads one run uses."""
    cpus = usable_cpus()
    return yolo.concurrency or max(1, cpus // (yolo.intra_op_threads or cpus))
