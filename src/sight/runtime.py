"""What a running Sight process holds (database, engines, pipeline, job queue), opened and closed once.

Both the HTTP app's lifespan and ``sight worker`` build it here, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from sight.config import Settings
from sight.core.fetch import ImageFetcher
from sight.core.metrics import Metrics
from sight.core.pipeline import Pipeline
from sight.engines.registry import EngineRegistry
from sight.jobs.blobs import BlobStore
from sight.jobs.queue import JobQueue
from sight.jobs.runner import Runner
from sight.jobs.store import BatchStore
from sight.storage.db import create_engine, migrate
from sight.storage.keys import KeyStore


@dataclass
class Services:
    settings: Settings
    db: AsyncEngine
    keys: KeyStore
    engines: EngineRegistry
    fetcher: ImageFetcher
    metrics: Metrics
    pipeline: Pipeline
    batches: BatchStore
    queue: JobQueue
    blobs: BlobStore
    runner: Runner | None = None
    draining: bool = False

    def new_runner(self, worker: str | None = None) -> Runner:
        return Runner(self.queue, self.batches, self.pipeline, self.blobs, self.settings.jobs, worker=worker)


@asynccontextmanager
async def open_services(
    settings: Settings, *, engines: EngineRegistry | None = None, with_runner: bool = False
) -> AsyncIterator[Services]:
    """Open the database (migrating it), engines and clients; close them on exit."""
    db = create_engine(settings.database_url)
    registry = engines or EngineRegistry(settings)
    fetcher = ImageFetcher(settings.fetch, settings.images.max_bytes)
    try:
        await migrate(db)
        metrics = Metrics()
        pipeline = Pipeline(settings, registry, fetcher, metrics)
        blobs = BlobStore(settings.data_dir / "blobs")
        services = Services(
            settings=settings, db=db, keys=KeyStore(db), engines=registry, fetcher=fetcher, metrics=metrics,
            pipeline=pipeline, batches=BatchStore(db, settings, blobs), queue=JobQueue(db, settings.jobs),
            blobs=blobs,
        )
        if with_runner:
            services.runner = services.new_runner()
        yield services
    finally:
        await fetcher.aclose()
        await registry.aclose()
        await db.dispose()
