"""The ``sight`` command: serve | worker | predict | keys | batches | models.

One module per command group; every command that talks to a running server goes through ``sight.client``.
"""

from __future__ import annotations

import typer

from sight.cli import batches, keys, models, predict, quantize, serve

app = typer.Typer(help="Sight: a self-hostable vision inference server.", no_args_is_help=True, rich_markup_mode=None)
app.command()(serve.serve)
app.command()(serve.worker)
app.command()(predict.predict)
app.add_typer(keys.app, name="keys")
app.add_typer(batches.app, name="batches")
models.app.command()(quantize.quantize)  # sight models quantize (it uses the models group's download)
app.add_typer(models.app, name="models")

__all__ = ["app", "main"]


def main() -> None:
    app()
