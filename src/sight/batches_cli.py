"""``sight batches``: create, add, status, results, cancel, over HTTP with the Python client."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sight.client import Client
from sight.config import Settings
from sight.errors import SightError
from sight.schemas import BatchPublic, VisionPredict

app = typer.Typer(help="Durable async batches on a running server.", no_args_is_help=True)
console = Console()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CHUNK = 100

UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL (SIGHT_CLIENT__URL).")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="API key (SIGHT_CLIENT__API_KEY).")]


def _client(url: str | None, key: str | None) -> Client:
    cfg = Settings().client
    api_key = key or (cfg.api_key.get_secret_value() if cfg.api_key else None)
    if not api_key:
        console.print("[red]no API key[/red]: pass --key or set SIGHT_CLIENT__API_KEY")
        raise typer.Exit(2)
    return Client(url or cfg.url, api_key)


def _sources(items: list[str]) -> Iterator[tuple[str, str | None, Path | None]]:
    """(name, url, file) for each URL, file, and image file inside each folder, in order."""
    for item in items:
        if item.startswith(("http://", "https://")):
            yield item.rstrip("/").rsplit("/", 1)[-1], item, None
            continue
        path = Path(item)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                yield str(f.relative_to(path)), None, f
        elif path.is_file():
            yield path.name, None, path
        else:
            raise typer.BadParameter(f"{item} is neither a URL, a file nor a folder")


def _print_batch(b: BatchPublic) -> None:
    s = b.state
    console.print(f"{b.batch_id}  [bold]{b.status}[/bold]  {s.num_requests} requests: {s.num_success} ok, "
                  f"{s.num_error} failed, {s.num_cancelled} cancelled, {s.num_pending} pending")


def _run(action: Callable[[], None]) -> None:
    try:
        action()
    except SightError as exc:
        console.print(f"[red]error[/red] ({exc.code}): {escape(exc.message)}")
        raise typer.Exit(1) from exc


@app.command()
def create(name: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Create a batch and print its id."""
    def go() -> None:
        with _client(url, key) as client:
            batch = client.create_batch(name)
        print(batch.batch_id)
    _run(go)


@app.command()
def add(
    batch_id: str,
    items: Annotated[list[str], typer.Argument(help="Image files, folders of images, or http(s) URLs.")],
    yolo: Annotated[bool, typer.Option(help="Run detection (the default detector downloads itself).")] = True,
    ocr: Annotated[bool, typer.Option(help="Run OCR.")] = False,
    llm: Annotated[bool | None, typer.Option(help="Ask the vision LLM (default: on when --query is given).",
                                             show_default=False)] = None,
    query: Annotated[str | None, typer.Option(help="The question for the LLM.")] = None,
    model: Annotated[str | None, typer.Option(help="Detection model name.")] = None,
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Add one request per image; files are uploaded inline (base64), URLs fetched by the server. With no
    flags each image gets detection; --query asks the LLM too."""
    sources = list(_sources(items))
    llm = bool(query) if llm is None else llm

    def go() -> None:
        with _client(url, key) as client, Progress(TextColumn("adding"), BarColumn(), MofNCompleteColumn(),
                                                   console=console) as bar:
            task = bar.add_task("add", total=len(sources))
            added = 0
            for start in range(0, len(sources), CHUNK):
                chunk = []
                for name, image_url, path in sources[start:start + CHUNK]:
                    b64 = base64.b64encode(path.read_bytes()).decode() if path else None
                    chunk.append((None, VisionPredict(image_url=image_url, image_base64=b64, filename=name,
                                                      is_yolo=yolo, is_ocr=ocr, is_llm=llm, query=query,
                                                      yolo_model=model)))
                added += len(client.add_requests(batch_id, chunk))
                bar.update(task, completed=added)
        console.print(f"added {added} requests to {batch_id}")
    _run(go)


@app.command()
def status(
    batch_id: str,
    watch: Annotated[bool, typer.Option("--watch", help="Show a live progress bar until the batch ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.")] = 1.0,
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Print a batch's state; with --watch, follow it live."""
    def go() -> None:
        with _client(url, key) as client:
            batch = client.get_batch(batch_id)
            if watch:
                columns = (TextColumn("[bold]{task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[errors]} failed"), TimeElapsedColumn())
                with Progress(*columns, console=console) as bar:
                    task = bar.add_task("batch", total=batch.state.num_requests, status=batch.status, errors=0)
                    while True:
                        s = batch.state
                        bar.update(task, total=s.num_requests, status=batch.status, errors=s.num_error,
                                   completed=s.num_requests - s.num_pending)
                        if batch.status != "processing" or (s.num_requests and not s.num_pending):
                            break
                        time.sleep(interval)
                        batch = client.get_batch(batch_id)
            _print_batch(batch)
    _run(go)


@app.command()
def results(
    batch_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write.")] = Path("results.jsonl"),
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Write every result available now to a JSONL file, one result per line."""
    def go() -> None:
        n = 0
        with _client(url, key) as client, output.open("w") as out:
            for entry in client.iter_results(batch_id):
                out.write(entry.model_dump_json(by_alias=True, exclude_none=True) + "\n")
                n += 1
        console.print(f"wrote {n} results to {output}")
    _run(go)


@app.command()
def cancel(batch_id: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Cancel pending work; finished results stay."""
    def go() -> None:
        with _client(url, key) as client:
            _print_batch(client.cancel_batch(batch_id))
    _run(go)
