"""How the C heap holds decoded pictures: large blocks mapped straight from the operating system, so they go back
to it when freed, and the heap's free pages handed back after a burst (glibc only; a no-op elsewhere).

Pillow holds a decoded picture in blocks of up to 16 MiB. By default glibc raises its mmap threshold to the
largest block freed so far (up to 32 MiB), after which every picture is carved from per-thread heaps that keep
the memory after the burst. What these settings cost and save is measured in docs/benchmarks.md ("Decode
memory", and "Local runtime" on the heap tuning).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only (musl has none): probe once
    except (OSError, AttributeError):
        return None
    return libc


def trim_heap() -> None:
    """Give the C heap's free pages back to the operating system (glibc's ``malloc_trim(0)``; a no-op on other
    C libraries and systems). Blocking: a few milliseconds per GB released."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
# Below Pillow's 16 MiB blocks, so every block of a large picture is mapped; above the largest allocation one
# detection run makes (yolo11n at 640), which would otherwise be mapped and faulted in again on every image.
MMAP_THRESHOLD = 12 * 1024 * 1024
M_TRIM_THRESHOLD = -1
# Setting the mmap threshold by hand also freezes glibc's trim threshold at 128 KiB: every free at the top of
# the heap would then hand pages back, and the next image fault them in again. Bursts are handed back by
# malloc_trim when the budget goes idle instead, which this threshold does not limit.
TRIM_THRESHOLD = 256 * 1024 * 1024


def tune_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes or more straight from ``mmap``, so that they go back to the
    operating system the moment they are freed (glibc's ``mallopt(M_MMAP_THRESHOLD)``; a no-op elsewhere).
    Returns whether the setting took."""
    if (libc := _libc()) is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
