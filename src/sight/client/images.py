"""What a client accepts as an image, and how each kind goes on the wire. No I/O: files are read by the clients.

An image is a path (``str`` or ``os.PathLike``), the encoded bytes of a file, an ``http(s)://`` URL (the server
fetches it) or a PIL image (sent as PNG).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from sight.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageLike: TypeAlias = "str | os.PathLike[str] | bytes | PILImage"
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


@dataclass(frozen=True)
class Upload:
    """One image ready to send: its encoded bytes, or a URL for the server to fetch."""

    filename: str | None
    content: bytes | None = None
    url: str | None = None


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image alone, or a sequence of them (a ``str`` or ``bytes`` is one image, never a sequence)."""
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike) or _is_pil(images):
        return [images]  # type: ignore[list-item]
    return list(images)  # type: ignore[arg-type]


def source_of(image: ImageLike, index: int) -> Upload | Path:
    """The upload for ``image``, or the file to read it from (the caller reads it: sync or async)."""
    if is_url(image):
        return Upload(None, url=str(image))
    if isinstance(image, str | os.PathLike):
        return Path(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return Upload(f"image-{index}", bytes(image))
    if _is_pil(image):
        return Upload(_pil_name(image, index), _png(image))
    raise InvalidInputError(f"image {index}: expected a file path, bytes, an http(s) URL or a PIL image, "
                            f"not {type(image).__name__}")


def _is_pil(value: Any) -> bool:
    # Checked by module, so that PIL is imported only by callers that pass PIL images.
    return any(cls.__module__ == "PIL.Image" and cls.__name__ == "Image" for cls in type(value).__mro__)


def _pil_name(image: Any, index: int) -> str:
    name = getattr(image, "filename", "") or ""
    return Path(name).name if name else f"image-{index}.png"


def _png(image: Any) -> bytes:
    if image.mode not in PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
