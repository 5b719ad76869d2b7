"""``sight models quantize``: an INT8 version of a detector, calibrated on the user's images, written only when a
parity check against the FP32 model passes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sight.cli.console import console, print_error, progress_console
from sight.config import QuantizeSettings, Settings
from sight.engines.base import DetectOptions
from sight.errors import SightError
from sight.images.decode import decode_image
from sight.models.catalog import Catalog
from sight.models.parity import ImageParity, compare, verdict
from sight.models.sources import ModelSource

if TYPE_CHECKING:
    import numpy as np

    from sight.engines.onnx_yolo import OnnxYoloDetector

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise typer.BadParameter(f"{folder} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _source(model: str, settings: Settings) -> tuple[str, Path]:
    """The detector's name and FP32 file: a path, or a name the settings declare (fetched if need be)."""
    if Path(model).is_file():
        return Path(model).stem, Path(model)
    from sight.cli.models import download

    entry = Catalog.from_settings(settings).model(model, task="detect")
    if not entry.source or entry.source.startswith("<"):
        raise typer.BadParameter(f"model {entry.ref} has no ONNX file to quantize")
    source = ModelSource.parse(entry.source)
    return entry.name, Path(source.location) if source.kind == "path" else download(entry.name, source, settings)


def quantize(
    model: Annotated[str, typer.Argument(help="A detector Sight serves (its name) or an ONNX file.",
                                         metavar="NAME|SOURCE")],
    calibration: Annotated[Path, typer.Option("--calibration", help="A folder of your images: what the model will "
                                              "see (32 or more; fewer than 4 are refused).", file_okay=False)],
    check: Annotated[Path | None, typer.Option("--check", help="A folder of images to check parity on (default: "
                                               "the calibration set).", file_okay=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Write the INT8 model even when the parity check fails "
                                        "or cannot judge.")] = False,
) -> None:
    """Write <name>-int8.onnx into the models folder: static INT8 (QDQ, per-channel weights), calibrated on your
    images letterboxed as serving does, the Detect head's decoding kept in FP32 (its DFL rewritten to run fast),
    taking the letterboxed pixels as uint8 NHWC; then served by its stem
    ("yolo_model": "<name>-int8"). Before writing, both models run on the check set and a table shows how
    many boxes each keeps of the other's; below the gate (SIGHT_QUANTIZE__*) nothing is written and it exits 1.
    Needs pip install 'sight[quantize]'."""
    from sight.models import quantize as q

    settings = Settings()
    gate = settings.quantize
    try:
        name, source = _source(model, settings)
        calib = _images(calibration)
        checks = _images(check) if check is not None else calib
        if len(calib) < gate.min_images:
            raise typer.BadParameter(f"{len(calib)} calibration images in {calibration}: at least {gate.min_images}")
        if len(calib) < gate.warn_images:
            console.print(f"[yellow]warning[/yellow]: {len(calib)} calibration images; {gate.warn_images} or more "
                          "calibrate better")
        if len(calib) > gate.max_images:  # every image's activations are held while calibrating
            step = len(calib) / gate.max_images
            calib = [calib[int(i * step)] for i in range(gate.max_images)]
            console.print(f"calibrating on {gate.max_images} images spread over the folder "
                          "(SIGHT_QUANTIZE__MAX_IMAGES)")
        flags = q.int8_flags()
        if flags is not None and not flags:
            console.print("[yellow]warning[/yellow]: this CPU has no VNNI or AMX: INT8 may be no faster than FP32 "
                          "here (bench/int8_throughput.py measures it)")
        folder = settings.models_dir
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}-int8.onnx"
        # Not *.onnx until it is whole: a server listing the folder meanwhile must not take it for a detector.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-int8.", suffix=".partial", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _write(q, name, source, tmp, target, calib, checks, settings, force)
        finally:
            tmp.unlink(missing_ok=True)
    except SightError as exc:
        print_error(exc)
        raise typer.Exit(1) from exc


def _write(q: Any, name: str, source: Path, tmp: Path, target: Path, calib: list[Path], checks: list[Path],
           settings: Settings, force: bool) -> None:
    """Quantize ``source`` into ``tmp``, check it, and move it to ``target`` if it passes (or ``force``)."""
    from sight.models import rewrites

    gate = settings.quantize
    fp32 = _detector(name, source, settings)
    with _bar() as bar:
        tensors = _tensors(fp32, calib, settings, bar)
        task = bar.add_task("calibrating", total=len(tensors))
        method = q.quantize(source, tmp, tensors, keep_fp32=q.decode_nodes(source),
                            on_sample=lambda: bar.advance(task))
        del tensors
        # Before the parity check, so that it checks the file written.
        dfl, pixels = rewrites.decompose_dfl(tmp), rewrites.take_pixels(tmp)
        int8 = _detector(f"{name}-int8", tmp, settings)
        total, rows = _parity(fp32, int8, checks, settings, gate, bar)
    _show(rows, total)
    why = verdict(total, gate)
    if why is not None and not force:
        console.print(f"[red]parity check failed[/red]: {escape(why)}. Nothing written (--force writes it anyway).")
        raise typer.Exit(1)
    if why is not None:
        console.print(f"[yellow]parity check failed[/yellow]: {escape(why)}; written anyway (--force)")
    parity = {"fp32_matched": round(total.share("fp32"), 4), "int8_matched": round(total.share("int8"), 4),
              "mean_iou": round(total.mean_iou, 4), "max_conf_change": round(total.max_conf_change, 4),
              "fp32_boxes": total.fp32, "check_images": len(checks), "passed": why is None}
    q.stamp(source, tmp, {q.PRECISION_KEY: "int8", "sight.source": name, "sight.source_sha256": q.sha256_of(source),
                          "sight.calibration_sha256": _set_hash(calib), "sight.calibration_images": str(len(calib)),
                          "sight.calibration": method, "sight.parity": parity,
                          "sight.dfl": "decomposed" if dfl else "as exported",
                          "sight.input": rewrites.PIXELS if pixels else "as exported"})
    tmp.chmod(0o644)  # mkstemp made it private
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    replaced = target.exists()
    os.replace(tmp, target)  # atomic: a server finds the whole file or none
    console.print(f"{'replaced' if replaced else 'saved'} {escape(str(target))}: serve it as "
                  f'[bold]{escape(name)}-int8[/bold] ("yolo_model": "{escape(name)}-int8")')


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=progress_console, transient=True)


def _detector(name: str, path: Path, settings: Settings) -> OnnxYoloDetector:
    from sight.engines.onnx_yolo import OnnxYoloDetector

    return OnnxYoloDetector.load(name, path, providers=["CPUExecutionProvider"], intra_op_threads=0,
                                 iou=settings.yolo.iou, max_det=settings.yolo.max_det)


def _tensors(detector: OnnxYoloDetector, paths: list[Path], settings: Settings, bar: Progress) -> list[np.ndarray]:
    """Each image decoded and letterboxed as serving does (its decoder, its limits, the model's size), padded to
    the model's full square input even where serving pads only to the stride: percentile calibration pools
    every image's activations, which needs one shape (calibrated on the stride-padded shapes, it failed on every
    dynamic model and fell back to min and max, which kept fewer boxes: 0.955 of nudenet's against 1.000)."""
    from sight.engines.onnx_yolo import letterbox, to_tensor

    task = bar.add_task("reading images", total=len(paths))
    out = []
    for path in paths:
        image = decode_image(path.read_bytes(), settings.images)
        canvas, _ = letterbox(image, detector.imgsz, detector.stride, rect=False)
        out.append(to_tensor([canvas]))
        bar.advance(task)
    return out


def _parity(fp32: OnnxYoloDetector, int8: OnnxYoloDetector, paths: list[Path], settings: Settings,
            gate: QuantizeSettings, bar: Progress) -> tuple[ImageParity, list[tuple[str, ImageParity]]]:
    task = bar.add_task("checking parity", total=len(paths))
    total, rows = ImageParity(), list[tuple[str, ImageParity]]()
    options = DetectOptions(conf=gate.twin_conf)
    for path in paths:
        image = decode_image(path.read_bytes(), settings.images)
        found = compare(fp32.detect(image, options), int8.detect(image, options), gate)
        if found.counts:
            rows.append((path.name, found))
            total.add(found)
        bar.advance(task)
    return total, rows


def _show(rows: list[tuple[str, ImageParity]], total: ImageParity) -> None:
    table = Table("image", "FP32 boxes", "with INT8 twin", "INT8 boxes", "with FP32 twin", "mean IoU",
                  "max conf change", title="parity (images where neither model finds a box are left out)")

    def row(name: str, p: ImageParity) -> list[str]:
        return [name, str(p.fp32), f"{p.share('fp32'):.3f}", str(p.int8), f"{p.share('int8'):.3f}",
                f"{p.mean_iou:.3f}" if p.ious else "-", f"{p.max_conf_change:.3f}" if p.conf_changes else "-"]

    for name, p in rows:
        table.add_row(*row(escape(name), p))
    table.add_row(*row("[bold]all[/bold]", total))
    console.print(table)


def _set_hash(paths: list[Path]) -> str:
    """Names the calibration set: the hash of its files' hashes, in order."""
    from sight.models.quantize import sha256_of

    return hashlib.sha256("".join(sha256_of(path) for path in paths).encode()).hexdigest()
