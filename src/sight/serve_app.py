"""Sight as a Ray Serve application: each detector, OCR and the LLM clients a Serve deployment of their own
(replicas in ``sight.runtimes.ray.replicas``), the HTTP API the ingress.

Run it with ``sight serve --runtime ray``, ``serve run sight.serve_app:app``, ``serve deploy
deploy/serve-config.yaml`` or a KubeRay RayService (``deploy/rayservice.yaml``). Settings come from the
environment as everywhere else (``SIGHT_RUNTIME__DETECTOR__NUM_GPUS=0.5``, ...); the Serve deployments get
them from the builder, so every replica runs on the settings the application was built with::

    app = build(Settings())            # what `serve run sight.serve_app:app` deploys
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sight.config import ReplicaSettings, Settings
from sight.models.registry import EngineRegistry
from sight.runtimes.ray.client import import_serve
from sight.runtimes.ray.replicas import (
    API_SERVE_DEPLOYMENT,
    LLM_SERVE_DEPLOYMENT,
    OCR_SERVE_DEPLOYMENT,
    DetectorReplica,
    LlmReplica,
    OcrReplica,
    detector_serve_deployment,
)

if TYPE_CHECKING:
    from ray.serve import Application


class ApiIngress:
    """The HTTP API (``create_app``), its models reached through the Ray runtime by Serve deployment name. The
    handles it is bound with only put the model Serve deployments into the application's graph. ``build`` makes
    it Serve's ingress (``serve.ingress()``), so that importing this module does not import Ray."""

    def __init__(self, settings: Settings, models: dict[str, Any]) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> Any:
        from sight.api.app import create_app

        return create_app(self.settings)


def _options(group: ReplicaSettings, name: str) -> dict[str, Any]:
    return {"name": name, **group.ray_options()}


def serve_deployments(settings: Settings) -> dict[str, tuple[ReplicaSettings, str | None]]:
    """The model Serve deployments ``settings`` call for, by name: each with its replicas' options and, for a
    detector, the model it holds (``SIGHT_RUNTIME__DETECTOR__*`` under a registry entry's ``ray`` table), then
    OCR unless disabled, and the LLM clients."""
    runtime = settings.runtime
    planned: dict[str, tuple[ReplicaSettings, str | None]] = {}
    for entry in EngineRegistry(settings).catalog.all_models():
        if entry.task == "detect" and entry.source and not entry.source.startswith("<"):
            group = ReplicaSettings.model_validate({**runtime.detector.model_dump(), **entry.ray})
            planned[detector_serve_deployment(entry)] = (group, entry.ref)
    if settings.ocr.enabled:
        planned[OCR_SERVE_DEPLOYMENT] = (runtime.ocr, None)
    planned[LLM_SERVE_DEPLOYMENT] = (runtime.llm, None)
    return planned


def requested_cpus(settings: Settings) -> float:
    """The CPUs the application's replicas hold at their minimum scale, the API's included."""
    groups = [group for group, _ref in serve_deployments(settings).values()] + [settings.runtime.api]
    return sum(group.num_cpus * group.min_replicas for group in groups)


def build(settings: Settings) -> Application:
    """The application for ``settings``: its model Serve deployments (``serve_deployments``) and the API as the
    ingress."""
    serve = import_serve()
    settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(update={"kind": "ray"})})
    models: dict[str, Any] = {}
    for name, (group, ref) in serve_deployments(settings).items():
        deployment = serve.deployment(**_options(group, name))
        if ref is not None:
            models[name] = deployment(DetectorReplica).bind(settings, ref)
        else:
            models[name] = deployment(OcrReplica if name == OCR_SERVE_DEPLOYMENT else LlmReplica).bind(settings)
    api = serve.deployment(**_options(settings.runtime.api, API_SERVE_DEPLOYMENT))(serve.ingress()(ApiIngress))
    return api.bind(settings, models)


def app(args: dict[str, str] | None = None) -> Application:
    """The application builder ``serve run sight.serve_app:app`` and serve configs name. ``args`` may set
    ``app_name`` (the name the application is deployed under, default ``sight``)."""
    settings = Settings()
    if args and args.get("app_name"):
        settings.runtime.app_name = args["app_name"]
    return build(settings)
