"""A process-wide budget on decoded pixels: how many may be held in memory at once, across all requests.

Encoded images are small and decoded ones are not (a 160 KB PNG can be 7000x7000: 147 MB as RGB), so
bounding files per request or items per model does not bound memory. An item takes its picture's pixels
before decoding and gives them back when its stages are done with the picture::

    budget = PixelBudget(limit=150_000_000, queue=64, retry_after=2)
    lease = await budget.acquire(width * height)   # waits, FIFO, while other pictures hold the budget
    try:
        picture = decode(...)
        lease.shrink(picture.width * picture.height)  # decoded at reduced scale: the rest is free again
        ...
    finally:
        lease.release()

Waiters are served in arrival order, and a waiter that does not fit blocks those behind it, so a large
picture is never starved by a stream of small ones. Past ``queue`` waiters, ``acquire`` refuses at once
with ``OverloadedError`` (503 with Retry-After) instead of queueing without limit. A picture larger than
the whole budget still runs, alone. When the budget falls idle after large decodes it runs its ``on_idle``
hook: the services hand the C heap's free memory back to the operating system there (``sight.images.heap``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

import anyio

from sight.errors import OverloadedError
from sight.images.decode import open_image

if TYPE_CHECKING:
    from PIL import Image

    from sight.config import ImageSettings

log = logging.getLogger(__name__)

# Run the idle hook (a heap trim) once the budget is idle again after this many pixels were granted since the
# last time: below it, what the allocator keeps is noise, and a trim would only make the next requests fault
# their pages in again.
TRIM_AFTER_PIXELS = 32_000_000


class PixelBudget:
    """At most ``limit`` decoded pixels held at once; at most ``queue`` acquisitions waiting for them."""

    def __init__(self, limit: int, queue: int, retry_after: int,
                 on_idle: Callable[[], object] | None = None) -> None:
        self.limit = max(1, limit)
        self.queue = queue
        self.retry_after = retry_after
        self.on_idle = on_idle
        self.in_use = 0  # pixels held now
        self.peak = 0  # the most ever held at once
        self.granted = 0  # acquisitions granted, in all
        self.rejected = 0  # acquisitions refused past the queue bound
        self.trims = 0  # idle hooks run
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._since_trim = 0
        self._idle_task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def saturated(self) -> bool:
        """Whether an item arriving now would be refused: the queue is full (for ``queue=0``: the budget is)."""
        if self.queue <= 0:
            return self.in_use >= self.limit
        return len(self._waiters) >= self.queue

    def check(self) -> None:
        """Refuse work at once (before any of it starts) when the budget is saturated."""
        if self.saturated:
            self.rejected += 1
            raise OverloadedError(self._busy_message(), self.retry_after)

    async def acquire(self, pixels: int, *, bounded: bool = True) -> Lease:
        """Wait for ``pixels`` (capped at the whole budget: a larger picture runs alone) and hold them.
        ``bounded``: refuse with ``OverloadedError`` rather than wait behind ``queue`` others."""
        cost = min(max(0, pixels), self.limit)
        if not self._waiters and self.in_use + cost <= self.limit:
            self._take(cost)
            return Lease(self, cost)
        if bounded and len(self._waiters) >= self.queue:
            self.rejected += 1
            raise OverloadedError(self._busy_message(), self.retry_after)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back(cost)  # granted just as it was cancelled: pass the pixels on
            else:
                with suppress(ValueError):  # a release may have dropped it from the queue already
                    self._waiters.remove(entry)
                self._grant()  # it may have blocked smaller ones behind it
            raise
        return Lease(self, cost)

    def _busy_message(self) -> str:
        return (f"busy decoding other images ({self.in_use} of {self.limit} pixels in use, {len(self._waiters)} "
                f"waiting); retry shortly")

    def _take(self, cost: int) -> None:
        self.in_use += cost
        self.peak = max(self.peak, self.in_use)
        self.granted += 1
        self._since_trim += cost

    def _give_back(self, pixels: int) -> None:
        self.in_use -= pixels
        self._grant()
        if self.in_use == 0 and not self._waiters and self._since_trim >= TRIM_AFTER_PIXELS:
            self._idle()

    def _grant(self) -> None:
        while self._waiters:
            cost, waiter = self._waiters[0]
            if waiter.done():  # cancelled, and its task has not run its cleanup yet
                self._waiters.popleft()
                continue
            if self.in_use + cost > self.limit:
                return
            self._waiters.popleft()
            self._take(cost)
            waiter.set_result(None)

    def _idle(self) -> None:
        self._since_trim = 0
        if self.on_idle is None or (self._idle_task is not None and not self._idle_task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # released outside the event loop (interpreter shutdown): nothing to hand back
            return
        self.trims += 1
        self._idle_task = loop.create_task(self._run_idle_hook())

    async def _run_idle_hook(self) -> None:
        assert self.on_idle is not None
        try:
            await anyio.to_thread.run_sync(self.on_idle)
        except Exception:  # a hook failing must not fail anything else
            log.exception("the pixel budget's idle hook failed")

    async def aclose(self) -> None:
        """Wait for an idle hook still running (at shutdown)."""
        if self._idle_task is not None:
            await asyncio.gather(self._idle_task, return_exceptions=True)


class Lease:
    """Pixels held from a :class:`PixelBudget`. ``release()`` is idempotent."""

    def __init__(self, budget: PixelBudget, pixels: int) -> None:
        self._budget, self.pixels = budget, pixels

    def shrink(self, pixels: int) -> None:
        """Hold only ``pixels`` from now on (the picture came out smaller than the decode needed)."""
        extra = self.pixels - min(max(0, pixels), self.pixels)
        if extra:
            self.pixels -= extra
            self._budget._give_back(extra)

    def release(self) -> None:
        if self.pixels:
            pixels, self.pixels = self.pixels, 0
            self._budget._give_back(pixels)


async def decode_leased(budget: PixelBudget, data: bytes, settings: ImageSettings, min_side: int | None, *,
                        bounded: bool) -> tuple[Image.Image, tuple[int, int], Lease]:
    """Check ``data``'s header, wait for its decode's pixels from ``budget``, decode off the event loop (at
    reduced scale when ``min_side`` allows). Returns the picture, the full-size original's size and the lease,
    shrunk to the picture kept: the caller releases it when done with the picture. ``bounded``: past the
    budget's queue bound, refuse (``OverloadedError``) rather than wait."""
    pending = await anyio.to_thread.run_sync(open_image, data, settings, min_side)
    try:
        lease = await budget.acquire(pending.pixels, bounded=bounded)
    except BaseException:
        pending.close()
        raise
    try:
        image = await anyio.to_thread.run_sync(pending.decode)
    except BaseException:
        lease.release()
        raise
    lease.shrink(image.width * image.height)  # the full-size decode, if any, is freed by now
    return image, pending.original, lease
