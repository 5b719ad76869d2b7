"""``sight serve`` (the API server) and ``sight worker`` (batch processing from the shared database)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sight.cli.console import console
from sight.cli.keys import with_keys
from sight.config import Settings

if TYPE_CHECKING:
    from sight.storage.keys import KeyStore

log = logging.getLogger(__name__)


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Download every declared model that is not here yet "
                                       "(the default detector included) before serving, with progress.")] = False,
    runtime: Annotated[str | None, typer.Option(help="Where models run: local (this process) or ray (Ray Serve "
                                                "deployments on the cluster at SIGHT_RUNTIME__ADDRESS; needs "
                                                "pip install 'sight[ray]').")] = None,
    engine: Annotated[str | None, typer.Option("--engine", hidden=True,
                                               help="Deprecated name of --runtime.")] = None,
) -> None:
    """Start the server; on first start create a team and an API key and print the key once."""
    import uvicorn

    from sight.api.app import create_app
    from sight.cli.banner import printer
    from sight.cli.models import download, remote_detectors
    from sight.engines.sessions import INSTALL
    from sight.engines.wheels import has_onnxruntime

    settings = Settings()
    if host:
        settings.server.host = host
    if port:
        settings.server.port = port
    if engine and not runtime:
        log.warning("sight serve --engine is deprecated: use --runtime")
        runtime = engine
    if runtime:
        settings.runtime = settings.runtime.model_copy(update={"kind": runtime})
    if settings.runtime.kind not in ("local", "ray"):
        raise typer.BadParameter(f"--runtime is local or ray, not {settings.runtime.kind!r}")
    if settings.runtime.kind == "local" and not has_onnxruntime():  # on Ray, the model nodes need it, not this one
        typer.echo(f"sight serve: {INSTALL}", err=True)
        raise typer.Exit(1)
    if pull:
        for name, source in remote_detectors(settings):
            download(name, source, settings)

    configure_logging(settings.server.log_level)
    if settings.runtime.kind == "ray":

        async def first_key(store: KeyStore) -> str | None:
            if await store.has_teams():
                return None
            key, _info = await store.create_key(settings.bootstrap_team, name="first-start", is_admin=True)
            return key

        serve_on_ray(settings, with_keys(settings, first_key))
        return
    # The first key is made once the server is ready, and shown in its start block: a start that fails
    # before then leaves no key that nobody saw.
    uvicorn.run(
        create_app(settings, on_ready=printer(settings.bootstrap_team, console)),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=30,
    )


def serve_on_ray(settings: Settings, key: str | None = None) -> None:
    """Join the Ray cluster at ``runtime.address`` (``auto`` with none running: start one here), run the Serve
    application (a Serve deployment per model, the API as the ingress on host:port) and wait for Ctrl-C."""
    import signal
    import threading

    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise typer.BadParameter("--runtime ray needs Ray: pip install 'sight[ray]'") from exc
    from sight.runtimes.ray.client import serve_deployment_health
    from sight.serve_app import build, requested_cpus

    try:
        ray.init(address=settings.runtime.address)
    except ConnectionError:
        if settings.runtime.address != "auto":
            raise
        ray.init()  # no cluster running: start a single-node one in this process
    # Replicas run in other processes and directories: give them absolute paths.
    settings.data_dir = settings.data_dir.resolve()
    if settings.database_url.startswith("sqlite") and ":///./" in settings.database_url:
        head, _, path = settings.database_url.partition(":///")
        settings.database_url = f"{head}:///{Path(path).resolve()}"
    wanted = requested_cpus(settings)
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if wanted > cpus:
        console.print(f"[yellow]The Serve deployments ask for about {wanted:g} CPUs and the cluster has {cpus:g}:"
                      "[/yellow] replicas wait until it has more. Lower SIGHT_RUNTIME__DETECTOR__NUM_CPUS, "
                      "SIGHT_RUNTIME__OCR__NUM_CPUS and SIGHT_RUNTIME__API__NUM_CPUS (fractions are fine), or add "
                      "nodes.",
                      soft_wrap=True)
    serve.start(http_options={"host": settings.server.host, "port": settings.server.port})
    serve.run(build(settings), name=settings.runtime.app_name, route_prefix="/")
    console.print(f"Sight on Ray Serve at http://{settings.server.host}:{settings.server.port} "
                  f"(application {settings.runtime.app_name!r}); Ctrl-C stops it")
    application = serve.status().applications.get(settings.runtime.app_name)
    for name, deployment in (application.deployments if application else {}).items():
        health, running = serve_deployment_health(deployment)
        console.print(f"  {name}: {health}, {running} replica(s) running", soft_wrap=True)
    console.print("  (serve status shows them, with the states GET /v1/models reports)")
    if key:
        console.print(f"API key (shown once): {key}", soft_wrap=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.delete(settings.runtime.app_name)
    ray.shutdown()


def configure_logging(level: str) -> None:
    """Sight's own log lines (models loaded, reloads, run slots) beside uvicorn's, in uvicorn's format."""
    import logging

    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(name)s: %(message)s"))
    logger = logging.getLogger("sight")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    # httpx logs each request's full URL at INFO, which can hold a model mirror's credentials: never shown.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _dump_tasks() -> None:
    import sys

    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def worker(
    burst: Annotated[bool, typer.Option(help="Exit once no work is left instead of waiting for more.")] = False,
) -> None:
    """Process batch requests from the shared database. Run any number of these; start the API server with
    SIGHT_JOBS__RUN_IN_SERVER=false to leave all processing to them."""
    import signal

    from sight.services import open_services

    settings = Settings()
    configure_logging(settings.server.log_level)

    async def run() -> None:
        async with open_services(settings) as services:
            runner = services.new_runner()
            if burst:
                await runner.run_until_idle()
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # `kill -USR1`: what is every task waiting on?
            console.print(f"worker {runner.worker} processing batch requests")
            await runner.run(stop)

    asyncio.run(run())
