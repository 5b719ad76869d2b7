"""``sight keys``: create, list and revoke API keys, straight in the server's database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from sight.cli.console import console, exit_on_error
from sight.config import Settings

if TYPE_CHECKING:
    from sight.storage.keys import KeyStore

app = typer.Typer(help="Manage API keys.", no_args_is_help=True, rich_markup_mode=None)
T = TypeVar("T")


def with_keys(settings: Settings, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Open the database (migrating it), run ``action(store)``, close it."""
    from sight.storage.db import migrate, open_db
    from sight.storage.keys import KeyStore

    async def run() -> T:
        db = open_db(settings.database_url)
        try:
            await migrate(db)
            return await action(KeyStore(db))
        finally:
            await db.dispose()

    with exit_on_error():
        return asyncio.run(run())


@app.command("create")
def create(
    team: Annotated[str, typer.Option(help="Team name; created if it does not exist.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    admin: Annotated[bool, typer.Option(help="Allow admin operations.")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    key, info = with_keys(Settings(), lambda store: store.create_key(team, name=name, is_admin=admin))
    console.print(f"key id [bold]{info.id}[/bold] for team [bold]{team}[/bold]; shown only this once:")
    print(key, flush=True)


@app.command("list")
def list_keys() -> None:
    """List keys (ids and teams, never secrets)."""
    infos = with_keys(Settings(), lambda store: store.list_keys())
    table = Table("id", "team", "name", "created", "status")
    for k in infos:
        status = "revoked" if k.revoked_at else "active"
        table.add_row(k.id, k.team, k.name or "", k.created_at.isoformat(timespec="seconds"), status)
    console.print(table)


@app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id, e.g. key_ab12cd34ef56.")]) -> None:
    """Revoke a key; requests with it answer 401 from now on."""
    with_keys(Settings(), lambda store: store.revoke(key_id))
    console.print(f"revoked {key_id}")
