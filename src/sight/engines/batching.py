"""Gathers concurrent detections on one model into one session call (GPU batching).

On a GPU one call on a batch of N images costs little more than on one; on a CPU it costs about N times
as much, so batching is off by default (``SIGHT_YOLO__BATCH_MAX_SIZE=1``) and the direct path is taken.

>>> batcher = DetectionBatcher(detector, max_size=16, max_wait=0.005, limiter=limiter)
>>> await batcher.detect(image, DetectOptions())   # may share a session call with concurrent callers
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from sight.engines.base import Detection, DetectOptions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image


class BatchDetector(Protocol):
    name: str

    def detect_batch(self, jobs: Sequence[tuple[Image.Image, DetectOptions]]) -> list[list[Detection]]: ...


Job = tuple["Image.Image", DetectOptions, "asyncio.Future[list[Detection]]"]


class DetectionBatcher:
    def __init__(
        self, detector: BatchDetector, *, max_size: int, max_wait: float, limiter: anyio.CapacityLimiter,
        on_batch: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.detector = detector
        self.max_size, self.max_wait = max_size, max_wait
        self.limiter = limiter
        self.on_batch = on_batch
        self._pending: list[Job] = []
        self._timer: asyncio.TimerHandle | None = None
        self._runs: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def detect(self, image: Image.Image, options: DetectOptions) -> list[Detection]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Detection]] = loop.create_future()
        self._pending.append((image, options, future))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            live = [job for job in batch if not job[2].cancelled()]  # callers that went away
            if live:
                task = asyncio.get_running_loop().create_task(self._run(live))
                self._runs.add(task)
                task.add_done_callback(self._runs.discard)

    async def _run(self, batch: list[Job]) -> None:
        try:
            async with self.limiter:
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
