"""The ``sight`` command: serve | keys."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sight.batches_cli import app as batches_app
from sight.config import Settings
from sight.errors import SightError
from sight.models_cli import app as models_app

app = typer.Typer(help="Sight: a self-hostable vision inference server.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(batches_app, name="batches")
app.add_typer(models_app, name="models")
console = Console()
T = TypeVar("T")


def _with_keys(settings: Settings, action: Callable[..., Awaitable[T]]) -> T:
    """Open the database (migrating it), run ``action(store)``, close it."""
    from sight.storage.db import create_engine, migrate
    from sight.storage.keys import KeyStore

    async def run() -> T:
        engine = create_engine(settings.database_url)
        try:
            await migrate(engine)
            return await action(KeyStore(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except SightError as exc:
        console.print(f"[red]error[/red] ({exc.code}): {escape(exc.message)}")
        raise typer.Exit(1) from exc


@app.command()
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
    from sight.models_cli import download, remote_detectors
    from sight.storage.keys import KeyStore

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

    key = _with_keys(settings, first_key)
    if key:
        console.print(f"Created team [bold]{settings.bootstrap_team}[/bold] and its first API key (in the block "
                      "below once the server is ready).")
    _configure_logging(settings.server.log_level)
    uvicorn.run(
        create_app(settings, on_ready=printer(key, console)),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=30,
    )


def _configure_logging(level: str) -> None:
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


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once no work is left instead of waiting for more.")] = False,
) -> None:
    """Process batch requests from the shared database. Run any number of these; start the API server with
    SIGHT_JOBS__RUN_IN_SERVER=false to leave all processing to them."""
    import signal

    from sight.runtime import open_services

    settings = Settings()
    _configure_logging(settings.server.log_level)

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


@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="Team name; created if it does not exist.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    admin: Annotated[bool, typer.Option(help="Allow admin operations.")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    key, info = _with_keys(Settings(), lambda store: store.create_key(team, name=name, is_admin=admin))
    console.print(f"key id [bold]{info.id}[/bold] for team [bold]{team}[/bold]; shown only this once:")
    print(key, flush=True)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (ids and teams, never secrets)."""
    infos = _with_keys(Settings(), lambda store: store.list_keys())
    table = Table("id", "team", "name", "created", "status")
    for k in infos:
        status = "revoked" if k.revoked_at else "active"
        table.add_row(k.id, k.team, k.name or "", k.created_at.isoformat(timespec="seconds"), status)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id, e.g. key_ab12cd34ef56.")]) -> None:
    """Revoke a key; requests with it answer 401 from now on."""
    _with_keys(Settings(), lambda store: store.revoke(key_id))
    console.print(f"revoked {key_id}")


def main() -> None:
    app()
