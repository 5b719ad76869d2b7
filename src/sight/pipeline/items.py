"""What the pipeline is given: work items, each an image source and the options of what to run on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sight.schemas import ImageRef, ItemOptions


class Upload(Protocol):
    """An uploaded file (Starlette's ``UploadFile`` fits)."""

    size: int | None

    async def read(self, size: int = -1) -> bytes: ...


@dataclass(slots=True)
class ImageInput:
    """Where an item's image comes from: an upload, bytes at hand (a stored batch image), or a reference
    (``image_url`` or ``image_base64``, checked when the image is loaded, so a bad one fails only its item)."""

    upload: Upload | None = None
    data: bytes | None = None
    ref: ImageRef | None = None

    @classmethod
    def url(cls, url: str) -> ImageInput:
        return cls(ref=ImageRef(image_url=url))

    @classmethod
    def base64(cls, value: str) -> ImageInput:
        return cls(ref=ImageRef(image_base64=value))


@dataclass(slots=True)
class WorkItem:
    index: int
    filename: str | None
    image: ImageInput
    options: ItemOptions = field(default_factory=ItemOptions)
