"""One item -> its stages (fetch, decode, yolo, ocr, llm) -> an ``ItemResult``; many items at once.

Every stage's failure becomes that item's error; nothing an item does can fail its siblings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import anyio

from sight.answers.fields import fill
from sight.answers.schema import ResponseSchema, checked_schema
from sight.config import Settings
from sight.engines.base import Detection, DetectOptions, Grounding, LLMAnswer, OcrText, VisionLLM
from sight.errors import (
    EngineUnavailableError,
    ImageTooLargeError,
    InvalidInputError,
    LLMInvalidOutputError,
    ModelNotFoundError,
    SightError,
    StageTimeoutError,
)
from sight.images.budget import Lease, PixelBudget, decode_leased
from sight.images.decode import decode_base64, encode_jpeg, open_image
from sight.metrics import Metrics
from sight.models.catalog import ModelEntry, Task
from sight.models.registry import EngineHub, EngineRegistry
from sight.pipeline.conclusion import conclude
from sight.pipeline.items import ImageInput, WorkItem
from sight.pipeline.results import llm_result, ocr_result, summarize, yolo_result
from sight.pipeline.shadow import ShadowRunner
from sight.runtimes.base import ModelRuntime, Picture, Seen
from sight.runtimes.local import LocalRuntime
from sight.schemas import (
    BatchResult,
    ErrorInfo,
    ImageSize,
    ItemOptions,
    ItemResult,
    LlmResult,
    LlmUsage,
    ModelState,
    StreamProcessing,
)

if TYPE_CHECKING:
    from PIL import Image

    from sight.images.fetch import ImageFetcher

log = logging.getLogger(__name__)

STAGES = ("fetch", "decode", "yolo", "ocr", "llm")


class Pipeline:
    """The execution core shared by every API family."""

    def __init__(self, settings: Settings, hub: EngineHub, fetcher: ImageFetcher, metrics: Metrics,
                 shadows: ShadowRunner, pixels: PixelBudget | None = None, runtime: ModelRuntime | None = None):
        self.settings = settings
        self.runtime: ModelRuntime = runtime or LocalRuntime(settings, metrics)
        self.hub = hub
        self.fetcher = fetcher
        self.metrics = metrics
        self.shadows = shadows
        images = settings.images
        self.pixels = pixels or PixelBudget(images.max_pixels_in_flight, images.pixel_queue,
                                            settings.server.retry_after)
        metrics.pixels_in_flight.set_function(lambda: self.pixels.in_use)
        metrics.pixels_waiting.set_function(lambda: self.pixels.waiting)
        self.draining = False  # set on shutdown: items not yet started are cancelled, running ones finish

    @contextmanager
    def _timed(self, stage: str, timings: dict[str, float]) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            timings[stage] = round(elapsed * 1000, 2)
            self.metrics.stage_seconds.labels(stage).observe(elapsed)

    async def _load(self, source: ImageInput, timings: dict[str, float]) -> bytes:
        max_bytes = self.settings.images.max_bytes
        if source.data is not None:
            return source.data
        if source.upload is not None:
            if source.upload.size is not None and source.upload.size > max_bytes:
                raise ImageTooLargeError(f"image is {source.upload.size} bytes; the limit is {max_bytes}")
            return await source.upload.read()
        if source.ref is None:
            raise InvalidInputError("item has no image: give a file, image_url or image_base64")
        kind, value = source.ref.source()
        if kind == "base64":
            return decode_base64(value, max_bytes)
        with self._timed("fetch", timings):
            return await self.fetcher.fetch(value)

    async def load_picture(self, source: ImageInput, timings: dict[str, float]) -> Picture:
        """Fetch or read, then decode (full size) off the event loop, or, for a remote runtime, only check
        the header and keep the bytes (``pixels_of`` decodes them when a stage here needs them). The pixel
        budget bounds the decode only: the caller keeps the picture as long as it likes, and an image it
        holds must not keep another it waits for from decoding."""
        data = await self._load(source, timings)
        if self.runtime.remote:
            return Picture(data=data, original=await self._check(data, timings))
        image, original, lease = await self._decode(data, timings, None, bounded=True)
        lease.release()
        return Picture(image, original=original)

    async def pixels_of(self, picture: Picture) -> Image.Image:
        """``picture``'s pixels: those at hand, else its bytes decoded in full now (lease as ``load_picture``)."""
        if picture.image is not None:
            return picture.image
        assert picture.data is not None
        image, _original, lease = await self._decode(picture.data, {}, None, bounded=True)
        lease.release()
        return image

    async def _check(self, data: bytes, timings: dict[str, float]) -> tuple[int, int] | None:
        """Check ``data``'s header as a decode would, decoding nothing (timed as the decode stage); the
        original's size if the header tells it (a JPEG's does; other formats may keep their orientation after
        the pixels)."""
        def check() -> tuple[int, int] | None:
            pending = open_image(data, self.settings.images)
            try:
                return pending.known_original
            finally:
                pending.close()

        with self._timed("decode", timings):
            return await anyio.to_thread.run_sync(check)

    async def _decode(
        self, data: bytes, timings: dict[str, float], min_side: int | None, *, bounded: bool
    ) -> tuple[Image.Image, tuple[int, int], Lease]:
        with self._timed("decode", timings):
            return await decode_leased(self.pixels, data, self.settings.images, min_side, bounded=bounded)

    async def run_item(self, item: WorkItem, query: str | None, request_id: str | None = None, *,
                       alone: bool = False, bounded: bool = False) -> ItemResult:
        """Run the stages ``item`` asks for. Never raises, except on cancellation. The engine snapshot is
        taken once, so a registry reload never swaps a model under a running item. ``alone``: the caller
        has no other work in flight, so an idle CPU may give this item every core (see ``detect``).
        The decoded picture's pixels are held from the budget until the last stage is done with it;
        ``bounded``: past the budget's queue bound the item fails with ``overloaded`` instead of waiting."""
        engines = self.hub.current
        timings = dict.fromkeys(STAGES, 0.0)
        result = ItemResult(index=item.index, filename=item.filename, status="done")
        errors: list[SightError] = []
        opts = item.options
        lease: Lease | None = None
        schema: ResponseSchema | None = None
        reply = None
        try:
            schema = await checked_schema(opts.response_schema) if opts.response_schema is not None else None
            reads = self._reads_text(opts, schema)
            min_side = self._min_side(opts, reads)
            data = await self._load(item.image, timings)
            if opts.is_yolo and not self.runtime.remote:
                await self._provision(engines, opts.yolo_model, request_id)
            if self.runtime.remote and not opts.is_llm:
                # No stage here needs pixels: the header is checked, the replicas decode next to the models.
                original = await self._check(data, timings)
                picture = Picture(data=data, min_side=min_side, original=original)
            else:
                image, original, lease = await self._decode(data, timings, min_side, bounded=bounded)
                # A remote runtime decodes the bytes as uploaded next to its model; a local one needs only pixels.
                picture = Picture(image, data if self.runtime.remote else None, min_side, original)
            del data
            if original is not None:
                result.image = ImageSize(width=original[0], height=original[1])
            grounding = Grounding()
            if opts.is_yolo:
                try:
                    with self._timed("yolo", timings):
                        entry, seen = await self.detect(engines, picture, opts.yolo_model, DetectOptions(
                            conf=opts.conf, iou=opts.iou, classes=opts.classes), request_id, alone)
                    result.yolo = yolo_result(entry, seen.value)
                    result.image = ImageSize(width=seen.original[0], height=seen.original[1])
                    grounding.detections.extend(seen.value)
                except SightError as exc:
                    errors.append(exc)
            if reads:
                try:
                    with self._timed("ocr", timings):
                        read = await self.read_text(engines, picture)
                    result.ocr = ocr_result(read.value)
                    result.image = ImageSize(width=read.original[0], height=read.original[1])
                    grounding = Grounding(grounding.detections, result.ocr.text)
                except SightError as exc:
                    if opts.is_ocr or not opts.is_llm:
                        errors.append(exc)
                    else:  # OCR ran only to check the LLM's fields: they come back unchecked instead
                        log.info("item %d: OCR for the schema's evidence failed (%s)", item.index, exc.code)
            if opts.is_llm:
                try:
                    with self._timed("llm", timings):
                        answer = await self.analyze(engines, picture, query, grounding, opts.llm_model, request_id,
                                                    schema)
                    result.llm, reply = llm_result(answer), answer.reply
                except LLMInvalidOutputError as exc:  # the raw answer stays beside the error
                    usage = LlmUsage(prompt_tokens=exc.prompt_tokens, completion_tokens=exc.completion_tokens)
                    result.llm = LlmResult(answer=exc.answer, model=exc.model, usage=usage, truncated=exc.truncated,
                                           structured=exc.structured)
                    errors.append(exc)
        except SightError as exc:
            errors.append(exc)
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            raise
        except Exception:  # a bug, not the user's fault: keep the item, hide internals
            log.exception("item %d failed unexpectedly", item.index)
            errors.append(SightError("internal error while processing this image"))
        finally:
            if lease is not None:
                lease.release()
        if schema is not None:
            try:
                found = fill(schema, reply, result.ocr.lines if result.ocr is not None else None,
                             result.yolo.detections if result.yolo is not None else [])
                result.fields, result.evidence, result.verified = found.fields, found.evidence, found.verified
            except Exception:  # a bug, not the user's fault: the item keeps its stages
                log.exception("filling the fields of item %d failed unexpectedly", item.index)
                errors.append(SightError("internal error while filling the response schema's fields"))
        result.timings_ms = timings
        if errors:
            result.status = "error"
            result.error = ErrorInfo(code=errors[0].code, message=errors[0].message)
            # Their tracebacks hold the frames that held the picture: drop them now, not at the next GC.
            errors.clear()
        self.metrics.items.labels(result.status, result.error.code if result.error else "").inc()
        return result

    async def detect(
        self, engines: EngineRegistry, picture: Picture, ref: str | None, options: DetectOptions,
        request_id: str | None = None, alone: bool = False,
    ) -> tuple[ModelEntry, Seen[list[Detection]]]:
        """Run a detector (and, in the background, its shadows) on ``picture`` through the runtime; boxes in
        the original's pixels. ``alone``: the caller has no other image in flight (see ``LocalRuntime.detect``)."""
        engines, entry = self.model(engines, ref or self.settings.yolo.default_model, request_id, "detect")
        seen = await self.runtime.detect(engines, entry, picture, options, alone=alone)
        for shadow in engines.catalog.shadows.get(entry.ref, []):
            self.shadows.spawn(entry.ref, shadow.ref,
                               partial(self.runtime.shadow_detect, engines, shadow, picture, options), seen.value)
        return entry, seen

    async def read_text(self, engines: EngineRegistry, picture: Picture) -> Seen[OcrText]:
        if not self.settings.ocr.enabled:
            raise EngineUnavailableError("OCR is disabled on this server")
        return await self.runtime.read_text(engines, picture)

    async def analyze(
        self, engines: EngineRegistry, picture: Picture, query: str | None, grounding: Grounding,
        llm_ref: str | None, request_id: str | None = None, schema: ResponseSchema | None = None,
    ) -> LLMAnswer:
        image = await self.pixels_of(picture)
        jpeg = await anyio.to_thread.run_sync(encode_jpeg, image, self.settings.llm.max_image_side)
        primary = engines.llm_entry(llm_ref, request_id)
        client, model = self.runtime.llm_client(engines, primary, llm_ref)
        with self.llm_deadline():
            answer = await client.analyze(jpeg, query or "", grounding, model, schema)
        if primary is not None:
            for shadow in engines.catalog.shadows.get(primary.ref, []):
                shadow_client, shadow_model = self.runtime.llm_client(engines, shadow, shadow.ref)

                async def run(c: VisionLLM = shadow_client, m: str | None = shadow_model) -> str:
                    with self.llm_deadline():
                        return (await c.analyze(jpeg, query or "", grounding, m)).answer

                self.shadows.spawn(primary.ref, shadow.ref, run, answer.answer)
        return answer

    @contextmanager
    def llm_deadline(self) -> Iterator[None]:
        """The one bound on an LLM call, its retries and their waits included, wherever the LLM client runs
        (``SIGHT_LLM__DEADLINE``)."""
        deadline = self.settings.llm.deadline
        try:
            with anyio.fail_after(deadline):
                yield
        except TimeoutError as exc:
            raise StageTimeoutError(f"the vision LLM did not answer within {deadline:g}s") from exc

    def model(self, engines: EngineRegistry, ref: str, request_id: str | None = None, task: Task | None = None
              ) -> tuple[EngineRegistry, ModelEntry]:
        """The catalog entry ``ref`` names, and the snapshot that holds it: on a miss, a detector file put into
        the models folder since is picked up (``EngineHub.discover``); else the error says where detectors
        come from."""
        try:
            return engines, engines.catalog.model(ref, request_id, task=task)
        except ModelNotFoundError as exc:
            name = ref.partition(":")[0]
            found = self.hub.discover(name) if name not in engines.catalog.models else None
            if found is None:
                if name in engines.catalog.models:
                    raise
                known = ", ".join(sorted(m for m, v in engines.catalog.models.items()
                                         if v.by_version[max(v.by_version)].task == (task or "detect")))
                raise ModelNotFoundError(f"{exc.message} (known: {known or 'none'}); a detector is any "
                                         f"<name>.onnx in {self.settings.models_dir}, or an entry of "
                                         "SIGHT_YOLO__MODELS or the registry file") from exc
            return found, found.catalog.model(ref, request_id, task=task)

    async def _provision(self, engines: EngineRegistry, ref: str | None, request_id: str | None) -> None:
        """Wait for a detector's first download before decoding: a waiting item holds no decoded pixels."""
        with contextlib.suppress(SightError):  # the detect stage reports it
            found, entry = self.model(engines, ref or self.settings.yolo.default_model, request_id, "detect")
            await found.provision(entry)

    def _reads_text(self, opts: ItemOptions, schema: ResponseSchema | None) -> bool:
        """Whether OCR runs: asked for, or a response schema needs it (its patterns are filled from the OCR
        lines, and the LLM's values are checked against them), where the server has OCR."""
        if opts.is_ocr:
            return True
        needed = schema is not None and (opts.is_llm or any(f.pattern is not None for f in schema.fields))
        return needed and self.settings.ocr.enabled

    def _min_side(self, opts: ItemOptions, reads_text: bool) -> int | None:
        """How small the picture may be decoded. Detection and OCR take the picture decoded in full, whatever
        else is asked, so their results never depend on the other stages (a reduced decode gives other pixels
        than a full one resized, and other boxes); an item that only asks the LLM may be decoded no smaller
        than the image the LLM is sent."""
        if opts.is_yolo or reads_text or not opts.is_llm:
            return None
        return self.settings.llm.max_image_side

    async def events(
        self, items: Sequence[WorkItem], query: str | None, request_id: str | None = None
    ) -> AsyncIterator[StreamProcessing | ItemResult]:
        """Start events and results as items finish (not in input order), at most
        ``server.item_concurrency`` at a time. Closing the iterator cancels the work still pending."""
        queue: asyncio.Queue[StreamProcessing | ItemResult] = asyncio.Queue()
        slots = asyncio.Semaphore(self.settings.server.item_concurrency)

        async def one(item: WorkItem) -> None:
            async with slots:
                if self.draining:
                    self.metrics.cancelled.inc()
                    shutting_down = ErrorInfo(code="cancelled", message="the server is shutting down")
                    await queue.put(ItemResult(index=item.index, filename=item.filename, status="error",
                                               timings_ms=dict.fromkeys(STAGES, 0.0), error=shutting_down))
                    return
                await queue.put(StreamProcessing(index=item.index, filename=item.filename))
                # Admitted requests' items wait for decode budget: the queue bound refuses whole requests, at
                # admission (PixelBudget.check), never an item of a request already under way.
                await queue.put(await self.run_item(item, query, request_id, alone=len(items) == 1))

        tasks = [asyncio.create_task(one(item)) for item in items]
        try:
            remaining = len(tasks)
            while remaining:
                event = await queue.get()
                if isinstance(event, ItemResult):
                    remaining -= 1
                yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def states(self, engines: EngineRegistry, entries: Sequence[ModelEntry] | None = None
                     ) -> dict[str, ModelState]:
        """By ref, the state of each of ``entries`` (default: every model of ``engines``' catalog), wherever
        the runtime runs them."""
        return await self.runtime.states(engines, engines.catalog.all_models() if entries is None else entries)

    async def run_batch(self, items: Sequence[WorkItem], query: str | None, request_id: str | None = None
                        ) -> BatchResult:
        start = time.perf_counter()
        self.pixels.check()  # 503 before any work while items already wait past the bound for decode budget
        results = [event async for event in self.events(items, query, request_id) if isinstance(event, ItemResult)]
        results.sort(key=lambda r: r.index)
        answer, merged = await conclude(self, query, results)
        return BatchResult(
            **dict(merged),
            items=results,
            answer=answer,
            summary=summarize(results),
            duration_ms=round((time.perf_counter() - start) * 1000, 2),
        )
