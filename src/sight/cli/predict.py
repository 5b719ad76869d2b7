"""``sight predict``: one request over a few images, streamed with progress, shown as tables (or JSON), and
optionally saved as annotated images beside their JSON results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sight.answers.paths import value_at
from sight.cli.batches import sources
from sight.cli.console import KeyOpt, UrlOpt, client, console, exit_on_error, progress_console
from sight.client import StreamEvent
from sight.errors import InvalidInputError, UpstreamError
from sight.schemas import (
    BatchResult,
    Evidence,
    ItemOptions,
    ItemResult,
    PredictBatchResponse,
    StreamComplete,
    StreamDone,
    StreamError,
    StreamProcessing,
)


def predict(
    images: Annotated[list[str], typer.Argument(help="Image files, folders of images, or http(s) URLs.",
                                                metavar="IMAGE|URL", show_default=False)],
    yolo: Annotated[bool, typer.Option(help="Run detection (the default detector downloads itself).")] = True,
    ocr: Annotated[bool, typer.Option(help="Run OCR.")] = False,
    llm: Annotated[bool | None, typer.Option(help="Ask the vision LLM (default: on when --query is given).",
                                             show_default=False)] = None,
    query: Annotated[str | None, typer.Option(help="The question for the LLM.")] = None,
    model: Annotated[str | None, typer.Option(help="Detection model name (name or name:version).")] = None,
    field: Annotated[list[str] | None, typer.Option(
        "--field", help="A field to find, NAME or NAME=REGEX (repeatable). With a REGEX (RE2) the field is read "
        "from the OCR lines, no LLM needed; without one the LLM fills it (with --query or --llm). Each value "
        "comes with its evidence and whether the OCR and the LLM agree.", metavar="NAME[=REGEX]",
        show_default=False)] = None,
    save: Annotated[Path | None, typer.Option(help="Folder to write each image with its boxes drawn, and its "
                                              "JSON result.", file_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON result instead of tables.")] = False,
    url: UrlOpt = None, key: KeyOpt = None,
) -> None:
    """Predict now: detection by default, --ocr, --query (asks the LLM), --field (fields with evidence); tables,
    or --json. Exits 1 when an image failed. Progress goes to stderr, the result to stdout."""
    found = list(sources(images))
    names = [name for name, _, _ in found]
    with exit_on_error():
        schema = fields_schema(field or [])
        options = ItemOptions(is_yolo=yolo, is_ocr=ocr, is_llm=bool(query) if llm is None else llm,
                              yolo_model=model, response_schema=schema)
        with client(url, key) as sight:
            answer = _stream(sight.predict_stream([u or str(p) for _, u, p in found], options, query=query), names)
    if as_json:
        print(answer.model_dump_json(by_alias=True, indent=2))
    else:
        for item in answer.result.items:
            _show(item, names[item.index])
        _show_summary(answer)
    if save is not None:
        _save(answer, found, save)
    raise typer.Exit(answer.code)


def _stream(events: Iterator[StreamEvent], names: list[str]) -> PredictBatchResponse:
    """Follow the stream with a progress bar; gather its events into the batch answer."""
    items: dict[int, ItemResult] = {}
    complete: StreamComplete | None = None
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=progress_console, transient=True) as bar:
        task = bar.add_task("sending", total=len(names))
        for event in events:
            if isinstance(event, StreamProcessing):
                bar.update(task, description=f"running {escape(names[event.index])}")
            elif isinstance(event, StreamDone):
                items[event.index] = event.result
                bar.advance(task)
            elif isinstance(event, StreamError):  # its other stages' results, when the server sent them
                items[event.index] = event.result or ItemResult(index=event.index, filename=event.filename,
                                                                status="error", error=event.error)
                bar.advance(task)
            else:
                complete = event
    if complete is None:
        raise UpstreamError("the stream ended before its complete line")
    result = BatchResult(items=[items[i] for i in sorted(items)], answer=complete.answer, summary=complete.summary,
                         duration_ms=complete.duration_ms, fields=complete.fields, evidence=complete.evidence,
                         verified=complete.verified, conflicts=complete.conflicts)
    return PredictBatchResponse(code=0 if complete.summary.error == 0 else 1, result=result)


def _show(item: ItemResult, name: str) -> None:
    size = f"{item.image.width}x{item.image.height}, " if item.image else ""
    took = sum(item.timings_ms.values())
    if item.error is not None:  # and then what its other stages found, if anything
        console.print(f"[bold]{escape(name)}[/bold]  [red]error[/red] ({item.error.code}): "
                      f"{escape(item.error.message)}")
    else:
        console.print(f"[bold]{escape(name)}[/bold]  [green]done[/green]  ({size}{took:.0f} ms)")
    if item.yolo is not None:
        if item.yolo.detections:
            table = Table("name", "confidence", "box (x1, y1, x2, y2)",
                          title=f"detections ({escape(item.yolo.model)}:{escape(item.yolo.model_version)})")
            for d in item.yolo.detections:
                b = d.box
                table.add_row(escape(d.name), f"{d.confidence:.2f}", f"{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, {b.y2:.0f}")
            console.print(table)
        else:
            console.print(f"  no detections ({escape(item.yolo.model)}:{escape(item.yolo.model_version)})")
    if item.ocr is not None:
        if item.ocr.lines:
            table = Table("text", "confidence", title="text (OCR)")
            for line in item.ocr.lines:
                table.add_row(escape(line.text), f"{line.confidence:.2f}")
            console.print(table)
        else:
            console.print("  no text found")
    if item.llm is not None and item.fields is None:
        console.print(f"  [bold]answer[/bold] ({escape(item.llm.model)}): {escape(item.llm.answer)}")
    if item.fields is not None:
        _show_fields(item.fields, item.evidence or {}, item.verified or {})


BADGES = {True: "[green]verified[/green]", False: "[red]not verified[/red]", None: "[dim]unchecked[/dim]"}


def _show_fields(fields: dict[str, Any], evidence: dict[str, list[Evidence]], verified: dict[str, bool | None],
                 title: str = "fields") -> None:
    table = Table("field", "value", "verified", "evidence", title=title)
    for path in verified:  # the property paths (an object-valued property is one value)
        value = value_at(fields, path)
        shown = "[dim]not found[/dim]" if value is None else escape(str(value))
        cited = "; ".join(f"{e.match}: {escape(e.text or e.name or '')}"
                          + (f" ({escape(e.filename or f'image {e.index}')})" if e.index is not None else "")
                          for e in evidence.get(path, [])[:2])
        table.add_row(escape(path), shown, BADGES[verified.get(path)] if value is not None else "", cited)
    console.print(table)


def fields_schema(specs: list[str]) -> dict[str, Any] | None:
    """The response schema ``--field NAME[=REGEX]`` options stand for: a string property per name, with its
    pattern when one is given."""
    if not specs:
        return None
    properties: dict[str, Any] = {}
    for spec in specs:
        name, has_pattern, pattern = spec.partition("=")
        name = name.strip()
        if not name:
            raise InvalidInputError(f"--field {spec!r}: give NAME or NAME=REGEX")
        properties[name] = {"type": "string", **({"pattern": pattern} if has_pattern else {})}
    return {"type": "object", "properties": properties}


def _show_summary(answer: PredictBatchResponse) -> None:
    result = answer.result
    if result.fields is not None and len(result.items) > 1:
        _show_fields(result.fields, result.evidence or {}, result.verified or {}, "fields (all images)")
        for path, values in (result.conflicts or {}).items():
            listed = ", ".join(f"{escape(str(c.value))} ({escape(c.filename or f'image {c.index}')})" for c in values)
            console.print(f"  [yellow]images disagree on {escape(path)}[/yellow]: {listed}")
    elif result.answer and len(result.items) > 1:
        console.print(f"[bold]answer[/bold]: {escape(result.answer)}")
    s = result.summary
    failed = f", [red]{s.error} failed[/red]" if s.error else ""
    console.print(f"{s.done} of {s.total} done{failed} in {result.duration_ms:.0f} ms")


def _save(answer: PredictBatchResponse, found: list[tuple[str, str | None, Path | None]], folder: Path) -> None:
    """``<stem>.json`` per image and, for local files that decode here, ``<stem>.png``/``.jpg`` annotated."""
    from sight.cli.annotate import annotated, save_annotated

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for item in answer.result.items:
        name, _url, path = found[item.index]
        stem = Path(name).stem or f"image-{item.index}"
        if stem in used:
            stem = f"{stem}-{item.index}"
        used.add(stem)
        (folder / f"{stem}.json").write_text(item.model_dump_json(by_alias=True, indent=2) + "\n")
        has_boxes = item.yolo is not None or item.ocr is not None or bool(item.evidence)  # a failed item may too
        picture = annotated(path, item) if path is not None and has_boxes else None
        drawn = f" and {save_annotated(picture, path, folder, stem).name}" if picture and path else ""
        progress_console.print(f"saved {escape(stem)}.json{escape(drawn)} in {escape(str(folder))}")
