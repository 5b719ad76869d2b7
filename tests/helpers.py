"""Small builders shared by tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import IMAGES


def key_parts(key: str) -> tuple[str, str]:
    """A key's id and secret, parsed as the server parses them (a secret may itself hold '-')."""
    from sight.storage.keys import KEY_PATTERN

    match = KEY_PATTERN.match(key)
    assert match, key
    return match.group(1), match.group(2)


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def jpeg_bytes(image: Image.Image, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, **save)
    return out.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def exif_rotated_jpeg(path: Path) -> tuple[bytes, bytes]:
    """(upright JPEG, the same picture stored sideways with EXIF orientation 6 to turn it upright)."""
    upright = Image.open(path).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return jpeg_bytes(upright), jpeg_bytes(sideways, exif=exif.tobytes())


def v1_request(files: list[tuple[str, bytes]], metadata: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Keyword arguments for ``client.post`` as the public Python example builds them."""
    return {
        "data": {**fields, "metadata": [json.dumps(m) for m in metadata]},
        "files": [("files", (name, data)) for name, data in files],
    }
