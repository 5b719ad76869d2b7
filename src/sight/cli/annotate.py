"""Draw a prediction on its image: detection boxes with their label and confidence, OCR line boxes, and the
evidence of each field found (its own colour, labelled with the field's name)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sight.schemas import Box, ItemResult

if TYPE_CHECKING:
    from PIL.Image import Image

PALETTE = ["#ff3838", "#ff9d97", "#ff701f", "#ffb21d", "#cfd231", "#48f90a", "#92cc17", "#3ddb86", "#1a9334",
           "#00d4bb", "#2c99a8", "#00c2ff", "#344593", "#6473ff", "#0018ec", "#8438ff", "#520085", "#cb38ff"]
OCR_COLOR = "#00c2ff"
EVIDENCE_COLOR = "#ff00c8"  # a colour no detection class gets


def annotated(path: Path, item: ItemResult) -> Image | None:
    """``path``'s picture, upright as the server saw it, with ``item``'s boxes; None when it cannot be read here.
    Boxes are in the server's pixel frame (``item.image``) and are scaled to this decode."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    try:
        with Image.open(path) as opened:
            picture = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    sx = picture.width / item.image.width if item.image else 1.0
    sy = picture.height / item.image.height if item.image else 1.0
    side = max(picture.size)
    line = max(2, round(side / 400))
    font = ImageFont.load_default(size=max(12, round(side / 45)))
    draw = ImageDraw.Draw(picture)

    def rect(box: Box) -> tuple[float, float, float, float]:
        return box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy

    if item.ocr is not None:
        for ocr_line in item.ocr.lines:
            draw.rectangle(rect(ocr_line.box), outline=OCR_COLOR, width=max(1, line // 2))
    def labelled(box: Box, label: str, color: str, width: int) -> None:
        x1, y1, x2, y2 = rect(box)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        w, h = right - left + 2 * line, bottom - top + 2 * line
        x = max(0.0, min(x1, picture.width - w))  # kept inside the picture
        y = y1 - h if y1 - h >= 0 else y1  # above the box, or inside it at the top edge
        draw.rectangle((x, y, x + w, y + h), fill=color)
        draw.text((x + line, y + line - top), label, fill=_ink(color), font=font)

    if item.yolo is not None:
        for d in item.yolo.detections:
            labelled(d.box, f"{d.name} {d.confidence:.2f}", PALETTE[d.class_id % len(PALETTE)], line)
    for field, found in (item.evidence or {}).items():
        for e in found[:1]:  # the best evidence of each field
            state = " (not verified)" if (item.verified or {}).get(field) is False else ""
            labelled(e.box, f"{field}{state}", EVIDENCE_COLOR, line + 1)
    return picture


def _ink(color: str) -> str:
    """Black on light label colours, white on dark ones."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"


def save_annotated(picture: Image, source: Path, folder: Path, stem: str) -> Path:
    """Write ``picture`` into ``folder`` as JPEG when its source was one, else PNG; returns the file written."""
    jpeg = source.suffix.lower() in (".jpg", ".jpeg")
    target = folder / f"{stem}{'.jpg' if jpeg else '.png'}"
    if target.resolve() == source.resolve():  # --save into the images' own folder: keep the original
        target = target.with_name(f"{stem}.annotated{target.suffix}")
    if jpeg:
        picture.save(target, quality=95)
    else:
        picture.save(target)
    return target
