"""Spice-style multi-model predict: several models on one shared input (or their own), concurrently,
each answering with its own status, version and timing. A failing model never fails the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from sight.engines.base import DetectOptions, Grounding
from sight.errors import FetchFailedError, InvalidInputError, NotFoundError, SightError
from sight.models.registry import EngineRegistry
from sight.pipeline.items import ImageInput
from sight.pipeline.pipeline import Pipeline
from sight.pipeline.results import detections_json, llm_result, ocr_result
from sight.runtimes.base import Picture
from sight.schemas import PredictInput, PredictionOut, PredictionSpec

# The caller's fault: a bad input, an unknown model or version, an image that cannot be fetched.
BAD_REQUEST = (InvalidInputError, NotFoundError, FetchFailedError)


def _source(inp: PredictInput) -> ImageInput:
    return ImageInput(ref=inp)  # image_url or image_base64: checked as the picture loads, per prediction


class MultiPredictor:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def predict_all(self, shared: PredictInput | None, specs: Sequence[PredictionSpec], request_id: str
                          ) -> list[PredictionOut]:
        engines = self.pipeline.hub.current
        images: dict[int, asyncio.Task[Picture]] = {}

        def image_for(inp: PredictInput) -> asyncio.Task[Picture]:
            # Each distinct input is fetched and decoded once, however many models read it.
            if id(inp) not in images:
                images[id(inp)] = asyncio.ensure_future(self.pipeline.load_picture(_source(inp), {}))
            return images[id(inp)]

        async def one(spec: PredictionSpec) -> PredictionOut:
            return await self.predict_one(engines, spec, shared, request_id, image_for, alone=len(specs) == 1)

        try:
            return list(await asyncio.gather(*(one(spec) for spec in specs)))
        finally:
            for task in images.values():
                task.cancel()

    async def predict_one(
        self, engines: EngineRegistry, spec: PredictionSpec, shared: PredictInput | None, request_id: str,
        image_for: Any = None, *, alone: bool = False,
    ) -> PredictionOut:
        start = time.perf_counter()
        version: str | None = None if spec.model_version is None else str(spec.model_version)
        try:
            inp = spec.input or shared
            if inp is None:
                raise InvalidInputError("no input: give a shared input or one per prediction")
            ref = spec.model_name if version is None else f"{spec.model_name}:{version}"
            engines, entry = self.pipeline.model(engines, ref, request_id)
            version = str(entry.version)
            picture = await (image_for(inp) if image_for else self.pipeline.load_picture(_source(inp), {}))
            prediction = await self._run(engines, entry.task, ref, picture, inp, request_id, alone)
            status, error = "Success", None
        except BAD_REQUEST as exc:
            status, prediction, error = "BadRequest", None, exc.message
        except SightError as exc:
            status, prediction, error = "InternalError", None, exc.message
        return PredictionOut(status=status, model_name=spec.model_name, model_version=version,
                             prediction=prediction, error_message=error,
                             duration_ms=round((time.perf_counter() - start) * 1000))

    async def _run(self, engines: EngineRegistry, task: str, ref: str, picture: Picture, inp: PredictInput,
                   request_id: str, alone: bool) -> Any:
        if task == "detect":
            options = DetectOptions(conf=inp.conf, iou=inp.iou, classes=inp.classes)
            _entry, seen = await self.pipeline.detect(engines, picture, ref, options, request_id, alone)
            return detections_json(seen.value)
        if task == "ocr":
            return ocr_result((await self.pipeline.read_text(engines, picture)).value).model_dump()
        answer = await self.pipeline.analyze(engines, picture, inp.query, Grounding(), ref, request_id)
        return llm_result(answer).model_dump()
