"""The replicas of Sight's Ray Serve deployments: plain classes, one model each, that take encoded bytes (never
decoded arrays) and decode next to the model. ``sight.serve_app`` binds them into the application; the client
(``sight.runtimes.ray.client``) calls their methods, typed, through ``call``::

    handle = serve.get_deployment_handle("detect-yolo11n-v1", app_name="sight")
    seen = await call(handle, DetectorReplica.detect, jpeg_bytes, None, DetectOptions())
    seen.value, seen.original, seen.place      # detections, the original's size, where it ran
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from sight.config import Settings
from sight.errors import SightError
from sight.images.budget import PixelBudget, decode_leased
from sight.images.heap import trim_heap, tune_heap
from sight.metrics import Metrics
from sight.models.registry import EngineRegistry
from sight.models.states import model_state
from sight.runtimes.base import Picture, Place, Seen
from sight.runtimes.local import LocalRuntime

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from sight.answers.schema import ResponseSchema
    from sight.engines.base import Detection, DetectOptions, Grounding, LLMAnswer, OcrText, VisionLLM
    from sight.models.catalog import ModelEntry
    from sight.schemas import ModelState

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")

OCR_SERVE_DEPLOYMENT = "ocr"
LLM_SERVE_DEPLOYMENT = "llm"
API_SERVE_DEPLOYMENT = "api"


def detector_serve_deployment(entry: ModelEntry) -> str:
    """The name of the Serve deployment whose replicas hold ``entry``'s detector."""
    return f"detect-{entry.name}-v{entry.version}"


def call(handle: DeploymentHandle, method: Callable[Concatenate[Any, P], Awaitable[R]],
         *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
    """Call ``method`` (a replica class's own method, e.g. ``DetectorReplica.detect``) on a replica behind
    ``handle``: the arguments are checked against its signature, and a renamed method fails type checking,
    where a method name in a string would fail only at run time."""
    return cast(Awaitable[R], handle.options(method_name=method.__name__).remote(*args, **kwargs))


def serve_place() -> Place | None:
    """This replica's place (Serve's replica id, its node, its process), when running as a Serve replica."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return None
    try:
        context = serve.get_replica_context()
    except RayServeException:
        return None
    return Place(str(context.replica_id.unique_id), str(ray.get_runtime_context().get_node_id()), os.getpid())


class ModelReplica:
    """What every model replica has: settings sized to it, its engines and the local runtime, and a budget
    on decoded pixels (calls wait in the replica for its run slots, their pictures decoded). Its answers say
    where they were found (``Seen.place``)."""

    def __init__(self, settings: Settings) -> None:
        self.place = serve_place()
        self.settings = replica_settings(settings)
        self.engines = EngineRegistry(self.settings)
        self.runtime = LocalRuntime(self.settings, Metrics())
        images = self.settings.images
        tune_heap()  # as the API process does: large decodes go back to the OS
        self.pixels = PixelBudget(images.max_pixels_in_flight, images.pixel_queue, self.settings.server.retry_after,
                                  on_idle=trim_heap)

    async def _run(self, data: bytes, min_side: int | None, use: Callable[[Picture], Awaitable[T]]) -> T:
        """Decode ``data`` (holding its pixels from the budget) and ``use`` the picture."""
        image, original, lease = await decode_leased(self.pixels, data, self.settings.images, min_side,
                                                     bounded=False)
        try:
            found = await use(Picture(image, min_side=min_side, original=original))
        finally:
            lease.release()
        return replace(found, place=self.place) if isinstance(found, Seen) else found


class DetectorReplica(ModelReplica):
    """One detector: decodes the bytes it is sent as the API would have, and detects through the local
    runtime, so a replica has what ``sight serve`` has in process: run slots over its CPUs and, when
    ``SIGHT_YOLO__BATCH_MAX_SIZE`` > 1 on a GPU, the gatherer batching concurrent calls into one session run."""

    def __init__(self, settings: Settings, ref: str) -> None:
        super().__init__(settings)
        self.entry = self.engines.catalog.model(ref, task="detect")
        file = self.engines.file_state(self.entry)
        if file is None or file.state == "present":
            # Loaded as the replica starts, so Serve reports it running only once it can answer (a file still
            # to download waits for the first call, on this node). One that cannot load fails its calls with
            # the reason, as in process; it does not take the application down.
            try:
                self.engines.detector_for(self.entry)
            except SightError as exc:
                log.warning("model %s not loaded: %s", ref, exc.message)

    async def detect(self, data: bytes, min_side: int | None, options: DetectOptions) -> Seen[list[Detection]]:
        """Detections in the original's pixels and its size (the API may not have decoded the image)."""
        return await self._run(data, min_side,
                               lambda picture: self.runtime.detect(self.engines, self.entry, picture, options))

    async def state(self) -> ModelState:
        """The model's state as this replica sees it (loaded, failed to load and why, downloading...)."""
        return model_state(self.engines, self.entry)


class OcrReplica(ModelReplica):
    """OCR: decodes the bytes it is sent (full size) and reads the text."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        entry = self.engines.catalog.first("ocr")
        file = self.engines.file_state(entry) if entry is not None else None
        if file is None or file.state == "present":  # loaded as the replica starts, as detectors are
            try:
                self.engines.ocr()
            except SightError as exc:
                log.warning("OCR not loaded: %s", exc.message)

    async def state(self) -> ModelState:
        entry = self.engines.catalog.first("ocr")
        assert entry is not None, "the catalog declares OCR whenever it is enabled"
        return model_state(self.engines, entry)

    async def read_text(self, data: bytes) -> Seen[OcrText]:
        return await self._run(data, None, lambda picture: self.runtime.read_text(self.engines, picture))


class LlmReplica:
    """The LLM clients: each call resolves the model as the API would (catalog entry, or the default backend
    with a model name passed through) and asks the backend; the connections and Ollama discovery live here."""

    def __init__(self, settings: Settings) -> None:
        self.engines = EngineRegistry(settings)

    def _client(self, entry_ref: str | None, ref: str | None) -> tuple[VisionLLM, str | None]:
        entry = self.engines.catalog.model(entry_ref, task="llm") if entry_ref else None
        return self.engines.llm_client(entry, ref)

    async def analyze(self, entry_ref: str | None, ref: str | None, jpeg: bytes, query: str,
                      grounding: Grounding, schema: ResponseSchema | None = None) -> LLMAnswer:
        client, model = self._client(entry_ref, ref)
        return await client.analyze(jpeg, query, grounding, model, schema)

    async def condense(self, entry_ref: str | None, ref: str | None, query: str,
                       answers: list[tuple[str, str]]) -> LLMAnswer:
        client, model = self._client(entry_ref, ref)
        return await client.condense(query, answers, model)


def replica_settings(settings: Settings) -> Settings:
    """``settings`` for a model replica: its run slots sized to the CPUs Ray gave it, not to the node's
    cores (which other replicas share), and no wide runs over every core of the node."""
    if settings.yolo.concurrency:
        return settings
    import ray

    in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0) if in_actor else 1.0
    yolo = settings.yolo.model_copy(update={"concurrency": max(1, math.floor(cpus)), "wide_when_idle": False})
    return settings.model_copy(update={"yolo": yolo})
