"""The app factory. The lifespan opens the database and engines and closes them again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sight import __version__
from sight.api import errors
from sight.api.deps import Services
from sight.api.limits import BodyLimitMiddleware
from sight.api.routes import health, predict
from sight.config import Settings
from sight.core.fetch import ImageFetcher
from sight.core.metrics import Metrics
from sight.core.pipeline import Pipeline
from sight.engines.registry import EngineRegistry
from sight.storage.db import create_engine, migrate
from sight.storage.keys import KeyStore

log = logging.getLogger(__name__)

DESCRIPTION = """Run YOLO detection, OCR and vision-LLM analysis over images.

Authenticate with `Authorization: Bearer <key>` (or the `api_key` field of prediction requests).
Errors answer `{"detail": {"code": "...", "message": "..."}}` with a stable `code`."""


def create_app(settings: Settings | None = None, *, engines: EngineRegistry | None = None) -> FastAPI:
    """Build the ASGI app. Pass ``engines`` to serve ready-made engines (tests, embedding)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = create_engine(settings.database_url)
        await migrate(db)
        registry = engines or EngineRegistry(settings)
        fetcher = ImageFetcher(settings.fetch, settings.images.max_bytes)
        metrics = Metrics()
        app.state.services = Services(
            settings=settings,
            db=db,
            keys=KeyStore(db),
            engines=registry,
            fetcher=fetcher,
            metrics=metrics,
            pipeline=Pipeline(settings, registry, fetcher, metrics),
        )
        try:
            yield
        finally:
            app.state.services.draining = True
            await fetcher.aclose()
            await registry.aclose()
            await db.dispose()

    app = FastAPI(title="Sight", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.server.max_body_bytes)
    app.include_router(health.router)
    app.include_router(predict.router)
    return app
