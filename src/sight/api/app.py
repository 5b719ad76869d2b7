"""The app factory. The lifespan opens the database and engines and closes them again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI

from sight import __version__
from sight.api import errors
from sight.api.limits import BodyLimitMiddleware
from sight.api.routes import batches as batch_routes
from sight.api.routes import deployments, health, models, predict
from sight.config import Settings
from sight.console import mount_console
from sight.errors import SightError
from sight.models.registry import EngineRegistry
from sight.schemas import ErrorResponse
from sight.services import Services, open_services

log = logging.getLogger(__name__)

DESCRIPTION = """Run YOLO detection, OCR and vision-LLM analysis over images.

Authenticate with `Authorization: Bearer <key>` (or the `api_key` field of prediction requests).
Errors answer `{"detail": {"code": "...", "message": "..."}}` with a stable `code`."""


def _reload_on_sighup(services: Services) -> None:
    """``kill -HUP`` re-reads the registry file, as ``POST /v1/models:reload`` does."""

    def reload() -> None:
        try:
            services.hub.reload()
            log.info("model registry reloaded")
        except SightError as exc:
            log.error("model registry reload failed; keeping the current one: %s", exc.message)

    # Only the main thread may own signal handlers; an app embedded elsewhere (tests) reloads over HTTP.
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def _drain_on_sigterm(services: Services) -> None:
    """On SIGTERM stop starting new items (they end as ``cancelled``), let running ones finish, report
    not-ready; then hand the signal to the server (uvicorn), which stops accepting and drains connections."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def handler(sig: int, frame: FrameType | None) -> None:
        services.draining = True
        previous(sig, frame)

    with contextlib.suppress(ValueError):  # not the main thread: an embedding app drains its own way
        signal.signal(signal.SIGTERM, handler)


def create_app(settings: Settings | None = None, *, engines: EngineRegistry | None = None,
               on_ready: Callable[[Services], Awaitable[None]] | None = None) -> FastAPI:
    """Build the ASGI app. Pass ``engines`` to serve ready-made engines (tests, embedding); ``on_ready`` runs
    once the services are open, before the first request (``sight serve`` prints its start banner there)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, engines=engines, with_runner=settings.jobs.run_in_server) as services:
            app.state.services = services
            _reload_on_sighup(services)
            _drain_on_sigterm(services)
            if on_ready is not None:
                await on_ready(services)
            stop = asyncio.Event()
            runner = asyncio.create_task(services.runner.run(stop)) if services.runner else None
            try:
                yield
            finally:
                services.draining = True
                stop.set()
                if runner is not None:
                    await runner

    app = FastAPI(title="Sight", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.server.max_body_bytes)
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(batch_routes.router)
    app.include_router(models.router)
    app.include_router(deployments.router)  # last: its /v1/{deployment}/{ref} would shadow fixed paths
    mount_console(app)
    _document_400_not_422(app)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """Sight answers validation problems with 400 and its error body: say so in the OpenAPI spec."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", {"description": "Invalid request", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
            spec.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
            spec.get("components", {}).get("schemas", {}).pop("ValidationError", None)
            spec.setdefault("components", {}).setdefault("schemas", {}).setdefault(
                "ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
