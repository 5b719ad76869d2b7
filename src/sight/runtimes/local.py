"""Models in this process: downloads on first use, run slots over the cores, gathered batches, OCR limiter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import anyio

from sight.engines.base import Detection, DetectOptions, OcrText, VisionLLM, WideDetector
from sight.engines.model_runtime import Picture, Seen, to_original
from sight.errors import StageTimeoutError

if TYPE_CHECKING:
    from PIL import Image

    from sight.config import Settings
    from sight.core.catalog import ModelEntry
    from sight.core.metrics import Metrics
    from sight.engines.registry import EngineRegistry
    from sight.schemas import ModelState


class LocalRuntime:
    """The default ``ModelRuntime``: the registry's engines, run in worker threads of this process."""

    remote = False

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

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
                detector = await anyio.to_thread.run_sync(engines.detector_for, entry)
                batcher = engines.batcher(entry, self.metrics.batch_size.labels(entry.ref).observe)
                if batcher is not None:
                    return await batcher.detect(image, options)
                can_run_wide = alone and isinstance(detector, WideDetector) and detector.can_run_wide

                def run(wide: bool) -> list[Detection]:
                    if wide:
                        return cast(WideDetector, detector).detect(image, options, wide=True)
                    return detector.detect(image, options)

                return await engines.run_slots(entry).call(run, wide_ok=can_run_wide, started=started)
        except TimeoutError as exc:
            raise StageTimeoutError(f"detection did not finish within {timeout}s") from exc
        finally:
            if queued:
                depth.dec()

    async def shadow_detect(self, engines: EngineRegistry, entry: ModelEntry, picture: Picture,
                            options: DetectOptions) -> list[Detection]:
        image = pixels(picture)
        detector = await anyio.to_thread.run_sync(engines.detector_for, entry)
        async with engines.limiter(f"shadow:{entry.ref}", 1):  # never queued ahead of answers
            found = await anyio.to_thread.run_sync(detector.detect, image, options)
        return to_original(found, image.size, picture.full_size)

    def input_side(self, engines: EngineRegistry, entry: ModelEntry) -> int | None:
        detector = engines.loaded_detector(entry)
        imgsz = getattr(detector, "imgsz", None)
        return max(imgsz) if imgsz else None

    async def read_text(self, engines: EngineRegistry, picture: Picture) -> Seen[OcrText]:
        image = pixels(picture)
        timeout = self.settings.ocr.timeout
        try:
            with anyio.fail_after(timeout):
                engine = await anyio.to_thread.run_sync(engines.ocr)
                async with engines.ocr_limiter():
                    text = await anyio.to_thread.run_sync(engine.read, image, abandon_on_cancel=True)
                    return Seen(text, picture.full_size)  # OCR pictures are decoded in full
        except TimeoutError as exc:
            raise StageTimeoutError(f"OCR did not finish within {timeout}s") from exc

    def llm_client(self, engines: EngineRegistry, entry: ModelEntry | None, ref: str | None
                   ) -> tuple[VisionLLM, str | None]:
        return engines.llm_client(entry, ref)

    async def states(self, engines: EngineRegistry, entries: Sequence[ModelEntry]) -> dict[str, ModelState]:
        return {}  # every model is in this process: the registry knows its state


def pixels(picture: Picture) -> Image.Image:
    """The pixels a local run needs: the pipeline decodes every picture it gives this runtime."""
    assert picture.image is not None, "the local runtime is given decoded pictures"
    return picture.image
