"""Gathers concurrent detections on one model into one session call (GPU batching).

On a GPU one call on a batch of N images costs little more than on one; on a CPU it costs about N times
as much, so batching is off by default (``SIGHT_YOLO__BATCH_MAX_SIZE=1``), and CPU detectors take the direct
path even when it is on (unless ``SIGHT_YOLO__BATCH_ON_CPU``, which the tests use to run this code on a CPU).

>>> async def two_at_once() -> list[list[Detection]]:
...     batcher = DetectionBatcher(detector, max_size=16, max_wait=0.005, slots=RunSlots(1))
...     # concurrent callers may share one session call
...     return await asyncio.gather(batcher.detect(image, DetectOptions()), batcher.detect(image, DetectOptions()))
>>> [found[0].name for found in asyncio.run(two_at_once())]
['FACE_FEMALE', 'FACE_FEMALE']
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio

from sight.engines.base import Detection, DetectOptions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image

    from sight.runtimes.slots import RunSlots


class BatchDetector(Protocol):
    name: str

    def detect_batch(self, jobs: Sequence[tuple[Image.Image, DetectOptions]]) -> list[list[Detection]]: ...


Job = tuple["Image.Image", DetectOptions, "asyncio.Future[list[Detection]]"]


class DetectionBatcher:
    def __init__(
        self, detector: BatchDetector, *, max_size: int, max_wait: float, slots: RunSlots,
        on_batch: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.detector = detector
        self.max_size, self.max_wait = max_size, max_wait
        self.slots = slots
        self.on_batch = on_batch
        self._pending: list[Job] = []
        self._consumer: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running: dropping it loses no call."""
        return not self._pending and not self._running and (self._consumer is None or self._consumer.done())

    async def detect(self, image: Image.Image, options: DetectOptions) -> list[Detection]:
        future: asyncio.Future[list[Detection]] = asyncio.get_running_loop().create_future()
        self._pending.append((image, options, future))
        if self._consumer is None or self._consumer.done():
            self._consumer = asyncio.create_task(self._consume())
        return await future

    async def _consume(self) -> None:
        """One consumer per model gathers arrivals into batches, and starts each batch as soon as a run slot
        is free: with one slot, arrivals pile up while the session is busy; with several (CPU cores, or
        ``concurrency`` on a GPU) batches run side by side, as single images would."""
        while self._pending:
            if len(self._pending) < self.max_size:
                await asyncio.sleep(self.max_wait)  # let a batch fill, at most this long
            taken = await self.slots.acquire()
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            live = [job for job in batch if not job[2].cancelled()]  # callers that went away
            if not live:
                self.slots.release(taken)
                continue
            run = asyncio.create_task(self._run(live))
            self._running.add(run)
            run.add_done_callback(partial(self._finished, taken))

    def _finished(self, taken: int, run: asyncio.Task[None]) -> None:
        self._running.discard(run)
        self.slots.release(taken)

    async def _run(self, batch: list[Job]) -> None:
        try:
            self.on_batch(len(batch))
            results = await anyio.to_thread.run_sync(
                self.detector.detect_batch, [(image, options) for image, options, _ in batch]
            )
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), found in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(found)
