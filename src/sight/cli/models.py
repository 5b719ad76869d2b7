"""``sight models``: list the catalog; pull model files (official exports, URLs, Hugging Face) with progress."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from sight.cli.console import KeyOpt, UrlOpt, console, print_error
from sight.config import Settings
from sight.errors import SightError, StageTimeoutError, UpstreamError
from sight.models.catalog import Catalog
from sight.models.files import ModelFiles
from sight.models.official import OFFICIAL
from sight.models.sources import ModelSource, license_line

app = typer.Typer(help="The model registry.", no_args_is_help=True, rich_markup_mode=None)
ULTRALYTICS = re.compile(r"^yolo(v8|11|12)[nsmlx]$|^yolov5[nsmlx]u$")
LOCAL_HINT = ("To serve a model you already have, export it to ONNX where the weights are "
              "(yolo export model=yolo11n.pt format=onnx dynamic=True) and set "
              "SIGHT_YOLO__MODELS='{\"yolo11n\": \"/path/yolo11n.onnx\"}' or copy it into {dir}.")


@app.command("list")
def list_models(
    url: UrlOpt = None, key: KeyOpt = None,
    local: Annotated[bool, typer.Option("--local", help="List what this shell's settings declare, without "
                                        "asking the server.")] = False,
) -> None:
    """What the server serves (GET /v1/models: every version with its state, and the vision LLM). When no server
    answers, what this shell's settings and registry file declare, without states, and it says so."""
    settings = Settings()
    if not local:
        why = _list_served(url or settings.client.url, key or (settings.client.api_key.get_secret_value()
                                                               if settings.client.api_key else None))
        if why is None:
            return
        console.print(f"[yellow]{escape(why)}[/yellow]: showing this shell's settings instead (no states)",
                      soft_wrap=True)
    try:
        catalog = Catalog.from_settings(settings)
    except SightError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc
    table = Table("name", "version", "task", "aliases", "source", "shadow of")
    for m in catalog.all_models():
        table.add_row(m.name, str(m.version), m.task, ", ".join(catalog.aliases_of(m)), m.source or m.model or "",
                      m.shadow_of or "")
    console.print(table)


def _list_served(url: str, key: str | None) -> str | None:
    """Print the server's models; or say why not (None: printed)."""
    from sight.client import Client

    if not key:
        return f"no API key for the server at {url} (--key or SIGHT_CLIENT__API_KEY)"
    try:
        with Client(url, key, max_attempts=1) as sight:
            listing = sight.list_models()
    except (UpstreamError, StageTimeoutError) as exc:
        return f"the server at {url} did not answer ({exc.message})"
    except SightError as exc:
        return f"the server at {url} refused the listing ({exc.code}: {exc.message})"
    table = Table("name", "version", "task", "aliases", "state", "source", title=f"served by {url}")
    for m in listing.models:
        state = m.state.state + (f": {m.state.reason}" if m.state.reason else "")
        if m.state.precision:
            state += f" ({m.state.precision.upper()}, {m.state.provider or 'CPU'})"
        if m.warning:
            state += f" (warning: {m.warning})"
        table.add_row(escape(m.name), m.version, m.task, escape(", ".join(m.aliases)), escape(state),
                      escape(m.source or ""))
    console.print(table)
    if listing.llm is not None:
        llm = listing.llm
        where = f"{llm.backend} {llm.model} at {llm.base_url}" if llm.state == "ready" else (llm.reason or "")
        console.print(f"vision LLM: {llm.state} - {escape(where)}", soft_wrap=True)
    return None


def download(name: str, source: ModelSource, settings: Settings) -> Path:
    """Fetch ``source`` into the models folder with a progress bar, then show its licence (once: a file that
    is here already is not fetched again); exit 1 with the reason and what to do if it fails."""
    files = ModelFiles(settings.models, settings.models_dir)
    present = files.local(source)
    if present is not None:
        console.print(f"{escape(name)}: already here ({escape(str(present))})")
        return present
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"downloading {escape(name)}", total=source.size)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            path = files.ensure(name, source, settings.models.download_timeout, on_progress=advance)
        except SightError as exc:
            bar.stop()
            print_error(exc)
            raise typer.Exit(1) from exc
    console.print(f"saved {escape(str(path))} (sha256 verified)")
    if (note := license_line(source)) is not None:
        console.print(f"[yellow]licence[/yellow] {escape(name)}: {escape(note)}")
    return path


def remote_detectors(settings: Settings) -> list[tuple[str, ModelSource]]:
    """Every declared detector whose file comes from a URL or the Hugging Face Hub."""
    try:
        catalog = Catalog.from_settings(settings)
    except SightError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc
    out = []
    for m in catalog.all_models():
        if m.task == "detect" and m.source and not m.source.startswith("<"):
            source = ModelSource.parse(m.source)
            if source.kind != "path":
                out.append((m.name, source))
    return out


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="A declared or official model name (yolo11n, yolo11s, yolo11m), or "
                                         "a source: https://...#sha256=<hex>, hf://owner/repo/file.onnx.")],
    imgsz: Annotated[int | None, typer.Option(help="Export at this image size instead (needs the ultralytics "
                                              "extra: downloads .pt weights and exports them).")] = None,
) -> None:
    """Download a model's ONNX file into the models folder, verified by size and sha256, with a progress bar.
    Official exports need no PyTorch; other Ultralytics names (yolov8s, yolo12n, ...) or --imgsz take the
    ultralytics route: pip install 'sight[ultralytics]'."""
    settings = Settings()
    if model.startswith(("http://", "https://", "hf://")):
        try:
            source = ModelSource.parse(model)
        except SightError as exc:
            print_error(exc)
            raise typer.Exit(2) from exc
        name = Path(source.location).stem
        download(name, source, settings)
        console.print(f"serve it as a detector: SIGHT_YOLO__MODELS='{{\"{escape(name)}\": \"{escape(model)}\"}}' "
                      "(it is found here, not downloaded again)")
        return
    declared = dict(remote_detectors(settings))
    if imgsz is None and model in declared:
        download(model, declared[model], settings)
    elif imgsz is None and model in OFFICIAL:
        download(model, ModelSource.parse(OFFICIAL[model].source), settings)
    else:
        export_with_ultralytics(model, imgsz or 640, settings)
        return
    console.print(f"served as [bold]{escape(model)}[/bold]; a running server uses it on its next item")


def export_with_ultralytics(name: str, imgsz: int, settings: Settings) -> None:
    """Download official ``.pt`` weights and export them to ONNX (the route that needs PyTorch)."""
    target_dir = settings.models_dir
    hint = LOCAL_HINT.replace("{dir}", str(target_dir))
    if not ULTRALYTICS.match(name):
        console.print(f"[red]error[/red]: {escape(repr(name))} is neither declared here nor an official Ultralytics "
                      "detect model " + escape("(yolo11n..x, yolov8n..x, yolo12n..x, yolov5nu..xu). " + hint))
        raise typer.Exit(2)
    try:
        from ultralytics import YOLO
    except ImportError:
        console.print(f"[red]error[/red]: {escape(name)} at imgsz {imgsz} needs an export from .pt weights: "
                      + escape("pip install 'sight[ultralytics]' (it brings PyTorch). " + hint))
        raise typer.Exit(1) from None
    work = target_dir / f".pull-{name}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        exported = Path(YOLO(str(work / f"{name}.pt")).export(format="onnx", dynamic=True, imgsz=imgsz))
    except Exception as exc:  # no network, hub refused, export failed: all end the same way for the user
        console.print(f"[red]error[/red]: could not download or export {name}: " + escape(f"{exc}. {hint}"))
        raise typer.Exit(1) from exc
    target = target_dir / f"{name}.onnx"
    shutil.move(exported, target)
    shutil.rmtree(work, ignore_errors=True)
    console.print(f"saved {target}; it is served as [bold]{name}[/bold] after a restart or POST /v1/models:reload")
