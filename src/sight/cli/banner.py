"""The block ``sight serve`` prints once it is ready: what it will run and where to start, all true now."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sight import __version__
from sight.engines.wheels import install_problems
from sight.models.catalog import ModelEntry
from sight.models.official import official_for_url
from sight.models.registry import EngineRegistry
from sight.models.sources import ModelSource
from sight.models.states import model_state
from sight.services import Services

STATE_WORDS = {
    "ready": "[green]loaded[/green]",
    "not_loaded": "loads on first use",
    "not_downloaded": "[yellow]downloads on first use[/yellow]",
    "downloading": "[yellow]downloading[/yellow]",
    "failed": "[red]failed[/red]",
    "unavailable": "[red]unavailable[/red]",
}


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"


def describe_source(text: str | None) -> str:
    if not text or text.startswith("<"):
        return "in process"
    try:
        source = ModelSource.parse(text)
    except Exception:  # the catalog validated it; never let the banner fail the start
        return text
    official = official_for_url(source.location) if source.kind == "http" else None
    if official is not None:
        return f"official Ultralytics export ({official.size / 1e6:.1f} MB, {official.license})"
    return str(source)


def detector_line(engines: EngineRegistry, entry: ModelEntry) -> str:
    state = model_state(engines, entry)
    parts = [describe_source(entry.source)]
    detector = engines.loaded_detector(entry)
    names = getattr(detector, "names", None)
    if names:
        parts.append(f"{len(names)} classes")
    providers = getattr(detector, "providers", None)
    if providers:
        parts.append(providers[0].removesuffix("ExecutionProvider"))
    if state.precision:
        parts.append(state.precision.upper())
    words = STATE_WORDS[state.state]
    if state.state == "not_downloaded":
        words += " (or now: sight models pull " + escape(entry.name) + ")"
    if state.reason and state.state in ("failed", "unavailable"):
        words += ": " + escape(state.reason)
    if warning := engines.warning(entry):
        words += " [yellow]warning[/yellow]: " + escape(warning)
    return escape(", ".join(parts)) + " - " + words


def render(services: Services, key: str | None) -> Table:
    settings = services.settings
    engines = services.engines
    url = base_url(settings.server.host, settings.server.port)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Sight", f"{__version__} ready on {url}")
    for problem in install_problems():
        grid.add_row("[red]Install[/red]", escape(problem))
    grid.add_row("Console", f"{url}/  (paste the key below; predict, batches, models)")
    grid.add_row("API docs", f"{url}/docs  (OpenAPI: {url}/openapi.json)")
    default = settings.yolo.default_model
    detectors = [m for m in engines.catalog.all_models() if m.task == "detect"]
    for i, entry in enumerate(detectors):
        label = escape(entry.name if len(engines.catalog.models[entry.name].by_version) == 1 else entry.ref)
        if entry.name == default:
            label += " [dim](default)[/dim]"
        grid.add_row("Detectors" if i == 0 else "", f"{label}: {detector_line(engines, entry)}")
    if not detectors:
        grid.add_row("Detectors", "[red]none[/red]: set SIGHT_YOLO__MODELS or SIGHT_YOLO__DEFAULT_MODEL=yolo11n")
    ocr = engines.catalog.first("ocr")
    if ocr is not None:
        state = model_state(engines, ocr)
        reason = f": {escape(state.reason)}" if state.reason and state.state in ("unavailable", "failed") else ""
        o = settings.ocr
        what = f"PP-OCRv6 {o.detector} detection, {o.recognizer} recognition"
        where = f", {state.provider}" if state.provider else ""
        grid.add_row("OCR", f"{escape(ocr.name)} ({escape(what)}{where}) - {STATE_WORDS[state.state]}{reason}")
    status = engines.llm_status()
    if status.state == "ready":
        grid.add_row("LLM", escape(status.summary()))
    else:
        grid.add_row("LLM", "[yellow]none[/yellow] - " + escape(status.summary()))
    from sqlalchemy.engine import make_url

    grid.add_row("Database", escape(make_url(settings.database_url).render_as_string(hide_password=True)))
    grid.add_row("Batches", "processed in this server" if settings.jobs.run_in_server
                 else "API only (run `sight worker` to process them)")
    if key:
        grid.add_row("API key", f"{key}  [yellow](shown only this once: store it now)[/yellow]")
    else:
        grid.add_row("API key", "created earlier (sight keys create --team NAME makes another)")
    return grid


def printer(first_team: str | None, console: Console | None = None) -> Callable[[Services], Awaitable[None]]:
    """The ``on_ready`` hook of ``create_app`` that prints the banner; with ``first_team`` and no team yet, it
    first creates that team and its admin key, shown in the banner only."""
    out = console or Console()
    if not out.is_terminal:  # a log file or a pipe: one line per row, however long, so it greps well
        out = Console(file=out.file, width=400, color_system=None)

    async def on_ready(services: Services) -> None:
        key = None
        if first_team and not await services.keys.has_teams():
            key, _info = await services.keys.create_key(first_team, name="first-start", is_admin=True)
            out.print(f"Created team [bold]{escape(first_team)}[/bold] and its first API key.")
        out.print(render(services, key))

    return on_ready
