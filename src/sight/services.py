"""The wiring of one running Sight process: database, models, runtime, pipeline, batch queue, policies.

Opened and closed once; both the HTTP app's lifespan and ``sight worker`` build it here, so they cannot drift
apart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from sight.batches.queue import JobQueue
from sight.batches.runner import Runner
from sight.batches.store import BatchStore
from sight.batches.sweep import BatchSweeper
from sight.config import Settings
from sight.errors import SightError
from sight.images.budget import PixelBudget
from sight.images.fetch import ImageFetcher
from sight.images.heap import trim_heap, tune_heap
from sight.metrics import Metrics
from sight.models.registry import EngineHub, EngineRegistry
from sight.pipeline.deployments import Deployments
from sight.pipeline.pipeline import Pipeline
from sight.pipeline.predict import MultiPredictor
from sight.pipeline.shadow import ShadowRunner
from sight.policies.admission import Admission
from sight.policies.quota import TeamRateLimiter
from sight.runtimes.base import ModelRuntime
from sight.runtimes.local import LocalRuntime
from sight.storage.blobs import BlobStore, open_blob_store
from sight.storage.db import migrate, open_db
from sight.storage.keys import KeyStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: AsyncEngine
    keys: KeyStore
    hub: EngineHub
    shadows: ShadowRunner
    fetcher: ImageFetcher
    metrics: Metrics
    pipeline: Pipeline
    batches: BatchStore
    sweeper: BatchSweeper
    queue: JobQueue
    blobs: BlobStore
    predictor: MultiPredictor
    deployments: Deployments
    admission: Admission
    quota: TeamRateLimiter
    runner: Runner | None = None

    @property
    def draining(self) -> bool:
        return self.pipeline.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.pipeline.draining = value

    @property
    def engines(self) -> EngineRegistry:
        return self.hub.current

    def new_runner(self, worker: str | None = None) -> Runner:
        return Runner(self.queue, self.sweeper, self.pipeline, self.blobs, self.settings.jobs, worker=worker)


@asynccontextmanager
async def open_services(
    settings: Settings, *, engines: EngineRegistry | None = None, with_runner: bool = False
) -> AsyncIterator[Services]:
    """Open the database (migrating it), engines and clients; close them on exit."""
    db = open_db(settings.database_url)
    hub = EngineHub(engines or EngineRegistry(settings))
    fetcher = ImageFetcher(settings.fetch, settings.images.max_bytes)
    metrics = Metrics()
    shadows = ShadowRunner(metrics, settings.registry.shadow_concurrency)
    quota = TeamRateLimiter(settings.rate_limit)
    # One budget for every decode in the process. Large blocks go straight back to the OS when freed, and the
    # heap is trimmed when the budget falls idle after large decodes.
    tune_heap()
    pixels = PixelBudget(settings.images.max_pixels_in_flight, settings.images.pixel_queue,
                         settings.server.retry_after, on_idle=trim_heap)
    try:
        await migrate(db)
        runtime = model_runtime(settings, metrics)
        if not runtime.remote:  # on Ray the replicas load their own models
            await anyio.to_thread.run_sync(preload, hub.current, settings.registry.eager)
        await hub.current.probe_llm()  # a local Ollama, if there is one (about a second at most when there is not)
        pipeline = Pipeline(settings, hub, fetcher, metrics, shadows, pixels, runtime)
        blobs = open_blob_store(settings)
        services = Services(
            settings=settings, db=db, keys=KeyStore(db), hub=hub, shadows=shadows, fetcher=fetcher, metrics=metrics,
            pipeline=pipeline, batches=BatchStore(db, settings, blobs, ocr_name=lambda: hub.current.ocr_name()),
            sweeper=BatchSweeper(db, settings, blobs), queue=JobQueue(db, settings.jobs),
            blobs=blobs, predictor=MultiPredictor(pipeline),
            deployments=Deployments(pipeline, settings.server.item_concurrency),
            admission=Admission(settings.server.max_queue, settings.server.retry_after),
            quota=quota,
        )
        if with_runner:
            services.runner = services.new_runner()
        yield services
    finally:
        quota.close()
        await shadows.drain()
        await pixels.aclose()
        await fetcher.aclose()
        await hub.aclose()
        await db.dispose()


def model_runtime(settings: Settings, metrics: Metrics) -> ModelRuntime:
    """Where models run (``SIGHT_RUNTIME__KIND``): in this process, or on Ray Serve deployments."""
    if settings.runtime.kind == "ray":
        from sight.runtimes.ray.client import RayRuntime

        return RayRuntime(settings)
    return LocalRuntime(settings, metrics)


def preload(engines: EngineRegistry, everything: bool) -> None:
    """Load the default detector now if its file is here (a first request then waits for no load, and the
    start banner can say what it is), and with ``everything`` (SIGHT_REGISTRY__EAGER) every local model,
    failing the start if one cannot load. Never downloads: that waits for first use or ``--pull``. Blocking."""
    if everything:
        for entry in engines.catalog.all_models():
            state = engines.file_state(entry)
            if state is not None and state.state != "present":
                continue  # a file still to download waits for first use or --pull, as without eager
            if entry.task == "detect":
                engines.detector_for(entry)
            elif entry.task == "ocr":
                engines.ocr()
        return
    try:
        entry = engines.detector_entry(None)
        state = engines.file_state(entry)
        if state is None or state.state == "present":
            engines.detector_for(entry)
    except SightError as exc:  # reported in the banner, /readyz and GET /v1/models; items get the error
        log.warning("default detector not loaded: %s", exc.message)
