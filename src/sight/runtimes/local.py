"""Models in this process: downloads on first use, run slots over the cores, gathered batches, OCR limiter.

The runtime holds how engines run (slots, batchers, limiters); the registry holds the engines. A reload
swaps the registry and keeps the runtime, so one pool of CPU slots serves every catalog snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import anyio

from sight.engines.base import Detection, DetectOptions, Detector, OcrText, VisionLLM, WideDetector
from sight.engines.cpus import cpu_slots
from sight.errors import StageTimeoutError
from sight.models.states import model_state
from sight.runtimes.base import Picture, Seen, to_original
from sight.runtimes.slots import RunSlots

if TYPE_CHECKING:
    from PIL import Image

    from sight.config import Settings
    from sight.metrics import Metrics
    from sight.models.catalog import ModelEntry
    from sight.models.registry import EngineRegistry
    from sight.runtimes.batching import DetectionBatcher
    from sight.schemas import ModelState

log = logging.getLogger(__name__)
CPU_SLOTS = "__cpu__"


class LocalRuntime:
    """The default ``ModelRuntime``: the registry's engines, run in worker threads of this process."""

    remote = False

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._slots: dict[str, RunSlots] = {}
        self._batchers: dict[tuple[str, int], DetectionBatcher] = {}  # (ref, id of its detector) -> batcher
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    async def detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                     options: DetectOptions, *, alone: bool = False) -> Seen[list[Detection]]:
        """``alone`` (the caller has no other image in flight): on a CPU with every run slot free, the run
        takes them all and uses every core, for the lowest latency; otherwise it takes one slot, one core,
        for the most images/s."""
        image = pixels(picture)
        original = picture.full_size
        found = await self._detect(engines, entry, image, options, alone)
        return Seen(to_original(found, image.size, original), original)

    async def _detect(self, engines: EngineRegistry, entry: ModelEntry, image: Image.Image,
                      options: DetectOptions, alone: bool) -> list[Detection]:
        await engines.provision(entry)  # a model still to download: wait for it (models.wait_timeout)
        timeout = self.settings.yolo.timeout
        depth = self.metrics.queue_depth.labels(entry.ref)
        depth.inc()
        queued = True

        def started() -> None:
            nonlocal queued
            queued = False
            depth.dec()
            self.metrics.batch_size.labels(entry.ref).observe(1)

        try:
            with anyio.fail_after(timeout):
                detector = await detector_of(engines, entry)
                batcher = self.batcher(engines, entry, detector, self.metrics.batch_size.labels(entry.ref).observe)
                if batcher is not None:
                    return await batcher.detect(image, options)
                can_run_wide = alone and isinstance(detector, WideDetector) and detector.can_run_wide

                def run(wide: bool) -> list[Detection]:
                    if wide:
                        return cast(WideDetector, detector).detect(image, options, wide=True)
                    return detector.detect(image, options)

                return await self.run_slots(entry, detector).call(run, wide_ok=can_run_wide, started=started)
        except TimeoutError as exc:
            raise StageTimeoutError(f"detection did not finish within {timeout}s") from exc
        finally:
            if queued:
                depth.dec()

    def run_slots(self, entry: ModelEntry, detector: Detector | None) -> RunSlots:
        """What a session run of ``entry``'s (loaded) ``detector`` waits for. Detectors on the CPU share one
        pool of ``usable cores / intra_op_threads`` slots, so concurrent requests, models included, never
        oversubscribe the cores; a detector on a GPU has its own."""
        key = CPU_SLOTS if on_cpu(detector) else entry.ref
        if key not in self._slots:  # sized once: not on every run
            capacity = cpu_slots(self.settings.yolo) if key == CPU_SLOTS else self.settings.yolo.concurrency or 1
            self._slots[key] = RunSlots(capacity)
            log.info("%s: %d session run(s) at once", "CPU detectors" if key == CPU_SLOTS else key, capacity)
        return self._slots[key]

    def batcher(self, engines: EngineRegistry, entry: ModelEntry, detector: Detector,
                on_batch: Callable[[int], None]) -> DetectionBatcher | None:
        """The gathering front of ``entry``'s ``detector``, when batching is on and the model allows it: one per
        loaded detector, so the items of an old and a new catalog snapshot of a replaced model each gather on
        their own; one whose detector ``engines`` no longer holds is dropped once idle."""
        y = self.settings.yolo
        if y.batch_max_size <= 1 or not getattr(detector, "dynamic_batch", False):
            return None
        if on_cpu(detector) and not y.batch_on_cpu:
            return None  # gathering costs a CPU as much as single runs, plus the wait: take the direct path
        for (ref, ident), old in list(self._batchers.items()):
            current = engines.loaded_by_ref(ref)
            if (current is None or id(current) != ident) and old.idle:
                del self._batchers[(ref, ident)]  # its model was reloaded or removed: let its session go
        key = (entry.ref, id(detector))
        if key not in self._batchers:
            from sight.runtimes.batching import DetectionBatcher

            self._batchers[key] = DetectionBatcher(
                detector, max_size=y.batch_max_size, max_wait=y.batch_max_wait_ms / 1000,  # type: ignore[arg-type]
                slots=self.run_slots(entry, detector), on_batch=on_batch)
        return self._batchers[key]

    @property
    def batchers(self) -> list[DetectionBatcher]:
        """The gathering fronts held now, one per loaded detector that gathers."""
        return list(self._batchers.values())

    def limiter(self, key: str, capacity: int) -> anyio.CapacityLimiter:
        """The limiter named ``key`` (OCR, shadows), made with ``capacity`` on first use."""
        if key not in self._limiters:
            self._limiters[key] = anyio.CapacityLimiter(capacity)
        return self._limiters[key]

    async def shadow_detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                            options: DetectOptions) -> list[Detection]:
        image = pixels(picture)
        detector = await detector_of(engines, entry)
        async with self.limiter(f"shadow:{entry.ref}", 1):  # never queued ahead of answers
            found = await anyio.to_thread.run_sync(detector.detect, image, options)
        return to_original(found, image.size, picture.full_size)

    async def read_text(self, engines: EngineRegistry, picture: Picture) -> Seen[OcrText]:
        image = pixels(picture)
        timeout = self.settings.ocr.timeout
        try:
            with anyio.fail_after(timeout):
                engine = await anyio.to_thread.run_sync(engines.ocr)
                async with self.limiter("__ocr__", self.settings.ocr.concurrency):
                    text = await anyio.to_thread.run_sync(engine.read, image, abandon_on_cancel=True)
                    return Seen(text, picture.full_size)  # OCR pictures are decoded in full
        except TimeoutError as exc:
            raise StageTimeoutError(f"OCR did not finish within {timeout}s") from exc

    def llm_client(self, engines: EngineRegistry, entry: ModelEntry | None, ref: str | None
                   ) -> tuple[VisionLLM, str | None]:
        return engines.llm_client(entry, ref)

    async def states(self, engines: EngineRegistry, entries: Sequence[ModelEntry]) -> dict[str, ModelState]:
        return {m.ref: model_state(engines, m) for m in entries}  # every model is in this process


async def detector_of(engines: EngineRegistry, entry: ModelEntry) -> Detector:
    """``entry``'s detector: at once when loaded (every item but the first few), else downloaded and loaded in a
    worker thread."""
    loaded = engines.loaded_detector(entry)
    return loaded if loaded is not None else await anyio.to_thread.run_sync(engines.detector_for, entry)


def on_cpu(detector: Detector | None) -> bool:
    providers = getattr(detector, "providers", None) or ["CPUExecutionProvider"]
    return bool(providers[0] == "CPUExecutionProvider")


def pixels(picture: Picture) -> Image.Image:
    """The pixels a local run needs: the pipeline decodes every picture it gives this runtime."""
    assert picture.image is not None, "the local runtime is given decoded pictures"
    return picture.image
