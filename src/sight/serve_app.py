"""Sight as a Ray Serve application: each detector, OCR and the LLM clients their own deployment, the HTTP
API the ingress.

Run it with ``sight serve --engine ray``, ``serve run sight.serve_app:app``, ``serve deploy
deploy/serve-config.yaml`` or a KubeRay RayService (``deploy/rayservice.yaml``). Settings come from the
environment as everywhere else (``SIGHT_ENGINE__DETECTOR__NUM_GPUS=0.5``, ...); the deployments get them
from the builder, so every replica runs on the settings the application was built with.

A deployment holds one model, takes encoded bytes (never decoded arrays) and decodes next to the model::

    handle = serve.get_deployment_handle("detect-yolo11n-v1", app_name="sight")
    seen = await handle.remote(jpeg_bytes, None, DetectOptions())   # Seen(detections, original size)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from sight.config import DeploymentSettings, Settings
from sight.core.metrics import Metrics
from sight.core.model_states import model_state
from sight.core.pixel_budget import PixelBudget, decode_leased, trim_heap, tune_heap
from sight.engines.local_runtime import LocalRuntime
from sight.engines.model_runtime import Picture, Seen
from sight.engines.ray_runtime import LLM_DEPLOYMENT, OCR_DEPLOYMENT, detector_deployment, import_serve
from sight.engines.registry import EngineRegistry
from sight.errors import SightError

if TYPE_CHECKING:
    from ray.serve import Application

    from sight.engines.base import Detection, DetectOptions, Grounding, LLMAnswer, OcrText, VisionLLM
    from sight.schemas import ModelState

log = logging.getLogger(__name__)
INGRESS_DEPLOYMENT = "api"
T = TypeVar("T")


class _ModelReplica:
    """What every model replica has: settings sized to it, its engines and the local runtime, and a budget
    on decoded pixels (calls wait in the replica for its run slots, their pictures decoded)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = replica_settings(settings)
        self.engines = EngineRegistry(self.settings)
        self.runtime = LocalRuntime(self.settings, Metrics())
        images = self.settings.images
        tune_heap()  # as the API process does: large decodes go back to the OS (docs/benchmarks.md)
        self.pixels = PixelBudget(images.max_pixels_in_flight, images.pixel_queue, self.settings.server.retry_after,
                                  on_idle=trim_heap)

    async def _run(self, data: bytes, min_side: int | None, use: Callable[[Picture], Awaitable[T]]) -> T:
        """Decode ``data`` (holding its pixels from the budget) and ``use`` the picture."""
        image, original, lease = await decode_leased(self.pixels, data, self.settings.images, min_side,
                                                     bounded=False)
        try:
            return await use(Picture(image, min_side=min_side, original=original))
        finally:
            lease.release()


class SightDetector(_ModelReplica):
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

    async def __call__(self, data: bytes, min_side: int | None, options: DetectOptions) -> Seen[list[Detection]]:
        """Detections in the original's pixels and its size (the API may not have decoded the image)."""
        return await self._run(data, min_side,
                               lambda picture: self.runtime.detect(self.engines, self.entry, picture, options))

    async def state(self) -> ModelState:
        """The model's state as this replica sees it (loaded, failed to load and why, downloading...)."""
        return model_state(self.engines, self.entry)

    async def input_side(self) -> int | None:
        """The long side of the model's input (the API decodes no larger for detection alone)."""
        await self.engines.provision(self.entry)  # downloads (once) on the replica's node, not the API's
        await anyio.to_thread.run_sync(self.engines.detector_for, self.entry)
        return self.runtime.input_side(self.engines, self.entry)


class SightOcr(_ModelReplica):
    """OCR: decodes the bytes it is sent (full size) and reads the text."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        try:
            self.engines.ocr()  # loaded as the replica starts
        except SightError as exc:
            log.warning("OCR not loaded: %s", exc.message)

    async def state(self) -> ModelState:
        entry = self.engines.catalog.first("ocr")
        assert entry is not None, "the catalog declares OCR whenever it is enabled"
        return model_state(self.engines, entry)

    async def __call__(self, data: bytes) -> Seen[OcrText]:
        return await self._run(data, None, lambda picture: self.runtime.read_text(self.engines, picture))


class SightLlm:
    """The LLM clients: each call resolves the model as the API would (catalog entry, or the default backend
    with a model name passed through) and asks the backend; the connections and Ollama discovery live here."""

    def __init__(self, settings: Settings) -> None:
        self.engines = EngineRegistry(settings)

    def _client(self, entry_ref: str | None, ref: str | None) -> tuple[VisionLLM, str | None]:
        entry = self.engines.catalog.model(entry_ref, task="llm") if entry_ref else None
        return self.engines.llm_client(entry, ref)

    async def analyze(self, entry_ref: str | None, ref: str | None, jpeg: bytes, query: str,
                      grounding: Grounding) -> LLMAnswer:
        client, model = self._client(entry_ref, ref)
        return await client.analyze(jpeg, query, grounding, model)

    async def condense(self, entry_ref: str | None, ref: str | None, query: str,
                       answers: list[tuple[str, str]]) -> LLMAnswer:
        client, model = self._client(entry_ref, ref)
        return await client.condense(query, answers, model)


def replica_settings(settings: Settings) -> Settings:
    """``settings`` for a model replica: its run slots sized to the CPUs Ray gave it, not to the node's
    cores (which other replicas share), and no wide runs over every core of the node."""
    import ray

    if settings.yolo.concurrency:
        return settings
    in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0) if in_actor else 1.0
    yolo = settings.yolo.model_copy(update={"concurrency": max(1, math.floor(cpus)), "wide_when_idle": False})
    return settings.model_copy(update={"yolo": yolo})


class SightApi:
    """The HTTP API (``create_app``), its models reached through the runtime by deployment name. The
    handles it is bound with only put the model deployments into the application's graph. ``build`` makes
    it Serve's ingress (``serve.ingress()``), so that importing this module does not import Ray."""

    def __init__(self, settings: Settings, models: dict[str, Any]) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> Any:
        from sight.api.app import create_app

        return create_app(self.settings)


def _options(group: DeploymentSettings, name: str) -> dict[str, Any]:
    return {"name": name, **group.ray_options()}


def deployments(settings: Settings) -> dict[str, tuple[DeploymentSettings, str | None]]:
    """The model deployments ``settings`` call for, by name: each with its options and, for a detector, the
    model it holds (``SIGHT_ENGINE__DETECTOR__*`` under a registry entry's ``ray`` table), then OCR unless
    disabled, and the LLM clients."""
    engine = settings.engine
    planned: dict[str, tuple[DeploymentSettings, str | None]] = {}
    for entry in EngineRegistry(settings).catalog.all_models():
        if entry.task == "detect" and entry.source and not entry.source.startswith("<"):
            group = DeploymentSettings.model_validate({**engine.detector.model_dump(), **entry.ray})
            planned[detector_deployment(entry)] = (group, entry.ref)
    if settings.ocr.enabled:
        planned[OCR_DEPLOYMENT] = (engine.ocr, None)
    planned[LLM_DEPLOYMENT] = (engine.llm, None)
    return planned


def requested_cpus(settings: Settings) -> float:
    """The CPUs the application's replicas hold at their minimum scale, the API's included."""
    groups = [group for group, _ref in deployments(settings).values()] + [settings.engine.api]
    return sum(group.num_cpus * group.min_replicas for group in groups)


def build(settings: Settings) -> Application:
    """The application for ``settings``: its model deployments (``deployments``) and the API as the ingress."""
    serve = import_serve()
    settings = settings.model_copy(update={"engine": settings.engine.model_copy(update={"kind": "ray"})})
    models: dict[str, Any] = {}
    for name, (group, ref) in deployments(settings).items():
        deployment = serve.deployment(**_options(group, name))
        if ref is not None:
            models[name] = deployment(SightDetector).bind(settings, ref)
        else:
            models[name] = deployment(SightOcr if name == OCR_DEPLOYMENT else SightLlm).bind(settings)
    api = serve.deployment(**_options(settings.engine.api, INGRESS_DEPLOYMENT))(serve.ingress()(SightApi))
    return api.bind(settings, models)


def app(args: dict[str, str] | None = None) -> Application:
    """The application builder ``serve run sight.serve_app:app`` and serve configs name. ``args`` may set
    ``app_name`` (the name the application is deployed under, default ``sight``)."""
    settings = Settings()
    if args and args.get("app_name"):
        settings.engine.app_name = args["app_name"]
    return build(settings)
