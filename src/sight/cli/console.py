"""What every command shares: the console, the client it talks through, and how a ``SightError`` ends it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sight.client import Client
from sight.errors import AuthenticationError, SightError

console = Console()
progress_console = Console(stderr=True)  # live progress: never mixed into what a command prints (--json)
UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL (SIGHT_CLIENT__URL).")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="API key (SIGHT_CLIENT__API_KEY).")]


def print_error(exc: SightError, out: Console = console) -> None:
    out.print(f"[red]error[/red] ({exc.code}): {escape(exc.message)}")


@contextmanager
def exit_on_error(code: int = 1) -> Iterator[None]:
    """A ``SightError`` inside prints ``error (code): message`` and exits with ``code``."""
    try:
        yield
    except SightError as exc:
        print_error(exc)
        raise typer.Exit(code) from exc


def client(url: str | None, key: str | None) -> Client:
    """A client for ``--url``/``--key``, else the ``SIGHT_CLIENT__*`` settings (environment or ``.env``)."""
    from sight.config import Settings

    cfg = Settings().client
    api_key = key or (cfg.api_key.get_secret_value() if cfg.api_key else None)
    try:
        return Client(url or cfg.url, api_key)  # with no key here, the client looks for SIGHT_API_KEY
    except AuthenticationError as exc:
        console.print("[red]no API key[/red]: pass --key or set SIGHT_CLIENT__API_KEY")
        raise typer.Exit(2) from exc
