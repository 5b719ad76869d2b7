"""``sight models``: list the catalog, pull official Ultralytics weights as ONNX."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sight.config import Settings
from sight.core.catalog import Catalog
from sight.errors import SightError

app = typer.Typer(help="The model registry.", no_args_is_help=True)
console = Console()
OFFICIAL = re.compile(r"^yolo(v8|11|12)[nsmlx]$|^yolov5[nsmlx]u$")
LOCAL_HINT = ("To serve a model you already have, export it to ONNX where the weights are "
              "(yolo export model=yolo11n.pt format=onnx dynamic=True) and set "
              "SIGHT_YOLO__MODELS='{\"yolo11n\": \"/path/yolo11n.onnx\"}' or copy it into {dir}.")


def _models_dir(settings: Settings) -> Path:
    return settings.yolo.models_dir or settings.data_dir / "models"


@app.command("list")
def list_models() -> None:
    """Every declared model version (settings and registry file), as GET /v1/models lists them."""
    settings = Settings()
    try:
        catalog = Catalog.build(settings.detector_paths(), settings.registry.path, settings.llm.model)
    except SightError as exc:
        console.print(f"[red]error[/red] ({exc.code}): {escape(exc.message)}")
        raise typer.Exit(1) from exc
    table = Table("name", "version", "task", "aliases", "source", "shadow of")
    for m in catalog.all_models():
        table.add_row(m.name, str(m.version), m.task, ", ".join(catalog.aliases_of(m)), m.source or m.model or "",
                      m.shadow_of or "")
    console.print(table)


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="An official Ultralytics detect model, e.g. yolo11n, yolov8s.")],
    imgsz: Annotated[int, typer.Option(help="Export image size.")] = 640,
) -> None:
    """Download official weights and export them to ONNX in the models folder (needs internet and the
    optional extra: pip install 'sight[ultralytics]')."""
    settings = Settings()
    target_dir = _models_dir(settings)
    hint = LOCAL_HINT.replace("{dir}", str(target_dir))
    if not OFFICIAL.match(name):
        console.print(f"[red]error[/red]: {escape(repr(name))} is not an official Ultralytics detect model "
                      + escape("(yolo11n..x, yolov8n..x, yolo12n..x, yolov5nu..xu). " + hint))
        raise typer.Exit(2)
    try:
        from ultralytics import YOLO
    except ImportError:
        console.print("[red]error[/red]: pulling weights needs the optional extra: "
                      + escape("pip install 'sight[ultralytics]' (it brings PyTorch). " + hint))
        raise typer.Exit(1) from None
    work = target_dir / f".pull-{name}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = YOLO(str(work / f"{name}.pt"))
        exported = Path(model.export(format="onnx", dynamic=True, imgsz=imgsz))
    except Exception as exc:  # no network, hub refused, export failed: all end the same way for the user
        console.print(f"[red]error[/red]: could not download or export {name}: " + escape(f"{exc}. {hint}"))
        raise typer.Exit(1) from exc
    target = target_dir / f"{name}.onnx"
    shutil.move(exported, target)
    shutil.rmtree(work, ignore_errors=True)
    console.print(f"saved {target}; it is served as [bold]{name}[/bold] after a restart or POST /v1/models:reload")
