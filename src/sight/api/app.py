"""The app factory. The lifespan opens the database and engines and closes them again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sight import __version__
from sight.api import errors
from sight.api.limits import BodyLimitMiddleware
from sight.api.routes import batches as batch_routes
from sight.api.routes import health, predict
from sight.config import Settings
from sight.engines.registry import EngineRegistry
from sight.runtime import open_services

log = logging.getLogger(__name__)

DESCRIPTION = """Run YOLO detection, OCR and vision-LLM analysis over images.

Authenticate with `Authorization: Bearer <key>` (or the `api_key` field of prediction requests).
Errors answer `{"detail": {"code": "...", "message": "..."}}` with a stable `code`."""


def create_app(settings: Settings | None = None, *, engines: EngineRegistry | None = None) -> FastAPI:
    """Build the ASGI app. Pass ``engines`` to serve ready-made engines (tests, embedding)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, engines=engines, with_runner=settings.jobs.run_in_server) as services:
            app.state.services = services
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
    return app
