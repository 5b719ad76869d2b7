"""Small builders shared by tests."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from tests.conftest import IMAGES

T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0, poll: float = 0.01) -> T:
    """Wait for a state, not for a time: return ``check()``'s first truthy answer, asking every ``poll``
    seconds; fail, saying ``what`` never came, after ``timeout`` (generous: a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        if found := check():
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(poll)


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
