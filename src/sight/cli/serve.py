"""``sight serve`` (the API server) and ``sight worker`` (batch processing from the shared database)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from sight.cli.console import console
from sight.cli.keys import with_keys
from sight.config import Settings

if TYPE_CHECKING:
    from sight.storage.keys import KeyStore


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    pull: Annotated[bool, typer.Option("--pull", help="Download every declared model that is not here yet "
                                       "(the default detector included) before serving, with progress.")] = False,
) -> None:
    """Start the server; on first start create a team and an API key and print the key once."""
    import uvicorn

    from sight.api.app import create_app
    from sight.banner import printer
    from sight.cli.models import download, remote_detectors

    settings = Settings()
    if host:
        settings.server.host = host
    if port:
        settings.server.port = port
    if pull:
        for name, source in remote_detectors(settings):
            download(name, source, settings)

    async def first_key(store: KeyStore) -> str | None:
        if await store.has_teams():
            return None
        key, _info = await store.create_key(settings.bootstrap_team, name="first-start", is_admin=True)
        return key

    key = with_keys(settings, first_key)
    if key:
        console.print(f"Created team [bold]{settings.bootstrap_team}[/bold] and its first API key (in the block "
                      "below once the server is ready).")
    configure_logging(settings.server.log_level)
    uvicorn.run(
        create_app(settings, on_ready=printer(key, console)),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=30,
    )


def configure_logging(level: str) -> None:
    """Sight's own log lines (models loaded, reloads, run slots) beside uvicorn's, in uvicorn's format."""
    import logging

    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(name)s: %(message)s"))
    logger = logging.getLogger("sight")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())


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

    from sight.runtime import open_services

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
