"""``sight batches``: create, add, status, results, cancel, through the Python client."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sight.cli.console import KeyOpt, UrlOpt, client, console, exit_on_error
from sight.schemas import BatchPublic, VisionPredict

app = typer.Typer(help="Durable async batches on a running server.", no_args_is_help=True, rich_markup_mode=None)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CHUNK = 100


def sources(items: list[str]) -> Iterator[tuple[str, str | None, Path | None]]:
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


def _print_batch(b: BatchPublic, *, name: bool = False) -> None:
    s = b.state
    label = f"  {escape(b.name)}" if name else ""
    status = "open, no requests" if b.status == "processing" and not s.num_requests else b.status
    console.print(f"{b.batch_id}{label}  [bold]{status}[/bold]  {s.num_requests} requests: {s.num_success} ok, "
                  f"{s.num_error} failed, {s.num_cancelled} cancelled, {s.num_pending} pending", soft_wrap=True)


@app.command()
def create(name: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Create a batch and print its id."""
    with exit_on_error(), client(url, key) as sight:
        batch = sight.create_batch(name)
    print(batch.batch_id)


@app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(help="Most batches to show, newest first.", min=1)] = 20,
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """This team's batches, newest first: id, status and progress of each."""
    shown = 0
    with exit_on_error(), client(url, key) as sight:
        token = None
        while shown < limit:
            page = sight.list_batches(limit=min(100, limit - shown), token=token)
            for batch in page.batches:
                _print_batch(batch, name=True)
                shown += 1
            token = page.pagination_token
            if not token or not page.batches:
                break
    if not shown:
        console.print("no batches yet (sight batches create NAME makes one)")


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
    found = list(sources(items))
    llm = bool(query) if llm is None else llm
    with exit_on_error(), client(url, key) as sight, Progress(TextColumn("adding"), BarColumn(), MofNCompleteColumn(),
                                                              console=console) as bar:
        task = bar.add_task("add", total=len(found))
        added = 0
        for start in range(0, len(found), CHUNK):
            chunk = []
            for name, image_url, path in found[start:start + CHUNK]:
                b64 = base64.b64encode(path.read_bytes()).decode() if path else None
                chunk.append((None, VisionPredict(image_url=image_url, image_base64=b64, filename=name,
                                                  is_yolo=yolo, is_ocr=ocr, is_llm=llm, query=query,
                                                  yolo_model=model)))
            added += len(sight.add_requests(batch_id, chunk))
            bar.update(task, completed=added)
    console.print(f"added {added} requests to {batch_id}")


@app.command()
def status(
    batch_id: str,
    watch: Annotated[bool, typer.Option("--watch", help="Show a live progress bar until the batch ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.")] = 1.0,
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Print a batch's state; with --watch, follow it live."""
    with exit_on_error(), client(url, key) as sight:
        if not watch:
            _print_batch(sight.get_batch(batch_id))
            return
        columns = (TextColumn("[bold]{task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[errors]} failed"), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("batch", total=None, status="", errors=0)

            def show(batch: BatchPublic) -> None:
                s = batch.state
                bar.update(task, total=s.num_requests, status=batch.status, errors=s.num_error,
                           completed=s.num_requests - s.num_pending)

            ended = sight.wait(batch_id, on_progress=show, poll=interval)
        _print_batch(ended)


@app.command()
def results(
    batch_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write.")] = Path("results.jsonl"),
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Write every result available now to a JSONL file, one result per line."""
    n = 0
    with exit_on_error(), client(url, key) as sight, output.open("w") as out:
        for entry in sight.iter_results(batch_id):
            out.write(entry.model_dump_json(by_alias=True, exclude_none=True) + "\n")
            n += 1
    console.print(f"wrote {n} results to {output}")


@app.command()
def cancel(batch_id: str, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Cancel pending work; finished results stay."""
    with exit_on_error(), client(url, key) as sight:
        _print_batch(sight.cancel_batch(batch_id))
