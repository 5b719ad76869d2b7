"""How session runs share the CPUs: the slots runs take.

One single-threaded ONNX Runtime run per core gives small models far more images/s than one run spread
over every core, but a lone image then waits longer. ``RunSlots`` gives both: a run that finds every slot
free and nobody waiting takes them all (a wide run over every core); otherwise it takes one.

>>> slots = RunSlots(2)   # e.g. usable_cpus(): one slot per core
>>> found = asyncio.run(slots.call(lambda wide: detector.detect(image, DetectOptions(), wide=wide), wide_ok=True))
>>> found[0].name
'FACE_FEMALE'
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class RunSlots:
    """``capacity`` slots, granted first come first served; one event loop's."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.free = self.capacity
        self.wide_runs = 0  # runs granted every slot
        self._waiters: deque[tuple[asyncio.Future[int], bool]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for future, _ in self._waiters if not future.done())

    async def call(self, fn: Callable[[bool], T], *, wide_ok: bool = False,
                   started: Callable[[], None] = lambda: None) -> T:
        """Run ``fn(wide)`` in a worker thread once slots are granted (``started`` is called then). A thread
        cannot be stopped, so the slots stay taken until ``fn`` returns even if the caller is cancelled
        meanwhile: the caller stops waiting, the cores stay accounted for."""
        taken = await self.acquire(wide_ok=wide_ok)
        started()

        async def hold() -> T:
            try:
                return await anyio.to_thread.run_sync(fn, taken > 1)
            finally:
                self.release(taken)

        running = asyncio.ensure_future(hold())
        running.add_done_callback(_consume_outcome)
        return await asyncio.shield(running)

    def _grant(self, wide_ok: bool) -> int:
        wide = wide_ok and self.capacity > 1 and self.free == self.capacity and not self.waiting
        taken = self.capacity if wide else 1
        self.free -= taken
        self.wide_runs += wide
        return taken

    async def acquire(self, *, wide_ok: bool = False) -> int:
        """Wait for slots; returns how many were taken (every one, or one). Give them back with ``release``."""
        if self.free and not self.waiting:
            return self._grant(wide_ok)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, wide_ok))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # granted, but the caller went away before using it
            raise

    def release(self, taken: int) -> None:
        self.free += taken
        while self.free and self._waiters:
            future, wide_ok = self._waiters.popleft()
            if not future.done():
                future.set_result(self._grant(wide_ok))


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of a run nobody waits for any more as seen (no 'exception never retrieved')."""
    if not task.cancelled():
        task.exception()
